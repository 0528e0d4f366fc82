"""Seconds per training step of ActionFormer v1 and v2 on THUMOS-shaped batches, in the same process.

v1 is ``conf/model/actionformer/thumos_i3d.yaml`` (the release: window-19 local attention, GELU MLP,
LayerNorm, identity neck, v1 heads); v2 is ``thumos_i3d_v2.yaml`` (every v2 option: RoPE, windowed SDPA,
grouped-query attention with 2 key/value heads, RMSNorm, SwiGLU, v2 heads, cross-scale FPN). One step =
forward + ActionFormer loss (label assignment, focal + DIoU) + backward + AdamW on a batch of 2 videos of
2304 I3D steps (2048-d), the second one 60% padded. Steps of the two models alternate, so that a busy
host slows both alike; the medians and their ratio are printed. ``--each`` also times v1 with each v2
option switched on alone.

    python benchmarks/actionformer_v2_step.py [--steps 5] [--threads 2] [--each]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from egolab.models.actionformer import ActionFormer, param_groups
from egolab.models.actionformer_loss import ActionFormerLoss
from egolab.paths import CONF_DIR

SINGLE_OPTIONS = {
    "rope": dict(use_rope=True),
    "sdpa": dict(use_sdpa=True),
    "gqa(2)": dict(n_kv_head=2),
    "rms_norm": dict(use_rms_norm=True),
    "swiglu": dict(use_swiglu=True),
}


def model_config(name: str) -> dict:
    """The composed ``model=actionformer/<name>`` config as constructor kwargs."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(f"model/actionformer/{name}")
    kwargs = OmegaConf.to_container(cfg.model.actionformer, resolve=True)
    kwargs.pop("_target_")
    return kwargs


def synthetic_batch(kwargs: dict, batch_size: int, generator: torch.Generator) -> dict:
    """Random features at max_seq_len, the later videos partly padded, with a few GT segments each."""
    length = kwargs["max_seq_len"]
    valid = [length if idx == 0 else int(length * 0.4) for idx in range(batch_size)]
    segments, labels = [], []
    for n in valid:
        starts = torch.rand(8, generator=generator) * (n - 64)
        segments.append(torch.stack([starts, starts + 4 + torch.rand(8, generator=generator) * 60], 1))
        labels.append(torch.randint(0, kwargs["num_classes"], (8,), generator=generator))
    return {
        "feats": torch.randn(batch_size, kwargs["input_dim"], length, generator=generator),
        "masks": torch.arange(length)[None] < torch.tensor(valid)[:, None],
        "segments": segments,
        "labels": labels,
    }


def training_step(kwargs: dict, batch: dict) -> Callable[[], None]:
    """One optimisation step of a freshly built model (AdamW, wd 0.05 as the THUMOS recipe)."""
    model = ActionFormer(**kwargs).train()
    criterion = ActionFormerLoss(num_classes=kwargs["num_classes"], init_loss_norm=100)
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad()
        outputs = model(batch["feats"], batch["masks"])
        criterion(outputs, batch["segments"], batch["labels"])["final_loss"].backward()
        optimizer.step()

    step()  # warm-up (allocations, AdamW state)
    return step


def time_alternating(steps: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median seconds per step of each function, calling them in turn ``repeats`` times."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per model (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--each", action="store_true", help="also time each v2 backbone option alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    v1, v2 = model_config("thumos_i3d"), model_config("thumos_i3d_v2")
    batch = synthetic_batch(v1, args.batch_size, torch.Generator().manual_seed(0))
    configs = {"v1": v1, "v2": v2}
    if args.each:
        for name, option in SINGLE_OPTIONS.items():
            configs[f"v1+{name}"] = {**v1, "backbone_type": "convTransformerv2", **option}
        configs["v1+heads_v2"] = {**v1, "head_type": "v2"}
        configs["v1+cs_fpn"] = {**v1, "fpn_type": "cs_fpn"}
    for name, kwargs in configs.items():
        params = sum(p.numel() for p in ActionFormer(**kwargs).parameters())
        print(f"{name}: {params / 1e6:.2f}M parameters")
    steps = {name: training_step(kwargs, batch) for name, kwargs in configs.items()}
    medians = time_alternating(steps, args.steps)
    shape = f"batch {args.batch_size} x {v1['input_dim']} x {v1['max_seq_len']}"
    print(f"seconds per training step ({shape}, {args.threads} threads, median of {args.steps}):")
    for name, seconds in medians.items():
        print(f"  {name:12s} {seconds:7.3f} s   ratio to v1 {seconds / medians['v1']:.2f}")
    v1_s, v2_s = medians["v1"], medians["v2"]
    print(f"v1 {v1_s:.3f} s  v2 {v2_s:.3f} s  ratio v2/v1 {v2_s / v1_s:.2f}")


if __name__ == "__main__":
    main()
