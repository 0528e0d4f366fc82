"""End-to-end runs of the skill demo through launch.py: it learns, writes predictions that re-score to its
metrics and a confusion matrix, and imports no other task's heavy libraries. Marked slow; CI runs them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from egolab.metrics.skill import score_predictions_file

ROOT = Path(__file__).resolve().parents[1]
DEMO = "expts/demo/skill.txt"

pytestmark = pytest.mark.slow


def test_skill_demo_learns_and_writes_its_run_dir(egolab_env):
    """The demo (4 balanced levels, chance 0.25) reaches more than twice chance on its test split."""
    proc = subprocess.run(
        [sys.executable, "launch.py", "-c", DEMO, "-l", "logger=csv", "trainer.enable_progress_bar=false"],
        cwd=ROOT,
        env=egolab_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    run_dir = Path(egolab_env["EGOLAB_OUTPUTS"]) / DEMO / "0"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test/accuracy"] >= 0.55, metrics
    assert {"test/accuracy_basketball", "test/accuracy_rock_climbing"} <= set(metrics)
    predictions = json.loads((run_dir / "predictions.json").read_text())
    assert predictions["version"] == "egolab-skill-1" and len(predictions["results"]) == 32
    rescored = score_predictions_file(run_dir / "predictions.json")
    assert rescored == pytest.approx({k.removeprefix("test/"): v for k, v in metrics.items()}, abs=1e-6)
    assert (run_dir / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()


def test_running_skill_imports_no_other_task_dependencies(egolab_env, modules_after):
    """A skill run adds none of the other tasks' heavy libraries to what Lightning itself loads."""

    baseline = modules_after("import lightning, torchmetrics", egolab_env)
    run_dir = Path(egolab_env["EGOLAB_OUTPUTS"]) / "lazy"
    code = (
        "from egolab.train import run_from_overrides; "
        "run_from_overrides(['task=skill','model=skillformer/demo','data=skill/demo',"
        f"'trainer.fast_dev_run=true','data.num_workers=0','logger=csv'], {str(run_dir)!r})"
    )
    added = {name.split(".")[0] for name in modules_after(code, egolab_env) - baseline}
    assert {"egolab", "peft", "decord"} <= added
    for heavy in ("lmdb", "timm", "sentence_transformers", "torch_geometric"):
        assert heavy not in added, f"{heavy} imported by a skill run"
