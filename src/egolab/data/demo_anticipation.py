"""Synthetic EPIC-Kitchens-100 anticipation data in the official formats, with a planted sequential signal.

Writes under ``root``:

* ``annotations/actions.csv`` (RULSTM format, ``id,verb,noun,action``) over pairs of real EK100 verb and
  noun classes (the first ``num_verbs`` verbs and ``num_nouns`` nouns, whose EK100 ids are 0..n-1),
  ``EPIC_100_{verb,noun}_classes.csv`` for them, ``EPIC_100_{train,validation,test}.csv`` (the 15-column
  EPIC-100 format; the demo test split is labelled), ``EPIC_100_tail_{verbs,nouns}.csv`` (the classes
  making up the last 20 % of training instances, as EK100 defines its tail) and
  ``EPIC_100_unseen_participant_ids_{validation,test}.csv`` (the participants without training videos);
* ``features/rgb/`` an LMDB store in the RULSTM layout: one float32 vector per 30-fps frame under
  ``<video>_frame_<10-digit frame>.jpg``;
* ``prototypes/`` the S-GEAR language prototypes of the demo actions (offline MiniLM model).

Signal: each video is a chain of non-overlapping actions where the next action is a fixed successor of
the current one with probability ``follow`` (else uniform). A frame inside an action carries its
action's prototype direction (times ``signal``) plus unit Gaussian noise; frames between actions are
noise. So the frames observed before an action (tau_a = 1 s earlier) show the previous action, which
predicts it: chance action Recall@5 is 5 / num_actions, the best achievable about ``follow``.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

# (key, category) of the first EK100 verb and noun classes (EPIC_100_{verb,noun}_classes.csv, ids 0..n-1)
EK100_VERBS = [
    ("take", "retrieve"), ("put", "leave"), ("wash", "clean"), ("open", "access"), ("close", "block"),
    ("insert", "leave"), ("turn-on", "access"), ("cut", "split"), ("turn-off", "block"), ("pour", "merge"),
    ("mix", "merge"), ("move", "transition"), ("remove", "retrieve"), ("throw", "leave"), ("dry", "clean"),
]  # fmt: skip
EK100_NOUNS = [
    ("tap", "appliances"), ("spoon", "cutlery"), ("plate", "crockery"), ("cupboard", "storage"),
    ("knife", "cutlery"), ("pan", "cookware"), ("lid", "containers"), ("bowl", "crockery"),
    ("drawer", "furniture"), ("sponge", "cleaning equipment and material"), ("glass", "crockery"),
    ("hand", "hand"), ("fridge", "appliances"), ("cup", "crockery"), ("fork", "cutlery"),
    ("bottle", "containers"), ("onion", "vegetables"), ("cloth", "cleaning equipment and material"),
    ("board:chopping", "utensils"), ("bag", "containers"),
]  # fmt: skip

DEMO_DEFAULTS: dict[str, Any] = {
    "num_verbs": 12,
    "num_nouns": 16,
    "num_actions": 40,  # distinct (verb, noun) pairs
    "videos": {  # split -> video ids (participant = prefix); P04 / P05 are unseen participants
        "train": ["P01_01", "P01_02", "P01_03", "P02_01", "P02_02", "P02_03", "P03_01", "P03_02"],
        "validation": ["P01_04", "P05_01"],
        "test": ["P02_04", "P04_01"],
    },
    "segments_per_video": 60,
    "feat_dim": 32,
    "follow": 0.8,  # probability that the next action is the planted successor
    "signal": 3.0,  # amplitude of the action direction inside an action
    "min_duration": 2.0,  # action lengths in seconds, uniform
    "max_duration": 4.0,
    "max_gap": 0.8,  # pause between actions in seconds, uniform in [0.2, max_gap]
    "seed": 0,
}
"""Default generator parameters (keyword arguments of :func:`make_demo_anticipation`)."""

FORMAT_VERSION = 1
MARKER = "demo_params.json"
FEAT_FPS = 30
VIDEO_FPS = 60  # the start/stop_frame columns, at EK100's native rate


def _timestamp(seconds: float) -> str:
    hours, rest = divmod(seconds, 3600.0)
    minutes, secs = divmod(rest, 60.0)
    return f"{int(hours):02d}:{int(minutes):02d}:{secs:05.2f}"


def _actions(rng: np.random.Generator, params: dict) -> list[tuple[int, int]]:
    pairs = [(v, n) for v in range(params["num_verbs"]) for n in range(params["num_nouns"])]
    chosen = rng.choice(len(pairs), size=params["num_actions"], replace=False)
    return sorted(pairs[i] for i in chosen)


def _write_csv(path: Path, header: list[str] | None, rows: list[list[Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        if header:
            writer.writerow(header)
        writer.writerows(rows)


def _tail(counts: np.ndarray) -> list[int]:
    """Classes outside the most frequent ones that cover 80 % of the instances."""
    order = np.argsort(-counts, kind="stable")
    covered = np.cumsum(counts[order]) / counts.sum()
    head = set(order[: int(np.searchsorted(covered, 0.8)) + 1].tolist())
    return sorted(int(c) for c in order if c not in head and counts[c] > 0)


def _generate(root: Path, params: dict) -> None:
    import lmdb

    from egolab.data.anticipation import EPIC_COLUMNS, lmdb_key

    rng = np.random.default_rng(params["seed"])
    actions = _actions(rng, params)
    num_actions, dim = len(actions), params["feat_dim"]
    successor = rng.permutation(num_actions)
    directions = rng.standard_normal((num_actions, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    ann = root / "annotations"
    ann.mkdir(parents=True, exist_ok=True)
    verbs, nouns = EK100_VERBS[: params["num_verbs"]], EK100_NOUNS[: params["num_nouns"]]
    names = [f"{verbs[v][0]} {nouns[n][0]}" for v, n in actions]
    _write_csv(
        ann / "actions.csv",
        ["id", "verb", "noun", "action"],
        [[a, v, n, names[a]] for a, (v, n) in enumerate(actions)],
    )
    for fname, table in (("EPIC_100_verb_classes.csv", verbs), ("EPIC_100_noun_classes.csv", nouns)):
        rows = [[i, key, str([key]), cat] for i, (key, cat) in enumerate(table)]
        _write_csv(ann / fname, ["id", "key", "instances", "category"], rows)

    store = root / "features" / "rgb"
    store.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(store), map_size=1 << 30)
    verb_counts, noun_counts = np.zeros(len(verbs)), np.zeros(len(nouns))
    for split, videos in params["videos"].items():
        rows = []
        for video in videos:
            current = int(rng.integers(num_actions))
            t = 2.0
            segments = []
            for _ in range(params["segments_per_video"]):
                start = round(t, 2)
                stop = round(start + rng.uniform(params["min_duration"], params["max_duration"]), 2)
                segments.append((start, stop, current))
                t = stop + rng.uniform(0.2, params["max_gap"])
                follow = rng.random() < params["follow"]
                current = int(successor[current]) if follow else int(rng.integers(num_actions))
            num_frames = int(np.ceil((t + 1.0) * FEAT_FPS))
            feats = rng.standard_normal((num_frames + 1, dim)).astype(np.float32)
            times = np.arange(num_frames + 1) / FEAT_FPS
            for i, (start, stop, action) in enumerate(segments):
                inside = (times >= start) & (times <= stop)
                feats[inside] += params["signal"] * directions[action].astype(np.float32)
                verb, noun = actions[action]
                if split == "train":
                    verb_counts[verb] += 1
                    noun_counts[noun] += 1
                rows.append([
                    f"{video}_{i}", video.split("_")[0], video, _timestamp(start), _timestamp(start),
                    _timestamp(stop), int(start * VIDEO_FPS) + 1, int(stop * VIDEO_FPS) + 1, names[action],
                    verbs[verb][0], verb, nouns[noun][0], noun, str([nouns[noun][0]]), str([noun]),
                ])  # fmt: skip
            with env.begin(write=True) as txn:
                for frame in range(1, num_frames + 1):
                    txn.put(lmdb_key(video, frame).encode(), feats[frame].tobytes())
        _write_csv(ann / f"EPIC_100_{split}.csv", EPIC_COLUMNS, rows)
    env.close()
    _write_csv(ann / "EPIC_100_tail_verbs.csv", ["verb"], [[c] for c in _tail(verb_counts)])
    _write_csv(ann / "EPIC_100_tail_nouns.csv", ["noun"], [[c] for c in _tail(noun_counts)])
    seen = {v.split("_")[0] for v in params["videos"]["train"]}
    unseen = sorted({v.split("_")[0] for videos in params["videos"].values() for v in videos} - seen)
    for split in ("validation", "test"):  # every participant without training videos, in both lists
        _write_csv(
            ann / f"EPIC_100_unseen_participant_ids_{split}.csv", ["participant_id"], [[p] for p in unseen]
        )


def make_demo_anticipation(
    root: str | os.PathLike, language_prototypes: bool = True, **overrides: Any
) -> Path:
    """Create the demo data under ``root`` (idempotent, deterministic) and return its annotations folder.

    ``overrides`` replace entries of :data:`DEMO_DEFAULTS`. Generation is skipped when ``root`` holds
    complete data made with the same parameters (``root/demo_params.json`` is written last).
    ``language_prototypes`` also runs the language prototype command on the demo actions.
    """
    unknown = set(overrides) - set(DEMO_DEFAULTS)
    if unknown:
        raise TypeError(f"unknown demo parameters: {sorted(unknown)}")
    params = {**DEMO_DEFAULTS, **overrides, "format_version": FORMAT_VERSION}
    params["language_prototypes"] = bool(language_prototypes)
    if params["num_actions"] > params["num_verbs"] * params["num_nouns"]:
        raise ValueError("num_actions exceeds the number of (verb, noun) pairs")
    if params["num_verbs"] > len(EK100_VERBS) or params["num_nouns"] > len(EK100_NOUNS):
        raise ValueError(f"at most {len(EK100_VERBS)} verbs and {len(EK100_NOUNS)} nouns")
    root = Path(root)
    marker = root / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == json.loads(json.dumps(params)):
        return root / "annotations"
    marker.unlink(missing_ok=True)
    store = root / "features" / "rgb"
    for stale in (store / "data.mdb", store / "lock.mdb"):
        stale.unlink(missing_ok=True)
    _generate(root, params)
    if language_prototypes:
        from egolab.prototypes import generate_language_prototypes

        generate_language_prototypes(root / "annotations" / "actions.csv", root / "prototypes")
    marker.write_text(json.dumps(params, indent=1, sort_keys=True))
    return root / "annotations"
