"""ActionFormer on THUMOS shapes: our training step, inference and peak memory against the official release.

Both models are built from the THUMOS I3D config (``conf/model/actionformer/thumos_i3d.yaml``; the
release's ``configs/thumos_i3d.yaml``) and share identical weights (the release's, renamed to ours); their
outputs are checked equal before anything is timed. A training step is forward + loss (label assignment,
focal + DIoU) + backward + AdamW on 2 videos of 2304 I3D steps (2048-d, the second 60% padded);
inference is one forward in eval mode on a video of 2304 steps followed by each side's decoding and
soft-NMS (the release's compiled ``nms_1d_cpu``). With ``--thumos-json`` (the release's THUMOS
annotation file) inference is also timed over videos of the real THUMOS'14 test lengths, where both sides
pad a batch as the release does (to 2304 steps when a video fits, else to a multiple of 576) and ours
skips the padding it can (the model's ``trim_padding``). Steps of the two alternate so that a busy host slows
both alike; medians and ratios are printed. Peak memory is the largest resident set size of a child
process that runs only that measurement (after a warm-up step), over its size just before the step.

The release is not part of egolab: fetch it and build its NMS extension once, then point at it::

    git clone https://github.com/happyharrycn/actionformer_release /tmp/afr
    (cd /tmp/afr/libs/utils && python setup.py build_ext --inplace)
    python benchmarks/actionformer_step.py --reference /tmp/afr [--steps 5] [--threads 2] \
        [--thumos-json data/thumos/annotations/thumos14.json --videos 24]

Without ``--reference`` only our figures are printed.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

SEQ_LEN, IN_DIM, BATCH = 2304, 2048, 2


# --------------------------------------------------------------------------------------- models
def build_ours() -> tuple[torch.nn.Module, torch.nn.Module, object]:
    """Our model, criterion and post-processor as ``expts/localization/thumos_i3d.txt`` composes them."""
    from hydra.utils import instantiate

    from egolab.launch.txtfile import compose_experiment
    from egolab.paths import REPO_ROOT

    cfg = compose_experiment(
        REPO_ROOT / "expts" / "localization" / "thumos_i3d.txt", ["paths.root=/nonexistent"]
    )
    model = instantiate(cfg.model)
    criterion = instantiate(cfg.task.criterion)
    postprocess = instantiate(cfg.task.postprocess)
    return model, criterion, postprocess


def build_release(reference: Path) -> torch.nn.Module:
    """The release's ``LocPointTransformer`` from its ``configs/thumos_i3d.yaml``."""
    sys.path[:0] = [str(reference), str(reference / "libs" / "utils")]
    from libs.core import load_config
    from libs.modeling import make_meta_arch

    cfg = load_config(str(reference / "configs" / "thumos_i3d.yaml"))
    return make_meta_arch(cfg["model_name"], **cfg["model"])


RENAMES = [
    (r"attn\.(query|key|value)_conv\.", r"attn.\1.conv."),
    (r"attn\.(query|key|value)_norm\.", r"attn.\1.norm."),
    (r"attn\.(query|key|value)\.(weight|bias)$", r"attn.\1.proj.\2"),
    (r"^neck\.fpn_norms\.", "neck.norms."),
    (r"^(cls|reg)_head\.head\.", r"\1_head.trunk.convs."),
    (r"^(cls|reg)_head\.norm\.", r"\1_head.trunk.norms."),
    (r"^cls_head\.cls_head\.", "cls_head.cls."),
    (r"^reg_head\.offset_head\.", "reg_head.offset."),
    (r"^reg_head\.scale\.", "reg_head.scales."),
]


def copy_release_weights(release: torch.nn.Module, ours: torch.nn.Module) -> None:
    """Load the release's parameters into ours (renamed; its (1, C, 1) LayerNorm shapes flattened)."""
    state = {}
    for key, value in release.state_dict().items():
        for pattern, repl in RENAMES:
            key = re.sub(pattern, repl, key)
        state[key] = value
    target = ours.state_dict()
    missing, extra = set(target) - set(state), set(state) - set(target)
    if missing or extra:
        raise RuntimeError(
            f"weight names differ: ours only {sorted(missing)[:5]}, release only {sorted(extra)[:5]}"
        )
    ours.load_state_dict({k: v.reshape(target[k].shape) for k, v in state.items()})


