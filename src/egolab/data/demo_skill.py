"""Synthetic demonstrator-proficiency data in the official Ego-Exo4D layout, made on first use.

Writes, under ``root``:

* ``annotations/proficiency_demonstrator_<split>.json`` for ``train``, ``val`` and ``test`` in the
  official format (``{"ds", "annotations": [{task_id, task_name, scenario_name, university_id,
  origin_participant_id, take_uid, video_paths: {ego, exo1, ...}, proficiency_score}]}``);
* ``takes/<take>/frame_aligned_videos/downscaled/448/<cam>.mp4``: one small h264 video per view
  (``aria01_214-1`` for ego, ``cam01``.. for exo);
* ``annotations/skill_<split>.jsonl``, converted from the json by :func:`egolab.data.skill.prepare_annotation`
  (the same code path as the real data).

Each take shows a disc moving in straight lines and bouncing off the frame edges over a static,
scenario-coloured textured background, trailing a tail of its last ``trail`` positions (motion smear).
The proficiency level sets the disc's speed, hence the length of its tail (Novice slowest, Late Expert
fastest, with a per-take jitter that keeps neighbouring levels apart); direction, start, colours and
textures are random. Every view films the same motion through its own mirror / transpose and
background, so each view carries the signal. Labels are balanced in every split and scenario.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from egolab.data.skill import LABEL_NAMES, VIEW_KEYS, prepare_annotation

DEMO_DEFAULTS: dict[str, Any] = {
    "num_takes": {"train": 96, "val": 32, "test": 32},  # per split, a multiple of 4 * len(scenarios)
    "scenarios": ["Basketball", "Rock Climbing"],  # scenario names written to the json
    "num_views": 2,  # ego + (num_views - 1) exo cameras
    "num_frames": 48,  # frames per video (30 fps)
    "size": 64,  # frame height and width (pixels)
    "speeds": [0.4, 1.2, 2.1, 3.2],  # disc speed per level, pixels per frame
    "speed_jitter": 0.12,  # relative per-take speed jitter
    "radius": 7,  # disc radius (pixels)
    "trail": 8,  # earlier positions drawn behind the disc
    "fade": 1.0,  # opacity factor per step back along the trail (1: a solid smear)
    "seed": 0,
}
"""Default generator parameters (keyword arguments of :func:`make_demo_skill`)."""

FORMAT_VERSION = 1
MARKER = "demo_params.json"
FPS = 30
SPLITS = ("train", "val", "test")
_SCENARIO_COLOURS = [(40, 90, 160), (150, 90, 50), (60, 140, 70), (130, 60, 130), (90, 90, 90)]


def _trajectory(rng: np.random.Generator, speed: float, params: dict) -> np.ndarray:
    """(T, 2) disc centres moving at ``speed`` and reflecting off the walls."""
    size, radius, frames = params["size"], params["radius"], params["num_frames"]
    lo, hi = radius, size - 1 - radius
    pos = rng.uniform(lo, hi, 2)
    angle = rng.uniform(0, 2 * np.pi)
    vel = speed * np.array([np.cos(angle), np.sin(angle)])
    out = np.empty((frames, 2))
    for t in range(frames):
        out[t] = pos
        pos = pos + vel
        for axis in range(2):
            if pos[axis] < lo:
                pos[axis], vel[axis] = 2 * lo - pos[axis], -vel[axis]
            elif pos[axis] > hi:
                pos[axis], vel[axis] = 2 * hi - pos[axis], -vel[axis]
    return out


def _background(rng: np.random.Generator, colour: tuple[int, int, int], size: int) -> np.ndarray:
    """A static, smooth random texture around ``colour``: (size, size, 3) float."""
    coarse = rng.normal(0, 12, (size // 8, size // 8, 3))
    texture = np.kron(coarse, np.ones((8, 8, 1)))
    return np.clip(np.asarray(colour, dtype=np.float64) + texture, 0, 255)


def _render(
    centres: np.ndarray, background: np.ndarray, disc: np.ndarray, radius: int, trail: int, fade: float
) -> np.ndarray:
    """(T, H, W, 3) uint8 frames of a disc of colour ``disc`` at ``centres`` (x, y) over ``background``.

    The disc leaves a fading trail at its previous ``trail`` positions (opacity ``fade ** k`` k frames
    back), so a fast disc looks like a comet and a slow one like a blob.
    """
    size = background.shape[0]
    yy, xx = np.mgrid[0:size, 0:size]
    frames = np.repeat(background[None].astype(np.float32), len(centres), axis=0)
    for lag in range(trail, -1, -1):
        past = centres[np.maximum(np.arange(len(centres)) - lag, 0)]
        dist = np.hypot(xx[None] - past[:, 0, None, None], yy[None] - past[:, 1, None, None])
        edge = np.clip(radius + 0.5 - dist, 0, 1)[..., None]  # antialiased disc edge
        alpha = (fade**lag * edge).astype(np.float32)
        frames = frames * (1 - alpha) + np.asarray(disc) * alpha
    return np.round(frames).astype(np.uint8)


def _view_transform(centres: np.ndarray, view: int, size: int) -> np.ndarray:
    """The motion seen by camera ``view``: identity, mirror, transpose, or both."""
    x, y = centres[:, 0], centres[:, 1]
    if view % 2 == 1:
        x = size - 1 - x
    if (view // 2) % 2 == 1:
        x, y = y, x
    return np.stack([x, y], axis=1)


def write_video(path: Path, frames: np.ndarray, fps: int = FPS) -> None:
    """Write (T, H, W, 3) uint8 frames as an h264 mp4 (mpeg4 if no h264 encoder), single-threaded."""
    import av

    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.mp4")
    with av.open(str(tmp), mode="w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.thread_count = 1
        if codec == "libx264":
            stream.options = {"crf": "12", "preset": "ultrafast", "tune": "zerolatency"}
        else:
            stream.bit_rate = 2_000_000
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    tmp.replace(path)


def _camera_name(view: int) -> str:
    return "aria01_214-1" if view == 0 else f"cam{view:02d}"


def _generate(root: Path, params: dict) -> None:
    rng = np.random.default_rng(params["seed"])
    scenarios = params["scenarios"]
    for split in SPLITS:
        count = params["num_takes"][split]
        records = []
        combos = [(s, lvl) for s in range(len(scenarios)) for lvl in range(len(LABEL_NAMES))]
        order = [combos[i % len(combos)] for i in rng.permutation(count)]
        for n, (scenario, level) in enumerate(order):
            take_name = f"demo_{scenarios[scenario].lower().replace(' ', '')}_{split}_{n:03d}"
            take_uid = str(uuid.UUID(bytes=rng.bytes(16), version=4))
            speed = params["speeds"][level] * (1 + rng.uniform(-1, 1) * params["speed_jitter"])
            centres = _trajectory(rng, speed, params)
            disc = rng.uniform(215, 255, 3)
            paths = {}
            for view in range(params["num_views"]):
                colour = np.asarray(_SCENARIO_COLOURS[scenario % len(_SCENARIO_COLOURS)]) * (
                    0.7 + 0.15 * view
                )
                background = _background(rng, tuple(colour), params["size"])
                frames = _render(
                    _view_transform(centres, view, params["size"]),
                    background,
                    disc,
                    params["radius"],
                    params["trail"],
                    params["fade"],
                )
                rel = f"takes/{take_name}/frame_aligned_videos/{_camera_name(view)}.mp4"
                write_video(
                    root / "takes" / take_name / "frame_aligned_videos/downscaled/448" / Path(rel).name,
                    frames,
                )
                paths[VIEW_KEYS[view]] = rel
            records.append(
                {
                    "task_id": 1000 + scenario,
                    "task_name": f"{scenarios[scenario]} demo",
                    "scenario_name": scenarios[scenario],
                    "university_id": "egolab-demo",
                    "origin_participant_id": str(n),
                    "take_uid": take_uid,
                    "video_paths": paths,
                    "proficiency_score": LABEL_NAMES[level],
                }
            )
        official = root / "annotations" / f"proficiency_demonstrator_{split}.json"
        official.parent.mkdir(parents=True, exist_ok=True)
        official.write_text(json.dumps({"ds": "egolab-demo", "annotations": records}, indent=1))
        prepare_annotation(official, root / "annotations" / f"skill_{split}.jsonl")


def make_demo_skill(root: str | os.PathLike, **overrides: Any) -> Path:
    """Create the demo data under ``root`` (idempotent) and return its ``annotations`` folder.

    Keyword arguments override :data:`DEMO_DEFAULTS`. Generation is deterministic given the parameters
    and is skipped when ``root/demo_params.json`` (written last) records the same parameters.
    """
    unknown = sorted(set(overrides) - set(DEMO_DEFAULTS))
    if unknown:
        raise TypeError(f"unknown demo parameters {unknown}")
    plain = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in overrides.items()}
    params = json.loads(json.dumps({**DEMO_DEFAULTS, **plain, "format_version": FORMAT_VERSION}))
    if not 1 <= params["num_views"] <= len(VIEW_KEYS):
        raise ValueError(f"num_views must be 1..{len(VIEW_KEYS)}, got {params['num_views']}")
    if len(params["speeds"]) != len(LABEL_NAMES):
        raise ValueError(f"speeds needs one value per level ({len(LABEL_NAMES)})")
    root = Path(root)
    marker = root / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return root / "annotations"
    marker.unlink(missing_ok=True)
    _generate(root, params)
    marker.write_text(json.dumps(params, indent=1, sort_keys=True))
    return root / "annotations"
