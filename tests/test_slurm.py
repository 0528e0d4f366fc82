"""launch.py on a real one-node SLURM cluster (scripts/slurm_dev_cluster.sh; .ci/run starts it).

A 2-seed job array; a job requeued by `scontrol requeue` in the middle of training; a job that gets
SLURM's preemption signal (USR2) in its first epoch; a job preempted by its time limit: each ends with
SLURM state COMPLETED, launch.py exiting 0, and the interrupted runs' metrics equal to the uninterrupted
run's. Skipped, with the reason, where no cluster answers (no root or apt to start one).
"""

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "expts/demo/localization.txt"
# A short CPU run: 1 task, 1 CPU, 2 GB, 2 epochs of the localization demo.
RESOURCES = ["--cluster", "--gpus", "0", "--cpus", "1", "--mem-gb", "2"]
SETTINGS = ["trainer.max_epochs=2", "logger=csv"]
FINISHED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED"}

pytestmark = pytest.mark.slow

HELPERS = """
import time
from pathlib import Path

import lightning as L


class SlowBatches(L.Callback):
    \"\"\"Sleep before every training batch: a run long enough to meet its time limit.\"\"\"

    def __init__(self, seconds):
        self.seconds = seconds

    def on_train_batch_start(self, *args):
        time.sleep(self.seconds)


class WaitForPreemption(L.Callback):
    \"\"\"Before batch 1 of epoch 0, once: write ``marker`` and wait (up to 120 s) for a signal.\"\"\"

    def __init__(self, marker):
        self.marker = Path(marker)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if (trainer.current_epoch, batch_idx) != (0, 1) or self.marker.exists():
            return
        (handler,) = [c for c in trainer.callbacks if type(c).__name__ == "SignalCheckpoint"]
        self.marker.write_text("waiting")
        deadline = time.monotonic() + 120
        while not handler._received and time.monotonic() < deadline:
            time.sleep(0.1)
"""


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
    helpers = tmp_path_factory.mktemp("helpers")
    (helpers / "slurm_helpers.py").write_text(HELPERS)
    env.update(
        PYTHONPATH=str(helpers),
        EGOLAB_DEMO_DATA=str(demo_root),
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


def launch(env: dict, outputs: Path, *args: str, resources: tuple = ()) -> subprocess.Popen:
    cmd = [sys.executable, "launch.py", "-c", EXPERIMENT, *RESOURCES, *resources, "--outputs", str(outputs)]
    cmd += args
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


def wait_for(path: Path, proc: subprocess.Popen, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0][-4000:]
        assert time.monotonic() < deadline, f"no {path} after {timeout_s} s"
        time.sleep(0.5)


def assert_completed_as_uninterrupted(proc, exp_dir: Path, job_id: str, seed_array: Path) -> list[str]:
    """launch.py exits 0, the job was requeued and then COMPLETED, the metrics are the uninterrupted run's;
    the job's accounting records."""
    log, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, log[-4000:]
    states = final_states(job_id)
    assert states[0] == "REQUEUED" and states[-1] == "COMPLETED", states
    resumed = json.loads((exp_dir / "0" / "metrics.json").read_text())
    uninterrupted = json.loads((seed_array / "0" / "metrics.json").read_text())
    assert resumed == uninterrupted
    return states


def test_requeue_mid_training_completes_with_the_uninterrupted_metrics(seed_array, slurm_env, tmp_path):
    """`scontrol requeue` while training (after the first epoch's checkpoint): SLURM requeues the job,
    the killed attempt reports nothing, launch.py waits for the final attempt and exits 0. A half-written
    submitit result left by a killed attempt (0 bytes) does not fail the final one."""
    proc = launch(slurm_env, tmp_path, "seed=0", *SETTINGS)
    exp_dir = tmp_path / EXPERIMENT
    wait_for(exp_dir / "0" / "checkpoints" / "last.ckpt", proc)
    (job_id,) = job_ids(exp_dir)
    (exp_dir / ".submitit" / job_id / f"{job_id}_0_result.pkl.save_tmp").write_bytes(b"")
    subprocess.run(["scontrol", "requeue", job_id], check=True)
    assert_completed_as_uninterrupted(proc, exp_dir, job_id, seed_array)


def test_usr2_in_the_first_epoch_saves_and_completes_with_the_uninterrupted_metrics(
    seed_array, slurm_env, tmp_path
):
    """SLURM's preemption signal to every process of the job (DataLoader workers included) during epoch 0:
    the run saves last.ckpt after that batch, submitit requeues, the next attempt resumes mid-epoch."""
    marker = tmp_path / "in_epoch_0"
    waiting = ["+callbacks.wait._target_=slurm_helpers.WaitForPreemption", f"+callbacks.wait.marker={marker}"]
    proc = launch(slurm_env, tmp_path, "seed=0", *SETTINGS, *waiting)
    exp_dir = tmp_path / EXPERIMENT
    wait_for(marker, proc)
    (job_id,) = job_ids(exp_dir)
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True)
    assert_completed_as_uninterrupted(proc, exp_dir, job_id, seed_array)


