"""Ego-Exo4D demonstrator proficiency data: official json -> jsonl, multi-view clip reading, data module.

Official annotations (``annotations/proficiency_demonstrator_{train,val}.json``; a list of records, or
``{"annotations": [...]}``) hold per take ``take_uid``, ``scenario_name``, ``video_paths`` (``ego``,
``exo1`` .. ``exo4``, e.g. ``takes/<take>/frame_aligned_videos/cam01.mp4``) and ``proficiency_score``.
:func:`prepare_annotation` turns one into the jsonl this task reads, one take per line::

    {"take_uid": ..., "take_name": ..., "scenario_name": ..., "task_name": ...,
     "video_paths": [ego, exo1, exo2, exo3, exo4], "proficiency_level": "Early Expert", "label": 1}

(a view absent from the json is ``null``; a take without ``proficiency_score``, e.g. the hidden test
split, has ``null`` level and label). :func:`read_release_jsonl` reads the SkillFormer release's own
jsonl (``{"video_paths": [...], "analysis": ..., "proficiency_level": ...}`` per row, takes repeated as
listed), the format of the paper's evaluation file. Command line::

    python -m egolab.data.skill prepare_annotation \\
        DATA/egoexo4d/annotations/proficiency_demonstrator_train.json \\
        DATA/egoexo4d/annotations/skill_train.jsonl

Videos are read from ``<root>/<path>`` with ``frame_aligned_videos`` replaced by
``frame_aligned_videos/<video_subdir>`` (default ``downscaled/448``, the ``downscaled_takes/448`` part of
the download). ``camera_indices`` picks views from the ``video_paths`` list: 0 ego, 1-4 exo.

Sampling (:func:`sample_frame_indices`): a window of ``num_frames * frame_sample_rate`` frames holds
``num_frames`` evenly spaced frames. Training draws the window at random (per view by default, as the
release does; ``independent_view_windows=false`` shares one); evaluation takes the centred window, or
``num_clips`` evenly spread windows whose predictions the task averages. Frames are resized (shortest
edge, bilinear with antialiasing, in uint8), centre-cropped, scaled by 1/255 and normalised like the
checkpoint's ``VideoMAEImageProcessor`` (equal to its torchvision backend; within one grey level of PIL).

A missing or unreadable video raises an error naming the file and the take. With ``bad_videos="skip"``
takes with missing files are left out at start-up (counted in the log and listed in ``skipped``) and a
take whose video fails to decode is dropped from its batch with a warning; no other take stands in.
:meth:`SkillDataModule.check_files` finds them all before fitting (``validate``: ``headers`` opens every
video's container with decord, ``full`` also decodes every frame).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from egolab.data.checks import checked_validate, shared_splits
from egolab.data.loaders import make_loader
from egolab.data.skill_annotations import LABEL_NAMES, jsonl_records, label_of, take_name
from egolab.errors import UserError

log = logging.getLogger(__name__)

"""Proficiency levels in label-id order (the release's mapping)."""

VIEW_KEYS = ("ego", "exo1", "exo2", "exo3", "exo4")
"""``video_paths`` keys in ``camera_indices`` order: 0 is the Aria (ego) view, 1-4 the exo cameras."""

_MAX_REPORTED = 5


# ----------------------------------------------------------------------------------------------------
# Official json -> jsonl


def convert_official_records(records: Sequence[Mapping[str, Any]], source: str = "") -> list[dict]:
    """Validated jsonl records (see the module docstring) of the official demonstrator-proficiency records."""
    lines: list[dict] = []
    seen: set[str] = set()
    for k, rec in enumerate(records):
        where = f"{source}: record {k}"
        if not isinstance(rec, Mapping):
            raise ValueError(f"{where}: expected an object, got {type(rec).__name__}")
        uid = rec.get("take_uid")
        if not isinstance(uid, str) or not uid:
            raise ValueError(f"{where}: missing take_uid")
        where = f"{source}: take {uid}"
        if uid in seen:
            raise ValueError(f"{where}: duplicate take_uid")
        seen.add(uid)
        video_paths = rec.get("video_paths")
        if not isinstance(video_paths, Mapping) or not video_paths:
            raise ValueError(f"{where}: 'video_paths' must be an object with keys {list(VIEW_KEYS)}")
        unknown = sorted(set(video_paths) - set(VIEW_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown video_paths keys {unknown} (expected {list(VIEW_KEYS)})")
        paths = [video_paths.get(key) or None for key in VIEW_KEYS]
        scenario = rec.get("scenario_name")
        if not isinstance(scenario, str) or not scenario:
            raise ValueError(f"{where}: missing scenario_name")
        label = label_of(rec.get("proficiency_score"), where)
        lines.append(
            {
                "take_uid": uid,
                "take_name": take_name(paths),
                "scenario_name": scenario,
                "task_name": rec.get("task_name", ""),
                "video_paths": paths,
                "proficiency_level": None if label is None else LABEL_NAMES[label],
                "label": label,
            }
        )
    return lines


def read_official_annotations(path: str | os.PathLike) -> list[dict]:
    """Records of an official ``proficiency_demonstrator_*.json`` (a list, or under ``annotations``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"official annotation json not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid json ({err})") from err
    if isinstance(data, Mapping):
        data = data.get("annotations")
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of take records or an object with an 'annotations' list")
    return data


def prepare_annotation(official_json: str | os.PathLike, output_jsonl: str | os.PathLike) -> int:
    """Convert an official demonstrator-proficiency json into the task's jsonl; return the take count."""
    lines = convert_official_records(read_official_annotations(official_json), str(official_json))
    output = Path(output_jsonl)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    tmp.write_text("".join(json.dumps(line) + "\n" for line in lines))
    tmp.replace(output)
    return len(lines)


@dataclass(frozen=True)
class TakeRecord:
    """One take of the jsonl: id, scenario, label id (``None`` if hidden) and the five view paths."""

    take_uid: str
    take_name: str
    scenario: str
    label: int | None
    video_paths: tuple[str | None, ...]


def read_annotation_jsonl(path: str | os.PathLike) -> list[TakeRecord]:
    """Takes of a jsonl written by :func:`prepare_annotation`; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"annotation jsonl not found: {path} (make it with `python -m egolab.data.skill "
            "prepare_annotation <official json> <jsonl>`)"
        )
    takes: list[TakeRecord] = []
    for _, where, rec in jsonl_records(path):
        paths = rec.get("video_paths")
        if (
            not isinstance(rec.get("take_uid"), str)
            or not isinstance(paths, list)
            or len(paths) != len(VIEW_KEYS)
        ):
            raise ValueError(f"{where}: expected take_uid and a list of {len(VIEW_KEYS)} video_paths")
        label = rec.get("label")
        if label is not None and (not isinstance(label, int) or not 0 <= label < len(LABEL_NAMES)):
            raise ValueError(f"{where}: take {rec['take_uid']}: label must be 0-3 or null, got {label!r}")
        takes.append(
            TakeRecord(
                rec["take_uid"],
                rec.get("take_name") or take_name(paths),
                str(rec.get("scenario_name", "")),
                label,
                tuple(paths),
            )
        )
    if not takes:
        raise ValueError(f"{path}: no takes")
    return takes


# ----------------------------------------------------------------------------------------------------
# Sampling, decoding, preprocessing


def sample_frame_indices(start: int, num_frames: int, window: int) -> np.ndarray:
    """``num_frames`` evenly spaced frame indices in ``[start, start + window - 1]``.

    ``linspace(start, start + window, num_frames)`` truncated and clipped to the window's last frame
    (the release's rule): ``start=0, num_frames=8, window=32`` gives ``0 4 9 13 18 22 27 31``.
    """
    indices = np.linspace(start, start + window, num_frames)
    return np.clip(indices, start, start + window - 1).astype(np.int64)


def window_length(num_frames: int, frame_sample_rate: int, seg_len: int) -> int:
    """Frames a clip spans: ``num_frames * frame_sample_rate``, or the whole video if shorter."""
    return max(1, min(num_frames * frame_sample_rate, seg_len))


def eval_window_starts(seg_len: int, window: int, num_clips: int) -> list[int]:
    """Deterministic starts: the centred window for one clip, else ``num_clips`` evenly spread ones."""
    slack = seg_len - window
    if num_clips == 1:
        return [slack // 2]
    return [int(round(s)) for s in np.linspace(0, slack, num_clips)]


class VideoReadError(UserError, RuntimeError):
    """A video of a take is missing or cannot be decoded."""


def _video_error(path: Path, take: str | None, err: Exception) -> VideoReadError:
    state = "missing" if not path.is_file() else "unreadable"
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return VideoReadError(f"{_take_prefix(take)}{state} video {path}: {first}")


def _take_prefix(take: str | None) -> str:
    return f"take {take}: " if take is not None else ""


def open_video(path: Path, take: str | None = None, num_threads: int = 1) -> Any:
    """A decord ``VideoReader`` of ``path`` with at least one frame; errors name the file (and the take,
    when the video belongs to one)."""
    import decord

    try:
        reader = decord.VideoReader(str(path), num_threads=num_threads)
    except (RuntimeError, decord.DECORDError) as err:
        raise _video_error(path, take, err) from err
    if len(reader) < 1:
        raise VideoReadError(f"{_take_prefix(take)}video {path} has no frames")
    return reader


def read_frames(
    path: Path, indices: Sequence[int], take: str | None = None, reader: Any = None
) -> np.ndarray:
    """Decode frames ``indices`` of ``path`` (through ``reader`` if open): ``(T, H, W, 3)`` uint8."""
    import decord

    reader = reader if reader is not None else open_video(path, take)
    try:
        return reader.get_batch(list(indices)).asnumpy()
    except (RuntimeError, IndexError, decord.DECORDError) as err:
        raise _video_error(path, take, err) from err


def preprocess_frames(
    frames: np.ndarray | torch.Tensor,
    shortest_edge: int,
    crop_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``(T, H, W, 3)`` uint8 -> ``(T, 3, crop, crop)`` float32, like ``VideoMAEImageProcessor``.

    Shortest edge to ``shortest_edge`` (bilinear, antialiased, in uint8 like the processor's torchvision
    backend; the long edge is truncated like HF's ``int(size * long / short)``), centre crop, then once in
    float32 ``(x / 255 - mean) / std``, written into ``out`` when given (a float32 tensor of that shape).
    """
    # channels-last strides (the permuted decoder layout) take torch's fast uint8 antialiased kernel
    x = torch.as_tensor(frames).permute(0, 3, 1, 2)
    h, w = x.shape[-2:]
    if h <= w:
        size = (shortest_edge, int(shortest_edge * w / h))
    else:
        size = (int(shortest_edge * h / w), shortest_edge)
    if size != (h, w):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    if min(size) < crop_size:
        raise ValueError(f"crop {crop_size} is larger than the resized frame {size}")
    top, left = (size[0] - crop_size) // 2, (size[1] - crop_size) // 2
    x = x[..., top : top + crop_size, left : left + crop_size]
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255.0
    if out is None:
        out = torch.empty(x.shape, dtype=torch.float32)
    return out.copy_(x).sub_(mean_t).div_(std_t)


# ----------------------------------------------------------------------------------------------------
# Dataset


class SkillDataset(Dataset):
    """Takes of one jsonl with their selected views, as normalised clips.

    Items: ``take_uid``, ``take_name``, ``scenario``, ``label`` (-1 when hidden) and ``pixel_values``:
    ``(V, T, C, H, W)`` in training, ``(num_clips, V, T, C, H, W)`` in evaluation. See the module
    docstring for paths, sampling and ``bad_videos``. Training windows draw from the process's global
    torch RNG, which Lightning seeds (per DataLoader worker) and checkpoints carry. ``check_videos=False``
    keeps every take without looking for its files (:meth:`SkillDataModule.check_files` reports them).
    """

    def __init__(
        self,
        annotation_file: str | os.PathLike,
        root: str | os.PathLike,
        camera_indices: Sequence[int] = (0,),
        num_frames: int = 8,
        frame_sample_rate: int = 4,
        training: bool = False,
        num_clips: int = 1,
        independent_view_windows: bool = True,
        shortest_edge: int = 224,
        crop_size: int = 224,
        mean: Sequence[float] = (0.45, 0.45, 0.45),
        std: Sequence[float] = (0.225, 0.225, 0.225),
        video_subdir: str | None = "downscaled/448",
        bad_videos: str = "error",
        decode_threads: int = 1,
        check_videos: bool = True,
    ) -> None:
        if bad_videos not in ("error", "skip"):
            raise ValueError(f"bad_videos must be 'error' or 'skip', got {bad_videos!r}")
        cams = [int(c) for c in camera_indices]
        if not cams or any(not 0 <= c < len(VIEW_KEYS) for c in cams) or len(set(cams)) != len(cams):
            raise ValueError(f"camera_indices must be distinct values in 0..4, got {list(camera_indices)}")
        if num_frames < 1 or frame_sample_rate < 1 or num_clips < 1:
            raise ValueError("num_frames, frame_sample_rate and num_clips must be positive")
        self.annotation_file = Path(annotation_file)
        self.root = Path(root)
        self.camera_indices = cams
        self.num_frames = int(num_frames)
        self.frame_sample_rate = int(frame_sample_rate)
        self.training = training
        self.num_clips = int(num_clips)
        self.independent_view_windows = independent_view_windows
        self.shortest_edge = int(shortest_edge)
        self.crop_size = int(crop_size)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.video_subdir = video_subdir.strip("/") if video_subdir else ""
        self.bad_videos = bad_videos
        self.decode_threads = int(decode_threads)
        self.label_names = list(LABEL_NAMES)
        takes = read_annotation_jsonl(self.annotation_file)
        self.takes, self.skipped = self._check_files(takes) if check_videos else (takes, [])

    def video_path(self, relative: str) -> Path:
        """Absolute path of an official ``video_paths`` entry under ``root`` and ``video_subdir``."""
        if self.video_subdir:
            relative = relative.replace(
                "frame_aligned_videos/", f"frame_aligned_videos/{self.video_subdir}/", 1
            )
        return self.root / relative

    def _no_view(self, take: TakeRecord, cam: int) -> str:
        return (
            f"take {take.take_uid} ({take.take_name}) in {self.annotation_file} has no "
            f"{VIEW_KEYS[cam]} video (camera index {cam})"
        )

    def _views(self, take: TakeRecord) -> list[Path]:
        paths = []
        for cam in self.camera_indices:
            rel = take.video_paths[cam]
            if rel is None:
                raise VideoReadError(self._no_view(take, cam))
            paths.append(self.video_path(rel))
        return paths

    def video_problems(self, take: TakeRecord, level: str = "exists", chunk: int = 64) -> list[str]:
        """One message per selected view of ``take`` that cannot be read: no such view or no file, and with
        ``level`` "headers" a container decord cannot open, with "full" also a frame that fails to decode
        (``chunk`` frames at a time)."""
        name = f"{take.take_uid} ({take.take_name})"
        problems = []
        for cam in self.camera_indices:
            rel = take.video_paths[cam]
            if rel is None:
                problems.append(self._no_view(take, cam))
                continue
            path = self.video_path(rel)
            if not path.is_file():
                problems.append(f"take {name}: missing video {path}")
            elif level in ("headers", "full"):
                try:
                    reader = open_video(path, name, self.decode_threads)
                    if level == "full":
                        for start in range(0, len(reader), chunk):
                            read_frames(path, range(start, min(start + chunk, len(reader))), name, reader)
                except VideoReadError as err:
                    problems.append(str(err))
        return problems

    def _check_files(self, takes: list[TakeRecord]) -> tuple[list[TakeRecord], list[str]]:
        kept, bad = [], []
        for take in takes:
            problems = self.video_problems(take)
            if problems:
                bad.append((take, problems[0]))
            else:
                kept.append(take)
        if bad:
            examples = "\n  ".join(msg for _, msg in bad[:_MAX_REPORTED])
            if self.bad_videos == "error":
                raise VideoReadError(
                    f"{len(bad)} of {len(takes)} takes in {self.annotation_file} lack a video for "
                    f"camera_indices {self.camera_indices} under {self.root}, e.g.\n  {examples}\n"
                    "(set bad_videos=skip to leave them out)"
                )
            log.warning(
                "skipping %d of %d takes without their videos, e.g.\n  %s", len(bad), len(takes), examples
            )
        if not kept:
            raise ValueError(f"{self.annotation_file}: no takes with readable videos under {self.root}")
        return kept, [t.take_uid for t, _ in bad]

    def __len__(self) -> int:
        return len(self.takes)

    @property
    def take_uids(self) -> list[str]:
        return [t.take_uid for t in self.takes]

    def _starts(self, lengths: list[int]) -> list[list[int]]:
        """Window starts per view (outer list: views, inner: clips)."""
        span = [window_length(self.num_frames, self.frame_sample_rate, n) for n in lengths]
        if not self.training:
            return [eval_window_starts(n, w, self.num_clips) for n, w in zip(lengths, span)]
        if self.independent_view_windows:
            return [[int(torch.randint(0, n - w + 1, ()).item())] for n, w in zip(lengths, span)]
        shortest = min(lengths)
        window = window_length(self.num_frames, self.frame_sample_rate, shortest)
        start = int(torch.randint(0, shortest - window + 1, ()).item())
        return [[start] for _ in lengths]

    def _load(self, take: TakeRecord) -> torch.Tensor:
        paths = self._views(take)
        name = f"{take.take_uid} ({take.take_name})"
        readers = [open_video(p, name, self.decode_threads) for p in paths]
        lengths = [len(r) for r in readers]
        starts = self._starts(lengths)
        t, size = self.num_frames, self.crop_size
        # filled in place: fresh float buffers cost page faults comparable to decoding a small clip
        pixels = torch.empty(len(starts[0]), len(paths), t, 3, size, size)  # (clips, V, T, C, H, W)
        for v, (path, reader, n, view_starts) in enumerate(zip(paths, readers, lengths, starts)):
            window = window_length(t, self.frame_sample_rate, n)
            indices = np.concatenate([sample_frame_indices(s, t, window) for s in view_starts])
            frames = read_frames(path, indices.tolist(), name, reader)
            for c in range(len(view_starts)):
                clip = frames[c * t : (c + 1) * t]
                preprocess_frames(clip, self.shortest_edge, size, self.mean, self.std, out=pixels[c, v])
        return pixels[0] if self.training else pixels

    def __getitem__(self, index: int) -> dict | None:
        take = self.takes[index]
        try:
            pixels = self._load(take)
        except VideoReadError as err:
            if self.bad_videos == "error":
                raise
            log.warning("skipping %s", err)
            return None
        return {
            "take_uid": take.take_uid,
            "take_name": take.take_name,
            "scenario": take.scenario,
            "label": -1 if take.label is None else take.label,
            "pixel_values": pixels,
        }


def collate_skill(items: Sequence[dict | None]) -> dict | None:
    """Stack items into ``pixel_values``, ``labels`` (int64), ``take_uids``, ``take_names``, ``scenarios``.

    Items that are ``None`` (skipped takes) are dropped; a batch with none left is ``None``.
    """
    kept = [it for it in items if it is not None]
    if not kept:
        return None
    return {
        "pixel_values": torch.stack([it["pixel_values"] for it in kept]),
        "labels": torch.tensor([it["label"] for it in kept], dtype=torch.int64),
        "take_uids": [it["take_uid"] for it in kept],
        "take_names": [it["take_name"] for it in kept],
        "scenarios": [it["scenario"] for it in kept],
    }


# ----------------------------------------------------------------------------------------------------
# Lightning data module


class SkillDataModule(L.LightningDataModule):
    """Train/val/test loaders over jsonl files sharing one dataset factory.

    ``root`` is the Ego-Exo4D download (it holds ``takes/``); annotation files are relative to it unless
    absolute. ``dataset`` is a factory (a Hydra partial of :class:`SkillDataset`) called with ``root``,
    ``annotation_file`` and ``training``; equal val and test files share one dataset. ``demo`` (optional
    callable) makes the demo data in :meth:`prepare_data`. The training loader shuffles and drops the
    last incomplete batch. Workers decode and preprocess; they are not persistent, so their seeds come
    from the global RNG each epoch (checkpointed: a resumed run samples like an uninterrupted one).
    ``validate`` is how much of every split's videos :meth:`check_files` reads before fitting.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        dataset: Callable[..., SkillDataset],
        train_file: str | os.PathLike | None = None,
        val_file: str | os.PathLike | None = None,
        test_file: str | os.PathLike | None = None,
        demo: Callable[[], Any] | None = None,
        batch_size: int = 4,
        eval_batch_size: int = 4,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        validate: str = "headers",
    ) -> None:
        super().__init__()
        self.validate = checked_validate(validate)
        self.root = Path(root)
        self.dataset = dataset
        self.files = {
            stage: None if path is None else self.root / path
            for stage, path in (("train", train_file), ("val", val_file), ("test", test_file))
        }
        self.demo = demo
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers
        self.train_dataset: SkillDataset | None = None
        self.val_dataset: SkillDataset | None = None
        self.test_dataset: SkillDataset | None = None
        self._built: dict[tuple[str, bool], SkillDataset] = {}

    def prepare_data(self) -> None:
        """Generate the demo data if configured (Lightning runs this once per node)."""
        if self.demo is not None:
            self.demo()

    def check_files(self) -> list[str]:
        """Every unreadable video of the configured splits, one message per file naming split and take.

        ``validate="headers"`` opens each selected view's container with decord (its frame count; no frame
        is decoded), ``"full"`` also decodes every frame, ``"none"`` checks nothing. Works before
        :meth:`prepare_data`: a split whose annotation file a configured demo has not made yet is left to
        the generator. With ``bad_videos="skip"`` bad takes are left out instead of failing the run, so
        their problems are only logged, unless no take of the split would be left.
        """
        if self.validate == "none":
            return []
        files = {
            stage: path if path is not None and (self.demo is None or path.is_file()) else None
            for stage, path in self.files.items()
        }
        problems: list[str] = []
        for where, stages, path in shared_splits(files):
            try:
                data = self.dataset(
                    root=self.root, annotation_file=path, training=stages[0] == "train", check_videos=False
                )
            except (OSError, ValueError) as err:
                problems.append(f"{where}: {err}")
                continue
            found = [data.video_problems(take, self.validate) for take in data.takes]
            messages = [f"{where}: {message}" for take in found for message in take]
            if data.bad_videos == "skip" and not all(found):
                if messages:
                    log.warning(
                        "%d unreadable videos (bad_videos=skip leaves their takes out), e.g.\n  %s",
                        len(messages), "\n  ".join(messages[:_MAX_REPORTED]),
                    )  # fmt: skip
            else:
                problems += messages
        return problems

    def _build(self, stage: str) -> SkillDataset | None:
        path = self.files[stage]
        if path is None:
            return None
        key = (str(path), stage == "train")
        if key not in self._built:
            self._built[key] = self.dataset(root=self.root, annotation_file=path, training=stage == "train")
        return self._built[key]

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets the stage needs (fit: train + val; validate: val; test/predict: test)."""
        if stage in (None, "fit"):
            self.train_dataset = self._build("train")
        if stage in (None, "fit", "validate"):
            self.val_dataset = self._build("val")
        if stage in (None, "test", "predict"):
            self.test_dataset = self._build("test")

    def _loader(self, dataset: SkillDataset | None, name: str, training: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"no {name} annotation file configured (or setup() was not called)")
        batch_size = self.batch_size if training else self.eval_batch_size
        if training and len(dataset) < batch_size:
            raise ValueError(f"the training set has {len(dataset)} takes, fewer than batch_size={batch_size}")
        return make_loader(
            dataset,
            batch_size,
            training,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=collate_skill,
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
    """``python -m egolab.data.skill prepare_annotation OFFICIAL_JSON OUTPUT_JSONL``."""
    parser = argparse.ArgumentParser(prog="python -m egolab.data.skill", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser(
        "prepare_annotation", help="official proficiency_demonstrator_<split>.json -> the task's jsonl"
    )
    prepare.add_argument(
        "official_json", help="e.g. DATA/egoexo4d/annotations/proficiency_demonstrator_train.json"
    )
    prepare.add_argument("output_jsonl", help="e.g. DATA/egoexo4d/annotations/skill_train.jsonl")
    args = parser.parse_args(argv)
    count = prepare_annotation(args.official_json, args.output_jsonl)
    print(f"wrote {count} takes to {args.output_jsonl}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
