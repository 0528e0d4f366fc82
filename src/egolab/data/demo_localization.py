"""Synthetic temporal action localization data in the official ActionFormer/ActivityNet file formats.

Writes ``<root>/annotations/demo.json`` (``{"version", "database": {vid: {"subset", "duration", "fps",
"annotations": [{"label", "segment", "segment(frames)", "label_id"}]}}}``) and one T x C float32
``<root>/features/<vid>.npy`` per video, with THUMOS-like timing (30 fps, a feature every 4 frames over
16-frame clips), so the data loads with the THUMOS settings (``feat_stride=4``, ``num_frames=16``,
per-video fps from the json).

Each video has 128-256 feature steps of Gaussian noise and 1-4 non-overlapping actions of 4-60 steps.
An action of class c adds, with a per-instance amplitude jitter, the class prototype direction over
its extent (boundary steps weighted by their overlap with the segment, so boundaries are sub-step
precise) plus class-specific onset and offset signatures peaking exactly at its start and end. The
noise keeps single steps ambiguous, yet boundaries are learnable: the demo ActionFormer
(conf/model/actionformer/demo.yaml, expts/demo/localization.txt settings, 30 epochs, seed 0) reached
average mAP@0.3:0.7 of 0.92 on the validation and 0.97 on the testing subset after about 2.3 minutes of
training on 8 CPU threads (0.80 / 0.89 with the weaker signal 2.0 / boundary 1.5).

:func:`synthetic_detections` makes ActivityNet-like ground truth and detector output as tables (no
features), for evaluator tests and benchmarks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from egolab.metrics.localization import SegmentTable

DEMO_DEFAULTS: dict[str, Any] = {
    "num_classes": 5,  # action classes, labelled action_0 .. action_{K-1}
    "num_videos": {"training": 96, "validation": 32, "testing": 32},  # videos per subset
    "feat_dim": 32,  # feature channels C
    "seed": 0,  # everything is a function of the parameters
    "fps": 30.0,  # video frame rate written to the json
    "feat_stride": 4,  # frames between consecutive features
    "num_frames": 16,  # frames per feature clip
    "min_steps": 128,  # feature steps per video, uniform in [min_steps, max_steps]
    "max_steps": 256,
    "max_actions": 4,  # 1 .. max_actions actions per video
    "min_action_steps": 4,  # action lengths, log-uniform in [min, max] feature steps
    "max_action_steps": 60,
    "signal": 2.5,  # amplitude of the class prototype inside an action
    "boundary": 3.0,  # amplitude of the onset/offset signatures
    "noise": 1.0,  # std of the background noise per channel
}
"""Default generator parameters (keyword arguments of :func:`make_demo_localization`)."""

FORMAT_VERSION = 1
MARKER = "demo_params.json"
JSON_NAME = "demo.json"


def _place_actions(rng: np.random.Generator, num_steps: int, params: dict) -> list[tuple[float, float]]:
    """Non-overlapping [start, end] grid intervals (at least 2 steps apart) inside [0, num_steps - 1]."""
    count = int(rng.integers(1, params["max_actions"] + 1))
    lo, hi = np.log(params["min_action_steps"]), np.log(params["max_action_steps"])
    placed: list[tuple[float, float]] = []
    for _ in range(50 * count):
        if len(placed) == count:
            break
        length = float(np.exp(rng.uniform(lo, hi)))
        length = min(length, num_steps - 2.0)
        start = float(rng.uniform(0.0, num_steps - 1.0 - length))
        end = start + length
        if all(end + 2.0 <= s or start >= e + 2.0 for s, e in placed):
            placed.append((start, end))
    return sorted(placed)


def _coverage(num_steps: int, start: float, end: float) -> np.ndarray:
    """Overlap of each step's cell [t - 0.5, t + 0.5] with [start, end]."""
    t = np.arange(num_steps, dtype=np.float64)
    return np.clip(np.minimum(t + 0.5, end) - np.maximum(t - 0.5, start), 0.0, 1.0)


