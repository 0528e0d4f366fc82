"""End-to-end anticipation demo through launch.py: it learns, writes its predictions; lazy imports. Slow."""

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from egolab.metrics.anticipation import score_predictions_file

ROOT = Path(__file__).resolve().parents[1]
DEMO = "expts/demo/anticipation.txt"
CHANCE_RECALL5 = 5 / 40  # 40 demo actions

pytestmark = pytest.mark.slow


def test_demo_learns_and_writes_predictions(egolab_env):
    """`launch.py -c expts/demo/anticipation.txt -l`: action Recall@5 well above chance on the test split."""
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "launch.py", "-c", DEMO, "-l", "logger=csv", "trainer.enable_progress_bar=false"],
        cwd=ROOT, env=egolab_env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    run_dir = Path(egolab_env["EGOLAB_OUTPUTS"]) / DEMO / "0"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    print(f"demo run {time.perf_counter() - start:.1f} s:", {k: round(v, 3) for k, v in metrics.items()})
    assert metrics["test/action_recall5"] >= 3 * CHANCE_RECALL5, metrics
    assert metrics["test/verb_recall5"] > 0.5 and metrics["test/noun_recall5"] > 0.5, metrics
    for name in ("action_recall5_unseen", "action_recall5_tail", "action_top1", "action_top5"):
        assert 0.0 <= metrics[f"test/{name}"] <= 1.0, name

    path = run_dir / "predictions.npz"
    with np.load(path, allow_pickle=False) as data:
        assert data["action_logits"].shape == (120, 40) and len(set(data["uid"].tolist())) == 120
        assert data["unseen"].sum() == 60  # P04_01 of the test split
    recomputed = score_predictions_file(path)
    assert {f"test/{k}": v for k, v in recomputed.items()} == pytest.approx(metrics, abs=1e-6)


def test_anticipation_run_imports_no_other_task_dependencies(egolab_env, modules_after):
    """A feature-path anticipation run loads neither decord, timm (frame path), peft nor torch_geometric."""
    run_dir = Path(egolab_env["EGOLAB_OUTPUTS"]) / "lazy"
    code = (
        "from egolab.train import run_from_overrides; "
        "run_from_overrides(['task=anticipation','model=sgear/demo','data=anticipation/demo',"
        f"'trainer.fast_dev_run=true','logger=csv'], {str(run_dir)!r})"
    )
    modules_after(code, egolab_env)  # generates the demo first: its MiniLM prototypes load timm on their own
    loaded = {name.split(".")[0] for name in modules_after(code, egolab_env)}
    assert "lmdb" in loaded and "egolab" in loaded
    for heavy in ("decord", "timm", "peft", "torch_geometric"):
        assert heavy not in loaded, f"{heavy} imported by an anticipation run"
