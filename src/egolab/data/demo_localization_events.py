"""Two variants of the localization demo (:mod:`egolab.data.demo_localization`), made on first use.

* :func:`make_demo_point_events`: instantaneous events for SnapFormer. The same generator with events of
  1-3 feature steps (0.13-0.4 s at the THUMOS-like timing) and up to 8 of them per video (4.2 on average,
  4.1 s apart); each carries its class prototype over its extent and the onset/offset signatures at its
  ends, all within a few steps of its centre. The amplitudes are stronger than the standard demo's (5 and
  3 instead of 2.5 and 3): an event has no long extent to pool evidence over, and with 3 / 2 noise
  peaks outscored a third of the events (SnapFormer demo recall 0.66; 0.93 with these values).
* :func:`make_demo_noisy_boundaries`: the standard demo whose *training* annotations have jittered
  boundaries (validation and testing stay exact), for TBTFormer's boundary distributions. Each boundary
  moves by Gaussian noise of standard deviation ``boundary_noise`` times the action's length, clipped to
  +/- 2.5 standard deviations (with the default 0.1 an action keeps at least half of its length) and to
  the video. The features follow the true boundaries; only ``annotations/demo_noisy.json`` differs from
  ``demo.json``.

Both are deterministic functions of their parameters and write the official json + per-video ``.npy``
layout, read by :class:`~egolab.data.localization.ActivityNetFeatureDataset`.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from egolab.data.demo_localization import make_demo_localization

POINT_EVENT_DEFAULTS: dict[str, Any] = {
    "max_actions": 8,  # 1 .. 8 events per video
    "min_action_steps": 1.0,  # event lengths, log-uniform in [1, 3] feature steps
    "max_action_steps": 3.0,
    "signal": 5.0,  # class prototype amplitude over the event
    "boundary": 3.0,  # onset/offset signature amplitude
}
"""Parameters of :func:`make_demo_localization` that the point-event demo changes."""

NOISY_JSON_NAME = "demo_noisy.json"
NOISE_CLIP = 2.5
"""Boundary noise is clipped at this many standard deviations."""


def make_demo_point_events(root: str | os.PathLike, **params: Any) -> Path:
    """Create the point-event demo under ``root`` (idempotent); returns its json (``annotations/demo.json``).

    ``params`` are :func:`make_demo_localization`'s, over :data:`POINT_EVENT_DEFAULTS`.
    """
    return make_demo_localization(root, **{**POINT_EVENT_DEFAULTS, **params})


def jitter_boundaries(
    database: dict, boundary_noise: float, seed: int, subsets: Sequence[str] = ("training",)
) -> dict:
    """A copy of an ActivityNet ``database`` whose annotations in ``subsets`` have noisy boundaries (seconds).

    Start and end of each annotation move independently by ``N(0, (boundary_noise * length)**2)`` clipped
    to +/- :data:`NOISE_CLIP` standard deviations, then to [0, duration]; rounded to 0.01 s like the demo.
    """
    rng = np.random.default_rng(seed)
    noisy = copy.deepcopy(database)
    for vid in sorted(noisy):
        entry = noisy[vid]
        if entry["subset"] not in subsets:
            continue
        for ann in entry["annotations"]:
            start, end = ann["segment"]
            scale = boundary_noise * (end - start)
            shift = np.clip(rng.standard_normal(2), -NOISE_CLIP, NOISE_CLIP) * scale
            start = round(float(np.clip(start + shift[0], 0.0, entry["duration"])), 2)
            end = round(float(np.clip(end + shift[1], start, entry["duration"])), 2)
            ann["segment"] = [start, end]
            ann["segment(frames)"] = [round(s * entry["fps"], 2) for s in ann["segment"]]
    return noisy


def make_demo_noisy_boundaries(
    root: str | os.PathLike,
    boundary_noise: float = 0.1,
    noise_seed: int = 1,
    noisy_subsets: Sequence[str] = ("training",),
    **params: Any,
) -> Path:
    """Create the noisy-boundary demo under ``root`` (idempotent); returns ``annotations/demo_noisy.json``.

    The clean data come from :func:`make_demo_localization` (``params``); ``boundary_noise`` (fraction of
    the action length, the noise's standard deviation), ``noise_seed`` and ``noisy_subsets`` shape the
    jitter (:func:`jitter_boundaries`). The json is rewritten only when its content would change.
    """
    if not boundary_noise >= 0:
        raise ValueError(f"boundary_noise must be >= 0, got {boundary_noise}")
    clean_path = make_demo_localization(root, **params)
    data = json.loads(clean_path.read_text())
    data["database"] = jitter_boundaries(data["database"], boundary_noise, noise_seed, tuple(noisy_subsets))
    data["noise"] = {
        "boundary_noise": boundary_noise,
        "noise_seed": noise_seed,
        "subsets": list(noisy_subsets),
    }
    text = json.dumps(data, indent=1)
    path = clean_path.with_name(NOISY_JSON_NAME)
    if not (path.is_file() and path.read_text() == text):
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(text)
        tmp.replace(path)
    return path