def _bump(num_steps: int, centre: float) -> np.ndarray:
    """Triangle of half-width one step peaking at ``centre`` (sub-step boundary position)."""
    t = np.arange(num_steps, dtype=np.float64)
    return np.clip(1.0 - np.abs(t - centre), 0.0, None)


def _unit_vectors(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    vecs = rng.standard_normal((count, dim))
    return vecs / np.linalg.norm(vecs, axis=1, keepdims=True)


def _generate(root: Path, params: dict) -> dict:
    rng = np.random.default_rng(params["seed"])
    k, dim = params["num_classes"], params["feat_dim"]
    protos, onsets, offsets = (_unit_vectors(rng, k, dim) for _ in range(3))
    fps, stride, frames = float(params["fps"]), params["feat_stride"], params["num_frames"]
    grid_offset = 0.5 * frames / stride
    feat_dir = root / "features"
    feat_dir.mkdir(parents=True, exist_ok=True)
    database: dict[str, dict] = {}
    for subset, count in params["num_videos"].items():
        for n in range(int(count)):
            vid = f"demo_{subset}_{n:04d}"
            num_steps = int(rng.integers(params["min_steps"], params["max_steps"] + 1))
            duration = round((stride * (num_steps - 1) + frames) / fps, 3)
            feats = rng.standard_normal((num_steps, dim)) * params["noise"]
            annotations = []
            for g_start, g_end in _place_actions(rng, num_steps, params):
                label_id = int(rng.integers(k))
                # seconds rounded like real annotations; the features follow the rounded times exactly
                sec = [round((g + grid_offset) * stride / fps, 2) for g in (g_start, g_end)]
                g_start, g_end = (s * fps / stride - grid_offset for s in sec)
                amp = params["signal"] * float(rng.uniform(0.75, 1.25))
                feats += _coverage(num_steps, g_start, g_end)[:, None] * amp * protos[label_id]
                feats += _bump(num_steps, g_start)[:, None] * params["boundary"] * onsets[label_id]
                feats += _bump(num_steps, g_end)[:, None] * params["boundary"] * offsets[label_id]
                annotations.append(
                    {
                        "label": f"action_{label_id}",
                        "segment": sec,
                        "segment(frames)": [round(s * fps, 2) for s in sec],
                        "label_id": label_id,
                    }
                )
            np.save(feat_dir / f"{vid}.npy", feats.astype(np.float32))
            database[vid] = {"subset": subset, "duration": duration, "fps": fps, "annotations": annotations}
    return {"version": f"egolab-demo-localization-v{FORMAT_VERSION}", "database": database}


def make_demo_localization(
    root: str | os.PathLike,
    num_classes: int = DEMO_DEFAULTS["num_classes"],
    num_videos: Mapping[str, int] | None = None,
    feat_dim: int = DEMO_DEFAULTS["feat_dim"],
    seed: int = DEMO_DEFAULTS["seed"],
    fps: float = DEMO_DEFAULTS["fps"],
    feat_stride: int = DEMO_DEFAULTS["feat_stride"],
    num_frames: int = DEMO_DEFAULTS["num_frames"],
    min_steps: int = DEMO_DEFAULTS["min_steps"],
    max_steps: int = DEMO_DEFAULTS["max_steps"],
    max_actions: int = DEMO_DEFAULTS["max_actions"],
    min_action_steps: float = DEMO_DEFAULTS["min_action_steps"],
    max_action_steps: float = DEMO_DEFAULTS["max_action_steps"],
    signal: float = DEMO_DEFAULTS["signal"],
    boundary: float = DEMO_DEFAULTS["boundary"],
    noise: float = DEMO_DEFAULTS["noise"],
) -> Path:
    """Create the demo data under ``root`` (idempotent) and return the path of its json.

    Parameters are described in :data:`DEMO_DEFAULTS` (``num_videos=None`` means its default).
    Generation is deterministic given the parameters; it is skipped when ``root`` already holds the
    complete data made with the same parameters (recorded in ``root/demo_params.json``, written last so
    an interrupted run is redone).
    """
    params = {
        "num_classes": int(num_classes),
        "num_videos": {str(k): int(n) for k, n in (num_videos or DEMO_DEFAULTS["num_videos"]).items()},
        "feat_dim": int(feat_dim),
        "seed": int(seed),
        "fps": float(fps),
        "feat_stride": int(feat_stride),
        "num_frames": int(num_frames),
        "min_steps": int(min_steps),
        "max_steps": int(max_steps),
        "max_actions": int(max_actions),
        "min_action_steps": float(min_action_steps),
        "max_action_steps": float(max_action_steps),
        "signal": float(signal),
        "boundary": float(boundary),
        "noise": float(noise),
        "format_version": FORMAT_VERSION,
    }
    if min_action_steps > max_action_steps or min_steps > max_steps or max_actions < 1 or num_classes < 1:
        raise ValueError("need 1 <= max_actions, 1 <= num_classes and min_* <= max_* parameters")
    if min_steps < max_action_steps + 4:
        raise ValueError("min_steps must exceed max_action_steps by at least 4 steps")
    root = Path(root)
    json_path = root / "annotations" / JSON_NAME
    marker = root / MARKER
    if _complete(root, json_path, marker, params):
        return json_path
    marker.unlink(missing_ok=True)
    data = _generate(root, params)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = json_path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(json_path)
    marker.write_text(json.dumps(params, indent=1, sort_keys=True))
    return json_path


def _complete(root: Path, json_path: Path, marker: Path, params: dict) -> bool:
    """Whether ``root`` holds the full data set of ``params`` (marker, json and every feature file)."""
    if not (marker.is_file() and json_path.is_file()):
        return False
    try:
        if json.loads(marker.read_text()) != params:
            return False
        videos = json.loads(json_path.read_text())["database"]
    except (json.JSONDecodeError, KeyError):
        return False
    return all((root / "features" / f"{vid}.npy").is_file() for vid in videos)


def synthetic_detections(
    n_videos: int, n_classes: int, per_video: int, seed: int = 0, segment_decimals: int | None = None
) -> tuple[SegmentTable, SegmentTable]:
    """ActivityNet-like ground truth and detections: 1-3 GTs of one class per video of 30-240 s;
    ``per_video`` detections per video, 80% of its class, 70% of them jittered GTs and the rest random,
    scores rounded to 3 decimals (so with ties), like a real detector's output. ``segment_decimals``
    rounds every segment (as a json submission would)."""
    rng = np.random.default_rng(seed)
    dur = rng.uniform(30, 240, n_videos)
    n_gt = rng.integers(1, 4, n_videos)
    gvid = np.repeat(np.arange(n_videos), n_gt)
    glen = rng.uniform(0.05, 0.6, gvid.size) * dur[gvid]
    gstart = rng.random(gvid.size) * (dur[gvid] - glen)
    vcls = rng.integers(0, n_classes, n_videos)
    pvid = np.repeat(np.arange(n_videos), per_video)
    src = (np.cumsum(n_gt) - n_gt)[pvid] + rng.integers(0, n_gt[pvid])
    jitter = rng.normal(0, 0.15, (pvid.size, 2)) * glen[src, None]
    start, end = gstart[src] + jitter[:, 0], gstart[src] + glen[src] + jitter[:, 1]
    rand = rng.random(pvid.size) < 0.3
    start[rand] = rng.random(rand.sum()) * dur[pvid[rand]]
    end[rand] = start[rand] + rng.uniform(0.02, 0.5, rand.sum()) * dur[pvid[rand]]
    start, end = np.clip(start, 0, dur[pvid]), np.clip(end, 0, dur[pvid])
    labels = np.where(rng.random(pvid.size) < 0.8, vcls[pvid], rng.integers(0, n_classes, pvid.size))
    names = np.array([f"v{i:05d}" for i in range(n_videos)])
    gt_segments = np.column_stack([gstart, gstart + glen])
    segments = np.column_stack([np.minimum(start, end), np.maximum(start, end)])
    if segment_decimals is not None:
        gt_segments, segments = np.round(gt_segments, segment_decimals), np.round(segments, segment_decimals)
    gt = SegmentTable(names[gvid], gt_segments, vcls[gvid])
    return gt, SegmentTable(names[pvid], segments, labels, np.round(rng.random(pvid.size), 3))
