"""End-to-end runs of the localization demo through launch.py: learning, resume after a kill, -t,
CPU DDP, the submitit paths, and lazy imports. Marked slow; CI runs them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from egolab.metrics.localization import score_predictions_file

ROOT = Path(__file__).resolve().parents[1]
DEMO = "expts/demo/localization.txt"
SHORT = ["trainer.max_epochs=4", "task.warmup_epochs=1", "logger=csv", "data.num_workers=0"]

pytestmark = pytest.mark.slow


def launch(args, env, timeout=900, check=True):
    proc = subprocess.run(
        [sys.executable, "launch.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def metrics_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def run_dir_of(env, index=0, txt=DEMO) -> Path:
    return Path(env["EGOLAB_OUTPUTS"]) / txt / str(index)


def test_demo_learns_and_writes_its_run_dir(egolab_env):
    """The README's demo command: average mAP (tIoU 0.3:0.7) well above chance on the test split."""
    proc = launch(["-c", DEMO, "-l"], egolab_env)
    run_dir = run_dir_of(egolab_env)
    metrics = metrics_of(run_dir)
    assert metrics["test/average_mAP"] >= 0.8, metrics
    assert "test metrics" in proc.stdout
    for name in (
        "config.yaml",
        "checkpoints/last.ckpt",
        "checkpoints/best.ckpt",
        "wandb_id.txt",
        "predictions.json",
    ):
        assert (run_dir / name).is_file(), name
    assert any((run_dir / "csv").glob("metrics.csv")) and any((run_dir / "tensorboard").iterdir())
    predictions = json.loads((run_dir / "predictions.json").read_text())
    assert len(predictions["results"]) == 32
    segment = next(iter(predictions["results"].values()))[0]
    assert set(segment) >= {"segment", "score", "label", "label_id"}
    rescored = score_predictions_file(run_dir / "predictions.json")  # what late fusion relies on
    assert {f"test/{k}": v for k, v in rescored.items()} == pytest.approx(metrics, abs=1e-6)

    tested = launch(["-c", DEMO, "-t"], egolab_env)
    assert "test metrics" in tested.stdout
    assert metrics_of(run_dir) == pytest.approx(metrics, abs=1e-6), "-t on last.ckpt must reproduce the run"


KILLER = """
import os, signal
import lightning as L


class KillAtEpoch(L.Callback):
    \"\"\"SIGKILL this process when an epoch starts: a crash at a known point, after a checkpoint.\"\"\"

    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)
"""


def test_killed_run_resumes_to_the_same_result(egolab_env, tmp_path):
    reference = dict(egolab_env, EGOLAB_OUTPUTS=str(tmp_path / "reference"))
    launch(["-c", DEMO, "-l", *SHORT], reference)
    expected = metrics_of(run_dir_of(reference))

    (tmp_path / "killer.py").write_text(KILLER)
    crashing = dict(egolab_env, PYTHONPATH=str(tmp_path))
    killed = launch(
        ["-c", DEMO, "-l", *SHORT, "+callbacks.kill._target_=killer.KillAtEpoch", "+callbacks.kill.epoch=2"],
        crashing,
        check=False,
    )
    assert killed.returncode != 0
    last = run_dir_of(egolab_env) / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False, map_location="cpu")["epoch"] == 1
    assert not (run_dir_of(egolab_env) / "metrics.json").exists()

    launch(["-c", DEMO, "-l", *SHORT], egolab_env)  # the same command: resumes from last.ckpt
    assert metrics_of(run_dir_of(egolab_env)) == pytest.approx(expected, abs=1e-6)
    assert torch.load(last, weights_only=False, map_location="cpu")["epoch"] == 3


def test_cpu_ddp_two_processes(egolab_env):
    launch(["-c", DEMO, "-l", *SHORT, "trainer=ddp_cpu", "trainer.max_epochs=2"], egolab_env)
    run_dir = run_dir_of(egolab_env)
    metrics = metrics_of(run_dir)
    assert 0.0 <= metrics["test/average_mAP"] <= 1.0
    config = (run_dir / "config.yaml").read_text()
    assert "devices: 2" in config and "strategy: ddp" in config
    predictions = json.loads((run_dir / "predictions.json").read_text())
    assert len(predictions["results"]) == 32, "both ranks' predictions gathered, duplicates dropped"


def test_submitit_local_launcher(egolab_env):
    # submitit's local executor starts all jobs of a sweep at once: one job keeps this 2-core test fast.
    launch(["-c", DEMO, "--submitit-local", *SHORT, "trainer.max_epochs=1", "--seeds", "3"], egolab_env)
    run_dir = run_dir_of(egolab_env, 0)
    assert "test/average_mAP" in metrics_of(run_dir)
    assert "seed: 3" in (run_dir / "config.yaml").read_text()
    assert any((Path(egolab_env["EGOLAB_OUTPUTS"]) / DEMO / ".submitit").rglob("*_log.out"))


def test_submitit_debug_executor_runs_in_process(egolab_env, tmp_path, monkeypatch):
    import submitit

    from egolab.train import run_from_overrides

    monkeypatch.setenv("EGOLAB_DEMO_DATA", egolab_env["EGOLAB_DEMO_DATA"])
    monkeypatch.setenv("WANDB_MODE", "offline")
    overrides = [
        "task=localization",
        "model=actionformer/demo",
        "data=localization/demo",
        *SHORT,
        "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false",
    ]
    executor = submitit.DebugExecutor(folder=str(tmp_path / "submitit"))
    job = executor.submit(run_from_overrides, overrides, tmp_path / "run")
    metrics = job.result()
    assert metrics == metrics_of(tmp_path / "run")


def test_running_localization_imports_no_other_task_dependencies(egolab_env, modules_after):
    """A localization run adds none of the other tasks' heavy libraries to what Lightning itself loads.

    (Lightning imports torchmetrics, which imports transformers on its own when it is installed.)
    """
    baseline = modules_after("import lightning, torchmetrics", egolab_env)
    run_dir = Path(egolab_env["EGOLAB_OUTPUTS"]) / "lazy"
    code = (
        "from egolab.train import run_from_overrides; "
        "run_from_overrides(['task=localization','model=actionformer/demo','data=localization/demo',"
        f"'trainer.fast_dev_run=true','data.num_workers=0','logger=csv'], {str(run_dir)!r})"
    )
    added = {name.split(".")[0] for name in modules_after(code, egolab_env) - baseline}
    for heavy in (
        "transformers",
        "timm",
        "decord",
        "peft",
        "torch_geometric",
        "sentence_transformers",
        "lmdb",
    ):
        assert heavy not in added, f"{heavy} imported by a localization run"
    assert "egolab" in added