# --------------------------------------------------------------------------------------- inputs
def video(length: int, generator: torch.Generator) -> dict:
    """``length`` random I3D steps (stride 4 at 30 fps) and 8 ground-truth segments (grid units)."""
    starts = torch.rand(8, generator=generator) * max(length - 100, 1)
    segments = torch.stack((starts, starts + 10 + 80 * torch.rand(8, generator=generator)), 1)
    return {
        "video_id": f"v{length}",
        "feats": torch.randn(IN_DIM, length, generator=generator),
        "segments": segments,
        "labels": torch.randint(0, 20, (8,), generator=generator),
        "fps": 30.0,
        "duration": length * 4 / 30,
        "feat_stride": 4,
        "feat_num_frames": 16,
    }


def videos(generator: torch.Generator) -> list[dict]:
    """The two training videos: full length and 40%."""
    return [video(SEQ_LEN, generator), video(int(0.4 * SEQ_LEN), generator)]


def thumos_test_lengths(path: Path, count: int) -> list[int]:
    """I3D step counts (duration x 30 / 4) of ``count`` THUMOS'14 test videos spread evenly over the
    sorted lengths of all 212, from the ActionFormer annotation json."""
    database = json.loads(path.read_text())["database"]
    lengths = sorted(
        int(v["duration"] * v.get("fps", 30.0) / 4)
        for v in database.values()
        if v["subset"].lower() == "test"
    )
    if not lengths:
        raise ValueError(f"{path}: no test-subset videos")
    step = len(lengths) / count
    return [lengths[int((i + 0.5) * step)] for i in range(min(count, len(lengths)))]


def our_batch(items: list[dict], max_div_factor: int, training: bool) -> dict:
    from egolab.data.localization import LocalizationCollate

    return LocalizationCollate(SEQ_LEN, max_div_factor, training=training)(items)


