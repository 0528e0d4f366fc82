"""Where a run's outputs live: `OUTPUTS/<txt path>/<run index>/`, fixed so re-runs resume."""

from __future__ import annotations

import os
from pathlib import Path

OUTPUTS_ENV = "EGOLAB_OUTPUTS"


def outputs_root(override: str | Path | None = None) -> Path:
    """The OUTPUTS folder: the argument, else $EGOLAB_OUTPUTS, else ./OUTPUTS."""
    if override is not None:
        return Path(override).absolute()
    return Path(os.environ.get(OUTPUTS_ENV, "OUTPUTS")).absolute()


def experiment_dir(txt_path: str | Path, root: str | Path | None = None) -> Path:
    """`OUTPUTS/<txt path>`: the TXT path relative to the working directory (or its absolute parts)."""
    txt = Path(txt_path).absolute()
    try:
        relative = txt.relative_to(Path.cwd())
    except ValueError:
        relative = Path(*txt.parts[1:])
    return outputs_root(root) / relative


def run_dir(txt_path: str | Path, index: int | str, root: str | Path | None = None) -> Path:
    """The directory of one run (one sweep combination) of an experiment."""
    return experiment_dir(txt_path, root) / str(index)


def last_checkpoint(run_directory: str | Path) -> Path | None:
    """`checkpoints/last.ckpt` of a run if it exists: what a relaunch resumes from and -t tests."""
    path = Path(run_directory) / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None
