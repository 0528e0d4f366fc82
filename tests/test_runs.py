"""End-to-end runs of the localization demo through launch.py: learning (v1, and v2 as well as v1), resume
after a kill, -t, CPU DDP, the submitit paths, and lazy imports. Marked slow; CI runs them."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from interruptions import env_with_interruptions

from egolab.metrics.localization import score_predictions_file

ROOT = Path(__file__).resolve().parents[1]
DEMO = "expts/demo/localization.txt"
V2_DEMO = "expts/demo/localization_v2.txt"
V2_TOLERANCE = 0.03  # v2 may trail v1 by this much average mAP (seed noise of the demo)
SHORT = ["trainer.max_epochs=4", "task.warmup_epochs=1", "logger=csv", "data.num_workers=0"]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def localization_demo_run(demo_root, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, dict]:
    """The README's demo command (``launch.py -c expts/demo/localization.txt -l``), run once with one
    intra-op thread (fastest for the tiny model): its run folder, what it printed and its
    environment. Shared by the test that it learns and the v2-vs-v1 comparison, which need the same run."""
    outputs = tmp_path_factory.mktemp("localization_demo")
    env = dict(os.environ, EGOLAB_DEMO_DATA=str(demo_root), EGOLAB_OUTPUTS=str(outputs), OMP_NUM_THREADS="1")
    env.update(WANDB_MODE="offline", PYTHONUNBUFFERED="1")  # wandb not silenced: its lines are checked too
    proc = launch(["-c", DEMO, "-l"], env, timeout=1200)
    return outputs / DEMO / "0", proc, env


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


def test_demo_learns_and_writes_its_run_dir(localization_demo_run):
    """The README's demo command: average mAP (tIoU 0.3:0.7) well above chance on the test split."""
    run_dir, proc, env = localization_demo_run
    metrics = metrics_of(run_dir)
    assert metrics["test/average_mAP"] >= 0.8, metrics
    assert "test metrics" in proc.stdout
    console = proc.stdout + proc.stderr  # each line once, no warning a user cannot act on
    assert console.count("GPU available") == 1, console[:3000]
    for noise in ("LeafSpec", "module(s) in eval mode", "litlogger", "INFO: ", "\x1b["):
        assert noise not in console, noise  # captured output is a pipe: no colour codes, wandb's included
    assert "wandb: You can sync this run" in console
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

    tested = launch(["-c", DEMO, "-t"], env)
    assert "test metrics" in tested.stdout
    assert metrics_of(run_dir) == pytest.approx(metrics, abs=1e-6), "-t on last.ckpt must reproduce the run"


def test_v2_learns_the_demo_as_well_as_v1(egolab_env, localization_demo_run):
    """The v2 backbone, heads and neck (every v2 switch on): test mAP at least v1's (the session's run of
    the demo, one thread as here), same seed and settings, minus a small tolerance."""
    launch(["-c", V2_DEMO, "-l", "logger=csv", "trainer.enable_progress_bar=false"], egolab_env)
    v2 = metrics_of(run_dir_of(egolab_env, txt=V2_DEMO))
    v1 = metrics_of(localization_demo_run[0])
    print(f"v2 {v2}\nv1 {v1}")
    config = (run_dir_of(egolab_env, txt=V2_DEMO) / "config.yaml").read_text()
    assert "convTransformerv2" in config and "cs_fpn" in config
    assert v1["test/average_mAP"] >= 0.8, "v1 must learn for the comparison to mean anything"
    assert v2["test/average_mAP"] >= v1["test/average_mAP"] - V2_TOLERANCE


@pytest.fixture(scope="module")
def uninterrupted(demo_root, tmp_path_factory) -> dict:
    """Metrics of the SHORT demo run, never interrupted (one intra-op thread, as ``egolab_env``: the
    interrupted runs must compute the same sums in the same order)."""
    outputs = tmp_path_factory.mktemp("uninterrupted")
    env = dict(os.environ, EGOLAB_DEMO_DATA=str(demo_root), EGOLAB_OUTPUTS=str(outputs), WANDB_MODE="offline")
    env["OMP_NUM_THREADS"] = "1"
    launch(["-c", DEMO, "-l", *SHORT], env)
    return metrics_of(outputs / DEMO / "0")


@pytest.fixture
def callbacks_env(egolab_env) -> dict:
    return env_with_interruptions(egolab_env)


def test_killed_run_resumes_to_the_same_result(callbacks_env, uninterrupted):
    killed = launch(
        [
            "-c",
            DEMO,
            "-l",
            *SHORT,
            "+callbacks.kill._target_=interruptions.KillAtEpoch",
            "+callbacks.kill.epoch=2",
        ],
        callbacks_env,
        check=False,
    )
    assert killed.returncode != 0
    last = run_dir_of(callbacks_env) / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=False, map_location="cpu")["epoch"] == 1
    assert not (run_dir_of(callbacks_env) / "metrics.json").exists()

    launch(["-c", DEMO, "-l", *SHORT], callbacks_env)  # the same command: resumes from last.ckpt
    assert metrics_of(run_dir_of(callbacks_env)) == pytest.approx(uninterrupted, abs=1e-6)
    assert torch.load(last, weights_only=False, map_location="cpu")["epoch"] == 3


