"""Shared fixtures: demo data generated once per session (per worker under pytest-xdist), outputs in a
temporary folder, one torch thread for in-process model tests, and the modules a subprocess ends up
importing."""

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers on the CPU: one thread each
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """One demo-data folder for the whole session (each task generates its own sub-folder on first use)."""
    return tmp_path_factory.mktemp("demo_data")


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
