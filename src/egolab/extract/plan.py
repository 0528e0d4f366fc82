"""Which native frames each feature is computed from: the time alignment between videos and features.

A plan resamples the video to a feature timeline (``fps``, or the video's own rate) and cuts it into
clips of ``window`` frames, one every ``stride`` timeline frames. Two conventions:

* ``anchor="start"`` (localization, backpack; ActionFormer): clip ``i`` is timeline frames
  ``[i * stride, i * stride + window)``, so feature ``i`` is centred at ``(i * stride + window / 2) / fps``.
* ``anchor="end"`` (anticipation; RULSTM): one clip per ``stride``-th timeline frame ``t``, made of frames
  ``[t - window + 1, t]`` (the first frame repeated before the video starts): a feature only sees the past.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ANCHORS = ("start", "end")


@dataclass(frozen=True)
class ClipPlan:
    """Feature timeline rate (None: the video's own), frames per clip, frames between clips, anchor."""

    fps: float | None
    window: int
    stride: int
    anchor: str = "start"

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be at least 1 frame, got {self.window}")
        if self.stride < 1:
            raise ValueError(f"stride must be at least 1 frame, got {self.stride}")
        if self.fps is not None and not self.fps > 0:
            raise ValueError(f"fps must be positive (or None for the video's own rate), got {self.fps}")
        if self.anchor not in ANCHORS:
            raise ValueError(f"anchor must be one of {ANCHORS}, got {self.anchor!r}")

    def effective_fps(self, native_fps: float) -> float:
        """Rate of the feature timeline for a video at ``native_fps``."""
        return float(self.fps) if self.fps is not None else float(native_fps)

    def timeline(self, num_native_frames: int, native_fps: float) -> np.ndarray:
        """Native frame index (int64) of each timeline frame: frame ``j`` is at ``j / fps`` seconds.

        It maps to native frame ``floor(j * native_fps / fps)`` (plus 1e-6, so an exact ratio computed in
        floating point never falls one frame short); the timeline stops at the video's last frame.
        """
        if num_native_frames < 0:
            raise ValueError(f"num_native_frames must be non-negative, got {num_native_frames}")
        if not native_fps > 0:
            raise ValueError(f"native_fps must be positive, got {native_fps}")
        if self.fps is None:
            return np.arange(num_native_frames, dtype=np.int64)
        length = int(np.ceil(num_native_frames * self.fps / native_fps)) + 1
        index = np.floor(np.arange(length) * native_fps / self.fps + 1e-6).astype(np.int64)
        return index[index < num_native_frames]

    def _clip_positions(self, length: int) -> np.ndarray:
        """Timeline positions (num_clips, window) of each clip, for a timeline of ``length`` frames."""
        offsets = np.arange(self.window, dtype=np.int64)
        if self.anchor == "start":
            num_clips = 1 + (length - self.window) // self.stride if length >= self.window else 0
            starts = np.arange(num_clips, dtype=np.int64) * self.stride
            return starts[:, None] + offsets
        ends = np.arange(0, length, self.stride, dtype=np.int64)
        return np.maximum(ends[:, None] - self.window + 1 + offsets, 0)

    def clips(self, num_native_frames: int, native_fps: float) -> np.ndarray:
        """Native frame indices (num_clips, window) int64 of each clip, in feature order."""
        timeline = self.timeline(num_native_frames, native_fps)
        return timeline[self._clip_positions(len(timeline))]

    def feature_times(self, num_native_frames: int, native_fps: float) -> np.ndarray:
        """Time (float64 s) of each feature: its clip's first frame ("start") or its anchor frame ("end")."""
        length = len(self.timeline(num_native_frames, native_fps))
        positions = self._clip_positions(length)
        frames = positions[:, 0] if self.anchor == "start" else positions[:, -1]
        return frames.astype(np.float64) / self.effective_fps(native_fps)

    def data_config_lines(self, native_fps: float | None = None) -> list[str]:
        """Localization data overrides for features made with this plan (ActionFormer's convention).

        That convention is start-anchored (feature ``i`` covers frames ``[i * feat_stride, i * feat_stride
        + num_frames)``), so an end-anchored plan has no such lines and raises. Without a plan rate or
        ``native_fps``, each video keeps its own rate: ``default_fps=null`` (the dataset then reads every
        video's rate from the json).
        """
        if self.anchor != "start":
            raise ValueError(
                f"localization features are start-anchored; this plan is anchored at the {self.anchor!r}"
            )
        own_rate = self.fps is None and native_fps is None
        fps = "null" if own_rate else _number(self.effective_fps(native_fps))
        return [
            f"data.dataset.default_fps={fps}",
            f"data.dataset.feat_stride={self.stride}",
            f"data.dataset.num_frames={self.window}",
        ]


def _number(value: float) -> str:
    """A number as a config value: ``30`` rather than ``30.0``, full precision otherwise."""
    value = float(value)
    return str(int(value)) if value.is_integer() else repr(value)


def rulstm_frame_number(t: int) -> int:
    """1-based frame number that RULSTM LMDB keys use for timeline frame ``t`` (0-based).

    The anticipation LMDB stores, for every 30-fps frame ``t``, the feature of the clip anchored at its
    end on frame ``t`` (``ClipPlan(30, window, 1, anchor="end")``), under the key
    ``<video>_frame_<10-digit t + 1>.jpg`` (:func:`egolab.data.anticipation.lmdb_key`).
    """
    return int(t) + 1
