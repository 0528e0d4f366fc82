"""Action anticipation data (EPIC-Kitchens-100): annotations, observed-window sampling, readers, datamodule.

* Annotations: the official EPIC-100 csv files (15 columns with labels, or the 8-column test timestamps)
  and RULSTM's split files (``uid,video,start_frame,end_frame,verb,noun,action`` at 30 fps, no header; or
  the 4-column test timestamps). The format is recognised from the first line. Action ids come from
  RULSTM's ``actions.csv`` (``id,verb,noun,action``); a (verb, noun) pair outside it has action -1.
* Time (AVT ``convert_to_anticipation``, spec section 3.4): for an action starting at ``t``, the
  observed window is ``[t - tau_a - tau_o, t - tau_a]``. ``num_frames`` frames are taken at ``fps``
  backwards from its end on the 30-fps grid of the RULSTM features (stride ``round(30 / fps)``), frames
  before the window start (or before frame 1) repeat the first valid frame. Segments whose window ends
  before 1/30 s have no observed frame and are dropped with a logged count (AVT ``drop_style=correct``);
  their uids are kept in :attr:`AnticipationDataset.discarded`. RULSTM's official EK100 evaluation drops
  fewer (``rulstm_discard``, see :func:`rulstm_sequence_frames`).
* Readers turn (segment, frame indices) into model inputs: :class:`LMDBFeatureReader` (RULSTM LMDB
  stores, keys ``<video>_frame_<10-digit frame>.jpg``, float32 values, several modalities concatenated)
  and :class:`VideoFrameReader` (decoded frames through decord, for the end-to-end ViT).
"""

from __future__ import annotations

import csv
import inspect
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from egolab.data.checks import checked_validate, shared_splits
from egolab.data.loaders import make_loader

log = logging.getLogger(__name__)

RULSTM_FPS = 30.0
"""Frame rate of the RULSTM feature grid (and of its split files' frame numbers)."""
RULSTM_ALPHA = 0.25
"""RULSTM's time step (s) on EK100 (``--alpha``)."""
RULSTM_STEPS = 14
"""RULSTM's sequence length on EK100 (``--S_enc 6`` + ``--S_ant 8``)."""

EPIC_COLUMNS = [
    "narration_id", "participant_id", "video_id", "narration_timestamp", "start_timestamp", "stop_timestamp",
    "start_frame", "stop_frame", "narration", "verb", "verb_class", "noun", "noun_class", "all_nouns",
    "all_noun_classes",
]  # fmt: skip
EPIC_TEST_COLUMNS = EPIC_COLUMNS[:8]
ACTIONS_HEADER = ["id", "verb", "noun", "action"]

PathLike = str | os.PathLike


def lmdb_key(video_id: str, frame: int) -> str:
    """RULSTM LMDB key of a 1-based 30-fps frame, e.g. ``P01_01_frame_0000000001.jpg``."""
    return f"{video_id}_frame_{int(frame):010d}.jpg"


def parse_timestamp(text: str) -> float:
    """Seconds from an EPIC ``HH:MM:SS.ss`` timestamp."""
    parts = text.strip().split(":")
    if len(parts) != 3:
        raise ValueError(f"timestamp {text!r} is not HH:MM:SS.ss")
    hours, minutes, seconds = int(parts[0]), int(parts[1]), float(parts[2])
    return hours * 3600.0 + minutes * 60.0 + seconds


# ----------------------------------------------------------------------------------------------------
# Class tables and annotations


