"""Atomic feature writers, sharding and LMDB shards: nothing a kill leaves behind counts as done."""

import numpy as np
import pytest
import torch

from egolab.data.anticipation import LMDBFeatureReader, Segment, lmdb_key
from egolab.extract.writers import (
    is_complete,
    merge_lmdb,
    resolve_shard,
    shard_of,
    write_array_atomically,
    write_lmdb_shard,
)

NAMES = [f"video_{i:02d}" for i in range(10)]


@pytest.mark.parametrize("n", [1, 3, 4, 10, 12])
def test_shards_partition_the_names(n):
    shards = [shard_of(NAMES, f"{i}/{n}") for i in range(n)]
    assert sorted(name for shard in shards for name in shard) == NAMES
    assert shard_of(NAMES, None) == NAMES


def test_shards_do_not_depend_on_input_order():
    shuffled = list(reversed(NAMES))
    for i in range(3):
        assert shard_of(shuffled, f"{i}/3") == shard_of(NAMES, f"{i}/3")
    assert shard_of(shuffled, "1/3") == ["video_01", "video_04", "video_07"]


@pytest.mark.parametrize("shard", ["4/4", "-1/4", "1", "a/b", "1/0", "", "1/4/2"])
def test_bad_shards(shard):
    with pytest.raises(ValueError, match=r"i/n.*0/4"):
        shard_of(NAMES, shard)


ARRAY_VARIABLES = (
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_STEP",
)


def test_only_shard_array_reads_the_slurm_array_variables(monkeypatch):
    from egolab.errors import BadValue

    for name in ARRAY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(BadValue, match="data.shard=array: this is not a SLURM array task"):
        resolve_shard("array")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "8")
    assert resolve_shard(None) is None, "a job array of a sweep does not shard by itself"
    assert resolve_shard(" 1/2 ") == "1/2"
    assert resolve_shard("array") == "3/8"
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "1")
    assert resolve_shard("array") == "2/8"
    monkeypatch.setenv("SLURM_ARRAY_TASK_STEP", "2")  # --array=1-15:2: task 3 is the second
    assert resolve_shard("array") == "1/8"
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")
    with pytest.raises(BadValue, match="array task 4 is not one of 8 evenly spaced tasks from 1"):
        resolve_shard("array")
    with pytest.raises(BadValue, match=r"data.shard=2/2: shard '2/2' is out of range"):
        resolve_shard("2/2")


@pytest.mark.parametrize("fmt", ["npy", "pt"])
def test_atomic_write_round_trip(tmp_path, fmt):
    array = np.arange(12, dtype=np.float64).reshape(4, 3)
    path = tmp_path / "sub" / f"v.{fmt}"
    assert not is_complete(path, fmt)
    write_array_atomically(path, array, fmt)
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert is_complete(path, fmt)
    loaded = np.load(path) if fmt == "npy" else torch.load(path, weights_only=True).numpy()
    assert loaded.dtype == np.float32
    np.testing.assert_array_equal(loaded, array)


@pytest.mark.parametrize("fmt", ["npy", "pt"])
def test_truncated_file_is_not_complete(tmp_path, fmt):
    path = tmp_path / f"v.{fmt}"
    write_array_atomically(path, np.ones((100, 8)), fmt)
    data = path.read_bytes()
    for size in (8, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:size])
        assert not is_complete(path, fmt), size


def test_not_2d_is_rejected_or_incomplete(tmp_path):
    with pytest.raises(ValueError, match=r"\(T, C\)"):
        write_array_atomically(tmp_path / "v.npy", np.ones(5), "npy")
    np.save(tmp_path / "w.npy", np.ones(5, np.float32))
    assert not is_complete(tmp_path / "w.npy", "npy")
    with pytest.raises(ValueError, match="format"):
        write_array_atomically(tmp_path / "v.h5", np.ones((2, 2)), "h5")


def _items(video: str, frames: range, dim: int = 4):
    return [(lmdb_key(video, f), np.full(dim, f, np.float64)) for f in frames]


def test_lmdb_shards_merge_and_read_back(tmp_path):
    assert write_lmdb_shard(tmp_path / "s0", _items("P01_01", range(1, 2501)), map_size=1 << 24) == 2500
    assert write_lmdb_shard(tmp_path / "s1", _items("P01_02", range(1, 6)), map_size=1 << 24) == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s0", "s1"]
    with pytest.raises(FileExistsError):
        write_lmdb_shard(tmp_path / "s1", _items("P01_02", range(1, 2)), map_size=1 << 24)
    merged = tmp_path / "merged"
    assert merge_lmdb([tmp_path / "s0", tmp_path / "s1"], merged, map_size=1 << 24) == 2505
    reader = LMDBFeatureReader(merged, dims=4)
    out = reader(Segment("u", "P01_01", "P01", 0.0, 1.0), np.array([1, 2000, 2500]))
    np.testing.assert_array_equal(out.numpy(), np.repeat([[1.0], [2000.0], [2500.0]], 4, axis=1))
    out = reader(Segment("v", "P01_02", "P01", 0.0, 1.0), np.array([5]))
    np.testing.assert_array_equal(out.numpy(), np.full((1, 4), 5.0))


def test_lmdb_merge_conflict(tmp_path):
    write_lmdb_shard(tmp_path / "a", _items("P01_01", range(1, 4)), map_size=1 << 22)
    write_lmdb_shard(tmp_path / "b", _items("P01_01", range(3, 5)), map_size=1 << 22)  # same frame 3
    assert merge_lmdb([tmp_path / "a", tmp_path / "b"], tmp_path / "same", map_size=1 << 22) == 4
    write_lmdb_shard(tmp_path / "c", [(lmdb_key("P01_01", 2), np.zeros(4))], map_size=1 << 22)
    key = lmdb_key("P01_01", 2)
    with pytest.raises(ValueError, match=rf"{key}.*{tmp_path / 'a'} and {tmp_path / 'c'}"):
        merge_lmdb([tmp_path / "a", tmp_path / "b", tmp_path / "c"], tmp_path / "bad", map_size=1 << 22)
    assert not (tmp_path / "bad").exists()
    assert not list(tmp_path.glob("*.tmp-*"))
