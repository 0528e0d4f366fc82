"""Shared fixtures: demo data generated once per session, outputs in a temporary folder, one torch
thread for in-process model tests, and the modules a subprocess ends up importing."""

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """One demo-data folder for the whole session (each task generates its own sub-folder on first use)."""
    return tmp_path_factory.mktemp("demo_data")


@pytest.fixture(scope="session")
def localization_demo_run(demo_root, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess, dict]:
    """The README's demo command (``launch.py -c expts/demo/localization.txt -l``), run once per session
    with one intra-op thread (fastest for the tiny model): its run folder, what it printed and its
    environment. Shared by the test that it learns and the v2-vs-v1 comparison, which need the same run."""
    outputs = tmp_path_factory.mktemp("localization_demo")
    env = dict(os.environ, EGOLAB_DEMO_DATA=str(demo_root), EGOLAB_OUTPUTS=str(outputs), OMP_NUM_THREADS="1")
    env.update(WANDB_MODE="offline", PYTHONUNBUFFERED="1")  # wandb not silenced: its lines are checked too
    proc = subprocess.run(
        [sys.executable, "launch.py", "-c", "expts/demo/localization.txt", "-l"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return outputs / "expts" / "demo" / "localization.txt" / "0", proc, env


@pytest.fixture
def egolab_env(demo_root, tmp_path) -> dict:
    """Environment for launch.py subprocesses: shared demo data, private outputs, offline W&B, and one
    intra-op thread (the demo models are tiny: a second thread costs more than it gives on 2 cores)."""
    env = dict(os.environ)
    env.update(
        OMP_NUM_THREADS="1",
        EGOLAB_DEMO_DATA=str(demo_root),
        EGOLAB_OUTPUTS=str(tmp_path / "OUTPUTS"),
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture
def single_thread():
    """Tiny models run fastest on one thread, and busy hosts do not oversubscribe the cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def modules_after() -> Callable[[str, dict], set[str]]:
    """Run Python code in a fresh interpreter (repo root, given environment); the modules it loaded."""

    def run(code: str, env: dict) -> set[str]:
        out = subprocess.run(
            [sys.executable, "-c", code + "; import sys; print('MODULES', *sorted(sys.modules))"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        return set(out.stdout.split("MODULES", 1)[1].split())

    return run


@pytest.fixture(scope="session")
def vqa_demo(demo_root) -> Path:
    """The generated vqa demo (frames, ShareGPT / testbed files, tiny processor) where launch.py finds it."""
    from egolab.data.demo_vqa import make_demo_vqa

    return make_demo_vqa(demo_root / "vqa")
