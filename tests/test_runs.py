"""End-to-end runs of the localization demo through launch.py: learning, resume after a kill, -t,
CPU DDP, the submitit paths, and lazy imports. Marked slow; CI runs them."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

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

    tested = launch(["-c", DEMO, "-t"], egolab_env)
    assert "test metrics" in tested.stdout
    assert metrics_of(run_dir) == pytest.approx(metrics, abs=1e-6), "-t on last.ckpt must reproduce the run"


def test_killed_run_resumes_to_the_same_result(egolab_env, tmp_path):
    reference = dict(egolab_env, EGOLAB_OUTPUTS=str(tmp_path / "reference"))
    launch(["-c", DEMO, "-l", *SHORT], reference)
    expected = metrics_of(run_dir_of(reference))

    cmd = [sys.executable, "launch.py", "-c", DEMO, "-l", *SHORT]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=egolab_env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = run_dir_of(egolab_env) / "checkpoints" / "last.ckpt"
    deadline = time.time() + 600
    while time.time() < deadline:
        if last.is_file() and torch.load(last, weights_only=False, map_location="cpu")["epoch"] >= 1:
            break
        assert proc.poll() is None, "run ended before it could be killed"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir_of(egolab_env) / "metrics.json").exists()
    killed_at = torch.load(last, weights_only=False, map_location="cpu")["epoch"]
    assert killed_at < 3

    launch(["-c", DEMO, "-l", *SHORT], egolab_env)
    assert metrics_of(run_dir_of(egolab_env)) == pytest.approx(expected, abs=1e-6)


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
    launch(["-c", DEMO, "--submitit-local", *SHORT, "trainer.max_epochs=1", "--seeds", "0", "1"], egolab_env)
    for index in (0, 1):
        run_dir = run_dir_of(egolab_env, index)
        assert "test/average_mAP" in metrics_of(run_dir)
        assert f"seed: {index}" in (run_dir / "config.yaml").read_text()
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


def test_running_localization_imports_no_other_task_dependencies(egolab_env):
    code = (
        "import sys; from egolab.train import run_from_overrides; "
        "run_from_overrides(['task=localization','model=actionformer/demo','data=localization/demo',"
        "'trainer.fast_dev_run=true','data.num_workers=0','logger=csv'], sys.argv[1]); "
        "print('MODULES', sorted(sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(Path(egolab_env["EGOLAB_OUTPUTS"]) / "lazy")],
        cwd=ROOT,
        env=egolab_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    modules = out.stdout.split("MODULES", 1)[1]
    for heavy in (
        "transformers",
        "timm",
        "decord",
        "peft",
        "torch_geometric",
        "sentence_transformers",
        "lmdb",
    ):
        assert f"'{heavy}'" not in modules, f"{heavy} imported by a localization run"
