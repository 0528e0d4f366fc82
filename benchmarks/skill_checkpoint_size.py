"""Checkpoint size of the SkillFormer runs: the full state (what skill checkpoints held before) against the
trained state only (what :mod:`egolab.checkpoints` keeps), and the time to fingerprint the frozen part.

Each experiment TXT is composed as ``launch.py`` would, with ``model.backbone.pretrained=null``: the real
TimeSformer-Base architecture with random weights (no download; the sizes depend on shapes only). AdamW
takes one step on zero gradients so that its state exists, then the Lightning-style checkpoint
(``state_dict`` + ``optimizer_states``) is saved as is and as ``SkillTask.on_save_checkpoint`` reduces it.
A run writes two such files (``last`` and ``best``).

    python benchmarks/skill_checkpoint_size.py [expts/skill/ego.txt ...] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from egolab.checkpoints import frozen_fingerprint
from egolab.launch.txtfile import read_experiment
from egolab.paths import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ["expts/skill/ego.txt", "expts/skill/exos.txt", "expts/skill/egoexos.txt"]


def build_task(experiment: Path):
    """The experiment's SkillTask with a random-init backbone of the configured architecture."""
    overrides = [line.text for line in read_experiment(experiment)]
    extra = ["model.backbone.pretrained=null", "paths.data_root=/nonexistent"]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, *extra])
    torch.manual_seed(0)
    return instantiate(cfg.task)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiments", nargs="*", default=SETTINGS)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"{args.threads} thread(s); MB = 1e6 bytes; one file (a run writes last and best)")
    for experiment in args.experiments:
        task = build_task(ROOT / experiment)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            task.frozen_sha256 = frozen_fingerprint(task)
            times.append(time.perf_counter() - start)
        task.trainer = SimpleNamespace(estimated_stepping_batches=1)
        optimizer = task.configure_optimizers()["optimizer"]
        trained = [p for p in task.parameters() if p.requires_grad]
        for param in trained:
            param.grad = torch.zeros_like(param)
        optimizer.step()
        frozen_mb = sum(p.numel() * p.element_size() for p in task.parameters() if not p.requires_grad) / 1e6
        trained_mb = sum(p.numel() * p.element_size() for p in trained) / 1e6
        counts = f"{sum(p.numel() for p in trained):,} of {sum(p.numel() for p in task.parameters()):,}"
        checkpoint = {"state_dict": task.state_dict(), "optimizer_states": [optimizer.state_dict()]}
        with tempfile.TemporaryDirectory() as tmp:
            torch.save(checkpoint, Path(tmp) / "full.ckpt")
            task.on_save_checkpoint(checkpoint)
            torch.save(checkpoint, Path(tmp) / "trained.ckpt")
            full, kept = (Path(tmp, f"{name}.ckpt").stat().st_size / 1e6 for name in ("full", "trained"))
        print(
            f"{experiment}: {counts} params trained; full {full:.1f} MB (computed: frozen {frozen_mb:.1f} "
            f"+ 3 x trained {trained_mb:.1f}), trained-only {kept:.1f} MB, ratio {kept / full:.3f}; "
            f"fingerprint {min(times):.2f} s"
        )


if __name__ == "__main__":
    main()
