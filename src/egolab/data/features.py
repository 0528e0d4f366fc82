"""Readers for pre-extracted clip features stored as one (T, C) array per video.

Supported files: ``.npy`` (a T x C array), ``.npz`` (the array under ``npz_key``, ``feats`` by default, as
in the EPIC-Kitchens release) and ``.pt``/``.pth`` (a tensor, or a dict holding it under ``npz_key``).
Every error names the offending file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from egolab.errors import UserError

FEATURE_EXTENSIONS = (".npy", ".npz", ".pt", ".pth")


class FeatureFileError(UserError, ValueError):
    """A feature file exists but cannot be used (unreadable, wrong shape, missing key, non-finite)."""


def _read_array(path: Path, npz_key: str) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as archive:
            if npz_key not in archive.files:
                raise FeatureFileError(f"{path}: no key {npz_key!r} in the .npz (keys: {archive.files})")
            return archive[npz_key]
    if suffix in (".pt", ".pth"):
        import torch

        obj = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(obj, dict):
            if npz_key not in obj:
                raise FeatureFileError(f"{path}: no key {npz_key!r} in the saved dict (keys: {list(obj)})")
            obj = obj[npz_key]
        if not isinstance(obj, torch.Tensor):
            raise FeatureFileError(f"{path}: expected a tensor, got {type(obj).__name__}")
        return obj.detach().float().numpy()
    raise FeatureFileError(f"{path}: unsupported feature file extension (use one of {FEATURE_EXTENSIONS})")


def load_features(path: str | os.PathLike, npz_key: str = "feats") -> np.ndarray:
    """Read one feature file as a contiguous float32 (T, C) array; raise with the file name on any problem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"feature file not found: {path}")
    try:
        array = _read_array(path, npz_key)
    except FeatureFileError:
        raise
    except Exception as err:  # any reader failure means the file is unusable; report it with its name
        raise FeatureFileError(f"{path}: cannot read feature file ({type(err).__name__}: {err})") from err
    array = np.asarray(array)
    if array.ndim != 2:
        raise FeatureFileError(f"{path}: expected a 2-d (T, C) array, got shape {tuple(array.shape)}")
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise FeatureFileError(f"{path}: expected real numbers, got dtype {array.dtype}")
    array = np.ascontiguousarray(array, dtype=np.float32)
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - finite.sum())
        raise FeatureFileError(f"{path}: {bad} non-finite values (NaN or inf) in the features")
    return array


def concat_streams(
    arrays: Sequence[np.ndarray], names: Sequence[str | os.PathLike], max_length_diff: int = 1
) -> np.ndarray:
    """Concatenate (T_i, C_i) streams on channels, truncating to the shortest when lengths differ by at
    most ``max_length_diff`` steps (``names`` are used in the error message)."""
    lengths = [a.shape[0] for a in arrays]
    if max(lengths) - min(lengths) > max_length_diff:
        detail = ", ".join(f"{p}: {n}" for p, n in zip(names, lengths))
        raise FeatureFileError(
            f"feature streams differ in length by more than {max_length_diff} step(s): {detail}"
        )
    shortest = min(lengths)
    return np.ascontiguousarray(np.concatenate([a[:shortest] for a in arrays], axis=1))


def load_concat_features(
    paths: Sequence[str | os.PathLike], npz_key: str = "feats", max_length_diff: int = 1
) -> np.ndarray:
    """Concatenate several feature streams of one video on channels (e.g. Ego4D SlowFast+Omnivore+EgoVLP).

    The released loader requires equal lengths. Extractors with different clip padding can disagree by
    one step at the end, so streams differing by at most ``max_length_diff`` steps are truncated to the
    shortest; larger differences mean misaligned features and raise.
    """
    if not paths:
        raise ValueError("load_concat_features needs at least one path")
    return concat_streams([load_features(p, npz_key) for p in paths], paths, max_length_diff)
