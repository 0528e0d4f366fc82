"""A 3-seed W&B sweep of the anticipation demo run offline: seed summary, late fusion checked by hand,
and both notebooks executed headless on its outputs. Marked slow; CI runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
import yaml
from nbclient import NotebookClient

from egolab.fusion.core import fuse_runs
from egolab.results import seed_summary

ROOT = Path(__file__).resolve().parents[1]
DEMO = "expts/demo/anticipation.txt"
SHORT = ["trainer.max_epochs=6", "logger=csv", "data.num_workers=0", "trainer.enable_progress_bar=false"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep(demo_root, tmp_path_factory):
    """Run `launch.py -c DEMO --seeds 0 1 2 --wandb-sweep` (no W&B key: the offline sweeps engine)."""
    outputs = tmp_path_factory.mktemp("sweep_outputs")
    env = dict(os.environ, EGOLAB_DEMO_DATA=str(demo_root), EGOLAB_OUTPUTS=str(outputs), WANDB_MODE="offline")
    env.pop("WANDB_API_KEY", None)
    cmd = [sys.executable, "launch.py", "-c", DEMO, "--seeds", "0", "1", "2", "--wandb-sweep", *SHORT]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "3 of 3 runs succeeded" in proc.stderr
    return env, outputs / DEMO, proc


def test_each_seed_is_one_run_and_the_summary_matches_them(sweep):
    _, experiment, proc = sweep
    config = yaml.safe_load((experiment / "sweep.yaml").read_text())
    assert config["parameters"] == {"seed": {"values": [0, 1, 2]}}
    metrics = []
    for index in range(3):
        run = experiment / str(index)
        assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == index
        assert yaml.safe_load((run / "csv" / "hparams.yaml").read_text())["seed"] == index  # logged config
        metrics.append(json.loads((run / "metrics.json").read_text()))
    assert len({m["test/action_recall5"] for m in metrics}) > 1, "the seeds should change the runs"
    summary = seed_summary(experiment).set_index("metric")
    assert set(summary.index) == set(metrics[0])
    for key in metrics[0]:
        values = np.array([m[key] for m in metrics])
        assert summary.loc[key, "mean"] == pytest.approx(values.mean(), nan_ok=True)
        assert summary.loc[key, "std"] == pytest.approx(values.std(ddof=1), nan_ok=True)
        assert summary.loc[key, "n"] == 3
    assert "test metrics over seeds" in proc.stdout


def class_mean_recall_at_5(scores, labels):
    """By hand: for each class present, the share of its samples with the class in the top 5; mean."""
    recalls = []
    for c in sorted(set(labels.tolist())):
        rows = np.flatnonzero(labels == c)
        hits = [c in np.argsort(-scores[r], kind="stable")[:5] for r in rows]
        recalls.append(np.mean(hits))
    return float(np.mean(recalls))


def test_late_fusion_of_two_seeds_equals_the_hand_computation(sweep):
    _, experiment, _ = sweep
    result = fuse_runs([experiment / "0", experiment / "1"], [0.7, 0.3], out=experiment / "fused.npz")
    runs = [np.load(experiment / str(i) / "predictions.npz") for i in (0, 1)]
    order = [np.argsort(run["uid"]) for run in runs]
    assert (runs[0]["uid"][order[0]] == runs[1]["uid"][order[1]]).all()
    labels = runs[0]["action_label"][order[0]]
    fused = 0.7 * runs[0]["action_logits"][order[0]] + 0.3 * runs[1]["action_logits"][order[1]]
    assert result.metrics["action_recall5"] == pytest.approx(class_mean_recall_at_5(fused, labels), abs=1e-9)
    verbs = 0.7 * runs[0]["verb_scores"][order[0]] + 0.3 * runs[1]["verb_scores"][order[1]]
    verb_labels = runs[0]["verb_label"][order[0]]
    assert result.metrics["verb_recall5"] == pytest.approx(
        class_mean_recall_at_5(verbs, verb_labels), abs=1e-9
    )
    for run, metrics in result.inputs.items():  # the run logged its metrics as float32
        logged = json.loads((Path(run).parent / "metrics.json").read_text())
        assert metrics["action_recall5"] == pytest.approx(logged["test/action_recall5"], abs=1e-6)


@pytest.mark.parametrize("name", ["seed_summary.ipynb", "late_fusion.ipynb"])
def test_notebook_runs_top_to_bottom(sweep, name, monkeypatch):
    env, experiment, _ = sweep
    for key in ("EGOLAB_OUTPUTS", "EGOLAB_DEMO_DATA"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.setenv("EGOLAB_NB_EXPERIMENT", DEMO)
    notebook = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    resources = {"metadata": {"path": str(ROOT / "notebooks")}}
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources=resources).execute()
    errors = [
        o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors
    png = (
        experiment / "seed_summary.png"
        if name == "seed_summary.ipynb"
        else experiment / "0" / "late_fusion.png"
    )
    assert png.is_file() and png.stat().st_size > 1000
