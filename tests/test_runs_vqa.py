"""End-to-end vqa (EgoCross) demo through launch.py: the tiny Qwen3-VL learns the four planted domains
(chance 0.25), its predictions re-score to its metrics, it writes the challenge submission, `-t` reloads
the checkpoint onto the rebuilt model with the same metrics, and no other task's libraries load."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from egolab.metrics.vqa import read_submission, score_predictions_file

ROOT = Path(__file__).resolve().parents[1]
DEMO = "expts/demo/vqa.txt"
DOMAINS = ("surgery", "industry", "xsports", "animal")

pytestmark = pytest.mark.slow


def launch(env: dict, *extra: str) -> None:
    cmd = [sys.executable, "launch.py", "-c", DEMO, *extra, "logger=csv", "trainer.enable_progress_bar=false"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]


def test_vqa_demo_learns_every_domain_and_reloads(egolab_env):
    launch(egolab_env, "-l")
    run_dir = Path(egolab_env["EGOLAB_OUTPUTS"]) / DEMO / "0"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    print({k: round(v, 3) for k, v in metrics.items()})
    assert metrics["test/accuracy"] > 0.5, metrics
    assert metrics["test/letter_accuracy"] > 0.5, metrics
    assert metrics["test/invalid_rate"] < 0.1, metrics
    assert {f"test/accuracy_{d}" for d in DOMAINS} <= set(metrics)
    rescored = score_predictions_file(run_dir / "predictions.json")
    assert rescored == pytest.approx({k.removeprefix("test/"): v for k, v in metrics.items()}, abs=1e-6)
    rows = read_submission(run_dir / "submission.json")
    assert len(rows) == 128 and {r["answer"] for r in rows} <= {"A", "B", "C", "D", ""}

    launch(egolab_env, "-t")
    tested = json.loads((run_dir / "metrics.json").read_text())
    assert tested == pytest.approx(metrics, abs=1e-6)


def test_vqa_run_imports_no_other_task_dependencies(egolab_env, modules_after):
    """A vqa run loads transformers' Qwen3-VL, and neither torch_geometric, decord, timm, lmdb nor
    sentence-transformers."""
    out = Path(egolab_env["EGOLAB_OUTPUTS"]) / "lazy"
    code = (
        "from egolab.train import run_from_overrides; "
        "run_from_overrides(['task=vqa','model=qwen_vl/demo','data=vqa/demo',"
        f"'trainer.fast_dev_run=true','logger=csv'], {str(out)!r})"
    )
    loaded = set(modules_after(code, egolab_env))
    assert "transformers.models.qwen3_vl.modeling_qwen3_vl" in loaded
    top = {name.split(".")[0] for name in loaded}
    for heavy in ("torch_geometric", "decord", "timm", "lmdb", "sentence_transformers"):
        assert heavy not in top, f"{heavy} imported by a vqa run"


def test_zero_shot_tests_the_model_as_built_without_fitting(egolab_env):
    """zero_shot=true: no training and no checkpoint; the untrained tiny model is scored (near chance)."""
    launch(egolab_env, "-g", "zero_shot=true", "data.domain=animal")
    run_dir = Path(egolab_env["EGOLAB_OUTPUTS"]) / DEMO / "debug" / "0"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics) >= {"test/accuracy", "test/accuracy_animal", "test/letter_accuracy"}
    assert metrics["test/letter_accuracy"] < 0.6, metrics
    assert not list(run_dir.rglob("*.ckpt"))
    assert len(json.loads((run_dir / "predictions.json").read_text())["results"]) == 32