@dataclass
class ActionTable:
    """RULSTM ``actions.csv``: action id -> (verb class, noun class, name)."""

    verb: np.ndarray  # (A,) int64
    noun: np.ndarray  # (A,) int64
    names: tuple[str, ...]
    path: Path | None = None
    pairs: dict[tuple[int, int], int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.pairs = {(int(v), int(n)): a for a, (v, n) in enumerate(zip(self.verb, self.noun))}

    @property
    def num_actions(self) -> int:
        return len(self.verb)

    @property
    def num_verbs(self) -> int:
        return int(self.verb.max()) + 1

    @property
    def num_nouns(self) -> int:
        return int(self.noun.max()) + 1

    def action_of(self, verb: int, noun: int) -> int:
        """Action id of a (verb, noun) pair, -1 when the pair is not an action."""
        return self.pairs.get((int(verb), int(noun)), -1)

    @classmethod
    def from_csv(cls, path: PathLike) -> ActionTable:
        """Read ``id,verb,noun,action`` (ids 0..A-1 in order); errors name the file and the line."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"actions file not found: {path}")
        with path.open(newline="") as f:
            rows = list(csv.reader(f))
        if not rows or [c.strip() for c in rows[0]] != ACTIONS_HEADER:
            raise ValueError(
                f"{path}: expected the header {','.join(ACTIONS_HEADER)} (RULSTM EK100 actions.csv)"
            )
        verbs, nouns, names = [], [], []
        for line, row in enumerate(rows[1:], start=2):
            try:
                if len(row) != 4:
                    raise ValueError(f"expected 4 columns, got {len(row)}")
                ident, verb, noun = int(row[0]), int(row[1]), int(row[2])
                if ident != len(verbs):
                    raise ValueError(f"action ids must be 0, 1, 2, ... in order; got {ident}")
                if verb < 0 or noun < 0:
                    raise ValueError("negative verb or noun class")
            except ValueError as err:
                raise ValueError(f"{path}, line {line}: {err}: {row}") from None
            verbs.append(verb)
            nouns.append(noun)
            names.append(row[3].strip())
        if not verbs:
            raise ValueError(f"{path}: no actions")
        return cls(np.asarray(verbs, np.int64), np.asarray(nouns, np.int64), tuple(names), path)


@dataclass(frozen=True)
class Segment:
    """One annotated (or test) action segment; times in seconds; labels -1 when unknown."""

    uid: str
    video_id: str
    participant_id: str
    start: float
    stop: float
    verb: int = -1
    noun: int = -1
    action: int = -1


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not an integer") from None


def _epic_segment(row: list[str], labelled: bool, actions: ActionTable) -> Segment:
    start, stop = parse_timestamp(row[4]), parse_timestamp(row[5])
    if not labelled:
        return Segment(row[0], row[2], row[1], start, stop)
    verb, noun = _int(row[10], "verb_class"), _int(row[12], "noun_class")
    return Segment(row[0], row[2], row[1], start, stop, verb, noun, actions.action_of(verb, noun))


def _rulstm_segment(row: list[str], labelled: bool, actions: ActionTable) -> Segment:
    uid, video = row[0].strip(), row[1].strip()
    start = _int(row[2], "start frame") / RULSTM_FPS
    stop = _int(row[3], "end frame") / RULSTM_FPS
    participant = video.split("_")[0]
    if not labelled:
        return Segment(uid, video, participant, start, stop)
    verb, noun, action = (_int(row[i], name) for i, name in ((4, "verb"), (5, "noun"), (6, "action")))
    if not -1 <= action < actions.num_actions:
        raise ValueError(f"action {action} outside actions.csv (0..{actions.num_actions - 1})")
    if action >= 0 and (actions.verb[action], actions.noun[action]) != (verb, noun):
        raise ValueError(
            f"action {action} is ({actions.verb[action]}, {actions.noun[action]}) in actions.csv, "
            f"not (verb {verb}, noun {noun})"
        )
    return Segment(uid, video, participant, start, stop, verb, noun, action)


def read_segments(path: PathLike, actions: ActionTable) -> list[Segment]:
    """Segments of an EPIC-100 csv (15 or 8 columns, with header) or a RULSTM split csv (7 or 4 columns).

    Errors name the file, the line and the segment uid.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    with path.open(newline="") as f:
        rows = [row for row in csv.reader(f) if row]
    if not rows:
        raise ValueError(f"{path}: empty annotation file")
    header = [c.strip() for c in rows[0]]
    if header[:1] == ["narration_id"]:
        if header == EPIC_COLUMNS:
            parse, labelled, width = _epic_segment, True, len(EPIC_COLUMNS)
        elif header == EPIC_TEST_COLUMNS:
            parse, labelled, width = _epic_segment, False, len(EPIC_TEST_COLUMNS)
        else:
            raise ValueError(f"{path}: header is neither the 15-column EPIC-100 nor the 8-column test format")
        body, first_line = rows[1:], 2
    else:
        width = len(rows[0])
        if width not in (7, 4):
            raise ValueError(
                f"{path}: not an EPIC-100 csv (no narration_id header) and not a RULSTM split file "
                f"(7 or 4 columns); line 1 has {width} columns"
            )
        parse, labelled, body, first_line = _rulstm_segment, width == 7, rows, 1
    segments, seen = [], set()
    for line, row in enumerate(body, start=first_line):
        uid = row[0] if row else "?"
        try:
            if len(row) != width:
                raise ValueError(f"expected {width} columns, got {len(row)}")
            segment = parse(row, labelled, actions)
            if not (math.isfinite(segment.start) and segment.start >= 0 and segment.stop >= segment.start):
                raise ValueError(f"invalid times start={segment.start} stop={segment.stop}")
            if segment.uid in seen:
                raise ValueError("duplicate uid")
        except ValueError as err:
            raise ValueError(f"{path}, line {line} (segment {uid!r}): {err}") from None
        seen.add(segment.uid)
        segments.append(segment)
    return segments


def read_id_list(path: PathLike) -> list[str]:
    """Ids of a one-column csv, with (EPIC: ``participant_id``, ``verb``, ``noun``) or without header."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"id list not found: {path}")
    values = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if values and values[0] in ("participant_id", "verb", "noun", "id", "uid"):
        values = values[1:]
    return values


def read_class_ids(path: PathLike) -> np.ndarray:
    """Integer class ids of a one-column csv (``EPIC_100_tail_verbs.csv`` / ``_nouns.csv``)."""
    values = read_id_list(path)
    try:
        return np.asarray([int(v) for v in values], dtype=np.int64)
    except ValueError as err:
        raise ValueError(f"{path}: class ids must be integers ({err})") from None


# ----------------------------------------------------------------------------------------------------
# Observed window


def anticipation_window(start: float, tau_a: float, tau_o: float) -> tuple[float, float]:
    """Observed window ``(start - tau_a - tau_o, start - tau_a)`` of an action starting at ``start`` s."""
    end = start - tau_a
    return end - tau_o, end


def sample_frames(
    obs_start: float, obs_end: float, num_frames: int, fps: float, feat_fps: float = RULSTM_FPS
) -> np.ndarray:
    """1-based frame indices (num_frames,) on the ``feat_fps`` grid, the last ``floor(obs_end * feat_fps)``.

    Frames are ``round(feat_fps / fps)`` apart; those before the window start (or frame 1) repeat the first
    frame inside it (AVT/S-GEAR padding).
    """
    stride = max(int(round(feat_fps / fps)), 1)
    last = int(math.floor(obs_end * feat_fps + 1e-6))
    if last < 1:
        raise ValueError(f"observed window ends at {obs_end:.3f} s, before the first frame")
    first = min(max(int(math.floor(obs_start * feat_fps + 1e-6)), 1), last)
    frames = last - stride * np.arange(num_frames - 1, -1, -1, dtype=np.int64)
    return np.maximum(frames, first)


def rulstm_sequence_frames(
    start: float, alpha: float = RULSTM_ALPHA, steps: int = RULSTM_STEPS, fps: float = RULSTM_FPS
) -> np.ndarray:
    """RULSTM's past frames (steps,) of an action starting at ``start`` s, before padding.

    ``floor((start - k * alpha) * fps)`` for k = steps..1, in RULSTM's float arithmetic
    (``RULSTM/dataset.py``; EK100: 14 steps of 0.25 s). RULSTM discards a segment when all are below 1
    (it starts before frame 9) and otherwise replaces those below 1 by the smallest valid one.
    """
    offsets = np.arange(alpha, alpha * (steps + 1), alpha)[::-1]
    return np.floor((start - offsets) * fps).astype(np.int64)


# ----------------------------------------------------------------------------------------------------
# Readers


_LMDB_ENVS: dict[tuple[int, str], Any] = {}


def _open_lmdb(path: Path) -> Any:
    """A read-only LMDB environment, one per process and store (py-lmdb refuses to open one twice).

    A ``data.mdb`` shorter than its pages (a truncated copy) raises: reading it would crash with SIGBUS.
    """
    key = (os.getpid(), str(path.resolve()))
    if key not in _LMDB_ENVS:
        import lmdb

        data = path / "data.mdb"
        if not data.is_file():
            raise FileNotFoundError(f"LMDB store not found: {path} (expected {data})")
        env = lmdb.open(str(path), readonly=True, lock=False, readahead=False, meminit=False)
        needed, size = (env.info()["last_pgno"] + 1) * env.stat()["psize"], data.stat().st_size
        if size < needed:
            env.close()
            raise ValueError(f"{data}: {size} bytes where its pages need {needed} (truncated)")
        _LMDB_ENVS[key] = env
    return _LMDB_ENVS[key]


def _message(err: Exception) -> str:
    """An exception's message (a KeyError's without the quotes that str() adds)."""
    return str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)


class LMDBFeatureReader:
    """Per-frame features from RULSTM LMDB stores (one per modality), concatenated on channels.

    ``paths`` are LMDB directories (holding ``data.mdb``), ``dims`` the feature size of each (rgb/flow
    1024, obj 352, irCSN 2048). Backward lookup (AVT ``EpicRULSTMFeatsReader``), for stores written at
    another rate than the 30-fps grid (AVT's irCSN-152 features, 10 fps: a key every third frame): a
    missing key ``f`` is looked up at ``f - 1``, ..., ``f - max_backtrack`` (down to frame 0, never a
    later frame, so nothing after the observed window is read), the first present one is used (AVT: 9).
    With none, it raises; the error names the store, the keys tried and the segment. Stores are checked
    and opened lazily in each process (the demo data may not exist yet; safe with DataLoader workers).
    """

    def __init__(
        self, paths: PathLike | Sequence[PathLike], dims: int | Sequence[int], max_backtrack: int = 0
    ):
        self.paths = [Path(paths)] if isinstance(paths, str | os.PathLike) else [Path(p) for p in paths]
        self.dims = [int(dims)] * len(self.paths) if isinstance(dims, int) else [int(d) for d in dims]
        if len(self.dims) != len(self.paths):
            raise ValueError(f"{len(self.paths)} LMDB paths but {len(self.dims)} dims")
        self.max_backtrack = int(max_backtrack)
        self._envs: list[Any] | None = None
        self._pid: int | None = None

    @property
    def dim(self) -> int:
        return sum(self.dims)

    def _open(self) -> list[Any]:
        if self._envs is None or self._pid != os.getpid():
            self._envs = [_open_lmdb(path) for path in self.paths]
            self._pid = os.getpid()
        return self._envs

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_envs": None, "_pid": None}

    def _get(self, txn: Any, path: Path, dim: int, segment: Segment, frame: int) -> np.ndarray:
        for candidate in range(frame, max(frame - self.max_backtrack, 0) - 1, -1):
            key = lmdb_key(segment.video_id, candidate)
            value = txn.get(key.encode())
            if value is not None:
                if len(value) != 4 * dim:
                    raise ValueError(
                        f"{path}: key {key} holds {len(value) // 4} float32 values, expected {dim} "
                        f"(segment {segment.uid})"
                    )
                return np.frombuffer(value, dtype="<f4")
        earlier = min(self.max_backtrack, frame)
        tried = f" nor at the {earlier} frames before it" if earlier > 0 else ""
        raise KeyError(f"{path}: no key {lmdb_key(segment.video_id, frame)}{tried} (segment {segment.uid})")

    def check_headers(self, requests: Sequence[tuple[Segment, np.ndarray]]) -> list[str]:
        """Problems with the keys that ``requests`` (segment, frames) read, without reading the values.

        One per store that cannot be opened (missing, not LMDB, truncated) and one per segment and store
        with a key missing (after the backward lookup) or not holding ``dim`` float32 values.
        """
        import lmdb

        problems = []
        for path, dim in zip(self.paths, self.dims):
            try:
                env = _open_lmdb(path)
            except (OSError, ValueError, lmdb.Error) as err:
                problems.append(str(err))
                continue
            with env.begin(buffers=True) as txn:  # values stay in the memory map: only their sizes are read
                for segment, frames in requests:
                    try:
                        for frame in np.unique(frames):
                            self._get(txn, path, dim, segment, int(frame))
                    except (KeyError, ValueError, lmdb.Error) as err:
                        problems.append(_message(err))
        return problems

    def __call__(self, segment: Segment, frames: np.ndarray, training: bool = False) -> torch.Tensor:
        """Features (T, sum(dims)) float32 of the given 1-based frames of the segment's video."""
        parts = []
        for env, path, dim in zip(self._open(), self.paths, self.dims):
            with env.begin(buffers=False) as txn:
                parts.append(np.stack([self._get(txn, path, dim, segment, int(f)) for f in frames]))
        return torch.from_numpy(np.concatenate(parts, axis=1).astype(np.float32, copy=False))


class VideoFrameReader:
    """RGB frames decoded with decord at the sampled times, resized and cropped for a ViT.

    Videos are found at ``root / path_format.format(participant_id=..., video_id=...)`` (default: the
    EPIC-KITCHENS download layout ``P01/videos/P01_01.MP4``). A sampled 30-fps grid frame ``f`` is the video
    frame at ``f / 30`` s. Training: short side random in ``train_scale``, random ``crop_size`` crop,
    horizontal flip with p=0.5; evaluation: short side ``eval_scale``, centre crop. Normalised with
    ``mean``/``std`` (0.5 for the S-GEAR ViT). Returns (T, 3, crop_size, crop_size).
    """

    def __init__(
        self,
        root: PathLike,
        path_format: str = "{participant_id}/videos/{video_id}.MP4",
        crop_size: int = 384,
        train_scale: Sequence[int] = (384, 425),
        eval_scale: int = 388,
        mean: float | Sequence[float] = 0.5,
        std: float | Sequence[float] = 0.5,
        feat_fps: float = RULSTM_FPS,
    ) -> None:
        self.root = Path(root)
        self.path_format = path_format
        self.crop_size = int(crop_size)
        self.train_scale = (int(train_scale[0]), int(train_scale[1]))
        self.eval_scale = int(eval_scale)
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
        self.feat_fps = feat_fps
        if min(self.train_scale[0], self.eval_scale) < self.crop_size:
            raise ValueError(f"scales {train_scale}, {eval_scale} must be >= crop_size {crop_size}")

    def video_path(self, segment: Segment) -> Path:
        return self.root / self.path_format.format(
            participant_id=segment.participant_id, video_id=segment.video_id
        )

    def check_headers(self, requests: Sequence[tuple[Segment, np.ndarray]]) -> list[str]:
        """Problems with the videos that ``requests`` (segment, frames) read, without decoding frames.

        One per video that is missing, whose header decord cannot read, or that has no frames or no fps.
        """
        import decord

        uids: dict[Path, list[str]] = {}
        for segment, _ in requests:
            uids.setdefault(self.video_path(segment), []).append(segment.uid)
        problems = []
        for path, used in uids.items():
            where = f"{path} ({len(used)} segments, e.g. {used[0]})"
            if not path.is_file():
                problems.append(f"video not found: {where}")
                continue
            try:
                video = decord.VideoReader(str(path), num_threads=1)
                count, fps = len(video), float(video.get_avg_fps())
            except (RuntimeError, decord.DECORDError) as err:
                problems.append(f"{where}: cannot read the video header ({' '.join(str(err).split())})")
                continue
            if count < 1 or not fps > 0:
                problems.append(f"{where}: {count} frames at {fps} fps")
        return problems

    def _decode(self, path: Path, segment: Segment, frames: np.ndarray) -> torch.Tensor:
        import decord

        if not path.is_file():
            raise FileNotFoundError(f"video not found: {path} (segment {segment.uid})")
        try:
            video = decord.VideoReader(str(path), num_threads=1)
            fps = float(video.get_avg_fps())
            index = np.clip(np.floor(frames / self.feat_fps * fps + 1e-6).astype(np.int64), 0, len(video) - 1)
            array = video.get_batch(index.tolist()).asnumpy()
        except (RuntimeError, decord.DECORDError) as err:  # decord raises both on unreadable files
            raise ValueError(f"{path}: cannot decode frames (segment {segment.uid}): {err}") from err
        return torch.from_numpy(array).permute(0, 3, 1, 2).float().div_(255.0)

    def __call__(self, segment: Segment, frames: np.ndarray, training: bool = False) -> torch.Tensor:
        import torch.nn.functional as F

        clip = self._decode(self.video_path(segment), segment, frames)
        height, width = clip.shape[-2:]
        if training:
            short = int(torch.randint(self.train_scale[0], self.train_scale[1] + 1, (1,)))
        else:
            short = self.eval_scale
        scale = short / min(height, width)
        size = (max(round(height * scale), self.crop_size), max(round(width * scale), self.crop_size))
        clip = F.interpolate(clip, size=size, mode="bilinear", align_corners=False, antialias=True)
        if training:
            top = int(torch.randint(0, size[0] - self.crop_size + 1, (1,)))
            left = int(torch.randint(0, size[1] - self.crop_size + 1, (1,)))
        else:
            top, left = (size[0] - self.crop_size) // 2, (size[1] - self.crop_size) // 2
        clip = clip[..., top : top + self.crop_size, left : left + self.crop_size]
        if training and torch.rand(()) < 0.5:
            clip = clip.flip(-1)
        return ((clip - self.mean) / self.std).contiguous()


Reader = Callable[[Segment, np.ndarray, bool], torch.Tensor]


# ----------------------------------------------------------------------------------------------------
# Dataset


class AnticipationDataset(Dataset):
    """Segments of one or more annotation files, each read over its observed window.

    Items: ``inputs`` (T, ...) from ``reader``, ``action``/``verb``/``noun`` (int, -1 unknown),
    ``past_actions`` (T,) the action under each sampled frame (the latest-starting segment of the same
    video covering it, -1 for none; for the past classification loss), ``index`` (position in
    :attr:`segments`) and ``uid``. Training with ``jitter=j`` moves the window start forward by
    ``U(0, 1) * j * tau_o`` (S-GEAR: 0.5), the dropped frames repeating the first kept one.

    ``unseen_participants`` (EPIC ``EPIC_100_unseen_participant_ids_*.csv``) and ``tail_verbs`` /
    ``tail_nouns`` (``EPIC_100_tail_*.csv``) feed the unseen and tail metrics.

    Segments without an observed frame go to :attr:`discarded` (AVT ``drop_style=correct``). With
    ``rulstm_discard``, an evaluation dataset discards as RULSTM's official EK100 evaluation instead: only
    the segments whose 14 x 0.25 s past has no frame (:func:`rulstm_sequence_frames`; 10 of EK100
    validation, against AVT's 30); the others without an observed frame repeat RULSTM's padding frame,
    its earliest valid one, which lies up to 0.75 s after the window end (:attr:`rulstm_padding`, uid ->
    frame). Training datasets always discard as AVT.
    """

    def __init__(
        self,
        annotations: PathLike | Sequence[PathLike],
        actions: PathLike | ActionTable,
        reader: Reader,
        tau_a: float = 1.0,
        tau_o: float = 10.0,
        num_frames: int = 10,
        fps: float = 1.0,
        training: bool = False,
        jitter: float = 0.0,
        unseen_participants: PathLike | None = None,
        tail_verbs: PathLike | None = None,
        tail_nouns: PathLike | None = None,
        feat_fps: float = RULSTM_FPS,
        check_first: bool = True,
        rulstm_discard: bool = False,
    ) -> None:
        if num_frames < 1 or fps <= 0 or tau_o <= 0:
            raise ValueError(
                f"need num_frames >= 1, fps > 0 and tau_o > 0 (got {num_frames}, {fps}, {tau_o})"
            )
        if not 0.0 <= jitter < 1.0:
            raise ValueError(f"jitter must be in [0, 1), got {jitter}")
        self.actions = actions if isinstance(actions, ActionTable) else ActionTable.from_csv(actions)
        files = [annotations] if isinstance(annotations, str | os.PathLike) else list(annotations)
        self.annotation_files = [Path(f) for f in files]
        self.reader = reader
        self.tau_a, self.tau_o = float(tau_a), float(tau_o)
        self.num_frames, self.fps, self.feat_fps = int(num_frames), float(fps), float(feat_fps)
        self.training = training
        self.jitter = float(jitter)
        all_segments = [s for f in self.annotation_files for s in read_segments(f, self.actions)]
        self.rulstm_discard = bool(rulstm_discard) and not training
        self.segments: list[Segment] = []
        self.discarded: list[Segment] = []
        self.rulstm_padding: dict[str, int] = {}
        for segment in all_segments:
            _, end = anticipation_window(segment.start, self.tau_a, self.tau_o)
            keep = end * self.feat_fps >= 1.0 - 1e-6
            if self.rulstm_discard:
                past = rulstm_sequence_frames(segment.start, fps=self.feat_fps)
                if past.max() >= 1 and not keep:
                    self.rulstm_padding[segment.uid] = int(past[past >= 1].min())
                keep = past.max() >= 1
            (self.segments if keep else self.discarded).append(segment)
        if self.discarded:
            rule = "RULSTM: none in its past sequence" if self.rulstm_discard else "AVT drop_style=correct"
            log.warning(
                "%s: %d segments start less than tau_a=%.2f s (+1 frame) into their video and have no "
                "observed frame (%s); they are left out, e.g. %s",
                ", ".join(map(str, self.annotation_files)),
                len(self.discarded),
                self.tau_a,
                rule,
                self.discarded[:3],
            )
        if self.rulstm_padding:
            log.warning(
                "%d segments without an observed frame repeat RULSTM's padding frame (official EK100 "
                "protocol), e.g. %s",
                len(self.rulstm_padding),
                list(self.rulstm_padding.items())[:3],
            )
        self._timeline = self._build_timeline(all_segments)
        unseen = set(read_id_list(unseen_participants)) if unseen_participants else None
        self.unseen = (
            None if unseen is None else np.array([s.participant_id in unseen for s in self.segments])
        )
        self.discarded_unseen = (
            None if unseen is None else np.array([s.participant_id in unseen for s in self.discarded], bool)
        )
        self.tail_verbs = None if tail_verbs is None else read_class_ids(tail_verbs)
        self.tail_nouns = None if tail_nouns is None else read_class_ids(tail_nouns)
        if (
            check_first and self.segments
        ):  # a wrong feature dim or a missing key fails at start-up, not mid-epoch
            self.reader(self.segments[0], self.frames_of(self.segments[0]), False)

    @staticmethod
    def _build_timeline(segments: Sequence[Segment]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per video: starts, stops and actions of its labelled segments, sorted by start."""
        by_video: dict[str, list[Segment]] = {}
        for s in segments:
            if s.action >= 0:
                by_video.setdefault(s.video_id, []).append(s)
        timeline = {}
        for video, segs in by_video.items():
            segs.sort(key=lambda s: s.start)
            timeline[video] = (
                np.array([s.start for s in segs]),
                np.array([s.stop for s in segs]),
                np.array([s.action for s in segs], dtype=np.int64),
            )
        return timeline

    def frame_labels(self, video_id: str, frames: np.ndarray) -> np.ndarray:
        """Action under each 30-fps frame (latest-starting covering segment), -1 where none."""
        labels = np.full(len(frames), -1, dtype=np.int64)
        if video_id not in self._timeline:
            return labels
        starts, stops, actions = self._timeline[video_id]
        for i, t in enumerate(frames / self.feat_fps):
            covering = np.flatnonzero((starts <= t) & (stops >= t))
            if len(covering):
                labels[i] = actions[covering[-1]]
        return labels

    def frames_of(self, segment: Segment, jitter: float = 0.0) -> np.ndarray:
        """Sampled frames of a segment; ``jitter`` in [0, 1) moves the window start by ``jitter * tau_o``."""
        padding = self.rulstm_padding.get(segment.uid)
        if padding is not None:
            return np.full(self.num_frames, padding, dtype=np.int64)
        start, end = anticipation_window(segment.start, self.tau_a, self.tau_o)
        start += jitter * (end - start)
        return sample_frames(start, end, self.num_frames, self.fps, self.feat_fps)

    def __len__(self) -> int:
        return len(self.segments)

    def check_inputs(self, full: bool = False) -> list[str]:
        """Problems with the inputs of the segments, each naming the file and the segment (or the video).

        ``full=False`` asks the reader's ``check_headers`` (LMDB keys and value sizes, video headers;
        nothing for a reader without one) about the frames each segment reads (without training jitter);
        ``full=True`` reads every segment as evaluation does, checking its step count and finite values.
        """
        requests = [(segment, self.frames_of(segment)) for segment in self.segments]
        if not full:
            check = getattr(self.reader, "check_headers", None)
            return [] if check is None else check(requests)
        problems = []
        for segment, frames in requests:
            try:
                inputs = self.reader(segment, frames, False)
                if inputs.shape[0] != self.num_frames:
                    raise ValueError(f"reader returned {inputs.shape[0]} steps, expected {self.num_frames}")
                if not torch.isfinite(inputs).all():
                    raise ValueError("non-finite values (NaN or inf) in the inputs")
            except Exception as err:  # any failure makes the segment unusable; report it and go on
                text, uid = _message(err), f"segment {segment.uid}"
                problems.append(text if uid in text else f"{text} ({uid})")
        return problems

    def __getitem__(self, index: int) -> dict:
        segment = self.segments[index]
        jitter = float(torch.rand(())) * self.jitter if self.training and self.jitter > 0 else 0.0
        frames = self.frames_of(segment, jitter)
        inputs = self.reader(segment, frames, self.training)
        if inputs.shape[0] != self.num_frames:
            raise ValueError(f"reader returned {inputs.shape[0]} steps for segment {segment.uid}")
        return {
            "inputs": inputs,
            "action": segment.action,
            "verb": segment.verb,
            "noun": segment.noun,
            "past_actions": torch.from_numpy(self.frame_labels(segment.video_id, frames)),
            "index": index,
            "uid": segment.uid,
        }


# ----------------------------------------------------------------------------------------------------
# Lightning data module


class AnticipationDataModule(L.LightningDataModule):
    """Train/val/test loaders; ``dataset`` is a factory (Hydra partial of :class:`AnticipationDataset`).

    It is called with ``annotations=<split files>`` and ``training``; equal val and test files share one
    dataset. ``demo`` (optional callable) generates the demo data in :meth:`prepare_data`.
    :meth:`check_files` checks every split's files before fitting, as ``validate`` says.
    """

    def __init__(
        self,
        dataset: Callable[..., AnticipationDataset],
        train_annotations: PathLike | Sequence[PathLike] | None = None,
        val_annotations: PathLike | Sequence[PathLike] | None = None,
        test_annotations: PathLike | Sequence[PathLike] | None = None,
        demo: Callable[[], Any] | None = None,
        batch_size: int = 16,
        eval_batch_size: int = 16,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        validate: str = "headers",
    ) -> None:
        super().__init__()
        self.validate = checked_validate(validate)
        self.dataset = dataset
        self.files = {"train": train_annotations, "val": val_annotations, "test": test_annotations}
        self.demo = demo
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.train_dataset: AnticipationDataset | None = None
        self.val_dataset: AnticipationDataset | None = None
        self.test_dataset: AnticipationDataset | None = None
        self._built: dict[tuple, AnticipationDataset] = {}

    def prepare_data(self) -> None:
        """Generate the demo data if configured (Lightning runs this once per node)."""
        if self.demo is not None:
            self.demo()

    def _key(self, stage: str) -> tuple[tuple[str, ...], bool] | None:
        """(annotation files, training) of a stage; None when it has no files."""
        files = self.files[stage]
        if files is None:
            return None
        files = [str(files)] if isinstance(files, str | os.PathLike) else [str(f) for f in files]
        return tuple(files), stage == "train"

    def _build(self, stage: str) -> AnticipationDataset | None:
        key = self._key(stage)
        if key is not None and key not in self._built:
            self._built[key] = self.dataset(annotations=list(key[0]), training=key[1])
        return None if key is None else self._built[key]

    def check_files(self) -> list[str]:
        """Problems with the files of every configured split (train/val/test), one per bad file or record.

        Works before :meth:`setup`: each split's dataset is built anew (without its first-segment read
        when the factory takes ``check_first``) and checked by :meth:`AnticipationDataset.check_inputs`,
        headers and keys only unless ``validate="full"``. A dataset that cannot be built is one problem.
        Splits sharing their files are checked once. With ``demo`` set, a split whose files are missing at
        build time is skipped: :meth:`prepare_data` generates them, so call this after it to check the
        generated data. ``validate="none"`` returns [].
        """
        if self.validate == "none":
            return []
        lazy = {"check_first": False} if "check_first" in inspect.signature(self.dataset).parameters else {}
        problems = []
        for label, _, (files, training) in shared_splits({stage: self._key(stage) for stage in self.files}):
            try:
                dataset = self.dataset(annotations=list(files), training=training, **lazy)
            except Exception as err:  # a split that cannot be built is one problem; the others still count
                if self.demo is not None and isinstance(err, FileNotFoundError):
                    log.info("%s: demo data not generated yet, nothing to check (%s)", label, err)
                    continue
                problems.append(f"{label}: cannot build the dataset ({type(err).__name__}: {err})")
                continue
            problems += [f"{label}: {problem}" for problem in dataset.check_inputs(self.validate == "full")]
        return problems

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.train_dataset = self._build("train")
        if stage in (None, "fit", "validate"):
            self.val_dataset = self._build("val")
        if stage in (None, "test", "predict"):
            self.test_dataset = self._build("test")

    def _loader(self, dataset: AnticipationDataset | None, name: str, training: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"no {name} annotations configured (or setup() was not called)")
        return make_loader(
            dataset,
            self.batch_size if training else self.eval_batch_size,
            training,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_dataset, "train", training=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_dataset, "val", training=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, "test", training=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset, "test", training=False)
