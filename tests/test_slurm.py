"""launch.py on a real one-node SLURM cluster (scripts/slurm_dev_cluster.sh; .ci/run starts it).

A 2-seed job array, and a job requeued by `scontrol requeue` in the middle of training: each ends with
SLURM state COMPLETED, launch.py exiting 0, and the requeued run's metrics equal to the uninterrupted
run's. Skipped, with the reason, where no cluster answers (no root or apt to start one).
"""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "expts/demo/localization.txt"
# A short CPU run: 1 task, 1 CPU, 2 GB, 2 epochs of the localization demo.
RESOURCES = ["--cluster", "--gpus", "0", "--cpus", "1", "--mem-gb", "2"]
SETTINGS = ["trainer.max_epochs=2", "logger=csv"]
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED"}

pytestmark = pytest.mark.slow


def _cluster_problem() -> str | None:
    """Why no SLURM cluster can be used here, or None."""
    if shutil.which("sbatch") is None or shutil.which("sacct") is None:
        return "no SLURM client (start one with scripts/slurm_dev_cluster.sh start, as root)"
    state = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True).stdout.split()
    if not set(state) & {"idle", "mixed", "allocated"}:
        return f"no SLURM node is up (sinfo: {state or 'no answer'})"
    if subprocess.run(["sacct", "-n", "-X", "-S", "now"], capture_output=True).returncode != 0:
        return "SLURM accounting (sacct) is not available"
    return None


@pytest.fixture(scope="module")
def slurm_env(demo_root, tmp_path_factory) -> dict:
    problem = _cluster_problem()
    if problem:
        pytest.skip(problem)
    env = dict(os.environ)
    env.update(
        EGOLAB_DEMO_DATA=str(demo_root),
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def launch(env: dict, outputs: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "launch.py", "-c", EXPERIMENT, *RESOURCES, "--outputs", str(outputs), *args]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def job_ids(exp_dir: Path) -> list[str]:
    """The SLURM job ids submitit used for an experiment (its `.submitit/<id>` folders)."""
    return sorted(p.name for p in (exp_dir / ".submitit").iterdir() if p.is_dir())


def final_states(job_id: str, timeout_s: float = 60) -> list[str]:
    """Every accounting record of a job (requeued attempts included, in order), once the last finished."""
    deadline = time.monotonic() + timeout_s
    while True:
        out = subprocess.run(
            ["sacct", "-n", "-X", "-D", "-P", "-o", "State", "-j", job_id], capture_output=True, text=True
        ).stdout
        states = [line.split()[0] for line in out.splitlines() if line.strip()]
        if (states and states[-1] in FINISHED) or time.monotonic() > deadline:
            return states
        time.sleep(1)


@pytest.fixture(scope="module")
def array_run(slurm_env, tmp_path_factory) -> tuple[Path, str]:
    """Seeds 0 and 1 as one SLURM job array, uninterrupted: the experiment folder and launch.py's output."""
    outputs = tmp_path_factory.mktemp("slurm_array")
    proc = launch(slurm_env, outputs, "--seeds", "0", "1", *SETTINGS)
    log, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, log[-4000:]
    return outputs / EXPERIMENT, log


@pytest.fixture(scope="module")
def seed_array(array_run) -> Path:
    return array_run[0]


def test_seed_array_completes(seed_array, array_run):
    assert "test metrics (run 1)" in array_run[1] and "test/average_mAP" in array_run[1], "no metrics table"
    (array_id,) = {job.split("_")[0] for job in job_ids(seed_array)}
    for task in ("0", "1"):
        assert final_states(f"{array_id}_{task}") == ["COMPLETED"]
    metrics = [json.loads((seed_array / seed / "metrics.json").read_text()) for seed in ("0", "1")]
    assert metrics[0]["test/average_mAP"] != metrics[1]["test/average_mAP"], "two seeds, two results"


def test_requeue_mid_training_completes_with_the_uninterrupted_metrics(seed_array, slurm_env, tmp_path):
    """`scontrol requeue` while training (after the first epoch's checkpoint): SLURM requeues the job,
    the killed attempt reports nothing, launch.py waits for the final attempt and exits 0."""
    proc = launch(slurm_env, tmp_path, "seed=0", *SETTINGS)
    exp_dir = tmp_path / EXPERIMENT
    checkpoint = exp_dir / "0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists():
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.5)
    (job_id,) = job_ids(exp_dir)
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    log, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, log[-4000:]
    states = final_states(job_id)
    assert states[0] == "REQUEUED" and states[-1] == "COMPLETED", states
    resumed = json.loads((exp_dir / "0" / "metrics.json").read_text())
    uninterrupted = json.loads((seed_array / "0" / "metrics.json").read_text())
    assert resumed == uninterrupted


def test_a_waiting_job_is_reported_with_slurms_reason(slurm_env, tmp_path):
    """While the node's CPUs are taken, launch.py says the job is PENDING and why."""
    cpus = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True).stdout.split()[0]
    blocker = subprocess.run(
        ["sbatch", "--parsable", "-c", cpus, "-o", "/dev/null", "--wrap", "sleep 300"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    proc = launch({**slurm_env, "EGOLAB_SLURM_POLL_S": "1"}, tmp_path, "seed=0", *SETTINGS)
    try:
        deadline, seen = time.monotonic() + 120, []
        for line in proc.stdout:
            seen.append(line)
            if "PENDING (Resources)" in line or time.monotonic() > deadline:
                break
        assert any("launch: SLURM job" in line and "PENDING (Resources)" in line for line in seen), seen[-20:]
    finally:
        subprocess.run(["scancel", blocker, *job_ids(tmp_path / EXPERIMENT)])
        proc.kill()
        proc.communicate()