# --------------------------------------------------------------------------------------- steps
def our_train_step(model, criterion, optimizer, batch) -> float:
    outputs = model(batch["feats"], batch["masks"])
    loss = criterion(outputs, batch["segments"], batch["labels"])["final_loss"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def release_train_step(model, optimizer, items) -> float:
    loss = model(items)["final_loss"]
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


@torch.no_grad()
def our_inference(model, postprocess, batch) -> list[dict]:
    return postprocess(model(batch["feats"], batch["masks"]), batch)


@torch.no_grad()
def release_inference(model, items) -> list[dict]:
    return model(items)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --------------------------------------------------------------------------------------- memory
def peak_memory_child(side: str, mode: str, reference: str | None, threads: int) -> float:
    """Peak RSS growth (MB) of a fresh process doing one ``mode`` step of ``side`` after its set-up."""
    cmd = [sys.executable, __file__, "--child", side, mode, "--threads", str(threads)]
    if reference:
        cmd += ["--reference", reference]
    # A fixed mmap threshold turns off glibc's adaptive one, so freed tensors leave the resident set at once
    # and the peak is that of live memory (otherwise it varies by 2x from run to run).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
    out = out.strip().splitlines()[-1]
    return json.loads(out)["peak_mb"]


def _status_mb(field: str) -> float:
    """A ``/proc/self/status`` memory field (VmRSS, VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(side: str, mode: str, reference: Path | None) -> None:
    """One warm-up and one measured step; the peak resident set reached during the measured one, over the
    resident set before it (the peak is reset first through /proc/self/clear_refs)."""
    generator = torch.Generator().manual_seed(0)
    items = videos(generator)
    if side == "release":
        model = build_release(reference)
    else:
        model, criterion, postprocess = build_ours()
    model.train(mode == "train")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = items if mode == "train" else items[:1]
    if side == "ours":
        batch = our_batch(inputs, model.max_div_factor, training=mode == "train")
        if mode == "train":
            step = lambda: our_train_step(model, criterion, optimizer, batch)  # noqa: E731
        else:
            step = lambda: our_inference(model, postprocess, batch)  # noqa: E731
    elif mode == "train":
        step = lambda: release_train_step(model, optimizer, inputs)  # noqa: E731
    else:
        step = lambda: release_inference(model, inputs)  # noqa: E731
    step()  # warm-up: optimizer state, allocator pools
    before = _status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    step()
    print(json.dumps({"peak_mb": _status_mb("VmHWM") - before}))


def time_thumos_lengths(args: argparse.Namespace, ours, postprocess, release) -> None:
    """Total inference time over videos of real THUMOS test lengths, each side in turn per video."""
    lengths = thumos_test_lengths(args.thumos_json, args.videos)
    generator = torch.Generator().manual_seed(1)
    totals = {"ours": 0.0, "release": 0.0}
    ours.eval()
    if release is not None:
        release.eval()
    for length in lengths:
        item = video(length, generator)
        batch = our_batch([item], ours.max_div_factor, training=False)
        totals["ours"] += timed(functools.partial(our_inference, ours, postprocess, batch))
        if release is not None:
            totals["release"] += timed(functools.partial(release_inference, release, [item]))
    line = f"  inference over {len(lengths)} THUMOS test lengths ({min(lengths)}-{max(lengths)} steps): "
    line += f"ours {totals['ours']:7.2f} s"
    if release is not None:
        line += f"   release {totals['release']:7.2f} s   speed-up {totals['release'] / totals['ours']:.2f}x"
    print(line)


# --------------------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", type=Path, help="checkout of happyharrycn/actionformer_release")
    parser.add_argument("--steps", type=int, default=5, help="timed repetitions of each (after 1 warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--thumos-json", type=Path, help="THUMOS'14 annotation json: time real test lengths")
    parser.add_argument("--videos", type=int, default=24, help="test videos timed with --thumos-json")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory children")
    parser.add_argument("--child", nargs=2, metavar=("SIDE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        child(*args.child, args.reference)
        return

    generator = torch.Generator().manual_seed(0)
    items = videos(generator)
    ours, criterion, postprocess = build_ours()
    sides = {"ours": ours}
    if args.reference:
        release = build_release(args.reference)
        copy_release_weights(release, ours)
        sides["release"] = release
        with torch.no_grad():  # same function first: the eval outputs of one video
            ours.eval(), release.eval()
            batch = our_batch(items[:1], ours.max_div_factor, training=False)
            mine = postprocess(ours(batch["feats"], batch["masks"]), batch)[0]
            theirs = release(items[:1])[0]
            assert torch.allclose(
                mine["scores"][:50], theirs["scores"][:50].to(mine["scores"].dtype), atol=1e-5
            )
            counts = f"{len(mine['scores'])} / {len(theirs['scores'])}"
            print(f"same detections: top-50 scores agree to 1e-5 ({counts} detections)")
    train_batch = our_batch(items, ours.max_div_factor, training=True)
    eval_batch = our_batch(items[:1], ours.max_div_factor, training=False)
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in sides.items()}
    steps = {
        "ours": {
            "train": lambda: our_train_step(ours, criterion, optimizers["ours"], train_batch),
            "inference": lambda: our_inference(ours, postprocess, eval_batch),
        }
    }
    if "release" in sides:
        steps["release"] = {
            "train": lambda: release_train_step(release, optimizers["release"], items),
            "inference": lambda: release_inference(release, items[:1]),
        }
    times: dict[tuple[str, str], list[float]] = {}
    for mode in ("train", "inference"):
        for name, model in sides.items():
            model.train(mode == "train")
            steps[name][mode]()  # warm-up
        for _ in range(args.steps):
            for name, model in sides.items():
                model.train(mode == "train")
                times.setdefault((name, mode), []).append(timed(steps[name][mode]))
    print(
        f"THUMOS shapes: batch {BATCH} x {IN_DIM} x {SEQ_LEN} (training), 1 video (inference); "
        f"{args.threads} threads, median of {args.steps}"
    )
    for mode in ("train", "inference"):
        ours_s = statistics.median(times[("ours", mode)])
        line = f"  {mode:<10} ours {ours_s:7.3f} s"
        if ("release", mode) in times:
            ref_s = statistics.median(times[("release", mode)])
            line += f"   release {ref_s:7.3f} s   speed-up {ref_s / ours_s:.2f}x"
        print(line)
    if args.thumos_json:
        time_thumos_lengths(args, ours, postprocess, sides.get("release"))
    if not args.no_memory:
        reference = str(args.reference) if args.reference else None
        for mode in ("train", "inference"):
            ours_mb = peak_memory_child("ours", mode, reference, args.threads)
            line = f"  peak memory {mode:<10} ours {ours_mb:7.0f} MB"
            if reference:
                ref_mb = peak_memory_child("release", mode, reference, args.threads)
                line += f"   release {ref_mb:7.0f} MB   ratio {ours_mb / ref_mb:.2f}"
            print(line)


if __name__ == "__main__":
    main()