def test_time_limit_preemption_completes_with_the_uninterrupted_metrics(seed_array, slurm_env, tmp_path):
    """A 2-minute time limit with the preemption signal 30 s before it, on a run of about 100 s of
    training (2 s per batch): SLURM signals the first attempt 60-90 s in (it checks every 30 s), while it
    trains; the run saves after the batch, submitit requeues it, and the next attempt finishes it."""
    slow = ["+callbacks.slow._target_=slurm_helpers.SlowBatches", "+callbacks.slow.seconds=2.0"]
    proc = launch(
        slurm_env,
        tmp_path,
        "seed=0",
        *SETTINGS,
        *slow,
        "hydra.launcher.signal_delay_s=30",
        resources=("--timeout-min", "2"),
    )
    exp_dir = tmp_path / EXPERIMENT
    wait_for(exp_dir / ".submitit", proc)
    deadline = time.monotonic() + 60
    while not job_ids(exp_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    (job_id,) = job_ids(exp_dir)
    states = assert_completed_as_uninterrupted(proc, exp_dir, job_id, seed_array)
    print(f"time-limit preemption: SLURM records {states}")


EXTRACT = "expts/extract/thumos_videomae.txt"
TINY_EXTRACTION = ["model=extract/tiny_random", "task.batch_size=4", "logger=csv"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Three short synthetic videos (mp4, 30 fps): clips of 16 frames every 4 give 4, 6 and 8 features."""
    from egolab.data.demo_skill import write_video

    folder = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    for name, frames in (("a", 28), ("b", 36), ("c", 44)):
        write_video(folder / f"{name}.mp4", rng.integers(0, 255, (frames, 32, 32, 3), dtype=np.uint8))
    return folder


def extracted(out_dir: Path) -> dict[str, np.ndarray]:
    return {p.stem: np.load(p) for p in sorted(out_dir.glob("*.npy"))}


def test_an_extraction_sharded_over_a_job_array_writes_what_one_local_run_writes(slurm_env, videos, tmp_path):
    """The README's path: a sweep data.shard=0/2,1/2 with --cluster is one job array of two tasks; together
    they write every video's features, equal to an unsharded local run's."""
    where = [f"data.video_dir={videos}", *TINY_EXTRACTION]
    local = subprocess.run(
        [sys.executable, "launch.py", "-c", EXTRACT, "-l", "--outputs", str(tmp_path / "local"), *where]
        + [f"data.out_dir={tmp_path / 'local_features'}"],
        cwd=ROOT,
        env=slurm_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert local.returncode == 0, local.stdout[-3000:] + local.stderr[-3000:]
    cmd = [
        sys.executable,
        "launch.py",
        "-c",
        EXTRACT,
        *RESOURCES,
        "--outputs",
        str(tmp_path / "array"),
        *where,
    ]
    cmd += [f"data.out_dir={tmp_path / 'array_features'}", "data.shard=0/2,1/2"]
    proc = subprocess.run(cmd, cwd=ROOT, env=slurm_env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (array_id,) = {job.split("_")[0] for job in job_ids(tmp_path / "array" / EXTRACT)}
    assert [final_states(f"{array_id}_{task}") for task in "01"] == [["COMPLETED"], ["COMPLETED"]]
    done = [json.loads((tmp_path / "array" / EXTRACT / i / "metrics.json").read_text()) for i in "01"]
    assert [d["videos_done"] for d in done] == [2, 1]  # shard 0: a and c; shard 1: b
    expected, got = extracted(tmp_path / "local_features"), extracted(tmp_path / "array_features")
    assert sorted(got) == ["a", "b", "c"] and [len(got[n]) for n in "abc"] == [4, 6, 8]
    for name in expected:
        assert (got[name] == expected[name]).all(), name


def test_shard_array_takes_the_share_of_the_sbatch_array_task_it_runs_in(slurm_env, videos, tmp_path):
    """A user's own `sbatch --array=0-1` running the training entry with data.shard=array: each task takes
    its share by SLURM's array variables; both together extract every video once."""
    overrides = ["task=extract", "data=extract/localization", "data.plan.fps=30", f"data.video_dir={videos}"]
    overrides += [f"data.out_dir={tmp_path / 'features'}", "data.shard=array", *TINY_EXTRACTION]
    command = shlex.join([sys.executable, "-m", "egolab.train", *overrides])
    script = f'cd {ROOT} && {command} "hydra.run.dir={tmp_path}/run_$SLURM_ARRAY_TASK_ID"'
    submitted = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--array=0-1",
            "-c",
            "1",
            "--mem=2G",
            "-o",
            str(tmp_path / "%a.out"),
            "--wrap",
            script,
        ],
        env=slurm_env,
        capture_output=True,
        text=True,
        check=True,
    )
    array_id = submitted.stdout.strip().split(";")[0]
    states = [final_states(f"{array_id}_{task}", timeout_s=600) for task in "01"]
    logs = "".join((tmp_path / f"{task}.out").read_text() for task in "01")
    assert states == [["COMPLETED"], ["COMPLETED"]], logs[-3000:]
    done = [
        json.loads((tmp_path / f"run_{task}" / "metrics.json").read_text())["videos_done"] for task in "01"
    ]
    assert done == [2, 1]
    assert sorted(extracted(tmp_path / "features")) == ["a", "b", "c"]
