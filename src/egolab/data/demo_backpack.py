"""Synthetic Ego4D FHO data for the backpack (EgoPack) task, in the official layout, with planted signal.

Writes under ``root``:

* ``annotations/fho_lta_taxonomy.json`` (``num_verbs`` verbs, ``num_nouns`` nouns: short kitchen names),
  ``fho_lta_{train,val}.json`` and ``fho_oscc-pnr_{train,val}.json`` with every field of the official
  v1 records (frames at 30 fps, ``*_sec = frame / 30``, ``state_change`` a bool, negatives with null
  PNR frames);
* ``features/<video_uid>.pt``: a (T, ``feature_dim``) float32 tensor per video, feature ``i`` covering
  frames ``[16 i, 16 i + 32)`` (it takes the content at frame ``16 i + 16``).

Planted structure (what each task can learn):

* ``num_actions`` (verb, noun) pairs covering every verb and noun (action ``k`` = verb ``k % V``, noun
  ``k % N``). Each has a unit mean ``mu_a`` in the first ``signal_dim`` dimensions; a feature inside an
  action is ``signal * mu_a`` plus noise, with std ``signal_noise`` in those dimensions and ``noise`` in
  the others: a model that sees many samples learns to ignore the noisy dimensions, a few-shot one
  struggles (AR from scratch on a small set).
* Each video starts with one LTA clip of ``actions_per_video`` consecutive actions, each
  ``min_action_features``..``max_action_features`` features long (so AR ranges are never empty). The
  next action is ``successor[a]`` (one cycle through all actions) with probability ``transition_prob``,
  else uniform: LTA is predictable from the observed actions.
* Then ``oscc_clips_per_video`` OSCC clips of 85-100 % of ``oscc_clip_frames`` (240 = 8 s): a constant
  background (a random action's mean) plus noise; in a positive clip (``positive_fraction``) a fixed
  direction ``v`` (orthogonal to the action subspace) of size ``state_change`` fades in over the
  32-frame window of the features that reach past the PNR frame (uniform in the middle 60 % of the clip).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import numpy as np

VERB_NAMES = ["take", "put", "cut", "wash", "open", "close", "stir", "pour", "wipe", "peel", "mix", "turn"]
NOUN_NAMES = [
    "knife", "cup", "pan", "plate", "bowl", "spoon", "tap", "lid", "onion", "sponge", "bottle", "board",
    "fork", "towel", "pot", "bag",
]  # fmt: skip

DEMO_DEFAULTS: dict[str, Any] = {
    "num_verbs": 8,
    "num_nouns": 12,
    "num_actions": 16,
    "feature_dim": 32,
    "signal_dim": 8,  # dimensions of the action subspace
    "videos": {"train": 48, "val": 12},
    "actions_per_video": 30,  # one LTA clip per video: 30 - 22 + 1 = 9 windows at Z = 20, 24 at Z = 5
    "oscc_clips_per_video": 4,
    "transition_prob": 0.9,
    "signal": 2.5,
    "signal_noise": 0.5,  # noise std inside the action subspace
    "noise": 1.5,  # noise std in the other dimensions
    "state_change": 4.0,  # size of the state-change direction after the PNR
    "positive_fraction": 0.5,
    "min_action_features": 3,
    "max_action_features": 6,
    "oscc_clip_frames": 240,
}
"""Default generator parameters (keyword arguments of :func:`make_demo_backpack`)."""

FORMAT_VERSION = 1
MARKER = "demo_params.json"
FPS = 30
STRIDE = 16


def _uuid(rng: np.random.Generator) -> str:
    return str(uuid.UUID(bytes=rng.bytes(16), version=4))


def _sec(frame: int) -> float:
    return frame / FPS


def _lta_records(
    rng: np.random.Generator, params: dict, video_uid: str, clip_id: int, first_frame: int, actions: list
) -> tuple[list[dict], list[tuple[int, int, int]], int]:
    """Records of one LTA clip starting at ``first_frame``; (start, end, action) spans; the clip's end."""
    clip_uid = _uuid(rng)
    spans, successor, count = [], params["successor"], params["num_actions"]
    frame = first_frame + int(rng.integers(0, STRIDE))
    current = int(rng.integers(count))
    for _ in range(params["actions_per_video"]):
        length = STRIDE * int(rng.integers(params["min_action_features"], params["max_action_features"] + 1))
        end = frame + length + int(rng.integers(0, STRIDE))
        spans.append((frame, end, current))
        frame = end + int(rng.integers(0, STRIDE))
        follow = rng.random() < params["transition_prob"]
        current = int(successor[current]) if follow else int(rng.integers(count))
    clip_end = frame + STRIDE
    records = []
    for idx, (start, end, action) in enumerate(spans):
        verb, noun = actions[action]
        rel_start, rel_end = start - first_frame, end - first_frame
        records.append({
            "video_uid": video_uid, "clip_uid": clip_uid,
            "clip_parent_start_sec": _sec(first_frame), "clip_parent_end_sec": _sec(clip_end),
            "clip_parent_start_frame": first_frame, "clip_parent_end_frame": clip_end,
            "interval_start_frame": first_frame, "interval_end_frame": clip_end,
            "interval_start_sec": _sec(first_frame), "interval_end_sec": _sec(clip_end),
            "verb": params["verbs"][verb], "noun": params["nouns"][noun],
            "action_clip_start_sec": _sec(rel_start), "action_clip_end_sec": _sec(rel_end),
            "action_clip_start_frame": rel_start, "action_clip_end_frame": rel_end,
            "clip_id": clip_id, "action_idx": idx, "verb_label": verb, "noun_label": noun,
        })  # fmt: skip
    return records, spans, clip_end


