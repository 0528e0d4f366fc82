"""Writing feature outputs so that a killed run never leaves a truncated file, and splitting the work.

Every output is written under a temporary name in its final folder (``<name>.tmp-<pid>``, never a final
name) and renamed onto its final name once complete, so a file with the final name is always whole and
a rerun can skip it (:func:`is_complete`). Videos are split between jobs with :func:`shard_of`
(``"i/n"``, e.g. one SLURM array task each, :func:`resolve_shard`); the anticipation LMDB is written as
one store per shard (:func:`write_lmdb_shard`) and merged at the end (:func:`merge_lmdb`).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

FORMATS = ("npy", "pt")
LMDB_BATCH = 1000
"""Items per LMDB write transaction."""


def shard_of(names: Sequence[str], shard: str | None) -> list[str]:
    """The names shard ``"i/n"`` handles (all of them for None), sorted.

    Position ``p`` in the sorted names goes to shard ``p % n``: the split does not depend on the input order,
    and the n shards partition the names.
    """
    ordered = sorted(names)
    if shard is None:
        return ordered
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", shard)
    if match is None:
        raise ValueError(f"shard {shard!r} is not of the form i/n (e.g. 0/4)")
    index, count = int(match[1]), int(match[2])
    if count < 1 or index >= count:
        raise ValueError(f"shard {shard!r} is out of range: i/n needs 0 <= i < n (e.g. 0/4)")
    return ordered[index::count]


def resolve_shard(shard: str | None) -> str | None:
    """``data.shard`` as ``"i/n"``: None (all videos) and ``"i/n"`` as given, ``"array"`` this SLURM array
    task's place in its array (for ``sbatch --array=0-3``: task 2 of 4 is ``"2/4"``). A job array that
    launch.py submits for a sweep does not shard by itself: only ``"array"`` reads the array variables.
    ``BadValue`` for anything else, or ``"array"`` outside an array task."""
    from egolab.errors import BadValue

    if shard is None:
        return None
    shard = str(shard).strip()
    if shard == "array":
        task, count = os.environ.get("SLURM_ARRAY_TASK_ID"), os.environ.get("SLURM_ARRAY_TASK_COUNT")
        if task is None or count is None:
            raise BadValue("data.shard=array: this is not a SLURM array task (no $SLURM_ARRAY_TASK_ID)")
        first = int(os.environ.get("SLURM_ARRAY_TASK_MIN", "0"))
        step = int(os.environ.get("SLURM_ARRAY_TASK_STEP", "1"))
        index, remainder = divmod(int(task) - first, step)
        if remainder or not 0 <= index < int(count):
            raise BadValue(
                f"data.shard=array: array task {task} is not one of {count} evenly spaced tasks from {first}"
                " (use --array=A-B or A-B:STEP, or data.shard=i/n)"
            )
        shard = f"{index}/{count}"
    try:
        shard_of([], shard)
    except ValueError as err:
        raise BadValue(f"data.shard={shard}: {err}") from None
    return shard


def _temporary(path: Path) -> Path:
    """The name a file or folder is written under before it is renamed onto ``path``."""
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


@contextmanager
def _renamed_onto(path: Path) -> Iterator[Path]:
    """A temporary path next to ``path``, renamed onto it on success and removed on failure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    _remove(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


SETTING_FILE = "extraction.json"
"""The setting (target, clip plan, backbone, precision) the features in a folder come from."""


def check_feature_folder(out_dir: Path, setting: dict) -> None:
    """Record ``setting`` in ``out_dir`` (:data:`SETTING_FILE`), or refuse the folder when it holds the
    features of another setting: a rerun skips the videos whose files are complete, so features of two
    settings would otherwise mix without a word. ``BadValue`` lists the differing keys."""
    import json

    from egolab.errors import BadValue
    from egolab.launch.runs import config_differences

    path = Path(out_dir) / SETTING_FILE
    if path.is_file():
        differences = config_differences(json.loads(path.read_text()), setting)
        if differences:
            listed = "\n  ".join(differences)
            raise BadValue(
                f"{out_dir} holds features extracted with another setting ({SETTING_FILE} there, then this "
                f"run):\n  {listed}\nExtract into another data.out_dir, or delete this one to redo it."
            )
        return
    with _renamed_onto(path) as tmp:
        tmp.write_text(json.dumps(setting, indent=2, sort_keys=True) + "\n")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"feature format must be one of {FORMATS}, got {fmt!r}")