def test_sigterm_mid_epoch_saves_and_the_relaunch_ends_as_if_uninterrupted(callbacks_env, uninterrupted):
    """SIGTERM in batch 1 of epoch 1: last.ckpt saved after that batch, a one-line message, exit 143;
    the relaunch (with 2 DataLoader workers where the reference had none) resumes mid-epoch and ends with
    the uninterrupted metrics."""
    signal_at = ["+callbacks.kill._target_=interruptions.SignalAtBatch", "+callbacks.kill.epoch=1"]
    stopped = launch(
        ["-c", DEMO, "-l", *SHORT, *signal_at, "+callbacks.kill.batch=1", "+callbacks.kill.signum=15"],
        callbacks_env,
        check=False,
    )
    output = stopped.stdout + stopped.stderr
    assert stopped.returncode == 128 + 15, output[-3000:]
    assert "interrupted by SIGTERM; last.ckpt saved: relaunch the same command to resume" in output
    assert "Traceback" not in output
    run_dir = run_dir_of(callbacks_env)
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=False, map_location="cpu")
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]
    assert checkpoint["epoch"] == 1 and progress["processed"] == 2, "saved after batch 1 of epoch 1"
    assert not (run_dir / "metrics.json").exists()

    launch(["-c", DEMO, "-l", *SHORT, "data.num_workers=2"], callbacks_env)
    assert metrics_of(run_dir) == pytest.approx(uninterrupted, abs=1e-6)


def test_ctrl_c_on_launch_py_stops_training_with_a_checkpoint_and_no_traceback(egolab_env, uninterrupted):
    """SIGINT to launch.py (a terminal's Ctrl-C) once epoch 0 is saved: it is passed on to the training
    process, which saves last.ckpt and exits 130 without a traceback; launch.py exits 130 too."""
    proc = subprocess.Popen(
        [sys.executable, "launch.py", "-c", DEMO, "-l", *SHORT],
        cwd=ROOT,
        env=egolab_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    last = run_dir_of(egolab_env) / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 130, output[-3000:]
    assert "interrupted by SIGINT; last.ckpt saved" in output and "Traceback" not in output
    assert torch.load(last, weights_only=False, map_location="cpu")["global_step"] > 0
    launch(["-c", DEMO, "-l", *SHORT], egolab_env)
    assert metrics_of(run_dir_of(egolab_env)) == pytest.approx(uninterrupted, abs=1e-6)


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


def test_killed_launcher_stops_its_trainer_and_the_folder_keeps_its_configuration(egolab_env, uninterrupted):
    """SIGKILL launch.py while it trains: its training process gets SIGTERM (parent-death signal), saves
    and exits. A relaunch with another learning rate is refused, naming the key, without a traceback and
    without touching the folder; the same command resumes to the uninterrupted metrics; --restart archives
    the folder and trains the new setting."""
    proc = subprocess.Popen(
        [sys.executable, "launch.py", "-c", DEMO, "-l", *SHORT], cwd=ROOT, env=egolab_env, text=True
    )
    run_dir = run_dir_of(egolab_env)
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "last.ckpt").exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    trainer_pid = int((run_dir / ".lock").read_text().split()[1])
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 60
    while Path(f"/proc/{trainer_pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not Path(f"/proc/{trainer_pid}").exists(), "the training process outlived launch.py"
    assert not (run_dir / "metrics.json").exists()

    saved = (run_dir / "config.yaml").read_bytes()
    refused = launch(["-c", DEMO, "-l", *SHORT, "task.optimizer.lr=0.01"], egolab_env, check=False)
    output = refused.stdout + refused.stderr
    assert refused.returncode == 1 and "task.optimizer.lr: 0.001 -> 0.01" in output, output[-3000:]
    assert "--restart" in output and "Traceback" not in output
    assert (run_dir / "config.yaml").read_bytes() == saved

    launch(["-c", DEMO, "-l", *SHORT], egolab_env)
    assert metrics_of(run_dir) == pytest.approx(uninterrupted, abs=1e-6)

    launch(
        ["-c", DEMO, "-l", *SHORT, "task.optimizer.lr=0.01", "trainer.max_epochs=1", "--restart"], egolab_env
    )
    (archived,) = run_dir.parent.glob("0.archived-*")
    assert metrics_of(archived) == pytest.approx(uninterrupted, abs=1e-6)
    assert "lr: 0.01" in (run_dir / "config.yaml").read_text() and metrics_of(run_dir) != metrics_of(archived)
