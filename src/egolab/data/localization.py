"""Temporal action localization data: ActivityNet-style json + per-video features (ActionFormer layout).

* :class:`ActivityNetFeatureDataset` reads ``{"database": {vid: {"subset", "duration", "fps",
  "annotations": [{"label", "segment", "label_id"}]}}}`` (or the same entries without the ``database``
  wrapper, as the Ego4D Moment Queries clip file ships) and ``<feat_folder>/<prefix><vid><ext>``
  features (T x C), and converts seconds to the feature grid like the released THUMOS/ANet/EPIC/Ego4D
  loaders (spec section 1.3).
* Features may also come from HDF5 (release ANet layout): a ``feat_folders`` entry that is an
  ``.h5``/``.hdf5`` file holds one (T, C) dataset per video under ``<prefix><video_id>``; with
  ``file_ext: .h5``/``.hdf5`` each video has a file of its own holding its features under ``npz_key``
  or as its only dataset. h5py is imported only when such a file is read.
* :func:`truncate_feats` is the training crop, :class:`LocalizationCollate` the padding collator and
  :class:`LocalizationDataModule` the Lightning wrapper (it can build a user dataset class given as
  ``"package.module:Class"``, see :func:`resolve_dataset_class`). Batch format:
  docs/localization_contract.md.
* ``python -m egolab.data.localization ranges ANNOTATIONS.json`` suggests ``model.regression_range``
  from the training annotations (:mod:`egolab.data.localization_ranges`).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import logging
import math
import os
import sys
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from egolab.data.checks import checked_validate, shared_splits
from egolab.data.features import FeatureFileError, concat_streams, load_features
from egolab.data.loaders import make_loader

log = logging.getLogger(__name__)

MISSING_DURATION = 1e8
"""Duration used when the json has none (the release's value for THUMOS/EPIC/Ego4D)."""

MAX_CROP_TRIALS = 200
"""Random windows tried by the training crop to keep at least one action (release value)."""

DUPLICATE_TOL = 1e-3
"""Seconds: same-label annotations closer than this at both ends are duplicates (release value)."""

HDF5_EXTENSIONS = (".h5", ".hdf5")
"""Suffixes read with h5py: a feature folder that is such a file, or ``file_ext`` of per-video files."""

_MAX_REPORTED = 10


# ----------------------------------------------------------------------------------------------------
# Training crop


def _randint(generator: torch.Generator | np.random.Generator | None, low: int, high: int) -> int:
    """Uniform integer in [low, high] (both inclusive) from a torch or numpy generator."""
    if isinstance(generator, np.random.Generator):
        return int(generator.integers(low, high + 1))
    return int(torch.randint(low, high + 1, (1,), generator=generator).item())


def truncate_feats(
    item: Mapping[str, Any],
    max_seq_len: int,
    trunc_thresh: float,
    offset: float,
    crop_ratio: Sequence[float] | None = None,
    generator: torch.Generator | np.random.Generator | None = None,
    max_num_trials: int = MAX_CROP_TRIALS,
) -> dict:
    """Random training crop of one item (``feats`` (C, T), ``segments`` (N, 2) grid, ``labels`` (N,)).

    If T > max_seq_len a window of max_seq_len steps is taken; otherwise, with ``crop_ratio=[lo, hi]``,
    a window of ``randint(max(round(lo*T), 1), min(round(hi*T), T))`` steps (a full-length draw keeps
    the item as is). Segments are clipped to ``[start - offset, end + offset]`` and kept when at least
    ``trunc_thresh`` of their length survives; up to ``max_num_trials`` windows are drawn until one keeps
    an action (the last draw is used otherwise). Kept segments are shifted by ``-start``. Returns a new
    dict; the input is not modified.
    """
    feats = item["feats"]
    feat_len = feats.shape[1]
    window = max_seq_len
    if feat_len <= max_seq_len:
        if crop_ratio is None:
            return dict(item)
        low = max(round(crop_ratio[0] * feat_len), 1)
        high = min(round(crop_ratio[1] * feat_len), feat_len)
        window = _randint(generator, low, max(low, high))
        if window == feat_len:
            return dict(item)
    segments = torch.as_tensor(item["segments"], dtype=torch.float32).reshape(-1, 2)
    labels = torch.as_tensor(item["labels"], dtype=torch.int64).reshape(-1)
    lengths = (segments[:, 1] - segments[:, 0]).abs()
    for _ in range(max(1, max_num_trials)):
        start = _randint(generator, 0, feat_len - window)
        left = torch.clamp(segments[:, 0], min=start - offset)
        right = torch.clamp(segments[:, 1], max=start + window + offset)
        inter = (right - left).clamp(min=0)
        keep = inter / lengths >= trunc_thresh  # zero-length segments give NaN and are dropped
        if keep.any() or segments.shape[0] == 0:
            break
    out = dict(item)
    out["feats"] = feats[:, start : start + window].clone()
    out["segments"] = torch.stack((left[keep], right[keep]), dim=1) - start
    out["labels"] = labels[keep].clone()
    return out


def drop_outside_features(
    segments: torch.Tensor, labels: torch.Tensor, feat_len: int, offset: float, trunc_thresh: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop actions mostly beyond the feature map and clamp the rest to it (release ANet training fix).

    The map ends at ``feat_len + offset``; an action is kept when at least ``trunc_thresh`` of its length
    lies before that end. Applied to every training item (it only matters when no crop happens, since
    the crop applies the same rule).
    """
    end = feat_len + offset
    lengths = segments[:, 1] - segments[:, 0]
    inside = (torch.clamp(segments[:, 1], max=end) - segments[:, 0]) / lengths
    keep = (segments[:, 0] < end) & (inside >= trunc_thresh)
    kept = segments[keep].clone()
    kept[:, 1] = kept[:, 1].clamp(max=end)
    return kept, labels[keep]


# ----------------------------------------------------------------------------------------------------
# Feature files: HDF5 and headers


def is_hdf5(path: Path) -> bool:
    """Whether a path names an HDF5 file by its suffix."""
    return path.suffix.lower() in HDF5_EXTENSIONS


def hdf5_keys(path: Path) -> set[str]:
    """Names of the top-level datasets and groups of an HDF5 file."""
    import h5py

    try:
        with h5py.File(path, "r") as handle:
            return set(handle.keys())
    except OSError as err:
        raise FeatureFileError(f"{path}: cannot open as HDF5 ({err})") from err


def _is_real(dtype: Any) -> bool:
    """Whether a numpy dtype holds real numbers (the feature readers' requirement)."""
    return np.issubdtype(dtype, np.number) and not np.issubdtype(dtype, np.complexfloating)


def _with_hdf5_dataset(
    path: Path, key: str | None, video_id: str, npz_key: str, use: Callable[[Any], Any]
) -> Any:
    """``use`` applied to one video's (T, C) real-valued HDF5 dataset, found as :func:`read_hdf5_features`
    says; errors name file and video."""
    import h5py

    where = f"{path}: video {video_id!r}"
    try:
        with h5py.File(path, "r") as handle:
            if key is None:
                datasets = [name for name, obj in handle.items() if isinstance(obj, h5py.Dataset)]
                key = npz_key if npz_key in handle else (datasets[0] if len(datasets) == 1 else None)
                if key is None:
                    raise FeatureFileError(
                        f"{where}: no dataset {npz_key!r} and not exactly one dataset (found {datasets})"
                    )
            node = handle.get(key)
            if not isinstance(node, h5py.Dataset):
                raise FeatureFileError(f"{where}: no dataset {key!r} in the file")
            if len(node.shape) != 2:
                raise FeatureFileError(f"{where}: dataset {key!r} has shape {node.shape}, expected (T, C)")
            if not _is_real(node.dtype):
                raise FeatureFileError(
                    f"{where}: dataset {key!r} has dtype {node.dtype}, expected real numbers"
                )
            return use(node)
    except OSError as err:
        raise FeatureFileError(f"{where}: cannot read HDF5 ({err})") from err


def read_hdf5_features(path: Path, key: str | None, video_id: str, npz_key: str = "feats") -> np.ndarray:
    """(T, C) float32 features of one video from an HDF5 file.

    ``key`` names the video's dataset in a file shared by all videos; ``None`` means a file of the video's
    own, read from its ``npz_key`` dataset or, failing that, its only dataset. Errors name file and video.
    """

    def read(node: Any) -> np.ndarray:
        array = np.ascontiguousarray(node[()], dtype=np.float32)
        if not np.isfinite(array).all():
            name = node.name.lstrip("/")
            raise FeatureFileError(
                f"{path}: video {video_id!r}: dataset {name!r} holds non-finite values (NaN or inf)"
            )
        return array

    return _with_hdf5_dataset(path, key, video_id, npz_key, read)


def _npy_header(stream: IO[bytes], size: int) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from the header of a ``.npy`` stream of ``size`` bytes, which must hold the data."""
    version = np.lib.format.read_magic(stream)
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise ValueError(f"unsupported .npy format version {version}")
    shape, _, dtype = readers[version](stream)
    needed = stream.tell() + math.prod(shape) * dtype.itemsize
    if size < needed:
        raise ValueError(f"truncated: {size} bytes where its header needs {needed}")
    return shape, dtype


def feature_shape(path: Path, npz_key: str = "feats") -> tuple[int, ...]:
    """(T, C) of a feature file from its header, without reading the data; raises like :func:`load_features`.

    ``.npy`` and ``.npz`` members: the ``.npy`` header, and a file (member) size that holds the data it
    announces; zip-format ``.pt``/``.pth``: the tensor memory-mapped by ``torch.load(mmap=True)``. Other
    files (legacy torch files) are read whole. Finiteness is only checked by reading the data.
    """
    if not path.is_file():
        raise FileNotFoundError(f"feature file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            with path.open("rb") as stream:
                shape, dtype = _npy_header(stream, path.stat().st_size)
        elif suffix == ".npz":
            with zipfile.ZipFile(path) as archive:
                member = f"{npz_key}.npy"
                if member not in archive.namelist():
                    keys = [n.removesuffix(".npy") for n in archive.namelist()]
                    raise FeatureFileError(f"{path}: no key {npz_key!r} in the .npz (keys: {keys})")
                with archive.open(member) as stream:
                    shape, dtype = _npy_header(stream, archive.getinfo(member).file_size)
        elif suffix in (".pt", ".pth") and zipfile.is_zipfile(path):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            tensor = obj.get(npz_key) if isinstance(obj, dict) else obj
            if not isinstance(tensor, torch.Tensor):
                raise FeatureFileError(f"{path}: expected a tensor (or a dict holding one under {npz_key!r})")
            shape, dtype = tuple(tensor.shape), np.dtype(np.float32)  # load_features casts any tensor
        else:
            return load_features(path, npz_key).shape
    except FeatureFileError:
        raise
    except Exception as err:  # any reader failure means the file is unusable; report it with its name
        raise FeatureFileError(f"{path}: cannot read the header ({type(err).__name__}: {err})") from err
    if len(shape) != 2:
        raise FeatureFileError(f"{path}: expected a 2-d (T, C) array, got shape {tuple(shape)}")
    if not _is_real(dtype):
        raise FeatureFileError(f"{path}: expected real numbers, got dtype {dtype}")
    return tuple(shape)


# ----------------------------------------------------------------------------------------------------
# Dataset


@dataclass
class VideoRecord:
    """One video of the split: feature sources, timing and annotations in seconds.

    ``feat_keys[i]`` is the video's dataset name when ``feat_paths[i]`` is an HDF5 file shared by all
    videos, else None (a file of the video's own).
    """

    video_id: str
    feat_paths: tuple[Path, ...]
    feat_keys: tuple[str | None, ...]
    fps: float
    duration: float
    segments: np.ndarray  # (N, 2) float64 seconds
    labels: np.ndarray  # (N,) int64 label ids


def _remove_duplicates(segments: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Indices of annotations kept by the release's duplicate/very-short-annotation filter."""
    kept: list[int] = []
    for i, ((s, e), lab) in enumerate(zip(segments.tolist(), labels.tolist())):
        if e - s < DUPLICATE_TOL:
            continue
        if any(
            abs(s - segments[j, 0]) <= DUPLICATE_TOL
            and abs(e - segments[j, 1]) <= DUPLICATE_TOL
            and lab == labels[j]
            for j in kept
        ):
            continue
        kept.append(i)
    return np.asarray(kept, dtype=np.int64)


def _is_clip_mapping(data: Any) -> bool:
    """True for a json object whose every value is a video entry with a ``subset`` (no ``database``)."""
    return (
        isinstance(data, dict)
        and bool(data)
        and all(isinstance(e, dict) and "subset" in e for e in data.values())
    )


class ActivityNetFeatureDataset(Dataset):
    """Videos of the chosen subsets of an ActivityNet-style json with their per-video feature files.

    Items (dicts): ``video_id``, ``feats`` float32 (C, T), ``segments`` float32 (N, 2) in grid units,
    ``labels`` int64 (N,), ``fps``, ``duration``, ``feat_stride``, ``feat_num_frames``. Seconds map to
    the grid with ``t * fps / feat_stride - 0.5 * num_frames / feat_stride``; ``downsample_rate`` r keeps
    every r-th feature and multiplies the stride by r; ``force_upsampling`` (ActivityNet) resizes the
    features linearly to ``max_seq_len`` with ``feat_stride = ((T - 1) * feat_stride + num_frames) /
    max_seq_len`` and ``num_frames = feat_stride``. In training mode items are randomly cropped
    (:func:`truncate_feats`).

    Labels: with ``label_names`` the index of each name is its id (json ``label_id`` values must agree);
    otherwise the mapping ``label -> label_id`` is collected over the whole json and must be one-to-one.
    ``num_classes=1`` with more json labels trains class-agnostic proposals (labels all 0), as the
    release does for ActivityNet; :meth:`ground_truth` keeps the true ids.

    Annotations are validated at load time; errors name the json file, the video and the annotation
    index. Bounds: starts below 0 and ends beyond ``duration`` by at most ``bound_tolerance`` seconds are
    clipped; larger excursions follow ``out_of_bounds``: ``"keep"`` (default, with a logged count; the
    release keeps them, and the real THUMOS'14 json has 30 such test/validation annotations that lie
    entirely after the video's end), ``"drop"`` or ``"error"``.

    Missing feature files raise (``missing_features="error"``) or, with ``"skip"``, their videos are left
    out with a logged count; their ids are in :attr:`skipped`. Several ``feat_folders`` are concatenated
    on channels; ``input_dim`` (one int, or one per folder) is checked when an item is read. A
    ``feat_folders`` entry may be one HDF5 file holding every video under ``<file_prefix><video_id>``
    (a video without that key counts as missing); ``file_ext`` ``.h5``/``.hdf5`` reads one HDF5 file per
    video (see :func:`read_hdf5_features`).

    Training crops draw from a per-process generator seeded with ``seed`` (mixed with the DataLoader
    worker id) or, by default, with ``torch.initial_seed()``, which Lightning's global seed fixes.

    ``check_on_load=False`` leaves the file checks of loading (missing files with ``"error"``, reading the
    first video, a split left empty by missing files) to :meth:`check_features`, which reports them all.
    """

    def __init__(
        self,
        json_file: str | os.PathLike,
        feat_folders: str | os.PathLike | Sequence[str | os.PathLike],
        split: str | Sequence[str],
        label_names: Sequence[str] | None = None,
        num_classes: int | None = None,
        file_prefix: str = "",
        file_ext: str = ".npy",
        npz_key: str = "feats",
        default_fps: float | None = None,
        feat_stride: float = 16,
        num_frames: float = 32,
        downsample_rate: int = 1,
        max_seq_len: int = 2304,
        trunc_thresh: float = 0.5,
        crop_ratio: Sequence[float] | None = None,
        force_upsampling: bool = False,
        input_dim: int | Sequence[int] | None = None,
        training: bool = False,
        missing_features: str = "error",
        remove_duplicates: bool = False,
        out_of_bounds: str = "keep",
        bound_tolerance: float = 0.1,
        seed: int | None = None,
        check_on_load: bool = True,
    ) -> None:
        if missing_features not in ("error", "skip"):
            raise ValueError(f"missing_features must be 'error' or 'skip', got {missing_features!r}")
        if out_of_bounds not in ("keep", "drop", "error"):
            raise ValueError(f"out_of_bounds must be 'keep', 'drop' or 'error', got {out_of_bounds!r}")
        if crop_ratio is not None and (len(crop_ratio) != 2 or not 0 < crop_ratio[0] <= crop_ratio[1]):
            raise ValueError(f"crop_ratio must be [lo, hi] with 0 < lo <= hi, got {crop_ratio}")
        if feat_stride <= 0 or num_frames <= 0:
            raise ValueError(f"feat_stride and num_frames must be positive, got {feat_stride}, {num_frames}")
        if int(downsample_rate) != downsample_rate or downsample_rate < 1:
            raise ValueError(f"downsample_rate must be a positive integer, got {downsample_rate}")
        if max_seq_len <= 0:
            raise ValueError(f"max_seq_len must be positive, got {max_seq_len}")
        self.json_file = Path(json_file)
        folders = [feat_folders] if isinstance(feat_folders, str | os.PathLike) else list(feat_folders)
        self.feat_folders = [Path(f) for f in folders]
        if not self.feat_folders:
            raise ValueError("feat_folders is empty")
        self.split = [split.lower()] if isinstance(split, str) else [s.lower() for s in split]
        self.file_prefix = file_prefix or ""
        self.file_ext = file_ext
        self.npz_key = npz_key
        self.default_fps = default_fps
        self.feat_stride = feat_stride
        self.num_frames = num_frames
        self.downsample_rate = int(downsample_rate)
        self.max_seq_len = int(max_seq_len)
        self.trunc_thresh = trunc_thresh
        self.crop_ratio = None if crop_ratio is None else (float(crop_ratio[0]), float(crop_ratio[1]))
        self.force_upsampling = force_upsampling
        self.input_dim = input_dim
        self.training = training
        self.missing_features = missing_features
        self.remove_duplicates = remove_duplicates
        self.out_of_bounds = out_of_bounds
        self.bound_tolerance = bound_tolerance
        self.seed = seed
        self.check_on_load = check_on_load
        self._rng: torch.Generator | None = None
        self._rng_key: tuple[int, int] | None = None
        self._hdf5_keys: dict[Path, set[str]] = {}
        for folder in self.feat_folders:
            if folder.is_file() and is_hdf5(folder):
                self._hdf5_keys[folder] = hdf5_keys(folder)
            elif not folder.is_dir():
                raise FileNotFoundError(f"feature folder (or HDF5 file) not found: {folder}")

        database = self._read_json()
        self.label_names, self.num_classes, self.empty_label_ids = self._label_table(
            database, label_names, num_classes
        )
        self.class_agnostic = self.num_classes == 1 and len(self.label_names) > 1
        self.videos, self.missing = self._load_videos(database)
        self.skipped = list(self.missing)
        if self.videos and self.input_dim is not None and check_on_load:
            self._read_features(self.videos[0])  # a wrong feature dim fails at start-up, not mid-epoch

    # ------------------------------------------------------------------------------------------ loading
    def _read_json(self) -> dict:
        if not self.json_file.is_file():
            raise FileNotFoundError(f"annotation json not found: {self.json_file}")
        try:
            data = json.loads(self.json_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{self.json_file}: not valid json ({err})") from err
        database = data.get("database") if isinstance(data, dict) else None
        if database is None and _is_clip_mapping(data):
            database = data  # Ego4D MQ clip annotations as shipped: entries keyed by clip_uid, no wrapper
        if not isinstance(database, dict):
            raise ValueError(
                f"{self.json_file}: expected an object with a 'database' mapping, or entries keyed by "
                "video id that each carry a 'subset' (the Ego4D Moment Queries clip file)"
            )
        for vid, entry in database.items():
            if not isinstance(entry, dict) or "subset" not in entry:
                raise ValueError(f"{self.json_file}: video {vid!r} has no 'subset'")
            anns = entry.get("annotations", [])
            if not isinstance(anns, list) or not all(isinstance(a, dict) for a in anns):
                raise ValueError(f"{self.json_file}: video {vid!r}: 'annotations' must be a list of objects")
        return database

    def _label_table(
        self, database: dict, label_names: Sequence[str] | None, num_classes: int | None
    ) -> tuple[list[str], int, list[int]]:
        """Index -> name table, class count and unused class ids, checked against every annotation."""
        where = self.json_file
        ids: dict[str, int] = {}
        owners: dict[int, str] = {}
        if label_names is not None:
            names = [str(n) for n in label_names]
            if len(set(names)) != len(names):
                raise ValueError("label_names contains duplicates")
            table = {n: i for i, n in enumerate(names)}
        for vid, entry in database.items():
            for k, ann in enumerate(entry.get("annotations", [])):
                at = f"{where}: video {vid!r}, annotation {k}"
                label, lid = ann.get("label"), ann.get("label_id")
                if not isinstance(label, str):
                    raise ValueError(f"{at}: missing or non-text label {label!r}")
                if label_names is not None:
                    if label not in table:
                        raise ValueError(f"{at}: unknown label {label!r} (not in label_names)")
                    if lid is not None and lid != table[label]:
                        raise ValueError(
                            f"{at}: label_id {lid!r} of {label!r} disagrees with its index {table[label]} "
                            "in label_names"
                        )
                    ids[label] = table[label]
                    continue
                if isinstance(lid, bool) or not isinstance(lid, int | float) or lid != int(lid) or lid < 0:
                    raise ValueError(f"{at}: label_id must be a non-negative integer, got {lid!r}")
                lid = int(lid)
                if ids.setdefault(label, lid) != lid or owners.setdefault(lid, label) != label:
                    other = f"{label!r} -> {ids[label]}" if ids[label] != lid else f"{owners[lid]!r} -> {lid}"
                    raise ValueError(
                        f"{at}: label_id inconsistent: {label!r} -> {lid}, but elsewhere {other}"
                    )
        self._label_ids = ids
        if label_names is None:
            names = [f"class_{i}" for i in range(max(ids.values()) + 1 if ids else 0)]
            for label, lid in ids.items():
                names[lid] = label
        count = len(names)
        if num_classes is not None:
            if num_classes == 1 and count > 1:
                log.info("%s: num_classes=1: class-agnostic training over %d labels", where, count)
            elif label_names is not None and num_classes != count:
                raise ValueError(f"label_names has {count} names but num_classes={num_classes}")
            elif count > num_classes:
                raise ValueError(
                    f"{where}: labels use class ids up to {count - 1} but num_classes={num_classes}"
                )
            else:
                names += [f"class_{i}" for i in range(count, num_classes)]
        used = set(ids.values())
        empty = [i for i in range(len(names)) if i not in used]
        if empty and num_classes != 1:
            log.warning("%s: %d class ids have no annotation: %s", where, len(empty), empty[:_MAX_REPORTED])
        return names, (len(names) if num_classes is None else num_classes), empty

    def _annotations(self, vid: str, entry: dict, duration: float | None) -> tuple[np.ndarray, np.ndarray]:
        """Validated (N, 2) seconds and (N,) label ids of one video; out-of-bounds handled per policy."""
        where = f"{self.json_file}: video {vid!r}"
        segments, labels = [], []
        for k, ann in enumerate(entry.get("annotations", [])):
            seg = ann.get("segment")
            ok = isinstance(seg, list | tuple) and len(seg) == 2
            ok = ok and all(isinstance(x, int | float) and not isinstance(x, bool) for x in seg)
            if not ok or not all(math.isfinite(x) for x in seg):
                raise ValueError(f"{where}, annotation {k}: 'segment' must be 2 finite numbers, got {seg!r}")
            start, end = float(seg[0]), float(seg[1])
            if end < start:
                raise ValueError(f"{where}, annotation {k}: segment end {end} < start {start}")
            label = ann.get("label")
            if label not in self._label_ids:
                raise ValueError(f"{where}, annotation {k}: unknown label {label!r}")
            outside = start < -self.bound_tolerance or (
                duration is not None and end > duration + self.bound_tolerance
            )
            if outside:
                message = f"{where}, annotation {k}: segment {seg} outside [0, {duration}] (duration)"
                if self.out_of_bounds == "error":
                    raise ValueError(message)
                self._out_of_bounds.append(message)
                if self.out_of_bounds == "drop":
                    continue
            else:
                start = max(start, 0.0)
                end = max(end, 0.0)
                if duration is not None:
                    start, end = min(start, duration), min(end, duration)
            segments.append((start, end))
            labels.append(self._label_ids[label])
        segs = np.asarray(segments, dtype=np.float64).reshape(-1, 2)
        labs = np.asarray(labels, dtype=np.int64)
        if self.remove_duplicates and len(labs):
            kept = _remove_duplicates(segs, labs)
            segs, labs = segs[kept], labs[kept]
        return segs, labs

    def _load_videos(self, database: dict) -> tuple[list[VideoRecord], dict[str, list[str]]]:
        """The split's videos with all their feature sources, and video id -> absent sources of the rest."""
        self._out_of_bounds: list[str] = []
        videos: list[VideoRecord] = []
        missing: dict[str, list[str]] = {}
        for vid, entry in database.items():
            if str(entry["subset"]).lower() not in self.split:
                continue
            if self.default_fps is not None:
                fps = float(self.default_fps)
            elif isinstance(entry.get("fps"), int | float) and entry["fps"] > 0:
                fps = float(entry["fps"])
            else:
                raise ValueError(
                    f"{self.json_file}: video {vid!r} has no valid 'fps' ({entry.get('fps')!r}) and "
                    "default_fps is not set"
                )
            duration = entry.get("duration")
            if duration is not None and (not isinstance(duration, int | float) or duration <= 0):
                raise ValueError(f"{self.json_file}: video {vid!r}: invalid duration {duration!r}")
            segments, labels = self._annotations(vid, entry, None if duration is None else float(duration))
            paths, keys, absent = [], [], []
            for folder in self.feat_folders:
                if folder in self._hdf5_keys:
                    key = f"{self.file_prefix}{vid}"
                    paths.append(folder)
                    keys.append(key)
                    if key not in self._hdf5_keys[folder]:
                        absent.append(f"{folder}[{key}]")
                else:
                    paths.append(folder / f"{self.file_prefix}{vid}{self.file_ext}")
                    keys.append(None)
                    if not paths[-1].is_file():
                        absent.append(str(paths[-1]))
            if absent:
                missing[vid] = absent
                continue
            videos.append(
                VideoRecord(
                    vid,
                    tuple(paths),
                    tuple(keys),
                    fps,
                    MISSING_DURATION if duration is None else float(duration),
                    segments,
                    labels,
                )
            )
        if self._out_of_bounds:
            action = "dropped" if self.out_of_bounds == "drop" else "kept as given"
            log.warning(
                "%d annotation(s) extend beyond their video by more than %.3g s (%s), e.g.\n  %s",
                len(self._out_of_bounds),
                self.bound_tolerance,
                action,
                "\n  ".join(self._out_of_bounds[:5]),
            )
        if missing and self.check_on_load:
            examples = ", ".join(absent[0] for absent in list(missing.values())[:5])
            if self.missing_features == "error":
                raise FileNotFoundError(
                    f"{len(missing)} of {len(missing) + len(videos)} videos of split {self.split} in "
                    f"{self.json_file} have no feature file, e.g. {examples} "
                    "(set missing_features='skip' to leave them out)"
                )
            log.warning(
                "skipped %d of %d videos of split %s without feature files, e.g. %s",
                len(missing),
                len(missing) + len(videos),
                self.split,
                ", ".join(list(missing)[:5]),
            )
        if not videos and (self.check_on_load or not missing):
            subsets = sorted({str(e["subset"]) for e in database.values()})
            raise ValueError(f"{self.json_file}: no usable videos in split {self.split} (subsets: {subsets})")
        return videos, missing

    # ------------------------------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.videos)

    @property
    def video_ids(self) -> list[str]:
        """Ids of the loaded videos, in json order."""
        return [v.video_id for v in self.videos]

    def ground_truth(self) -> list[dict]:
        """Per loaded video: dict(video_id, segments (M, 2) float64 seconds, labels (M,) int64 label ids)."""
        return [
            {"video_id": v.video_id, "segments": v.segments.copy(), "labels": v.labels.copy()}
            for v in self.videos
        ]

    def _generator(self) -> torch.Generator | None:
        """Crop RNG: a private generator when ``seed`` is given, else the process's global torch RNG.

        The global RNG is what makes runs reproducible and resumable: Lightning seeds it, DataLoader
        workers derive theirs from it each epoch, and checkpoints carry it (RNGStateCheckpoint).
        """
        if self.seed is None:
            return None
        info = torch.utils.data.get_worker_info()
        key = (self.seed, -1 if info is None else info.id)
        if self._rng is None or self._rng_key != key:
            self._rng = torch.Generator().manual_seed(self.seed * 1_000_003 + key[1] + 1)
            self._rng_key = key
        return self._rng

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_rng"], state["_rng_key"] = None, None
        return state

    def _read_stream(self, path: Path, key: str | None, video_id: str) -> np.ndarray:
        if key is not None or is_hdf5(path):
            return read_hdf5_features(path, key, video_id, self.npz_key)
        return load_features(path, self.npz_key)

    def _stream_shape(self, path: Path, key: str | None, video_id: str) -> tuple[int, ...]:
        if key is not None or is_hdf5(path):
            return _with_hdf5_dataset(path, key, video_id, self.npz_key, lambda node: node.shape)
        return feature_shape(path, self.npz_key)

    @staticmethod
    def _stream_names(video: VideoRecord) -> list[str]:
        return [str(p) if k is None else f"{p}[{k}]" for p, k in zip(video.feat_paths, video.feat_keys)]

    def _check_dims(self, dims: list[int], names: list[str]) -> None:
        """Raise unless the streams' channels match ``input_dim`` (one value per stream, or their sum)."""
        if self.input_dim is None:
            return
        expected = list(self.input_dim) if isinstance(self.input_dim, Sequence) else [self.input_dim]
        got = dims if len(expected) == len(dims) else [sum(dims)]
        expected = expected if len(expected) == len(dims) else [sum(int(e) for e in expected)]
        if got != [int(e) for e in expected]:
            raise ValueError(f"{', '.join(names)}: expected feature dim {self.input_dim}, got {got}")

    def _read_features(self, video: VideoRecord) -> np.ndarray:
        parts = [self._read_stream(p, k, video.video_id) for p, k in zip(video.feat_paths, video.feat_keys)]
        names = self._stream_names(video)
        self._check_dims([p.shape[1] for p in parts], names)
        if len(parts) == 1:
            return parts[0]
        return concat_streams(parts, names)

    def _check_header(self, video: VideoRecord) -> None:
        """Raise as :meth:`_read_features` would on what the files' headers show (not on their values)."""
        shapes = [self._stream_shape(p, k, video.video_id) for p, k in zip(video.feat_paths, video.feat_keys)]
        names = self._stream_names(video)
        self._check_dims([shape[1] for shape in shapes], names)
        concat_streams([np.empty((shape[0], 0), np.float32) for shape in shapes], names)  # lengths agree

    def check_features(self, full: bool = False) -> list[str]:
        """One problem per missing feature file and per video whose features cannot be used, naming both.

        Missing files count with ``missing_features="error"`` (see ``check_on_load``). ``full=False``
        reads headers only (:func:`feature_shape`, HDF5 metadata): shape, dtype, channels against
        ``input_dim``, stream lengths, files shorter than their header says; ``full=True`` reads every
        video as training does, which also catches corrupt data and non-finite values.
        """
        problems = []
        if self.missing_features == "error":
            for vid, absent in self.missing.items():
                problems += [f"video {vid!r}: no feature file {path}" for path in absent]
        elif not self.videos:
            problems.append(f"no usable videos in split {self.split}: all {len(self.missing)} lack features")
        check = self._read_features if full else self._check_header
        for video in self.videos:
            try:
                check(video)
            except (OSError, ValueError) as err:
                problems.append(f"video {video.video_id!r}: {err}")
        return problems

    def __getitem__(self, index: int) -> dict:
        video = self.videos[index]
        feats = self._read_features(video)
        if self.force_upsampling:
            feat_stride = ((feats.shape[0] - 1) * self.feat_stride + self.num_frames) / self.max_seq_len
            num_frames = feat_stride
        else:
            feats = feats[:: self.downsample_rate]
            feat_stride = self.feat_stride * self.downsample_rate
            num_frames = self.num_frames
        offset = 0.5 * num_frames / feat_stride
        feats_t = torch.from_numpy(np.ascontiguousarray(feats.T))
        if self.force_upsampling and feats_t.shape[1] != self.max_seq_len:
            resized = F.interpolate(feats_t[None], size=self.max_seq_len, mode="linear", align_corners=False)
            feats_t = resized[0]
        grid = video.segments * video.fps / feat_stride - offset
        segments = torch.from_numpy(grid.astype(np.float32)).reshape(-1, 2)
        labels = torch.from_numpy(video.labels.copy())
        if self.class_agnostic:
            labels = torch.zeros_like(labels)
        item = {
            "video_id": video.video_id,
            "feats": feats_t.contiguous(),
            "segments": segments,
            "labels": labels,
            "fps": video.fps,
            "duration": video.duration,
            "feat_stride": float(feat_stride),
            "feat_num_frames": float(num_frames),
        }
        if self.training:
            segments, labels = drop_outside_features(
                segments, labels, feats_t.shape[1], offset, self.trunc_thresh
            )
            item["segments"], item["labels"] = segments, labels
            item = truncate_feats(
                item, self.max_seq_len, self.trunc_thresh, offset, self.crop_ratio, self._generator()
            )
        return item


# ----------------------------------------------------------------------------------------------------
# Collation


def collate_localization(
    items: Sequence[Mapping[str, Any]], max_seq_len: int, max_div_factor: int = 1, training: bool = False
) -> dict:
    """Pad items into the contract's batch dict (zeros + boolean mask).

    Training pads to ``max_seq_len`` and raises if an item is longer. Inference pads to ``max_seq_len``
    when the longest item fits, else to the next multiple of ``max_div_factor``.
    """
    if not items:
        raise ValueError("cannot collate an empty list of items")
    lengths = [int(it["feats"].shape[1]) for it in items]
    channels = {int(it["feats"].shape[0]) for it in items}
    if len(channels) != 1:
        raise ValueError(f"items have different feature dims {sorted(channels)}")
    longest = max(lengths)
    if training:
        if longest > max_seq_len:
            vid = items[lengths.index(longest)]["video_id"]
            raise ValueError(f"training item {vid!r} has {longest} steps > max_seq_len={max_seq_len}")
        pad_len = max_seq_len
    elif longest <= max_seq_len:
        pad_len = max_seq_len
    else:
        pad_len = -(-longest // max_div_factor) * max_div_factor
    feats = items[0]["feats"].new_zeros(len(items), channels.pop(), pad_len)
    for i, it in enumerate(items):
        feats[i, :, : lengths[i]] = it["feats"]
    masks = torch.arange(pad_len)[None, :] < torch.as_tensor(lengths)[:, None]

    def meta(key: str) -> torch.Tensor:
        return torch.tensor([float(it[key]) for it in items], dtype=torch.float64)

    return {
        "feats": feats,
        "masks": masks,
        "segments": [torch.as_tensor(it["segments"], dtype=torch.float32).reshape(-1, 2) for it in items],
        "labels": [torch.as_tensor(it["labels"], dtype=torch.int64).reshape(-1) for it in items],
        "video_ids": [str(it["video_id"]) for it in items],
        "fps": meta("fps"),
        "duration": meta("duration"),
        "feat_stride": meta("feat_stride"),
        "feat_num_frames": meta("feat_num_frames"),
    }


class LocalizationCollate:
    """Picklable collate_fn wrapping :func:`collate_localization` with fixed settings."""

    def __init__(self, max_seq_len: int, max_div_factor: int = 1, training: bool = False) -> None:
        if max_div_factor < 1:
            raise ValueError(f"max_div_factor must be >= 1, got {max_div_factor}")
        self.max_seq_len = int(max_seq_len)
        self.max_div_factor = int(max_div_factor)
        self.training = training

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict:
        return collate_localization(items, self.max_seq_len, self.max_div_factor, self.training)


# ----------------------------------------------------------------------------------------------------
# User dataset classes

CONTRACT_METHODS = ("__len__", "__getitem__", "ground_truth")
"""Methods the task and the loaders call on a localization dataset."""

CONTRACT_ATTRIBUTES = ("label_names", "class_agnostic")
"""Attributes the task reads from a built localization dataset."""

ITEM_KEYS = ("video_id", "feats", "segments", "labels", "fps", "duration", "feat_stride", "feat_num_frames")
"""Keys of one item, as :func:`collate_localization` reads them."""


def resolve_dataset_class(spec: str) -> type[Dataset]:
    """Import ``"package.module:Class"`` and check that it is a torch Dataset with the contract's methods.

    Like the fork's ``custom_class``, but a wrong string, a non-class, a non-Dataset or a missing method is
    reported at configuration time with what is wrong, not at the first batch.
    """
    module_name, sep, name = str(spec).partition(":")
    if not sep or not module_name or not name.isidentifier():
        raise ValueError(f"custom_class must look like 'package.module:Class', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(f"custom_class {spec!r}: cannot import {module_name!r} ({err})") from err
    cls = getattr(module, name, None)
    if not isinstance(cls, type):
        raise TypeError(f"custom_class {spec!r}: {module_name}.{name} is a {type(cls).__name__}, not a class")
    if not issubclass(cls, Dataset):
        raise TypeError(f"custom_class {spec!r}: {cls.__qualname__} does not subclass torch's Dataset")
    missing = [
        m
        for m in CONTRACT_METHODS  # torch's Dataset.__getitem__ only raises NotImplementedError
        if not callable(getattr(cls, m, None)) or getattr(cls, m) is getattr(Dataset, m, None)
    ]
    if missing:
        raise TypeError(
            f"custom_class {spec!r}: {cls.__qualname__} lacks {missing} (see docs/localization_contract.md)"
        )
    return cls


def check_dataset_instance(dataset: Dataset, spec: str) -> None:
    """Check a built user dataset: the contract's attributes, and the keys of its first item."""
    missing = [a for a in CONTRACT_ATTRIBUTES if not hasattr(dataset, a)]
    if missing:
        raise TypeError(f"custom_class {spec!r}: the built dataset has no attribute(s) {missing}")
    if len(dataset):
        item = dataset[0]
        absent = [k for k in ITEM_KEYS if not isinstance(item, Mapping) or k not in item]
        if absent:
            raise TypeError(f"custom_class {spec!r}: item 0 lacks the key(s) {absent} (a dict is expected)")


# ----------------------------------------------------------------------------------------------------
# Lightning data module

DatasetSpec = Dataset | Callable[..., Dataset] | None


def _builds_feature_dataset(factory: Callable[..., Dataset]) -> bool:
    """Whether a factory (class or partial) builds an :class:`ActivityNetFeatureDataset`."""
    cls = factory.func if isinstance(factory, functools.partial) else factory
    return isinstance(cls, type) and issubclass(cls, ActivityNetFeatureDataset)


def _read_every_item(dataset: Dataset) -> list[str]:
    """One problem per item of a dataset that cannot be read (the torch RNG is left as it was)."""
    problems = []
    with torch.random.fork_rng(devices=[]):
        for index in range(len(dataset)):
            try:
                dataset[index]
            except Exception as err:  # any failure makes the item unusable; report it and go on
                problems.append(f"item {index}: {type(err).__name__}: {err}")
    return problems


class LocalizationDataModule(L.LightningDataModule):
    """Train/val/test loaders for localization.

    Datasets come either as ``train_dataset``/``val_dataset``/``test_dataset`` (built objects, or
    zero-argument factories called in :meth:`setup`), or as one ``dataset`` factory (e.g. a Hydra
    partial of :class:`ActivityNetFeatureDataset`) called with ``split=..._split`` and ``training``; equal
    val and test splits share one object. ``custom_class="package.module:Class"`` builds that class
    instead, with the ``dataset`` partial's keyword arguments (if any) plus ``split`` and ``training``;
    the class is checked when the module is made (:func:`resolve_dataset_class`) and each built dataset
    when it is built (:func:`check_dataset_instance`). ``demo`` (optional callable) generates data in
    :meth:`prepare_data`, i.e. once per node before any dataset is built. ``max_seq_len`` and
    ``max_div_factor`` are normally set by the task from the model; ``max_seq_len`` falls back to the
    training dataset's. The train loader shuffles and drops the last incomplete batch, like the release.
    Workers are not persistent by default: fresh workers take their seeds from the global RNG each
    epoch, which checkpoints carry, so a resumed run crops exactly as an uninterrupted one.
    :meth:`check_files` checks every split's files before fitting, as ``validate`` says.
    """

    def __init__(
        self,
        dataset: Callable[..., Dataset] | None = None,
        train_split: Sequence[str] | None = None,
        val_split: Sequence[str] | None = None,
        test_split: Sequence[str] | None = None,
        train_dataset: DatasetSpec = None,
        val_dataset: DatasetSpec = None,
        test_dataset: DatasetSpec = None,
        demo: Callable[[], Any] | None = None,
        batch_size: int = 2,
        eval_batch_size: int = 1,
        num_workers: int = 0,
        max_seq_len: int | None = None,
        max_div_factor: int = 1,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        custom_class: str | None = None,
        validate: str = "headers",
    ) -> None:
        super().__init__()
        self.validate = checked_validate(validate)
        self.custom_class = custom_class
        if custom_class is not None:
            cls = resolve_dataset_class(custom_class)
            if dataset is None:
                dataset = cls
            elif isinstance(dataset, functools.partial):
                dataset = functools.partial(cls, *dataset.args, **dataset.keywords)
            else:
                raise TypeError(
                    f"custom_class {custom_class!r} needs `dataset` to be a partial (whose keyword arguments "
                    f"it receives) or None, got {type(dataset).__name__}"
                )
        self._specs: dict[str, DatasetSpec] = {}
        for stage, given, split in (
            ("train", train_dataset, train_split),
            ("val", val_dataset, val_split),
            ("test", test_dataset, test_split),
        ):
            if given is not None:
                self._specs[stage] = given
            elif dataset is not None and split is not None:
                self._specs[stage] = (dataset, list(split), stage == "train")
        self.demo = demo
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.max_seq_len = max_seq_len
        self.max_div_factor = max_div_factor
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.test_dataset: Dataset | None = None
        self._built: dict[Any, Dataset] = {}

    def prepare_data(self) -> None:
        """Generate the demo data if configured (Lightning runs this once per node)."""
        if self.demo is not None:
            self.demo()

    def _build(self, stage: str) -> Dataset | None:
        spec = self._specs.get(stage)
        if spec is None or isinstance(spec, Dataset):
            return spec
        if isinstance(spec, tuple):
            factory, split, training = spec
            key = (tuple(split), training)
            if key not in self._built:
                self._built[key] = factory(split=split, training=training)
                if self.custom_class is not None:
                    check_dataset_instance(self._built[key], self.custom_class)
            return self._built[key]
        if stage not in self._built:
            self._built[stage] = spec()
        return self._built[stage]

    def check_files(self) -> list[str]:
        """Problems with the files of every configured split (train/val/test), one per bad file or record.

        Works before :meth:`setup`. ``ActivityNetFeatureDataset`` partials are built anew without their
        load-time checks and report every missing or unusable feature file
        (:meth:`ActivityNetFeatureDataset.check_features`; headers only unless ``validate="full"``). Other
        datasets are built as :meth:`setup` builds them; with ``"full"`` every item is read. A dataset that
        cannot be built is one problem. Splits sharing their files are checked once. With ``demo`` set, a
        split whose files are missing at build time is skipped: :meth:`prepare_data` generates them, so call
        this after it to check the generated data. ``validate="none"`` returns [].
        """
        if self.validate == "none":
            return []
        files = {
            stage: tuple(spec[1]) if isinstance(spec, tuple) else id(spec)
            for stage, spec in self._specs.items()
        }
        problems = []
        for label, stages, _ in shared_splits(files):
            problems += [f"{label}: {problem}" for problem in self._check_stage(stages[0], label)]
        return problems

    def _check_stage(self, stage: str, label: str) -> list[str]:
        spec = self._specs[stage]
        full = self.validate == "full"
        try:
            if isinstance(spec, tuple) and self.custom_class is None and _builds_feature_dataset(spec[0]):
                factory, split, training = spec
                dataset = factory(split=split, training=training, check_on_load=False)
            else:
                dataset = self._build(stage)
        except Exception as err:  # a split that cannot be built is one problem; the others are still checked
            if self.demo is not None and isinstance(err, FileNotFoundError):
                log.info("%s: demo data not generated yet, nothing to check (%s)", label, err)
                return []
            return [f"cannot build the dataset ({type(err).__name__}: {err})"]
        if isinstance(dataset, ActivityNetFeatureDataset):
            return dataset.check_features(full)
        return _read_every_item(dataset) if full else []

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets the stage needs (fit: train + val; validate: val; test/predict: test)."""
        if stage in (None, "fit"):
            self.train_dataset = self._build("train")
        if stage in (None, "fit", "validate"):
            self.val_dataset = self._build("val")
        if stage in (None, "test", "predict"):
            self.test_dataset = self._build("test")

    def _seq_len(self) -> int:
        if self.max_seq_len is not None:
            return int(self.max_seq_len)
        for ds in (self.train_dataset, self.val_dataset, self.test_dataset):
            if ds is not None and hasattr(ds, "max_seq_len"):
                return int(ds.max_seq_len)
        raise ValueError("max_seq_len is not set and no dataset provides it")

    def _loader(self, dataset: Dataset | None, name: str, training: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"no {name} dataset configured (or setup() was not called)")
        batch_size = self.batch_size if training else self.eval_batch_size
        if training and len(dataset) < batch_size:
            raise ValueError(
                f"the training set has {len(dataset)} videos, fewer than batch_size={batch_size} "
                "(the last incomplete batch is dropped, so no step would run)"
            )
        return make_loader(
            dataset,
            batch_size,
            training,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=LocalizationCollate(self._seq_len(), self.max_div_factor, training=training),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, "train", training=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, "val", training=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, "test", training=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, "test", training=False)


# ----------------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m egolab.data.localization ranges ANNOTATIONS.json [options]``."""
    from egolab.data.localization_ranges import add_ranges_command

    parser = argparse.ArgumentParser(
        prog="python -m egolab.data.localization", description="Localization data tools."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_ranges_command(commands)
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except ValueError as err:
        parser.exit(2, f"{parser.prog} {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
