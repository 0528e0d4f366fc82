"""Where a run's outputs live: `OUTPUTS/<txt path>/<run index>/`, fixed so re-runs resume."""

from __future__ import annotations

import os
from pathlib import Path

from egolab.errors import UserError
from egolab.paths import REPO_ROOT

OUTPUTS_ENV = "EGOLAB_OUTPUTS"


def outputs_root(override: str | Path | None = None) -> Path:
    """The OUTPUTS folder: the argument, else $EGOLAB_OUTPUTS, else ``OUTPUTS`` in the repository."""
    if override is not None:
        return Path(override).absolute()
    return Path(os.environ.get(OUTPUTS_ENV, REPO_ROOT / "OUTPUTS")).absolute()


def experiment_key(txt_path: str | Path) -> Path:
    """What names an experiment: the TXT path relative to the repository (``expts/demo/localization.txt``),
    wherever launch.py is called from and however the path is written. A file outside the repository:
    relative to the working directory when below it, else its absolute path without the leading ``/``."""
    txt = Path(txt_path).absolute()
    for base in (REPO_ROOT, Path.cwd()):
        try:
            return txt.resolve().relative_to(base.resolve())
        except ValueError:
            continue
    return Path(*txt.parts[1:])


def experiment_dir(txt_path: str | Path, root: str | Path | None = None) -> Path:
    """``OUTPUTS/<experiment key>`` (:func:`experiment_key`)."""
    return outputs_root(root) / experiment_key(txt_path)


def run_dir(txt_path: str | Path, index: int | str, root: str | Path | None = None) -> Path:
    """The directory of one run (one sweep combination) of an experiment."""
    return experiment_dir(txt_path, root) / str(index)


def last_checkpoint(run_directory: str | Path) -> Path | None:
    """`checkpoints/last.ckpt` of a run if it exists: what a relaunch resumes from and -t tests."""
    path = Path(run_directory) / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


# Keys a relaunch may change without making it another run: where things are, how many processes and
# workers do the work, what is logged and shown, and what the launcher adds. Anything else (model, data,
# optimisation, seed, epochs, recipe) belongs to the run a folder holds.
RELAUNCH_MAY_CHANGE = (
    "paths",
    "experiment_file",
    "name",
    "run_index",
    "test_only",
    "test_ckpt",
    "logger",
    "callbacks",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.enable_progress_bar",
    "trainer.enable_model_summary",
    "trainer.log_every_n_steps",
    "data.num_workers",
    "data.pin_memory",
    "data.persistent_workers",
    "data.validate",
)


def _flatten(value: object, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        flat: dict[str, object] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat if flat or not prefix else {prefix[:-1]: {}}
    return {prefix[:-1]: value}


def config_differences(saved: dict, current: dict) -> list[str]:
    """``key: saved -> current`` for every resolved config value that differs between a run folder's
    ``config.yaml`` and this launch, outside :data:`RELAUNCH_MAY_CHANGE`."""
    old, new = _flatten(saved), _flatten(current)
    differences = []
    for key in sorted(old.keys() | new.keys()):
        if any(key == free or key.startswith(free + ".") for free in RELAUNCH_MAY_CHANGE):
            continue
        missing = "(not set)"
        if old.get(key, missing) != new.get(key, missing):
            differences.append(f"{key}: {old.get(key, missing)!r} -> {new.get(key, missing)!r}")
    return differences


class RunFolderConflict(UserError, RuntimeError):
    """A launch whose configuration is not that of the run its folder holds."""


def check_run_folder(run_directory: Path, current: dict) -> None:
    """Raise :class:`RunFolderConflict` when ``run_directory`` holds a started or finished run (a checkpoint
    or ``metrics.json``) whose ``config.yaml`` differs from ``current`` (:func:`config_differences`)."""
    from omegaconf import OmegaConf

    saved_file = run_directory / "config.yaml"
    started = last_checkpoint(run_directory) is not None or (run_directory / "metrics.json").is_file()
    if not (started and saved_file.is_file()):
        return
    differences = config_differences(OmegaConf.to_container(OmegaConf.load(saved_file)), current)
    if differences:
        listed = "\n  ".join(differences)
        raise RunFolderConflict(
            f"{run_directory} holds a run with another configuration (config.yaml there, then this launch):\n"
            f"  {listed}\n"
            "A run folder belongs to one configuration. Relaunch with the folder's settings to resume it; "
            "run the new settings as another experiment (a copy of the TXT file under a new name, or "
            "--outputs elsewhere); or add --restart to archive this folder and start the run again."
        )


def archive_run_folder(run_directory: Path) -> Path | None:
    """Move a run folder aside as ``<folder>.archived-<UTC time>`` (``--restart``); the new name, or None
    when there is no folder."""
    import datetime

    if not run_directory.exists():
        return None
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%d-%H%M%S")
    target = run_directory.with_name(f"{run_directory.name}.archived-{stamp}")
    run_directory.rename(target)
    return target


_held_locks: list = []  # open lock files of this process: the lock lasts as long as the process


def lock_run_folder(run_directory: Path) -> None:
    """Take the run folder's exclusive lock (``.lock``, a POSIX lock, which also works on NFS) for the rest
    of this process, or raise :class:`RunFolderConflict` saying which process holds it. Two trainers in one
    folder would overwrite each other's checkpoints and log under one W&B id. The kernel drops the lock
    when the process ends, however it ends."""
    import fcntl
    import socket
    import time

    run_directory.mkdir(parents=True, exist_ok=True)
    handle = open(run_directory / ".lock", "a+")  # noqa: SIM115 - held open on purpose
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunFolderConflict(
            f"{run_directory} is in use by {holder}: wait for that run to end or stop it; a second "
            "trainer in the same folder would overwrite its checkpoints."
        ) from None
    handle.seek(0)
    handle.truncate()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    handle.write(f"pid {os.getpid()} on {socket.gethostname()} (since {started})\n")
    handle.flush()
    _held_locks.append(handle)