def write_array_atomically(path: Path, array: np.ndarray, fmt: str) -> None:
    """Write a (T, C) feature array as float32 ``npy`` or ``pt`` (a tensor), complete or not at all."""
    _check_format(fmt)
    array = np.ascontiguousarray(array, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"{path}: features must be (T, C), got shape {array.shape}")
    path = Path(path)
    with _renamed_onto(path) as tmp, tmp.open("wb") as f:
        if fmt == "npy":
            np.save(f, array)
        else:
            import torch

            torch.save(torch.from_numpy(array), f)
        f.flush()
        os.fsync(f.fileno())


def is_complete(path: Path, fmt: str) -> bool:
    """Whether ``path`` holds a readable 2-D feature file (its header is read, not its values).

    Anything unreadable (a leftover of a killed run, a truncated copy) counts as not done.
    """
    _check_format(fmt)
    path = Path(path)
    if not path.is_file():
        return False
    try:
        if fmt == "npy":
            return np.load(path, mmap_mode="r").ndim == 2
        import torch

        value = torch.load(path, weights_only=True, mmap=True)
        return isinstance(value, torch.Tensor) and value.dim() == 2
    except Exception:
        return False


def _chunks(items: Iterable, size: int = LMDB_BATCH) -> Iterator[list]:
    """Consecutive lists of at most ``size`` items (one LMDB write transaction each)."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _holds(store: Path, key: bytes) -> bool:
    import lmdb

    with lmdb.open(str(store), readonly=True, lock=False) as env, env.begin() as txn:
        return txn.get(key) is not None


def write_lmdb_shard(path: Path, items: Iterable[tuple[str, np.ndarray]], map_size: int = 1 << 34) -> int:
    """Write ``key -> float32 bytes`` into a new LMDB folder ``path``; returns the number of items.

    Shards are written once: an existing ``path`` raises FileExistsError.
    """
    import lmdb

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"LMDB shard {path} already exists (shards are written once)")
    count = 0
    with _renamed_onto(path) as tmp, lmdb.open(str(tmp), map_size=map_size) as env:
        for chunk in _chunks(items):
            with env.begin(write=True) as txn:
                for key, value in chunk:
                    txn.put(key.encode("utf-8"), np.asarray(value, np.float32).tobytes())
            count += len(chunk)
    return count


def merge_lmdb(shards: Sequence[Path], out: Path, map_size: int = 1 << 34) -> int:
    """Copy every key of every shard into a new LMDB ``out``; returns the number of keys.

    A key in two shards must hold the same value there; otherwise ValueError names the key and both shards.
    """
    import lmdb

    shards, out = [Path(s) for s in shards], Path(out)
    if out.exists():
        raise FileExistsError(f"merged LMDB {out} already exists")
    for shard in shards:
        if not (shard / "data.mdb").is_file():
            raise FileNotFoundError(f"LMDB shard not found: {shard} (expected {shard / 'data.mdb'})")
    with _renamed_onto(out) as tmp, lmdb.open(str(tmp), map_size=map_size) as env:
        for index, shard in enumerate(shards):
            with lmdb.open(str(shard), readonly=True, lock=False) as source, source.begin() as read:
                for chunk in _chunks(read.cursor().iternext(keys=True, values=True)):
                    with env.begin(write=True) as txn:
                        for key, value in chunk:
                            if not txn.put(key, value, overwrite=False) and txn.get(key) != value:
                                earlier = next(s for s in shards[:index] if _holds(s, key))
                                raise ValueError(
                                    f"key {key.decode('utf-8', 'replace')} has different values in "
                                    f"{earlier} and {shard}"
                                )
        count = env.stat()["entries"]
    return count