def _oscc_records(
    rng: np.random.Generator, params: dict, video_uid: str, clip_id: int, first_frame: int
) -> tuple[list[dict], list[tuple[int, int, int, int | None]], int]:
    """Records of the OSCC clips of a video; (start, end, background action, PNR or None); the end."""
    clip_uid = _uuid(rng)
    records, spans = [], []
    frame = first_frame + STRIDE
    for _ in range(params["oscc_clips_per_video"]):
        length = int(params["oscc_clip_frames"] * rng.uniform(0.85, 1.0))
        start, end = frame, frame + length
        positive = bool(rng.random() < params["positive_fraction"])
        pnr = start + int(rng.uniform(0.2, 0.8) * length) if positive else None
        spans.append((start, end, int(rng.integers(params["num_actions"])), pnr))
        name = f"{_uuid(rng)}-{_sec(start)!r}-{_sec(end)!r}".replace(".", "_")
        records.append({
            "clip_uid": clip_uid, "clip_id": str(clip_id), "unique_id": name, "video_uid": video_uid,
            "clip_start_sec": _sec(start - first_frame), "clip_end_sec": _sec(end - first_frame),
            "parent_start_sec": _sec(start), "parent_end_sec": _sec(end),
            "clip_start_frame": start - first_frame, "clip_end_frame": end - first_frame,
            "parent_start_frame": start, "parent_end_frame": end,
            "state_change": positive,
            "clip_pnr_frame": None if pnr is None else pnr - first_frame, "parent_pnr_frame": pnr,
        })  # fmt: skip
        frame = end + int(rng.integers(STRIDE, 3 * STRIDE))
    return records, spans, frame + 2 * STRIDE


def _features(
    rng: np.random.Generator, params: dict, num_frames: int, lta_spans: list, oscc_spans: list
) -> np.ndarray:
    dim, sub = params["feature_dim"], params["signal_dim"]
    count = (num_frames - 2 * STRIDE) // STRIDE + 1
    scale = np.full(dim, params["noise"])
    scale[:sub] = params["signal_noise"]
    feats = rng.standard_normal((count, dim)) * scale
    centres = STRIDE * np.arange(count) + STRIDE
    means = params["means"] * params["signal"]
    for start, end, action in lta_spans:
        feats[(centres >= start) & (centres < end)] += means[action]
    for start, end, background, pnr in oscc_spans:
        inside = (centres >= start) & (centres < end)
        feats[inside] += means[background]
        if pnr is not None:
            after = np.clip((STRIDE * np.arange(count) + 2 * STRIDE - pnr) / (2 * STRIDE), 0.0, 1.0)
            feats[inside] += params["state_change"] * after[inside, None] * params["direction"]
    return feats.astype(np.float32)


