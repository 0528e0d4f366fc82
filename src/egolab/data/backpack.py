"""EgoPack data (Ego4D FHO): annotations, cached features, per-task temporal graphs and the datamodule.

* Annotations: the official Ego4D v1 json files ``{"clips": [...]}``. ``fho_lta_{split}.json`` (with
  ``fho_lta_taxonomy.json``) feeds action recognition (AR) and long-term anticipation (LTA);
  ``fho_oscc-pnr_{split}.json`` feeds object state change classification (OSCC) and point-of-no-return
  localization (PNR). Frames are absolute frames of the 30-fps canonical parent video.
* Features: one ``<video_uid>.pt`` (or ``.npy``) (T, C) array per video, feature ``i`` covering frames
  ``[16 i, 16 i + 32)`` (Omnivore Swin-L video: C = 1536). :class:`FeatureStore` converts them once to
  float32 ``.npy`` files opened as memory maps, plus a per-split metadata csv, as the release does.
  :meth:`BackpackDataModule.check_files` finds unreadable ones before fitting (shapes by memory-mapping,
  or every value with ``validate="full"``).
* Samples: one ``torch_geometric.data.Data`` graph per sample, shaped as ``docs/backpack_contract.md``
  says (``x`` (nodes, S, C), ``y``, ``pos``, ``edge_index``, ``uid``). Random choices in training use
  NumPy's global RNG (seeded by ``L.seed_everything``, by the DataLoader in each worker, and carried by
  checkpoints through ``RNGStateCheckpoint``).
* ``release_bugs=True`` reproduces the released code where it differs from its intent (each dataset's
  docstring lists what changes); the default is the corrected behaviour.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from inspect import signature
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities.combined_loader import CombinedLoader
from torch.utils.data import DataLoader, Dataset
from torch_geometric.data import Data
from torch_geometric.loader.dataloader import Collater

from egolab.data.checks import checked_validate
from egolab.data.features import load_features
from egolab.data.loaders import make_loader

log = logging.getLogger(__name__)

TASKS = ("ar", "lta", "oscc", "pnr")
"""Task names, in the order the contract lists them."""

FPS = 30
"""Frame rate of the Ego4D canonical videos (every frame number and ``*_sec`` field refers to it)."""

FEATURE_STRIDE = 16
"""Frames between consecutive Omnivore video features (feature index = frame // 16)."""

METADATA_COLUMNS = ["video_uid", "length", "features_size"]
CHOICES = ("error", "skip")
PathLike = str | os.PathLike


# ----------------------------------------------------------------------------------------------------
# Taxonomy and annotations


@dataclass
class Taxonomy:
    """The FHO LTA taxonomy: verb and noun names, list index = class id."""

    verbs: list[str]
    nouns: list[str]
    path: Path | None = None

    @property
    def num_verbs(self) -> int:
        return len(self.verbs)

    @property
    def num_nouns(self) -> int:
        return len(self.nouns)


def load_taxonomy(path: PathLike) -> Taxonomy:
    """Read ``fho_lta_taxonomy.json`` (``{"verbs": [...], "nouns": [...]}``); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"taxonomy file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected an object with 'verbs' and 'nouns' lists")
    names = {}
    for key in ("verbs", "nouns"):
        values = data.get(key)
        if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
            raise ValueError(f"{path}: '{key}' must be a non-empty list of names (list index = class id)")
        names[key] = list(values)
    return Taxonomy(names["verbs"], names["nouns"], path)


@dataclass(frozen=True)
class FHOAction:
    """One annotated action of ``fho_lta_{split}.json``; absolute parent-video frames; labels -1 if absent."""

    video_uid: str
    clip_uid: str
    action_idx: int
    start_frame: int
    end_frame: int
    verb: int = -1
    noun: int = -1
    file: str = ""
    index: int = -1

    @property
    def uid(self) -> str:
        return f"{self.clip_uid}_{self.action_idx}"

    @property
    def source(self) -> str:
        """Where the record comes from, for error messages."""
        return f"{self.file}, record {self.index} (clip_uid {self.clip_uid}, action_idx {self.action_idx})"


@dataclass(frozen=True)
class OSCCClip:
    """One clip of ``fho_oscc-pnr_{split}.json``: state_change 0/1 (-1 absent), pnr_frame None if absent."""

    video_uid: str
    unique_id: str
    start_frame: int
    end_frame: int
    start_sec: float
    end_sec: float
    state_change: int = -1
    pnr_frame: float | None = None
    file: str = ""
    index: int = -1

    @property
    def uid(self) -> str:
        return self.unique_id

    @property
    def source(self) -> str:
        return f"{self.file}, record {self.index} (unique_id {self.unique_id})"


def _read_clips(path: Path) -> list:
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("clips"), list):
        raise ValueError(f'{path}: expected the Ego4D v1 layout {{"clips": [...]}}')
    return data["clips"]


def _field(record: Mapping, key: str) -> Any:
    if record.get(key) is None:
        raise ValueError(f"missing field {key!r}")
    return record[key]


def _int(record: Mapping, key: str) -> int:
    value = _field(record, key)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{key} must be an integer, got {value!r}")
    return value


def _float(record: Mapping, key: str) -> float:
    value = _field(record, key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    return float(value)


def _str(record: Mapping, key: str) -> str:
    value = _field(record, key)
    if not isinstance(value, str) or not value:
        raise ValueError(f"{key} must be a non-empty string, got {value!r}")
    return value


def _label(record: Mapping, key: str, count: int, what: str, taxonomy: Taxonomy) -> int:
    if record.get(key) is None:
        return -1
    value = _int(record, key)
    if not 0 <= value < count:
        raise ValueError(f"{key} {value} is outside the taxonomy ({count} {what} in {taxonomy.path})")
    return value


def read_fho_actions(path: PathLike, taxonomy: Taxonomy | PathLike) -> list[FHOAction]:
    """Actions of an ``fho_lta_{split}.json`` file, with absolute frames
    ``clip_parent_start_frame + action_clip_{start,end}_frame``.

    Labels absent (``test_unannotated``) are -1. Errors name the file and the record (index, clip_uid,
    action_idx): a missing field, a verb/noun id outside the taxonomy, an end before the start, or a
    repeated action_idx within a clip.
    """
    path = Path(path)
    taxonomy = taxonomy if isinstance(taxonomy, Taxonomy) else load_taxonomy(taxonomy)
    actions, seen = [], set()
    for index, record in enumerate(_read_clips(path)):
        where = f"{path}, record {index}"
        try:
            if not isinstance(record, dict):
                raise ValueError("not a json object")
            clip_uid, action_idx = _str(record, "clip_uid"), _int(record, "action_idx")
            where += f" (clip_uid {clip_uid}, action_idx {action_idx})"
            video_uid = _str(record, "video_uid")
            parent = _int(record, "clip_parent_start_frame")
            start, end = _int(record, "action_clip_start_frame"), _int(record, "action_clip_end_frame")
            if end < start:
                raise ValueError(f"action_clip_end_frame {end} < action_clip_start_frame {start}")
            if parent + start < 0:
                raise ValueError(f"negative start frame {parent + start}")
            if (clip_uid, action_idx) in seen:
                raise ValueError("action_idx repeated within the clip")
            verb = _label(record, "verb_label", taxonomy.num_verbs, "verbs", taxonomy)
            noun = _label(record, "noun_label", taxonomy.num_nouns, "nouns", taxonomy)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        seen.add((clip_uid, action_idx))
        actions.append(
            FHOAction(
                video_uid, clip_uid, action_idx, parent + start, parent + end, verb, noun, str(path), index
            )
        )
    return actions


def _state_change(record: Mapping) -> int:
    value = record.get("state_change")
    if value is None:
        return -1
    if value in (0, 1):  # json true/false or 0/1
        return int(value)
    raise ValueError(f"state_change must be true/false, got {value!r}")


def _pnr_frame(record: Mapping) -> float | None:
    value = record.get("parent_pnr_frame")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"parent_pnr_frame must be a number or null, got {value!r}")
    return None if math.isnan(value) else float(value)


def read_oscc_clips(path: PathLike) -> list[OSCCClip]:
    """Clips of an ``fho_oscc-pnr_{split}.json`` file (parent-video frames and seconds).

    ``state_change`` is -1 when absent (``test_unannotated``); ``pnr_frame`` is None when
    ``parent_pnr_frame`` is null, NaN or absent. Errors name the file and the record.
    """
    path = Path(path)
    clips = []
    for index, record in enumerate(_read_clips(path)):
        where = f"{path}, record {index}"
        try:
            if not isinstance(record, dict):
                raise ValueError("not a json object")
            unique_id = _str(record, "unique_id")
            where += f" (unique_id {unique_id})"
            video_uid = _str(record, "video_uid")
            start, end = _int(record, "parent_start_frame"), _int(record, "parent_end_frame")
            start_sec, end_sec = _float(record, "parent_start_sec"), _float(record, "parent_end_sec")
            if end < start or end_sec < start_sec:
                raise ValueError(f"the clip ends before it starts (frames {start}..{end})")
            if start < 0:
                raise ValueError(f"negative start frame {start}")
            state_change, pnr = _state_change(record), _pnr_frame(record)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        clips.append(
            OSCCClip(
                video_uid, unique_id, start, end, start_sec, end_sec, state_change, pnr, str(path), index
            )
        )
    return clips


def _split_of(file: str) -> str:
    """Split name of an annotation file: ``fho_lta_train.json`` -> ``train`` (else the file stem)."""
    name = Path(file).name
    for prefix in ("fho_lta_", "fho_oscc-pnr_"):
        if name.startswith(prefix) and name.endswith(".json"):
            return name[len(prefix) : -len(".json")]
    return Path(file).stem or "custom"


# ----------------------------------------------------------------------------------------------------
# Features


class FeatureStore:
    """Per-video features: raw ``<video_uid>.pt``/``.npy`` in ``features_dir``, converted once to
    float32 ``<video_uid>.npy`` in ``cache_dir`` and read back as memory maps.

    :meth:`prepare` converts (idempotent, atomic writes) and records ``video_uid,length,features_size``
    in a metadata csv, as the release does (``fho_{split}_v1.csv``, ``oscc_{split}_v1.csv``).
    :meth:`get` opens the memory maps lazily in each process (at most ``max_open`` at a time, so the
    open file descriptors stay bounded); nothing open is pickled into DataLoader workers.
    """

    def __init__(
        self,
        features_dir: PathLike,
        cache_dir: PathLike,
        feature_dim: int = 1536,
        stride: int = FEATURE_STRIDE,
        max_open: int = 256,
    ) -> None:
        if feature_dim < 1 or stride < 1 or max_open < 1:
            raise ValueError(
                f"need feature_dim, stride, max_open >= 1 (got {feature_dim}, {stride}, {max_open})"
            )
        self.features_dir = Path(features_dir)
        self.cache_dir = Path(cache_dir)
        self.feature_dim = int(feature_dim)
        self.stride = int(stride)
        self.max_open = int(max_open)
        self._open: OrderedDict[str, np.ndarray] = OrderedDict()
        self._pid: int | None = None

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_open"], state["_pid"] = OrderedDict(), None
        return state

    def raw_path(self, video_uid: str) -> Path | None:
        """The raw feature file of a video (``.pt`` first, then ``.npy``), None if there is none."""
        for suffix in (".pt", ".npy"):
            path = self.features_dir / f"{video_uid}{suffix}"
            if path.is_file():
                return path
        return None

    def cache_path(self, video_uid: str) -> Path:
        return self.cache_dir / f"{video_uid}.npy"

    def feature_file(self, video_uid: str) -> Path | None:
        """The file a video's features come from: the cached ``.npy`` if made, else the raw file, or None."""
        cached = self.cache_path(video_uid)
        return cached if cached.is_file() else self.raw_path(video_uid)

    def file_problem(self, video_uid: str, full: bool = False) -> str | None:
        """Why a video's features (:meth:`feature_file`) cannot be used, or None.

        Checks the shape (and a cache's dtype) from the file's header, by memory-mapping (a legacy non-zip
        ``.pt`` is read whole); ``full`` also reads every value, which must be finite.
        """
        path = self.feature_file(video_uid)
        if path is None:
            return f"no feature file {self.features_dir / (video_uid + '.pt')} (or .npy)"
        try:
            if path == self.cache_path(video_uid):
                self._cached_length(path)
            else:
                self._check(_raw_shape(path), path)
            if full:
                load_features(path)
        except Exception as err:  # any reader failure means the file is unusable; name it
            return str(err) if str(path) in str(err) else f"{path}: cannot read ({type(err).__name__}: {err})"
        return None

    def _check(self, shape: tuple[int, ...], path: Path) -> None:
        if len(shape) != 2 or shape[0] < 1 or shape[1] != self.feature_dim:
            raise ValueError(
                f"{path}: expected (T, {self.feature_dim}) features with T >= 1, got shape {tuple(shape)} "
                "(check feature_dim)"
            )

    def _read_metadata(self, path: Path) -> dict[str, int]:
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
        if not rows or rows[0] != METADATA_COLUMNS:
            raise ValueError(f"{path}: expected the header {','.join(METADATA_COLUMNS)}")
        lengths = {}
        for line, row in enumerate(rows[1:], start=2):
            try:
                uid, length, size = row[0], int(row[1]), int(row[2])
            except (IndexError, ValueError):
                raise ValueError(f"{path}, line {line}: malformed row {row}") from None
            if size != self.feature_dim:
                raise ValueError(
                    f"{path}, line {line}: video {uid} has {size}-d features, not "
                    f"feature_dim={self.feature_dim} (wrong feature_dim, or a cache made for other features)"
                )
            lengths[uid] = length
        return lengths

    def _write_metadata(self, path: Path, lengths: Mapping[str, int]) -> None:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(METADATA_COLUMNS)
            writer.writerows([uid, lengths[uid], self.feature_dim] for uid in sorted(lengths))
        os.replace(tmp, path)

    def _cached_length(self, path: Path) -> int:
        cached = np.load(path, mmap_mode="r")
        self._check(cached.shape, path)
        if cached.dtype != np.float32:
            raise ValueError(f"{path}: cached features must be float32, got {cached.dtype}")
        return int(cached.shape[0])

    def _convert(self, video_uid: str) -> int:
        """Write the cached float32 .npy of a video (unless present); its number of features."""
        target = self.cache_path(video_uid)
        if target.is_file():
            return self._cached_length(target)
        source = self.raw_path(video_uid)
        assert source is not None
        array = load_features(source)
        self._check(array.shape, source)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as f:
            np.save(f, array)
        os.replace(tmp, target)
        return int(array.shape[0])

    def prepare(
        self,
        video_uids: Iterable[str],
        metadata_csv: str,
        records_by_video: Mapping[str, str] | None = None,
        missing_features: str = "error",
    ) -> dict[str, int]:
        """Convert the videos' features (once) and return ``{video_uid: number of features}``.

        ``records_by_video`` names, per video, the first annotation record that needs it (for the error
        on a missing file). Videos without a feature file raise FileNotFoundError, or with
        ``missing_features="skip"`` are left out of the result. A second call with the same videos
        reads the metadata csv and writes nothing.
        """
        if missing_features not in CHOICES:
            raise ValueError(f"missing_features must be 'error' or 'skip', got {missing_features!r}")
        wanted = list(dict.fromkeys(video_uids))
        metadata = self.cache_dir / metadata_csv
        known = self._read_metadata(metadata) if metadata.is_file() else {}
        todo = [uid for uid in wanted if uid not in known or not self.cache_path(uid).is_file()]
        pending = set(todo)
        lengths = {uid: known[uid] for uid in wanted if uid not in pending}
        if not todo:
            return lengths
        missing = [u for u in todo if self.feature_file(u) is None]
        if missing and missing_features == "error":
            uid = missing[0]
            needed = (records_by_video or {}).get(uid, "an annotation record")
            raise FileNotFoundError(
                f"{len(missing)} of {len(wanted)} videos have no feature file in {self.features_dir}, e.g. "
                f"{self.features_dir / (uid + '.pt')} (or .npy), needed by {needed} "
                "(set missing_features='skip' to leave their samples out)"
            )
        convert = [uid for uid in todo if uid not in missing]
        if not convert:
            return lengths
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        from tqdm.auto import tqdm

        bar = tqdm(convert, desc=f"features -> {self.cache_dir}", unit="video", disable=len(convert) < 50)
        for uid in bar:
            lengths[uid] = self._convert(uid)
        self._write_metadata(metadata, {**known, **{uid: lengths[uid] for uid in convert}})
        return {uid: lengths[uid] for uid in wanted if uid in lengths}

    def get(self, video_uid: str) -> np.ndarray:
        """The cached (T, C) float32 features of a video, as a read-only memory map."""
        if self._pid != os.getpid():
            self._open, self._pid = OrderedDict(), os.getpid()
        array = self._open.get(video_uid)
        if array is not None:
            self._open.move_to_end(video_uid)
            return array
        path = self.cache_path(video_uid)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no converted features for video {video_uid} (run prepare())")
        array = np.load(path, mmap_mode="r")
        self._open[video_uid] = array
        if len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return array


def _raw_shape(path: Path) -> tuple[int, ...]:
    """Shape of a raw feature file from its header (memory maps); a legacy non-zip ``.pt`` is read whole."""
    if path.suffix == ".npy":
        return np.load(path, mmap_mode="r").shape
    if zipfile.is_zipfile(path):
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        saved = saved.get("feats") if isinstance(saved, dict) else saved  # the key load_features reads
        if isinstance(saved, torch.Tensor):
            return tuple(saved.shape)
    return load_features(path).shape


def prepare_features(
    store: FeatureStore, records: Sequence[FHOAction] | Sequence[OSCCClip], missing_features: str = "error"
) -> dict[str, int]:
    """Run :meth:`FeatureStore.prepare` for the videos of annotation records (csv named after their split)."""
    first: dict[str, str] = {}
    for record in records:
        first.setdefault(record.video_uid, record.source)
    prefix = "oscc" if records and isinstance(records[0], OSCCClip) else "fho"
    split = "+".join(sorted({_split_of(r.file) for r in records})) or "custom"
    return store.prepare(list(first), f"{prefix}_{split}_v1.csv", first, missing_features)


# ----------------------------------------------------------------------------------------------------
# Segment sampling and edges


def segment_indices(size: int, num_segments: int, training: bool) -> np.ndarray:
    """Indices in ``[0, size)`` of ``num_segments`` features of a range, as the release samples them.

    Training: ``num_segments`` equal segments with a random offset in each (NumPy global RNG; a range
    shorter than ``num_segments`` falls back to linspace). Evaluation: linspace plus half a segment.
    """
    if training:
        step = size // num_segments
        if step == 0:
            return np.linspace(0, size, num_segments, endpoint=False, dtype=int)
        starts = np.arange(num_segments) * (size / num_segments)
        return np.round(starts + np.random.randint(step, size=num_segments)).astype(int)
    return np.linspace(0, size, num_segments, endpoint=False, dtype=int) + size // num_segments // 2


def radius_edges(pos: torch.Tensor, r: float) -> torch.Tensor:
    """Edges (2, E) between all nodes ``i != j`` with ``|pos_i - pos_j| <= r``: both directions, no self
    loops, sorted by (source, target). The 1-D replacement for ``torch_geometric``'s ``radius_graph``."""
    pos = torch.as_tensor(pos).reshape(-1)
    near = (pos[:, None] - pos[None, :]).abs() <= r
    near.fill_diagonal_(False)
    return near.nonzero().t().contiguous()


def lta_edges(
    num_input: int, num_forecast: int, r: float, release_forecast_count: int | None = None
) -> torch.Tensor:
    """LTA edges on positions ``0..num_input + num_forecast - 1``: the radius graph, plus directed edges
    from the last ``floor(r)`` observed nodes to every forecast node, without duplicates, sorted.

    ``release_forecast_count``: the release's count of forecast nodes (those whose verb label is > 0);
    the extra edges then reach only the first that many forecast nodes (see :class:`LTAGraphDataset`).
    """
    count = num_forecast if release_forecast_count is None else int(release_forecast_count)
    if not 0 <= count <= num_forecast:
        raise ValueError(f"release_forecast_count must be in [0, {num_forecast}], got {count}")
    total = num_input + num_forecast
    base = radius_edges(torch.arange(total), r)
    sources = torch.arange(max(num_input - math.floor(r), 0), num_input)
    targets = torch.arange(num_input, num_input + count)
    src, dst = torch.meshgrid(sources, targets, indexing="ij")
    edges = torch.cat([base, torch.stack([src.reshape(-1), dst.reshape(-1)])], dim=1)
    keys = torch.unique(edges[0] * total + edges[1])
    return torch.stack([keys // total, keys % total])


# ----------------------------------------------------------------------------------------------------
# Datasets


@dataclass
class _Sample:
    uid: str
    video_uid: str
    payload: Any = field(repr=False)


class _GraphDataset(Dataset):
    """Bookkeeping shared by the four datasets: options, feature preparation, left-out samples, subsets."""

    task = ""

    def __init__(
        self,
        store: FeatureStore,
        training: bool,
        num_segments: int,
        release_bugs: bool,
        missing_features: str,
        bad_records: str,
        max_samples: int | None,
        subset_seed: int,
    ) -> None:
        for name, value in (("missing_features", missing_features), ("bad_records", bad_records)):
            if value not in CHOICES:
                raise ValueError(f"{name} must be 'error' or 'skip', got {value!r}")
        if num_segments < 1:
            raise ValueError(f"num_segments must be >= 1, got {num_segments}")
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"max_samples must be >= 1 or None, got {max_samples}")
        self.store = store
        self.training = bool(training)
        self.num_segments = int(num_segments)
        self.release_bugs = bool(release_bugs)
        self.missing_features = missing_features
        self.bad_records = bad_records
        self.max_samples = max_samples
        self.subset_seed = int(subset_seed)
        self.samples: list[_Sample] = []
        self.skipped: list[str] = []
        """uids of the samples left out because their video has no feature file (missing_features=skip)."""
        self.skipped_records: list[str] = []
        """Annotation records left out (bad_records=skip), each with the reason."""
        self.lengths: dict[str, int] = {}
        self.files: list[str] = []

    def _prepare(self, records: Sequence[FHOAction] | Sequence[OSCCClip]) -> None:
        if not records:
            raise ValueError(f"{self.task}: no annotation records")
        self.files = sorted({r.file for r in records})
        if self.training and all(self._unlabelled(r) for r in records):
            raise ValueError(
                f"{', '.join(self.files)}: no labels (a test_unannotated file?), cannot train on it"
            )
        self.lengths = prepare_features(self.store, records, self.missing_features)

    @staticmethod
    def _unlabelled(record: FHOAction | OSCCClip) -> bool:
        return record.verb < 0 if isinstance(record, FHOAction) else record.state_change < 0

    def _bad(self, record: FHOAction | OSCCClip, reason: str) -> None:
        message = f"{record.source}: {reason}"
        if self.bad_records == "error":
            raise ValueError(f"{message} (set bad_records='skip' to leave such records out)")
        self.skipped_records.append(message)

    def _finish(self, candidates: list[_Sample]) -> None:
        """Keep the samples whose video has features, then the ``max_samples`` subset; log the rest."""
        self.samples = [s for s in candidates if s.video_uid in self.lengths]
        self.skipped = [s.uid for s in candidates if s.video_uid not in self.lengths]
        where = f"{self.task} ({', '.join(self.files)})"
        if self.skipped:
            videos = {s.video_uid for s in candidates if s.video_uid not in self.lengths}
            log.warning(
                "%s: left out %d samples of %d videos without features (missing_features='skip'), e.g. %s",
                where, len(self.skipped), len(videos), self.skipped[:3],
            )  # fmt: skip
        if self.skipped_records:
            log.warning(
                "%s: left out %d annotation records (bad_records='skip'), e.g. %s",
                where, len(self.skipped_records), self.skipped_records[:3],
            )  # fmt: skip
        if self.max_samples is not None and self.max_samples < len(self.samples):
            rng = np.random.default_rng(self.subset_seed)
            keep = np.sort(rng.choice(len(self.samples), size=self.max_samples, replace=False))
            self.samples = [self.samples[i] for i in keep]
        if not self.samples:
            raise ValueError(f"{where}: no samples left")

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def uids(self) -> list[str]:
        return [s.uid for s in self.samples]

    def _node(self, features: np.ndarray, start: int, end: int) -> np.ndarray:
        """(S, C) features sampled from rows ``[start, end)``; zeros for an empty range (as released)."""
        if end <= start:
            return np.zeros((self.num_segments, features.shape[1]), dtype=np.float32)
        index = start + segment_indices(end - start, self.num_segments, self.training)
        return np.asarray(features[index], dtype=np.float32)


def _actions_of(actions: PathLike | Sequence[FHOAction], taxonomy: Taxonomy | PathLike | None) -> list:
    if isinstance(actions, str | os.PathLike):
        if taxonomy is None:
            raise ValueError(f"reading {actions} needs the taxonomy (taxonomy=...)")
        return read_fho_actions(actions, taxonomy)
    return list(actions)


def _clips_by_uid(actions: Sequence[FHOAction]) -> dict[str, list[FHOAction]]:
    """Actions grouped by clip (clips in order of first appearance), each sorted by action_idx."""
    clips: dict[str, list[FHOAction]] = {}
    for action in actions:
        clips.setdefault(action.clip_uid, []).append(action)
    return {uid: sorted(group, key=lambda a: a.action_idx) for uid, group in clips.items()}


class _ActionDataset(_GraphDataset):
    def _valid_actions(self, actions: Sequence[FHOAction]) -> list[FHOAction]:
        """Actions of videos with features that start inside them (others: bad_records)."""
        kept = []
        for action in actions:
            length = self.lengths.get(action.video_uid)
            first = action.start_frame // self.store.stride
            if length is not None and first >= length:
                self._bad(
                    action,
                    f"starts at frame {action.start_frame} (feature {first}), after the end of the video's "
                    f"{length} features",
                )
                continue
            kept.append(action)
        return kept


class ARGraphDataset(_ActionDataset):
    """Action recognition: one graph per annotated action, a window of ``window_size`` (9) actions of its
    clip centred on it (clip borders repeat the first/last action), ``pos = -4..4``, verb/noun on the
    centre node only (-1 elsewhere), radius-``radius`` edges; ``uid = <clip_uid>_<action_idx>``.

    A node takes ``num_segments`` features from rows ``[start_frame // 16, min(T - 1, end_frame // 16))``
    (random segments in training, uniform otherwise); an empty range gives a zero node, as released.
    An action starting after the video's features is a bad record. ``release_bugs`` changes nothing here.
    """

    task = "ar"

    def __init__(
        self,
        actions: PathLike | Sequence[FHOAction],
        store: FeatureStore,
        taxonomy: Taxonomy | PathLike | None = None,
        training: bool = False,
        num_segments: int = 3,
        window_size: int = 9,
        radius: float = 1.5,
        release_bugs: bool = False,
        missing_features: str = "error",
        bad_records: str = "error",
        max_samples: int | None = None,
        subset_seed: int = 0,
    ) -> None:
        super().__init__(
            store,
            training,
            num_segments,
            release_bugs,
            missing_features,
            bad_records,
            max_samples,
            subset_seed,
        )
        if window_size < 1:
            raise ValueError(f"window_size must be >= 1, got {window_size}")
        self.window_size = int(window_size)
        records = _actions_of(actions, taxonomy)
        self._prepare(records)
        half = self.window_size // 2
        candidates = []
        for group in _clips_by_uid(self._valid_actions(records)).values():
            last = len(group) - 1
            for i, action in enumerate(group):
                window = tuple(
                    group[min(max(j, 0), last)] for j in range(i - half, i - half + self.window_size)
                )
                candidates.append(_Sample(action.uid, action.video_uid, window))
        self._finish(candidates)
        self.pos = torch.arange(self.window_size, dtype=torch.long) - half
        self.edge_index = radius_edges(self.pos, radius)

    def __getitem__(self, index: int) -> Data:
        sample = self.samples[index]
        features = self.store.get(sample.video_uid)
        last, stride = features.shape[0] - 1, self.store.stride
        nodes = [
            self._node(features, a.start_frame // stride, min(last, a.end_frame // stride))
            for a in sample.payload
        ]
        y = torch.full((self.window_size, 2), -1, dtype=torch.long)
        centre = sample.payload[self.window_size // 2]
        y[self.window_size // 2] = torch.tensor([centre.verb, centre.noun])
        return Data(
            x=torch.from_numpy(np.stack(nodes)),
            y=y,
            pos=self.pos.clone(),
            edge_index=self.edge_index.clone(),
            uid=sample.uid,
        )


class LTAGraphDataset(_ActionDataset):
    """Long-term anticipation: per clip, windows of ``num_input`` (2) observed actions followed by
    ``num_forecast`` (Z = 20) future ones. Observed nodes sample rows
    ``[max(1, start_frame // 16) - 1, min(T - 1, end_frame // 16))`` (as released); the forecast nodes
    are the mean of the observed ones. ``y``: -1 on the observed nodes, the future verb/noun on the
    forecast nodes; ``pos = 0..21``; edges :func:`lta_edges`; ``uid = <clip_uid>_<action_idx>`` of the
    last observed action (the key of the Ego4D LTA challenge).

    An unlabelled file (``test_unannotated``: no future actions) gives windows of the observed actions
    only, forecast labels -1. ``release_bugs=True`` reproduces the release: one window fewer per clip
    (``len - 22`` instead of ``len - 21``; unlabelled: ``len - 2`` instead of ``len - 1``), and extra
    edges only to the first ``count(verb > 0)`` forecast nodes (verb class 0 is not counted; none on
    unlabelled data).
    """

    task = "lta"

    def __init__(
        self,
        actions: PathLike | Sequence[FHOAction],
        store: FeatureStore,
        taxonomy: Taxonomy | PathLike | None = None,
        training: bool = False,
        num_segments: int = 3,
        num_input: int = 2,
        num_forecast: int = 20,
        radius: float = 1.5,
        release_bugs: bool = False,
        missing_features: str = "error",
        bad_records: str = "error",
        max_samples: int | None = None,
        subset_seed: int = 0,
    ) -> None:
        super().__init__(
            store,
            training,
            num_segments,
            release_bugs,
            missing_features,
            bad_records,
            max_samples,
            subset_seed,
        )
        if num_input < 1 or num_forecast < 1:
            raise ValueError(f"need num_input, num_forecast >= 1 (got {num_input}, {num_forecast})")
        self.num_input, self.num_forecast, self.radius = int(num_input), int(num_forecast), float(radius)
        records = _actions_of(actions, taxonomy)
        self._prepare(records)
        self.labelled = any(a.verb >= 0 for a in records)
        span = self.num_input + (self.num_forecast if self.labelled else 0)
        candidates = []
        for group in _clips_by_uid(self._valid_actions(records)).values():
            count = len(group) - span + (0 if self.release_bugs else 1)
            for i in range(max(count, 0)):
                window = tuple(group[i : i + span])
                last = window[self.num_input - 1]
                candidates.append(_Sample(last.uid, last.video_uid, window))
        self._finish(candidates)
        self.pos = torch.arange(self.num_input + self.num_forecast, dtype=torch.long)
        self.edge_index = lta_edges(self.num_input, self.num_forecast, self.radius)

    def __getitem__(self, index: int) -> Data:
        sample = self.samples[index]
        features = self.store.get(sample.video_uid)
        last, stride = features.shape[0] - 1, self.store.stride
        observed = np.stack(
            [
                self._node(features, max(1, a.start_frame // stride) - 1, min(last, a.end_frame // stride))
                for a in sample.payload[: self.num_input]
            ]
        )
        forecast = np.repeat(observed.mean(axis=0, keepdims=True), self.num_forecast, axis=0)
        y = torch.full((self.num_input + self.num_forecast, 2), -1, dtype=torch.long)
        future = sample.payload[self.num_input :]
        if future:
            y[self.num_input :] = torch.tensor([[a.verb, a.noun] for a in future])
        edges = self.edge_index
        if self.release_bugs:
            edges = lta_edges(self.num_input, self.num_forecast, self.radius, int((y[:, 0] > 0).sum()))
        return Data(
            x=torch.from_numpy(np.concatenate([observed, forecast])),
            y=y,
            pos=self.pos.clone(),
            edge_index=edges.clone(),
            uid=sample.uid,
        )


def _clips_of(clips: PathLike | Sequence[OSCCClip]) -> list[OSCCClip]:
    return read_oscc_clips(clips) if isinstance(clips, str | os.PathLike) else list(clips)


class OSCCGraphDataset(_GraphDataset):
    """Object state change classification: one graph per clip of ``num_nodes`` (4) nodes x S segments.

    The clip's frames are snapped down to the stride (``f - f % 16``), giving ``n`` feature rows from
    ``start // 16``; ``num_nodes * S`` (12) of them are taken, sorted: at random in training (with
    replacement only when ``n < 12``, NumPy ``choice`` as released), ``linspace(0, n, 12)`` otherwise.
    ``y = [state_change]`` (-1 unlabelled); ``pos = 0..3``; chain edges; ``uid = unique_id``. A clip
    needing rows past the video's features, or with ``n == 0``, is a bad record (the release silently
    used zeros). The release's ``aug_prob`` augmentation (0 in its configs, and broken) is not
    implemented. ``release_bugs`` changes nothing here.
    """

    task = "oscc"

    def __init__(
        self,
        clips: PathLike | Sequence[OSCCClip],
        store: FeatureStore,
        training: bool = False,
        num_segments: int = 3,
        num_nodes: int = 4,
        radius: float = 1.5,
        release_bugs: bool = False,
        missing_features: str = "error",
        bad_records: str = "error",
        max_samples: int | None = None,
        subset_seed: int = 0,
    ) -> None:
        super().__init__(
            store,
            training,
            num_segments,
            release_bugs,
            missing_features,
            bad_records,
            max_samples,
            subset_seed,
        )
        if num_nodes < 1:
            raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
        self.num_nodes = int(num_nodes)
        records = _clips_of(clips)
        self._prepare(records)
        candidates = [_Sample(c.uid, c.video_uid, c) for c in records if self._valid(c)]
        self._finish(candidates)
        self.pos = torch.arange(self.num_nodes, dtype=torch.long)
        self.edge_index = radius_edges(self.pos, radius)

    def rows(self, clip: OSCCClip) -> tuple[int, int]:
        """First feature row and number of rows ``n`` of a clip, after snapping to the stride."""
        stride = self.store.stride
        start = clip.start_frame - clip.start_frame % stride
        end = clip.end_frame - clip.end_frame % stride
        return start // stride, (end - start) // stride

    def _valid(self, clip: OSCCClip) -> bool:
        length = self.lengths.get(clip.video_uid)
        if length is None:
            return True  # no features: counted in _finish
        first, count = self.rows(clip)
        if count == 0:
            self._bad(clip, f"frames {clip.start_frame}..{clip.end_frame} span no whole feature stride")
        elif first + count > length:
            self._bad(
                clip,
                f"frames {clip.start_frame}..{clip.end_frame} need feature rows up to {first + count - 1}, "
                f"but the video has {length} features",
            )
        else:
            return True
        return False

    def __getitem__(self, index: int) -> Data:
        sample = self.samples[index]
        clip: OSCCClip = sample.payload
        features = self.store.get(sample.video_uid)
        first, count = self.rows(clip)
        size = self.num_nodes * self.num_segments
        if self.training:
            chosen = np.random.choice(count, size=size, replace=count < size)
        else:
            chosen = np.linspace(0, count, size, endpoint=False, dtype=int)
        rows = first + np.sort(chosen)
        x = np.asarray(features[rows], dtype=np.float32).reshape(self.num_nodes, self.num_segments, -1)
        return Data(
            x=torch.from_numpy(x),
            y=torch.tensor([clip.state_change], dtype=torch.long),
            pos=self.pos.clone(),
            edge_index=self.edge_index.clone(),
            uid=sample.uid,
        )


class PNRGraphDataset(_GraphDataset):
    """Point-of-no-return localization: one graph per clip with a PNR frame, ``num_candidates`` (16) nodes.

    Candidate frames ``linspace(start, end, 16, endpoint=False)`` over the annotated clip (training: a
    random crop of ``U(crop_min_sec, crop_max_sec)`` seconds from ``start_sec + offset``, the end clipped
    to ``end_sec``, falling back to the annotated start/end when the PNR falls outside). A node's feature
    interpolates rows ``floor(f / 16)`` and ``ceil(f / 16)`` (clipped to T - 1) with weight
    ``(f % 16) / 16``, repeated S times. ``y`` is one-hot at the candidate closest to the PNR (the first
    on ties); chain edges; ``uid = unique_id``. Samples carry ``start_frame``, ``end_frame`` (ints) and
    ``pnr_frame`` (float; NaN unlabelled). An unlabelled file keeps every clip, ``y = -1``.

    ``release_bugs=True`` draws the crop offset as the release does, ``np.random.uniform(8 - L)``, i.e.
    from ``U(8 - L, 1)`` instead of the intended ``U(0, 8 - L)``. A crop that ends up empty (clips much
    shorter than 8 s) falls back to the annotated window.
    """

    task = "pnr"

    def __init__(
        self,
        clips: PathLike | Sequence[OSCCClip],
        store: FeatureStore,
        training: bool = False,
        num_segments: int = 3,
        num_candidates: int = 16,
        crop_min_sec: float = 5.0,
        crop_max_sec: float = 8.0,
        radius: float = 1.5,
        release_bugs: bool = False,
        missing_features: str = "error",
        bad_records: str = "error",
        max_samples: int | None = None,
        subset_seed: int = 0,
    ) -> None:
        super().__init__(
            store,
            training,
            num_segments,
            release_bugs,
            missing_features,
            bad_records,
            max_samples,
            subset_seed,
        )
        if num_candidates < 1 or not 0 < crop_min_sec <= crop_max_sec:
            raise ValueError(
                f"need num_candidates >= 1 and 0 < crop_min_sec <= crop_max_sec "
                f"(got {num_candidates}, {crop_min_sec}, {crop_max_sec})"
            )
        self.num_candidates = int(num_candidates)
        self.crop_min_sec, self.crop_max_sec = float(crop_min_sec), float(crop_max_sec)
        records = _clips_of(clips)
        self.labelled = any(c.state_change >= 0 for c in records)
        if self.labelled:
            records = [c for c in records if c.pnr_frame is not None]
        self._prepare(records)
        candidates = [_Sample(c.uid, c.video_uid, c) for c in records if self._valid(c)]
        self._finish(candidates)
        self.pos = torch.arange(self.num_candidates, dtype=torch.long)
        self.edge_index = radius_edges(self.pos, radius)

    def _valid(self, clip: OSCCClip) -> bool:
        length = self.lengths.get(clip.video_uid)
        stride = self.store.stride
        if length is not None and (clip.start_frame // stride >= length or clip.end_frame // stride > length):
            self._bad(
                clip,
                f"frames {clip.start_frame}..{clip.end_frame} reach past the video's {length} features",
            )
            return False
        return True

    def window(self, clip: OSCCClip) -> tuple[int, int]:
        """Start and end frame of the candidates: the annotated clip, or a random crop in training."""
        if not self.training:
            return clip.start_frame, clip.end_frame
        length = np.random.uniform(self.crop_min_sec, self.crop_max_sec)
        slack = self.crop_max_sec - length
        offset = np.random.uniform(slack) if self.release_bugs else np.random.uniform(0.0, slack)
        start_sec = clip.start_sec + offset
        start = int(np.floor(start_sec * FPS))
        end = int(np.floor(min(start_sec + length, clip.end_sec) * FPS))
        if clip.pnr_frame > end:
            end = clip.end_frame
        if clip.pnr_frame < start:
            start = clip.start_frame
        if end <= start:
            return clip.start_frame, clip.end_frame
        return start, end

    def __getitem__(self, index: int) -> Data:
        sample = self.samples[index]
        clip: OSCCClip = sample.payload
        features = self.store.get(sample.video_uid)
        start, end = self.window(clip)
        frames = np.clip(np.linspace(start, end, self.num_candidates, endpoint=False, dtype=int), start, end)
        stride, last = self.store.stride, features.shape[0] - 1
        low = np.clip(frames // stride, 0, last)
        high = np.clip(-(-frames // stride), 0, last)
        weight = ((frames % stride) / stride)[:, None]
        below, above = np.asarray(features[low]), np.asarray(features[high])
        mixed = (1.0 - weight) * below + weight * above
        same = low == high
        mixed[same] = below[same]
        x = torch.from_numpy(mixed.astype(np.float32))[:, None].repeat(1, self.num_segments, 1)
        if clip.pnr_frame is None:
            y = torch.full((self.num_candidates,), -1, dtype=torch.long)
        else:
            y = torch.zeros(self.num_candidates, dtype=torch.long)
            y[int(np.argmin(np.abs(frames - clip.pnr_frame)))] = 1
        return Data(
            x=x,
            y=y,
            pos=self.pos.clone(),
            edge_index=self.edge_index.clone(),
            uid=sample.uid,
            start_frame=int(start),
            end_frame=int(end),
            pnr_frame=float("nan") if clip.pnr_frame is None else float(clip.pnr_frame),
        )


DATASETS: dict[str, type[_GraphDataset]] = {
    "ar": ARGraphDataset,
    "lta": LTAGraphDataset,
    "oscc": OSCCGraphDataset,
    "pnr": PNRGraphDataset,
}
SHARED_OPTIONS = ("num_segments", "release_bugs", "missing_features", "bad_records")
TRAIN_ONLY_OPTIONS = ("max_samples", "subset_seed")


# ----------------------------------------------------------------------------------------------------
# Lightning data module


class BackpackDataModule(L.LightningDataModule):
    """Loaders of the EgoPack tasks on Ego4D FHO (official annotation files, per-video features).

    ``tasks`` are trained and evaluated (``eval_tasks``, in that order). Files:
    ``annotations_dir/fho_lta_{split}.json`` (ar, lta), ``annotations_dir/fho_oscc-pnr_{split}.json``
    (oscc, pnr), the taxonomy (default ``annotations_dir/fho_lta_taxonomy.json``), features
    ``features_dir/<video_uid>.pt`` converted once into ``cache_dir``. Ego4D numbers are reported on
    val, hence ``test_split="val"``.

    ``task_options`` maps a task to keyword arguments of its dataset class (``{"ar": {"max_samples": 64},
    "lta": {"num_forecast": 20}}``); they override the module-wide ``num_segments``, ``release_bugs``,
    ``missing_features`` and ``bad_records``. ``max_samples``/``subset_seed`` restrict the training set
    only (few-shot runs); evaluation always covers every sample. ``demo`` (optional callable) generates
    the demo data in :meth:`prepare_data`. ``validate`` is how much of every split's feature files
    :meth:`check_files` reads before fitting.
    """

    def __init__(
        self,
        tasks: Sequence[str],
        annotations_dir: PathLike,
        features_dir: PathLike,
        cache_dir: PathLike,
        taxonomy: PathLike | None = None,
        feature_dim: int = 1536,
        num_segments: int = 3,
        train_split: str = "train",
        val_split: str = "val",
        test_split: str = "val",
        task_options: Mapping[str, Mapping[str, Any]] | None = None,
        release_bugs: bool = False,
        missing_features: str = "error",
        bad_records: str = "error",
        batch_size: int = 16,
        eval_batch_size: int = 16,
        prototype_batch_size: int = 256,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        demo: Callable[[], Any] | None = None,
        validate: str = "headers",
    ) -> None:
        super().__init__()
        self.validate = checked_validate(validate)
        tasks = list(tasks)
        unknown = [t for t in tasks if t not in TASKS]
        if not tasks or unknown or len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks must be distinct names among {TASKS}, got {tasks}")
        self.tasks = tasks
        self.eval_tasks = list(tasks)
        self.annotations_dir = Path(annotations_dir)
        self.taxonomy_path = (
            Path(taxonomy) if taxonomy is not None else self.annotations_dir / "fho_lta_taxonomy.json"
        )
        self.store = FeatureStore(features_dir, cache_dir, feature_dim)
        self.splits = {"train": train_split, "val": val_split, "test": test_split}
        self.task_options = self._check_options(task_options or {})
        self.shared = {
            "num_segments": num_segments,
            "release_bugs": release_bugs,
            "missing_features": missing_features,
            "bad_records": bad_records,
        }
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.prototype_batch_size = prototype_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.demo = demo
        self._taxonomy: Taxonomy | None = None
        self._records: dict[Path, list] = {}
        self._datasets: dict[tuple[str, str, bool, bool], _GraphDataset] = {}
        self.train_datasets: dict[str, _GraphDataset] = {}
        self.val_datasets: dict[str, _GraphDataset] = {}
        self.test_datasets: dict[str, _GraphDataset] = {}

    @staticmethod
    def _check_options(options: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
        checked = {}
        for task, values in options.items():
            if task not in TASKS:
                raise ValueError(f"task_options: unknown task {task!r} (tasks: {TASKS})")
            allowed = set(signature(DATASETS[task]).parameters) - {
                "actions",
                "clips",
                "store",
                "taxonomy",
                "training",
            }
            wrong = sorted(set(values) - allowed)
            if wrong:
                raise ValueError(
                    f"task_options[{task!r}]: unknown options {wrong} (allowed: {sorted(allowed)})"
                )
            checked[task] = dict(values)
        return checked

    # ------------------------------------------------------------------------------------------ files
    @property
    def taxonomy(self) -> Taxonomy:
        """The FHO taxonomy (read on first use, after :meth:`prepare_data` made the demo)."""
        if self._taxonomy is None:
            self._taxonomy = load_taxonomy(self.taxonomy_path)
        return self._taxonomy

    @property
    def num_verbs(self) -> int:
        return self.taxonomy.num_verbs

    @property
    def num_nouns(self) -> int:
        return self.taxonomy.num_nouns

    def annotation_file(self, task: str, split: str) -> Path:
        name = f"fho_lta_{split}.json" if task in ("ar", "lta") else f"fho_oscc-pnr_{split}.json"
        return self.annotations_dir / name

    def _read(self, task: str, split: str, keep: bool = True) -> list:
        """Records of a task's annotation file, kept for later calls unless ``keep`` is false (nor is the
        taxonomy then: :meth:`check_files` runs before the demo is made, which may replace them)."""
        path = self.annotation_file(task, split)
        if path in self._records:
            return self._records[path]
        if task in ("ar", "lta"):
            records = read_fho_actions(path, self.taxonomy if keep else load_taxonomy(self.taxonomy_path))
        else:
            records = read_oscc_clips(path)
        if keep:
            self._records[path] = records
        return records

    def _missing_features(self, task: str) -> str:
        return self.task_options.get(task, {}).get("missing_features", self.shared["missing_features"])

    def _uses(self) -> list[tuple[str, str]]:
        """(task, split) pairs whose files are in use (AR training always: the prototypes read it)."""
        uses = [(t, self.splits[s]) for s in ("train", "val", "test") for t in self.tasks]
        uses.append(("ar", self.splits["train"]))
        return list(dict.fromkeys(uses))

    def prepare_data(self) -> None:
        """Generate the demo (if configured), then convert the features of every split and task in use."""
        if self.demo is not None:
            self.demo()
        done = set()
        for task, split in self._uses():
            path = self.annotation_file(task, split)
            if path not in done:
                done.add(path)
                prepare_features(self.store, self._read(task, split), self._missing_features(task))

    def check_files(self) -> list[str]:
        """Every unusable annotation or feature file of the splits in use, one message each (a video's
        features named with the first record that needs them).

        ``validate="headers"`` reads the feature files' shapes by memory-mapping (the cached ``.npy`` when
        :meth:`prepare_data` made it, else the raw ``.pt``/``.npy``), ``"full"`` also reads every value
        (non-finite ones are problems), ``"none"`` checks nothing. Works before :meth:`prepare_data`: an
        annotation file a configured demo has not made yet is left to the generator. Videos without
        features under ``missing_features="skip"`` are logged, not returned.
        """
        if self.validate == "none":
            return []
        problems: list[str] = []
        files: set[Path] = set()
        videos: set[str] = set()
        skipped: list[str] = []
        for task, split in self._uses():
            path = self.annotation_file(task, split)
            if path in files or (self.demo is not None and not path.is_file()):
                continue
            files.add(path)
            try:
                records = self._read(task, split, keep=False)
            except (OSError, ValueError) as err:
                problems.append(f"{split} split: {err}")
                continue
            for record in records:
                if record.video_uid in videos:
                    continue
                videos.add(record.video_uid)
                problem = self.store.file_problem(record.video_uid, self.validate == "full")
                if problem is None:
                    continue
                message = f"{split} split: video {record.video_uid} (needed by {record.source}): {problem}"
                missing = self.store.feature_file(record.video_uid) is None
                if missing and self._missing_features(task) == "skip":
                    skipped.append(message)
                else:
                    problems.append(message)
        if skipped:
            log.warning(
                "%d videos without features (missing_features='skip' leaves their samples out), e.g. %s",
                len(skipped), skipped[:3],
            )  # fmt: skip
        return problems

    # ------------------------------------------------------------------------------------------ datasets
    def dataset(self, task: str, split: str, training: bool, subset: bool | None = None) -> _GraphDataset:
        """The (cached) dataset of a task on a split; ``subset`` (default: ``training``) applies the
        task's ``max_samples``/``subset_seed``."""
        subset = training if subset is None else subset
        key = (task, split, training, subset)
        if key not in self._datasets:
            options = {**self.shared, **self.task_options.get(task, {})}
            if not subset:
                for name in TRAIN_ONLY_OPTIONS:
                    options.pop(name, None)
            records = self._read(task, split)
            self._datasets[key] = DATASETS[task](records, self.store, training=training, **options)
        return self._datasets[key]

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets the stage needs (fit: train + val; validate: val; test/predict: test)."""
        if stage in (None, "fit"):
            self.train_datasets = {t: self.dataset(t, self.splits["train"], True) for t in self.tasks}
        if stage in (None, "fit", "validate"):
            self.val_datasets = {t: self.dataset(t, self.splits["val"], False) for t in self.eval_tasks}
        if stage in (None, "test", "predict"):
            self.test_datasets = {t: self.dataset(t, self.splits["test"], False) for t in self.eval_tasks}

    # ------------------------------------------------------------------------------------------ loaders
    def _loader(self, dataset: Dataset, batch_size: int, training: bool, **kwargs: Any) -> DataLoader:
        """A loader of PyG graph batches (PyG's collate function on :func:`make_loader`'s loader)."""
        return make_loader(
            dataset,
            batch_size,
            training,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=Collater(dataset),
            **kwargs,
        )

    def _eval_loaders(self, datasets: Mapping[str, _GraphDataset], name: str) -> list[DataLoader]:
        if not datasets:
            raise RuntimeError(f"no {name} datasets (call setup() first)")
        return [self._loader(datasets[t], self.eval_batch_size, False) for t in self.eval_tasks]

    def train_dataloader(self) -> CombinedLoader:
        """``CombinedLoader({task: loader}, "max_size_cycle")``: a step gets one batch of every task."""
        if not self.train_datasets:
            raise RuntimeError("no training datasets (call setup('fit') first)")
        loaders = {t: self._loader(ds, self.batch_size, True) for t, ds in self.train_datasets.items()}
        return CombinedLoader(loaders, mode="max_size_cycle")

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders(self.val_datasets, "validation")

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders(self.test_datasets, "test")

    def predict_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders(self.test_datasets, "test")

    def prototype_dataloader(self, release: bool = False) -> DataLoader:
        """The AR training windows (the same subset AR trains on), for the phase-2 task prototypes.

        Default: uniform (evaluation) sampling, in order, every window once. ``release=True`` reproduces
        the release: random (training) sampling, batches of ``prototype_batch_size``, last one dropped.
        """
        dataset = self.dataset("ar", self.splits["train"], training=release, subset=True)
        if release:
            return self._loader(dataset, self.prototype_batch_size, False, drop_last=True)
        return self._loader(dataset, self.prototype_batch_size, False)
