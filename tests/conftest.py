"""Shared fixtures: demo data generated once per session, outputs in a temporary folder."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory) -> Path:
    """One demo-data folder for the whole session (each task generates its own sub-folder on first use)."""
    return tmp_path_factory.mktemp("demo_data")


@pytest.fixture
def egolab_env(demo_root, tmp_path) -> dict:
    """Environment for launch.py subprocesses: shared demo data, private outputs, offline W&B."""
    env = dict(os.environ)
    env.update(
        EGOLAB_DEMO_DATA=str(demo_root),
        EGOLAB_OUTPUTS=str(tmp_path / "OUTPUTS"),
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        PYTHONUNBUFFERED="1",
    )
    return env