def _generate(root: Path, params: dict, seed: int) -> None:
    import torch

    rng = np.random.default_rng(seed)
    num_actions, dim, sub = params["num_actions"], params["feature_dim"], params["signal_dim"]
    actions = [(k % params["num_verbs"], k % params["num_nouns"]) for k in range(num_actions)]
    order = rng.permutation(num_actions)
    successor = np.empty(num_actions, dtype=np.int64)
    successor[order] = np.roll(order, -1)
    means = np.zeros((num_actions, dim))
    means[:, :sub] = rng.standard_normal((num_actions, sub))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    direction = np.zeros(dim)
    direction[sub:] = rng.standard_normal(dim - sub)
    direction /= np.linalg.norm(direction)
    state = {
        **params,
        "successor": successor,
        "means": means,
        "direction": direction,
        "verbs": VERB_NAMES[: params["num_verbs"]],
        "nouns": NOUN_NAMES[: params["num_nouns"]],
    }
    annotations, features = root / "annotations", root / "features"
    annotations.mkdir(parents=True)
    features.mkdir()
    taxonomy = {"verbs": state["verbs"], "nouns": state["nouns"]}
    (annotations / "fho_lta_taxonomy.json").write_text(json.dumps(taxonomy, indent=1))
    clip_id = 1
    for split, num_videos in params["videos"].items():
        lta, oscc = [], []
        for _ in range(num_videos):
            video_uid = _uuid(rng)
            first = int(rng.integers(0, 3 * FPS))
            records, lta_spans, end = _lta_records(rng, state, video_uid, clip_id, first, actions)
            lta += records
            records, oscc_spans, num_frames = _oscc_records(rng, state, video_uid, clip_id + 1, end)
            oscc += records
            clip_id += 2
            feats = _features(rng, state, num_frames, lta_spans, oscc_spans)
            torch.save(torch.from_numpy(feats), features / f"{video_uid}.pt")
        (annotations / f"fho_lta_{split}.json").write_text(json.dumps({"clips": lta}, indent=1))
        (annotations / f"fho_oscc-pnr_{split}.json").write_text(json.dumps({"clips": oscc}, indent=1))


def make_demo_backpack(root: str | os.PathLike, seed: int = 0, **overrides: Any) -> Path:
    """Create the demo data under ``root`` (deterministic, idempotent) and return ``root``.

    ``overrides`` replace entries of :data:`DEMO_DEFAULTS`. Generation is skipped when
    ``root/demo_params.json`` records the same parameters. The data are written to a temporary sibling
    folder that replaces ``root`` only when complete, so an interrupted run leaves nothing half-written;
    a previous demo in ``root`` (with other parameters) is replaced, together with anything under it.
    """
    unknown = set(overrides) - set(DEMO_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown demo parameters: {sorted(unknown)}")
    params = {**DEMO_DEFAULTS, **overrides}
    if params["num_verbs"] > len(VERB_NAMES) or params["num_nouns"] > len(NOUN_NAMES):
        raise ValueError(f"at most {len(VERB_NAMES)} verbs and {len(NOUN_NAMES)} nouns")
    if (
        not max(params["num_verbs"], params["num_nouns"])
        <= params["num_actions"]
        <= int(np.lcm(params["num_verbs"], params["num_nouns"]))
    ):
        raise ValueError(
            "num_actions must cover every verb and noun and stay below lcm(num_verbs, num_nouns)"
        )
    if not 0 < params["signal_dim"] < params["feature_dim"]:
        raise ValueError(
            "need 0 < signal_dim < feature_dim (the state change lives outside the action subspace)"
        )
    if params["min_action_features"] < 3 or params["max_action_features"] < params["min_action_features"]:
        raise ValueError("need 3 <= min_action_features <= max_action_features (AR ranges must not be empty)")
    record = json.loads(json.dumps({**params, "seed": seed, "format_version": FORMAT_VERSION}))
    root = Path(root)
    marker = root / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == record:
        return root
    if root.exists() and not marker.is_file() and any(root.iterdir()):
        raise FileExistsError(
            f"{root} exists, is not empty and holds no demo ({MARKER}): refusing to replace it"
        )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _generate(tmp, params, seed)
        (tmp / MARKER).write_text(json.dumps(record, indent=1, sort_keys=True))
        if marker.is_file() and json.loads(marker.read_text()) == record:  # made meanwhile by another process
            return root
        old = root.parent / f".{root.name}.old-{os.getpid()}"
        if root.exists():
            root.rename(old)
        tmp.rename(root)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
