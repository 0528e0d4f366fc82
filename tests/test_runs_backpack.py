"""End-to-end backpack (EgoPack) demo through launch.py: phase 1 learns its three tasks, phase 2 on a
64-window AR training set beats AR trained alone, predictions re-score, `-t` reloads the backpack from
the run's own checkpoint, an interrupted phase 1 resumes exactly, and a run imports no other task's heavy
libraries. Slow."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from interruptions import env_with_interruptions

from egolab.metrics.backpack import lta_metrics, pnr_metrics, read_predictions, score_predictions_file

ROOT = Path(__file__).resolve().parents[1]
MTL = "expts/demo/backpack_mtl.txt"
EGOPACK = "expts/demo/backpack_egopack.txt"
ALONE = "expts/demo/backpack_ar_alone.txt"
CHANCE_VERB = 1 / 8  # 8 demo verbs

pytestmark = pytest.mark.slow


def launch(txt: str, env: dict, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "launch.py", "-c", txt, *extra, "logger=csv", "trainer.enable_progress_bar=false"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def run_dir(env: dict, txt: str) -> Path:
    return Path(env["EGOLAB_OUTPUTS"]) / txt / "0"


def metrics_of(env: dict, txt: str) -> dict:
    return json.loads((run_dir(env, txt) / "metrics.json").read_text())


def chance_levels(predictions: Path) -> dict[str, float]:
    """What guessing gives on the same samples: uniform LTA sequences, the PNR window's centre."""
    arrays = read_predictions(predictions)
    rng = np.random.default_rng(0)
    verb_samples = rng.integers(0, 8, size=arrays["lta_verb_samples"].shape)
    noun_samples = rng.integers(0, 12, size=arrays["lta_noun_samples"].shape)
    lta = lta_metrics(verb_samples, noun_samples, arrays["lta_verb_label"], arrays["lta_noun_label"])
    centre = np.zeros_like(arrays["pnr_logits"])
    centre[:, centre.shape[1] // 2] = 1.0
    pnr = pnr_metrics(centre, arrays["pnr_start_frame"], arrays["pnr_end_frame"], arrays["pnr_frame"])
    return {**lta, **pnr}


def test_phase1_learns_then_phase2_beats_the_single_task_baseline(egolab_env):
    launch(MTL, egolab_env, "-l")
    mtl = metrics_of(egolab_env, MTL)
    predictions = run_dir(egolab_env, MTL) / "predictions.npz"
    chance = chance_levels(predictions)
    print("phase 1:", {k: round(v, 3) for k, v in mtl.items()}, "chance:", chance)
    assert mtl["test/oscc_accuracy"] >= 0.8, mtl  # balanced classes: chance 0.5
    assert mtl["test/lta_verb_ed"] <= chance["lta_verb_ed"] - 0.1, (mtl, chance)
    assert mtl["test/lta_noun_ed"] <= chance["lta_noun_ed"] - 0.1, (mtl, chance)
    assert mtl["test/pnr_error_s"] <= 0.6 * chance["pnr_error_s"], (mtl, chance)
    assert {f"test/{k}": v for k, v in score_predictions_file(predictions).items()}.items() <= {
        k: pytest.approx(v, abs=1e-6) for k, v in mtl.items()
    }.items()

    proc = launch(EGOPACK, egolab_env, "-l")
    assert "backpack: 16 seen actions x 3 support tasks" in proc.stdout + proc.stderr
    assert "is deprecated" not in proc.stdout + proc.stderr  # torch_geometric's import-time warning
    egopack = metrics_of(egolab_env, EGOPACK)
    launch(ALONE, egolab_env, "-l")
    alone = metrics_of(egolab_env, ALONE)
    print("phase 2:", egopack, "AR alone:", alone)
    assert egopack["test/ar_verb_top1"] >= 3 * CHANCE_VERB, egopack
    for space in ("verb", "noun"):
        assert egopack[f"test/ar_{space}_top1"] >= alone[f"test/ar_{space}_top1"] + 0.1, (egopack, alone)

    # -t rebuilds phase 2 from its own checkpoint (prototype buffers resized on load): the same metrics
    launch(EGOPACK, egolab_env, "-t")
    tested = metrics_of(egolab_env, EGOPACK)
    assert tested == pytest.approx(egopack, abs=1e-6)
    rescored = score_predictions_file(run_dir(egolab_env, EGOPACK) / "predictions.npz")
    for name, value in rescored.items():
        assert egopack[f"test/{name}"] == pytest.approx(value, abs=1e-6), name


def test_interrupted_phase1_resumes_to_the_uninterrupted_result(egolab_env, tmp_path):
    """Phase 1 cycles its shorter task loaders within an epoch (per epoch: LTA 72 batches, OSCC 12, PNR 6).
    SIGTERM in batch 11 of epoch 0 (saved after it: OSCC and PNR both at the end of a pass) and SIGKILL as
    epoch 1 starts (resumed from the epoch-end checkpoint): each relaunch ends with the metrics of the run
    never interrupted."""
    short = ["trainer.max_epochs=2"]
    env = env_with_interruptions(egolab_env)
    reference = dict(env, EGOLAB_OUTPUTS=str(tmp_path / "reference"))
    launch(MTL, reference, "-l", *short)
    expected = metrics_of(reference, MTL)
    stops = {
        "sigterm": ["+callbacks.kill._target_=interruptions.SignalAtBatch", "+callbacks.kill.epoch=0"]
        + ["+callbacks.kill.batch=11", "+callbacks.kill.signum=15"],
        "sigkill": ["+callbacks.kill._target_=interruptions.KillAtEpoch", "+callbacks.kill.epoch=1"],
    }
    for name, stop in stops.items():
        run_env = dict(env, EGOLAB_OUTPUTS=str(tmp_path / name))
        cmd = [sys.executable, "launch.py", "-c", MTL, "-l", *short, *stop, "logger=csv"]
        stopped = subprocess.run(cmd, cwd=ROOT, env=run_env, capture_output=True, text=True, timeout=900)
        assert stopped.returncode != 0 and (run_dir(run_env, MTL) / "checkpoints" / "last.ckpt").is_file()
        assert not (run_dir(run_env, MTL) / "metrics.json").exists(), name
        launch(MTL, run_env, "-l", *short)
        assert metrics_of(run_env, MTL) == pytest.approx(expected, abs=1e-6), name


def test_phase2_without_its_support_run_says_what_to_run(egolab_env):
    cmd = [sys.executable, "launch.py", "-c", EGOPACK, "-g", "trainer.fast_dev_run=true", "logger=csv"]
    proc = subprocess.run(cmd, cwd=ROOT, env=egolab_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert f"run `python launch.py -c {MTL} -l` first" in proc.stdout + proc.stderr


def test_backpack_run_imports_no_other_task_dependencies(egolab_env, modules_after):
    """A backpack run loads torch_geometric, and neither decord, timm, peft, lmdb nor sentence-transformers.

    (transformers itself comes in with Lightning, through torchmetrics, in every task's run.)
    """
    out = Path(egolab_env["EGOLAB_OUTPUTS"]) / "lazy"
    code = (
        "from egolab.train import run_from_overrides; "
        "run_from_overrides(['task=backpack','model=egopack/demo','data=backpack/demo',"
        f"'task.tasks=[ar,oscc]','trainer.fast_dev_run=true','logger=csv'], {str(out)!r})"
    )
    loaded = {name.split(".")[0] for name in modules_after(code, egolab_env)}
    assert "torch_geometric" in loaded and "editdistance" in loaded
    for heavy in ("decord", "timm", "peft", "lmdb", "sentence_transformers"):
        assert heavy not in loaded, f"{heavy} imported by a backpack run"
