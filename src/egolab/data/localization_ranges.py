"""Adaptive ActionFormer regression ranges measured on the training annotations.

ActionFormer makes a point ``t`` of pyramid level ``l`` (stride ``s = scale_factor**l``) a positive for
a ground-truth action ``[g_s, g_e]`` (level-0 grid units) when ``t`` lies in the action's centre region
and ``r_min_l <= max(t - g_s, g_e - t) <= r_max_l`` (spec section 1.4). That "reach" of a point, not
the action's whole duration, is what ``model.regression_range`` is compared with; it lies between half
the duration (at the centre) and the full duration (at the ends).

:func:`suggest_ranges` converts the chosen subsets' segments to the feature grid exactly as
:class:`~egolab.data.localization.ActivityNetFeatureDataset` does, measures the reach of every level-0
point strictly inside each segment (each segment weighted equally, whatever its number of points), and
places the level boundaries at the quantiles ``1/L, ..., (L-1)/L`` of that distribution, widening a
level where needed to at least its stride (its points lie a stride apart). The first level starts at 0
and the last ends at 10000, like the release's ranges. With ``overlap`` > 0 each level
also accepts reaches down to ``(1 - overlap)`` times its lower boundary: 0.5 turns the boundaries
0, 4, 8, 16, ... into the release's overlapping EPIC / Ego4D ranges ``[[0,4],[2,8],[4,16],...]``.

The coverage it reports replays the assignment rule itself (centre sampling included) on every segment:
the share of segments that get at least one positive point at some level. Segments containing no
grid point are never positives under any ranges and are counted apart.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

RANGE_TOP = 10000.0
"""Upper end of the last level (the release's value: in effect unbounded)."""


@dataclass
class RangeSuggestion:
    """Suggested ``model.regression_range`` and how well it covers the measured segments."""

    ranges: list[list[float]]
    num_segments: int
    unreachable: int  # segments with no grid point strictly inside: never positives
    coverage: float  # share of segments with a positive point under ``ranges``
    doubling_coverage: float  # the same for the release's doubling ranges [0,4], [4,8], ...


def grid_segments(
    json_file: str | os.PathLike,
    subsets: Sequence[str] = ("training",),
    fps: float | None = None,
    feat_stride: float = 16,
    num_frames: float = 32,
    resize_to: int | None = None,
) -> np.ndarray:
    """(N, 2) segments of the given subsets in level-0 grid units, as the dataset maps them.

    ``t * fps / feat_stride - 0.5 * num_frames / feat_stride`` with the video's json ``fps`` unless ``fps``
    is given. ``resize_to`` (the dataset's ``force_upsampling`` to ``max_seq_len``) maps ``t`` to
    ``t * resize_to / duration - 0.5``: exact when the last feature clip ends at the video's end (the
    true span needs the feature files).
    """
    path = Path(json_file)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the annotation json ({err})") from err
    database = data.get("database") if isinstance(data, dict) else None
    if not isinstance(database, dict):
        raise ValueError(f"{path}: expected an object with a 'database' mapping")
    wanted = {s.lower() for s in subsets}
    rows: list[tuple[float, float]] = []
    for vid, entry in database.items():
        where = f"{path}: video {vid!r}"
        if not isinstance(entry, dict) or not isinstance(entry.get("annotations", []), list):
            raise ValueError(f"{where}: expected an object with an 'annotations' list")
        if str(entry.get("subset", "")).lower() not in wanted:
            continue
        if resize_to is not None:
            duration = entry.get("duration")
            if not isinstance(duration, int | float) or duration <= 0:
                raise ValueError(f"{where}: resizing needs a positive 'duration', got {duration!r}")
            scale, shift = resize_to / duration, 0.5
        else:
            video_fps = fps if fps is not None else entry.get("fps")
            if not isinstance(video_fps, int | float) or video_fps <= 0:
                raise ValueError(f"{where}: no valid 'fps' ({video_fps!r}); pass --fps")
            scale, shift = video_fps / feat_stride, 0.5 * num_frames / feat_stride
        for k, ann in enumerate(entry.get("annotations", [])):
            seg = ann.get("segment") if isinstance(ann, dict) else None
            ok = isinstance(seg, list | tuple) and len(seg) == 2
            if not ok or not all(isinstance(x, int | float) and math.isfinite(x) for x in seg):
                raise ValueError(f"{where}, annotation {k}: 'segment' must be 2 finite numbers, got {seg!r}")
            if seg[1] < seg[0]:
                raise ValueError(f"{where}, annotation {k}: segment end {seg[1]} < start {seg[0]}")
            rows.append((seg[0] * scale - shift, seg[1] * scale - shift))
    if not rows:
        raise ValueError(f"{path}: no annotated segments in subsets {sorted(wanted)}")
    return np.asarray(rows, dtype=np.float64)


def _inside_points(segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First level-0 point (t >= 0) strictly inside each segment, and how many there are."""
    first = np.maximum(np.floor(segments[:, 0]) + 1, 0)
    counts = np.maximum(np.ceil(segments[:, 1]) - first, 0).astype(np.int64)
    return first, counts


def point_reaches(segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reach ``max(t - start, end - t)`` of every level-0 point ``t >= 0`` strictly inside each segment.

    Returns (reaches, weights); the points of one segment share a total weight of 1.
    """
    first, counts = _inside_points(segments)
    owner = np.repeat(np.arange(len(segments)), counts)
    t = first[owner] + np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    reach = np.maximum(t - segments[owner, 0], segments[owner, 1] - t)
    return reach, 1.0 / counts[owner]


def quantile_boundaries(
    reach: np.ndarray, weights: np.ndarray, num_levels: int, scale_factor: int = 2
) -> np.ndarray:
    """Level boundaries ``0, q(1/L), ..., q((L-1)/L), RANGE_TOP`` of the weighted reach distribution.

    ``q(p)`` is the smallest reach whose cumulative weight share reaches ``p`` (a measured value,
    rounded to 0.01). Level l's range is kept at least one of its strides (``scale_factor**l``) wide:
    its points lie a stride apart, so a narrower range could fall between them (and tied reaches would
    collapse levels).
    """
    order = np.argsort(reach, kind="stable")
    share = np.cumsum(weights[order]) / weights.sum()
    probs = np.arange(1, num_levels) / num_levels
    picks = np.minimum(np.searchsorted(share, probs - 1e-9), len(share) - 1)
    inner = np.round(reach[order][picks], 2)
    bounds = np.concatenate(([0.0], inner, [RANGE_TOP]))
    for level in range(1, num_levels):
        bounds[level] = max(bounds[level], bounds[level - 1] + scale_factor ** (level - 1))
    return bounds


def ranges_from_boundaries(bounds: Sequence[float], overlap: float = 0.0) -> list[list[float]]:
    """``[[b0, b1], [(1 - overlap) * b1, b2], ...]``: level l covers reaches from its lower boundary
    (lowered by ``overlap``) up to the next boundary."""
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must lie in [0, 1), got {overlap}")
    return [[round((1 - overlap) * lo, 2), float(hi)] for lo, hi in zip(bounds[:-1], bounds[1:])]


def doubling_ranges(num_levels: int) -> list[list[float]]:
    """The release's default pattern: ``[0, 4], [4, 8], ..., [4 * 2**(L-2), 10000]``."""
    bounds = [0.0] + [4.0 * 2**level for level in range(num_levels - 1)] + [RANGE_TOP]
    return ranges_from_boundaries(bounds)


def _has_integer(low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Whether the closed interval [low, high] holds an integer (element-wise)."""
    return np.ceil(low) <= np.floor(high)


def assigned(
    segments: np.ndarray, ranges: Sequence[Sequence[float]], scale_factor: int = 2, center_radius: float = 1.5
) -> np.ndarray:
    """Per segment: whether some level's point is a positive under ``ranges`` (the model's own rule).

    Level l has points ``k * s`` (k >= 0, ``s = scale_factor**l``); a point must lie strictly inside the
    centre region ``(max(c - r*s, g_s), min(c + r*s, g_e))`` (``center_radius <= 0``: the whole segment)
    and have its reach within the level's range. Reach falls towards the centre c, so each side of c is
    an interval of k; ambiguity between overlapping actions is ignored.
    """
    starts, ends = segments[:, 0], segments[:, 1]
    centers = 0.5 * (starts + ends)
    hit = np.zeros(len(segments), dtype=bool)
    for level, (r_min, r_max) in enumerate(ranges):
        s = float(scale_factor**level)
        lo, hi = starts, ends
        if center_radius > 0:
            lo = np.maximum(centers - center_radius * s, starts)
            hi = np.minimum(centers + center_radius * s, ends)
        k_min = np.maximum(np.floor(lo / s) + 1, 0)
        k_max = np.ceil(hi / s) - 1
        left_side = _has_integer(
            np.maximum(k_min, np.ceil((ends - r_max) / s)),
            np.minimum.reduce([k_max, np.floor((ends - r_min) / s), np.floor(centers / s)]),
        )
        right_side = _has_integer(
            np.maximum.reduce([k_min, np.ceil((starts + r_min) / s), np.ceil(centers / s)]),
            np.minimum(k_max, np.floor((starts + r_max) / s)),
        )
        hit |= left_side | right_side
    return hit


def suggest_ranges(
    json_file: str | os.PathLike,
    subsets: Sequence[str] = ("training",),
    num_levels: int = 6,
    scale_factor: int = 2,
    fps: float | None = None,
    feat_stride: float = 16,
    num_frames: float = 32,
    resize_to: int | None = None,
    overlap: float = 0.5,
    center_radius: float = 1.5,
) -> RangeSuggestion:
    """Quantile regression ranges from the reaches of the annotated segments (see the module doc)."""
    if num_levels < 1:
        raise ValueError(f"num_levels must be >= 1, got {num_levels}")
    segments = grid_segments(json_file, subsets, fps, feat_stride, num_frames, resize_to)
    reach, weights = point_reaches(segments)
    if not len(reach):
        raise ValueError(f"{json_file}: no segment of subsets {list(subsets)} contains a feature point")
    bounds = quantile_boundaries(reach, weights, num_levels, scale_factor)
    ranges = ranges_from_boundaries(bounds, overlap)
    return RangeSuggestion(
        ranges=ranges,
        num_segments=len(segments),
        unreachable=int((_inside_points(segments)[1] == 0).sum()),
        coverage=float(assigned(segments, ranges, scale_factor, center_radius).mean()),
        doubling_coverage=float(
            assigned(segments, doubling_ranges(num_levels), scale_factor, center_radius).mean()
        ),
    )


def _number(value: float) -> str:
    return f"{value:g}"


def format_overrides(suggestion: RangeSuggestion, source: str) -> list[str]:
    """Experiment TXT lines: a comment naming the source, the override, and a coverage comment."""
    ranges = ",".join(f"[{_number(lo)},{_number(hi)}]" for lo, hi in suggestion.ranges)
    return [
        f"# regression ranges from {suggestion.num_segments} segments of {source}",
        f"model.regression_range=[{ranges}]",
        f"# coverage: {100 * suggestion.coverage:.1f}% of the segments get a positive point "
        f"(release doubling ranges: {100 * suggestion.doubling_coverage:.1f}%); "
        f"{suggestion.unreachable} contain no feature point",
    ]


# ----------------------------------------------------------------------------------------------------
# Command line (``python -m egolab.data.localization ranges``)


def add_ranges_command(commands: argparse._SubParsersAction) -> None:
    """Register the ``ranges`` subcommand on a subparsers object."""
    parser = commands.add_parser(
        "ranges",
        help="suggest model.regression_range from the training annotations",
        description=__doc__.split("\n\n")[1],
    )
    parser.add_argument("json_file", help="ActivityNet-style annotation json")
    parser.add_argument("--subset", nargs="+", default=["training"], help="subsets to measure (%(default)s)")
    parser.add_argument("--levels", type=int, default=6, help="pyramid levels (%(default)s)")
    parser.add_argument("--scale-factor", type=int, default=2, help="stride ratio of levels (%(default)s)")
    parser.add_argument("--fps", type=float, default=None, help="fps for every video (default: the json's)")
    parser.add_argument("--feat-stride", type=float, default=16, help="frames per feature (%(default)s)")
    parser.add_argument("--num-frames", type=float, default=32, help="frames per clip (%(default)s)")
    parser.add_argument(
        "--resize-to", type=int, default=None, help="force_upsampling: features resized to this many steps"
    )
    parser.add_argument("--overlap", type=float, default=0.5, help="lower-bound overlap (%(default)s)")
    parser.add_argument(
        "--center-radius", type=float, default=1.5, help="centre sampling radius, <= 0: none (%(default)s)"
    )
    parser.set_defaults(run=run_ranges_command)


def run_ranges_command(args: argparse.Namespace) -> int:
    """Print the suggestion as TXT override lines."""
    suggestion = suggest_ranges(
        args.json_file,
        args.subset,
        num_levels=args.levels,
        scale_factor=args.scale_factor,
        fps=args.fps,
        feat_stride=args.feat_stride,
        num_frames=args.num_frames,
        resize_to=args.resize_to,
        overlap=args.overlap,
        center_radius=args.center_radius,
    )
    source = f"{args.json_file} ({', '.join(args.subset)})"
    print("\n".join(format_overrides(suggestion, source)))
    return 0
