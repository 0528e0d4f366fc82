"""What launch.py does around a SLURM submission: check the time limit against the preemption signal,
report jobs that wait in the queue, and print the finished runs' metrics."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

POLL_ENV = "EGOLAB_SLURM_POLL_S"


def signal_delay_problem(timeout_min: float, signal_delay_s: float) -> str | None:
    """Why a time limit and submitit's signal delay cannot work together, or None.

    SLURM sends the preemption signal ``signal_delay_s`` before the limit: with a limit no longer than
    that, it arrives as the job starts, on every attempt, and the job requeues until max_num_timeout.
    """
    if timeout_min * 60 <= signal_delay_s:
        return (
            f"the time limit ({timeout_min:g} min) is not longer than hydra.launcher.signal_delay_s="
            f"{signal_delay_s:g}: SLURM would send the preemption signal as soon as each attempt starts. "
            "Raise --timeout-min or lower hydra.launcher.signal_delay_s."
        )
    return None


def job_ids(exp_dir: Path) -> list[str]:
    """The SLURM job ids submitted for an experiment folder (submitit's `.submitit/<id>` folders)."""
    folder = exp_dir / ".submitit"
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def queue_states(ids: list[str]) -> dict[str, tuple[str, str]]:
    """``job id -> (state, reason)`` of the jobs squeue still lists."""
    if not ids:
        return {}
    out = subprocess.run(
        ["squeue", "-h", "-j", ",".join(ids), "-o", "%i|%T|%r"], capture_output=True, text=True
    ).stdout
    rows = (line.split("|") for line in out.splitlines() if line.count("|") == 2)
    return {job: (state, reason) for job, state, reason in rows}


def wait_reporting_queue(proc: subprocess.Popen, exp_dir: Path) -> int:
    """Wait for the submitting process; meanwhile print each job's state and SLURM's reason whenever a
    job waits in the queue (on change, and at least every 10 polls), so a job that cannot start is seen.
    The poll interval is ``$EGOLAB_SLURM_POLL_S`` (default 30 s)."""
    interval = float(os.environ.get(POLL_ENV, "30"))
    last: dict[str, tuple[str, str]] = {}
    polls = 0
    while True:
        try:
            return proc.wait(timeout=interval)
        except subprocess.TimeoutExpired:
            polls += 1
        states = queue_states(job_ids(exp_dir))
        pending = {job: sr for job, sr in states.items() if sr[0] != "RUNNING"}
        if pending and (pending != last or polls % 10 == 0):
            for job, (state, reason) in sorted(pending.items()):
                print(f"launch: SLURM job {job}: {state} ({reason})", file=sys.stderr, flush=True)
        last = pending
