"""Temporal action localization metrics: ActivityNet detection mAP and Recall@kx (Ego4D MQ).

The AP follows the official ActivityNet detection evaluation (also used unchanged by ActionFormer and
OpenTAD), vectorised so that ActivityNet-val-size inputs take seconds:

* Predictions of one class are ranked by score with ``np.argsort(scores)[::-1]``, i.e. NumPy's default
  (unstable, platform-dependent) sort reversed. It is called on the same arrays as the official code
  (the class's predictions in input order), so tied scores are broken exactly as the official code
  does on the same machine. In particular this is *not* a stable sort: an all-equal run comes out in
  reverse input order.
* Each prediction looks at the GTs of its class in its video in descending tIoU order (again
  ``argsort()[::-1]`` on the GTs in input order) and becomes a TP on the first one that is not yet
  matched and has tIoU >= threshold; otherwise it is an FP.
* AP is the VOC2011 all-point interpolated area under the precision/recall curve.
* mAP averages over the classes present in the ground truth; such a class without predictions has
  AP 0. Predicted labels absent from the ground truth are ignored (the official code raises on them;
  they could never match anyway).

Deliberate deviation: two segments whose union has zero length (both zero-length) have tIoU 0. The
official code divides 0 by 0 and the resulting NaN then counts as a match at every threshold.

Also available: ``DetectionMAP`` (a DDP-safe torchmetrics metric, defined in
:mod:`egolab.metrics.localization_metric` and imported from here on first use, so that this module and
its command line import only NumPy) and a command line,
``python -m egolab.metrics.localization --gt GT.json --pred PRED.json``. Like the official code, the
command line counts predictions on videos outside the chosen GT subset as false positives;
``--ignore-other-videos`` drops them instead (useful with a GT file that lacks some videos, e.g.
BSN's ActivityNet list).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from operator import attrgetter
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
import numpy as np

from egolab.errors import UserError

ANET_TIOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
"""Default tIoU thresholds of the official ActivityNet evaluation."""


def __getattr__(name: str) -> Any:
    """``DetectionMAP`` on first access (PEP 562): torch and torchmetrics load only when it is used."""
    if name == "DetectionMAP":
        from egolab.metrics.localization_metric import DetectionMAP

        return DetectionMAP
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ----------------------------------------------------------------------------------------------------
# tIoU


def _tiou(s1: np.ndarray, e1: np.ndarray, s2: np.ndarray, e2: np.ndarray) -> np.ndarray:
    """Broadcast tIoU with the official operation order (so threshold ties compare identically)."""
    inter = np.clip(np.minimum(e1, e2) - np.maximum(s1, s2), 0.0, None)
    union = (e1 - s1) + (e2 - s2) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def segment_tiou(segment: Any, segments: Any) -> np.ndarray:
    """tIoU of one ``[start, end]`` segment against each row of an (M, 2) array; returns (M,)."""
    seg = np.asarray(segment, dtype=np.float64).reshape(2)
    segs = np.asarray(segments, dtype=np.float64).reshape(-1, 2)
    return _tiou(seg[0], seg[1], segs[:, 0], segs[:, 1])


def pairwise_tiou(segments_a: Any, segments_b: Any) -> np.ndarray:
    """tIoU between every row of (N, 2) ``segments_a`` and every row of (M, 2) ``segments_b``; (N, M)."""
    a = np.asarray(segments_a, dtype=np.float64).reshape(-1, 2)
    b = np.asarray(segments_b, dtype=np.float64).reshape(-1, 2)
    return _tiou(a[:, :1], a[:, 1:], b[None, :, 0], b[None, :, 1])


# ----------------------------------------------------------------------------------------------------
# Inputs and results


def _check_segments(segments: np.ndarray, where: str) -> None:
    if segments.ndim != 2 or segments.shape[1] != 2:
        raise ValueError(f"{where}: segments must have shape (N, 2), got {tuple(segments.shape)}")
    if not np.isfinite(segments).all():
        raise ValueError(f"{where}: segments must be finite")
    bad = np.flatnonzero(segments[:, 1] < segments[:, 0])
    if bad.size:
        raise ValueError(f"{where}: segment end < start: {segments[bad[0]].tolist()}")


@dataclass
class SegmentTable:
    """Flat table of segments, one row each: the input of the evaluation functions.

    ``videos`` holds any comparable ids (str or int), ``segments`` is (N, 2) in seconds, ``labels`` are
    integer class ids (needed for multi-class evaluation) and ``scores`` are prediction confidences.
    """

    videos: Any
    segments: Any
    labels: Any = None
    scores: Any = None

    def __post_init__(self) -> None:
        self.videos = np.asarray(self.videos)
        segs = np.asarray(self.segments, dtype=np.float64)
        self.segments = segs.reshape(0, 2) if segs.size == 0 else segs
        _check_segments(self.segments, "SegmentTable")
        n = len(self.segments)
        if self.videos.shape != (n,):
            raise ValueError(f"SegmentTable: videos must have shape ({n},), got {self.videos.shape}")
        if self.labels is not None:
            labels = np.asarray(self.labels)
            if labels.shape != (n,) or not (labels.size == 0 or np.issubdtype(labels.dtype, np.integer)):
                raise ValueError(f"SegmentTable: labels must be {n} integers")
            self.labels = labels.astype(np.int64)
        if self.scores is not None:
            self.scores = np.asarray(self.scores, dtype=np.float64)
            if self.scores.shape != (n,) or np.isnan(self.scores).any():
                raise ValueError(f"SegmentTable: scores must be {n} numbers (no NaN)")

    def __len__(self) -> int:
        return len(self.segments)

    def select(self, index: np.ndarray) -> SegmentTable:
        """Rows picked by a boolean mask or an index array, in that order."""
        return SegmentTable(
            self.videos[index],
            self.segments[index],
            None if self.labels is None else self.labels[index],
            None if self.scores is None else self.scores[index],
        )


@dataclass(frozen=True)
class DetectionResult:
    """Per-class AP (T, C) and Recall@kx (T, K, C) for the GT classes ``classes`` (sorted ids)."""

    tiou_thresholds: np.ndarray
    top_k: tuple[int, ...]
    classes: np.ndarray
    ap: np.ndarray
    recall: np.ndarray

    @property
    def mAP(self) -> np.ndarray:
        """Mean AP over the GT classes, one per threshold (NaN without ground truth)."""
        return self.ap.mean(axis=1) if self.classes.size else np.full(len(self.tiou_thresholds), np.nan)

    @property
    def average_mAP(self) -> float:
        """mAP averaged over the thresholds."""
        return float(self.mAP.mean())

    @property
    def mean_recall(self) -> np.ndarray:
        """Recall@kx averaged over the GT classes, (T, K)."""
        if self.classes.size:
            return self.recall.mean(axis=2)
        return np.full((len(self.tiou_thresholds), len(self.top_k)), np.nan)


def _check_thresholds(tiou_thresholds: Any) -> np.ndarray:
    thr = np.asarray(tiou_thresholds, dtype=np.float64).reshape(-1)
    if thr.size == 0 or not ((thr > 0) & (thr <= 1)).all():
        raise ValueError(f"tIoU thresholds must be a non-empty list of numbers in (0, 1], got {thr.tolist()}")
    return thr


def _check_top_k(top_k: Any) -> tuple[int, ...]:
    ks = tuple(int(k) for k in top_k)
    if any(k < 1 for k in ks) or any(k != float(k0) for k, k0 in zip(ks, top_k, strict=True)):
        raise ValueError(f"top_k must be positive integers, got {list(top_k)}")
    return ks


def threshold_keys(tiou_thresholds: Any) -> list[str]:
    """Names of the thresholds in result keys (``f"{t:g}"``); refuses thresholds that would collide."""
    keys = [f"{t:g}" for t in _check_thresholds(tiou_thresholds)]
    if len(set(keys)) != len(keys):
        raise ValueError(f"tIoU thresholds must be distinct at 6 significant digits, got {keys}")
    return keys


# ----------------------------------------------------------------------------------------------------
# Evaluation


def _interpolated_ap(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """VOC2011 all-point interpolated AP of each row of (T, n) curves, summed only where recall changes
    (as the official code: each row's terms are summed by one 1-D ``np.sum``, so the result is the same)."""
    rows = precision.shape[0]
    prec = np.concatenate((np.zeros((rows, 1)), precision, np.zeros((rows, 1))), axis=1)
    rec = np.concatenate((np.zeros((rows, 1)), recall, np.ones((rows, 1))), axis=1)
    prec = np.maximum.accumulate(prec[:, ::-1], axis=1)[:, ::-1]
    terms = (rec[:, 1:] - rec[:, :-1]) * prec[:, 1:]
    changed = rec[:, 1:] != rec[:, :-1]
    return np.array([np.sum(term[mask]) for term, mask in zip(terms, changed, strict=True)])


def _video_index(gt_videos: np.ndarray, pred_videos: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Common integer index of the video ids of both tables.

    Tables list a video's rows together, so the ids are hashed once per run of equal ids, not per row.
    """
    heads, run_lengths = zip(*(_runs(v) for v in (gt_videos, pred_videos)), strict=True)
    parts = [h for h in heads if h.size]
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    uniq, inverse = np.unique(np.concatenate(parts), return_inverse=True)
    inverse = inverse.astype(np.int64)
    n_gt_runs = heads[0].size
    gt_index = np.repeat(inverse[:n_gt_runs], run_lengths[0])
    pred_index = np.repeat(inverse[n_gt_runs:], run_lengths[1])
    return gt_index, pred_index, len(uniq)


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first value of each run of equal consecutive values, and the run lengths."""
    if values.size == 0:
        return values, np.zeros(0, np.int64)
    start = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    return values[start], np.diff(np.r_[start, values.size])


def _group_ranks(rows: np.ndarray, groups: np.ndarray, scores: np.ndarray, size: int) -> np.ndarray:
    """Rank of each of ``rows`` inside its group by ``argsort(scores)[::-1]`` over the group in input order.

    Groups of equal size are stacked so that one 2-D argsort sorts each of them exactly as the official
    1-D call on that group would. Returns an array of length ``size`` indexed by row id.
    """
    o = np.argsort(groups, kind="stable")
    rows, groups = rows[o], groups[o]
    _, count = _runs(groups)  # groups is sorted: its runs are the groups
    first = np.cumsum(count) - count
    ranks = np.zeros(size, np.int64)
    for n in np.unique(count):
        block = rows[first[count == n][:, None] + np.arange(n)]
        ranks[np.take_along_axis(block, np.argsort(scores[block], axis=1)[:, ::-1], axis=1)] = np.arange(n)
    return ranks


def evaluate_detection(
    gt: SegmentTable,
    pred: SegmentTable,
    tiou_thresholds: Any = ANET_TIOU_THRESHOLDS,
    top_k: Sequence[int] = (),
) -> DetectionResult:
    """Per-class AP at each tIoU threshold and Recall@kx for each k, over the classes of ``gt``.

    ``gt`` needs ``labels``; ``pred`` needs ``labels`` and ``scores``. See the module docstring for
    the matching rules.
    """
    thr = _check_thresholds(tiou_thresholds)
    ks = _check_top_k(top_k)
    if gt.labels is None or pred.labels is None or pred.scores is None:
        raise ValueError("evaluate_detection needs gt.labels, pred.labels and pred.scores")
    classes = np.unique(gt.labels)
    pred = pred.select(np.isin(pred.labels, classes))
    n_cls, n_thr, n_gt, n_pred = len(classes), len(thr), len(gt), len(pred)
    gcls = np.searchsorted(classes, gt.labels)
    pcls = np.searchsorted(classes, pred.labels)
    gvid, pvid, n_vid = _video_index(gt.videos, pred.videos)

    # Processing order of each class: the official ranking on the class's predictions in input order.
    by_cls = np.argsort(pcls, kind="stable")
    bounds = np.searchsorted(pcls[by_cls], np.arange(n_cls + 1))
    class_order = []
    rank = np.zeros(n_pred, np.int64)
    for c in range(n_cls):
        idx = by_cls[bounds[c] : bounds[c + 1]]
        idx = idx[np.argsort(pred.scores[idx])[::-1]]
        rank[idx] = np.arange(idx.size)
        class_order.append(idx)

    # (class, video) groups of GTs, input order inside a group; predictions find their group.
    gkey = gcls * n_vid + gvid
    pkey = pcls * n_vid + pvid
    g_sorted = np.argsort(gkey, kind="stable")
    group_keys, g_first, g_count = np.unique(gkey[g_sorted], return_index=True, return_counts=True)
    grp = np.searchsorted(group_keys, pkey)
    has_gt = grp < group_keys.size
    has_gt[has_gt] = group_keys[grp[has_gt]] == pkey[has_gt]
    rows_gt = np.flatnonzero(has_gt)
    group_rank = _group_ranks(rows_gt, grp[rows_gt], pred.scores, n_pred) if ks else None

    # tIoU of each prediction against the GTs of its group, bucketed by group size so that each row is
    # sorted by one argsort call just like the official per-prediction call.
    pairs: list[tuple[np.ndarray, ...]] = []
    best = np.full((len(ks), n_gt), -1.0)
    n_of = g_count[grp[rows_gt]]
    for g in np.flatnonzero(np.bincount(n_of)):  # the distinct group sizes (np.unique is slower here)
        rows = rows_gt[n_of == g]
        gt_ids = g_sorted[g_first[grp[rows]][:, None] + np.arange(g)]
        iou = _tiou(
            pred.segments[rows, :1], pred.segments[rows, 1:], gt.segments[gt_ids, 0], gt.segments[gt_ids, 1]
        )
        order = np.argsort(iou, axis=1)[:, ::-1]
        sorted_iou = np.take_along_axis(iou, order, axis=1)
        r, c = np.nonzero(sorted_iou >= thr.min())
        pairs.append((rows[r], gt_ids[r, order[r, c]], sorted_iou[r, c], c))
        for ki, k in enumerate(ks):
            top = group_rank[rows] < k * g
            np.maximum.at(best[ki], gt_ids[top].ravel(), iou[top].ravel())

    tp = _greedy_match(pairs, rank, grp, thr, n_pred, n_gt)

    npos = np.bincount(gcls, minlength=n_cls)
    ap = np.zeros((n_thr, n_cls))
    for c, idx in enumerate(class_order):
        if idx.size == 0:
            continue
        tp_cum = np.cumsum(tp[:, idx], axis=1, dtype=np.float64)
        precision = tp_cum / np.arange(1, idx.size + 1)
        recall = tp_cum / npos[c]
        ap[:, c] = _interpolated_ap(precision, recall)

    recall_kx = np.zeros((n_thr, len(ks), n_cls))
    for t in range(n_thr):
        for ki in range(len(ks)):
            recall_kx[t, ki] = np.bincount(gcls, weights=best[ki] >= thr[t], minlength=n_cls) / npos
    return DetectionResult(thr, ks, classes, ap, recall_kx)


def _greedy_match(
    pairs: list[tuple[np.ndarray, ...]],
    rank: np.ndarray,
    grp: np.ndarray,
    thr: np.ndarray,
    n_pred: int,
    n_gt: int,
) -> np.ndarray:
    """TP flags (T, n_pred) of the official one-to-one greedy matching.

    ``pairs`` = (pred, gt, tIoU, position) with each prediction's candidate GTs in its tIoU order.
    Groups are independent (a GT belongs to one group), so round r processes the r-th prediction with
    candidates of every group at once; rounds keep the score order within each group.
    """
    tp = np.zeros((len(thr), n_pred), bool)
    if not pairs:
        return tp
    pp, pg, pi, pc = (np.concatenate(col) for col in zip(*pairs, strict=True))
    if pp.size == 0:
        return tp
    involved = np.zeros(n_pred, bool)
    involved[pp] = True
    rel = np.flatnonzero(involved)  # np.unique(pp), in linear time
    rel = rel[np.lexsort((rank[rel], grp[rel]))]
    new_group = np.r_[True, grp[rel][1:] != grp[rel][:-1]]
    group_start = np.flatnonzero(new_group)
    round_of = np.zeros(n_pred, np.int64)
    round_of[rel] = np.arange(rel.size) - np.repeat(group_start, np.diff(np.r_[group_start, rel.size]))

    o = np.lexsort((pc, pp, round_of[pp]))
    pp, pg, pi = pp[o], pg[o], pi[o]
    rounds = round_of[pp]
    seg_start = np.flatnonzero(np.r_[True, pp[1:] != pp[:-1]])
    n_rounds = int(rounds[-1]) + 1
    pair_bounds = np.searchsorted(rounds, np.arange(n_rounds + 1))
    seg_bounds = np.searchsorted(rounds[seg_start], np.arange(n_rounds + 1))
    locked = np.zeros((len(thr), n_gt), bool)
    for r in range(n_rounds):
        a, b = pair_bounds[r], pair_bounds[r + 1]
        gi = pg[a:b]
        ok = (pi[a:b] >= thr[:, None]) & ~locked[:, gi]
        n = b - a
        first = np.minimum.reduceat(
            np.where(ok, np.arange(n), n), seg_start[seg_bounds[r] : seg_bounds[r + 1]] - a, axis=1
        )
        t_i, s_i = np.nonzero(first < n)
        hit = first[t_i, s_i]
        tp[t_i, pp[a + hit]] = True
        locked[t_i, gi[hit]] = True
    return tp


def _single_class(gt: SegmentTable, pred: SegmentTable) -> tuple[SegmentTable, SegmentTable]:
    """Both tables with every label set to 0."""
    return (
        SegmentTable(gt.videos, gt.segments, np.zeros(len(gt), np.int64)),
        SegmentTable(pred.videos, pred.segments, np.zeros(len(pred), np.int64), pred.scores),
    )


def average_precision_detection(gt: SegmentTable, pred: SegmentTable, tiou_thresholds: Any) -> np.ndarray:
    """AP of ONE class at each tIoU threshold (labels are ignored); NaN without GT, 0 without predictions."""
    if len(gt) == 0:
        return np.full(len(_check_thresholds(tiou_thresholds)), np.nan)
    return evaluate_detection(*_single_class(gt, pred), tiou_thresholds).ap[:, 0]


def topkx_recall_detection(
    gt: SegmentTable, pred: SegmentTable, tiou_thresholds: Any, top_k: Sequence[int] = (1, 5)
) -> np.ndarray:
    """Recall@kx of ONE class, shape (T, K) (labels are ignored); NaN without GT.

    In each video with n GTs, a GT is recalled at threshold t if any of the top k*n predictions of
    that video has tIoU >= t with it (no one-to-one matching), as in Ego4D MQ / ActionFormer.
    """
    if len(gt) == 0:
        return np.full((len(_check_thresholds(tiou_thresholds)), len(_check_top_k(top_k))), np.nan)
    return evaluate_detection(*_single_class(gt, pred), tiou_thresholds, top_k).recall[:, :, 0]


def remove_duplicate_annotations(gt: SegmentTable, tol: float = 1e-3) -> SegmentTable:
    """Drop GT rows shorter than ``tol`` and repeats of an already kept row of the same video and label
    (both ends within ``tol``), as ActionFormer does when loading ActivityNet annotations."""
    labels = np.zeros(len(gt), np.int64) if gt.labels is None else gt.labels
    kept: dict[Any, list[tuple[float, float, int]]] = {}
    keep = np.zeros(len(gt), bool)
    for i, (video, (s, e), label) in enumerate(
        zip(gt.videos.tolist(), gt.segments.tolist(), labels.tolist(), strict=True)
    ):
        if e - s < tol:
            continue
        previous = kept.setdefault(video, [])
        if any(abs(s - ps) <= tol and abs(e - pe) <= tol and label == pl for ps, pe, pl in previous):
            continue
        previous.append((s, e, label))
        keep[i] = True
    return gt.select(keep)


# ----------------------------------------------------------------------------------------------------
# Flat metric names


def result_values(res: DetectionResult, tiou_thresholds: Any) -> dict[str, float]:
    """Flat metric names: ``mAP@{t}``, ``average_mAP``, ``recall@{k}x@{t}``, ``average_recall@{k}x``."""
    keys = threshold_keys(tiou_thresholds)
    values: dict[str, float] = {f"mAP@{key}": m for key, m in zip(keys, res.mAP.tolist(), strict=True)}
    values["average_mAP"] = res.average_mAP
    for ki, k in enumerate(res.top_k):
        for key, r in zip(keys, res.mean_recall[:, ki].tolist(), strict=True):
            values[f"recall@{k}x@{key}"] = r
        values[f"average_recall@{k}x"] = float(res.mean_recall[:, ki].mean())
    return values


# ----------------------------------------------------------------------------------------------------
# ActivityNet json files and the command line


class AnnotationFormatError(UserError, ValueError):
    """A ground-truth or prediction file does not follow the ActivityNet json format."""


class GroundTruth(NamedTuple):
    """One subset of an ActivityNet ground-truth file: segments with class indices into ``class_names``."""

    table: SegmentTable
    class_names: list[str]
    videos: frozenset[str]


def _read_json(path: str, kind: str) -> Any:
    # Decoding makes no reference cycles, yet its ~10^6 new containers would trigger many full cyclic
    # collections (half the decoding time of a 30 MB submission): pause the collector meanwhile.
    collecting = gc.isenabled()
    gc.disable()
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise AnnotationFormatError(f"{kind} file {path}: not found") from None
    except json.JSONDecodeError as e:
        raise AnnotationFormatError(f"{kind} file {path}: invalid JSON ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise AnnotationFormatError(f"{kind} file {path}: cannot read ({e})") from None
    finally:
        if collecting:
            gc.enable()


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _segment(value: Any, where: str) -> tuple[float, float]:
    if not (isinstance(value, list) and len(value) == 2 and all(_is_number(v) for v in value)):
        raise AnnotationFormatError(f"{where}: 'segment' must be two numbers [start, end], got {value!r}")
    if value[1] < value[0]:
        raise AnnotationFormatError(f"{where}: segment end < start: {value!r}")
    return float(value[0]), float(value[1])


def _section(data: Any, key: str, path: str, kind: str) -> dict[str, Any]:
    if not isinstance(data, dict) or not isinstance(data.get(key), dict):
        raise AnnotationFormatError(f"{kind} file {path}: missing '{key}' object at the top level")
    return data[key]


def load_activitynet_gt(path: str, subset: str = "validation") -> GroundTruth:
    """Read the videos of ``subset`` (case-insensitive) from an ActivityNet ground-truth json.

    Class indices follow the sorted label names of that subset.
    """
    database = _section(_read_json(path, "ground truth"), "database", path, "ground truth")
    videos, segments, names = [], [], []
    subset_videos = set()
    for vid, entry in database.items():
        where = f"{path}: video {vid!r}"
        if not isinstance(entry, dict) or not isinstance(entry.get("subset"), str):
            raise AnnotationFormatError(f"{where}: needs a string 'subset'")
        if entry["subset"].lower() != subset.lower():
            continue
        subset_videos.add(vid)
        annotations = entry.get("annotations", [])
        if not isinstance(annotations, list):
            raise AnnotationFormatError(f"{where}: 'annotations' must be a list")
        for i, ann in enumerate(annotations):
            here = f"{where}, annotation #{i}"
            if not isinstance(ann, dict) or not isinstance(ann.get("label"), str):
                raise AnnotationFormatError(f"{here}: needs a string 'label'")
            segments.append(_segment(ann.get("segment"), here))
            videos.append(vid)
            names.append(ann["label"])
    if not videos:
        raise AnnotationFormatError(f"ground truth file {path}: no annotations in subset {subset!r}")
    class_names = sorted(set(names))
    index = {name: i for i, name in enumerate(class_names)}
    table = SegmentTable(np.array(videos), np.array(segments), np.array([index[n] for n in names], np.int64))
    return GroundTruth(table, class_names, frozenset(subset_videos))


def _checked_records(results: Mapping[str, Any], path: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Segments (N, 2), scores and labels of every record in file order, each record validated (an error
    names the first bad one)."""
    segments, scores, labels = [], [], []
    for vid, items in results.items():
        where = f"{path}: video {vid!r}"
        if not isinstance(items, list):
            raise AnnotationFormatError(f"{where}: predictions must be a list")
        for i, item in enumerate(items):
            here = f"{where}, result #{i}"
            if not isinstance(item, dict):
                raise AnnotationFormatError(f"{here}: must be an object with segment, score and label")
            segments.append(_segment(item.get("segment"), here))
            if not _is_number(item.get("score")):
                raise AnnotationFormatError(f"{here}: needs a numeric 'score', got {item.get('score')!r}")
            if not isinstance(item.get("label"), str):
                raise AnnotationFormatError(f"{here}: needs a string 'label'")
            scores.append(float(item["score"]))
            labels.append(item["label"])
    return np.array(segments, np.float64).reshape(-1, 2), np.array(scores, np.float64), labels


class _Prediction(msgspec.Struct, gc=False):
    segment: tuple[float, float]
    score: float
    label: str


class _Submission(msgspec.Struct, gc=False):
    results: dict[str, list[_Prediction]]


_SUBMISSION_DECODER = msgspec.json.Decoder(_Submission)


def _decoded_records(path: str) -> tuple[list[str], list[int], np.ndarray, np.ndarray, list[str]] | None:
    """Videos, record counts per video, segments (N, 2), scores and labels of a submission in file order,
    decoded and type-checked in C by msgspec (several times faster than json + per-record checks); None
    when the file cannot be read so or some record is malformed, to let :func:`_checked_records` find
    and name it."""
    try:
        with open(path, "rb") as f:
            results = _SUBMISSION_DECODER.decode(f.read()).results
    except (OSError, msgspec.DecodeError):
        return None
    records = list(chain.from_iterable(results.values()))
    segments = chain.from_iterable(map(attrgetter("segment"), records))
    seg = np.fromiter(segments, np.float64, 2 * len(records)).reshape(-1, 2)
    score = np.fromiter(map(attrgetter("score"), records), np.float64, len(records))
    if not (np.isfinite(seg).all() and np.isfinite(score).all() and (seg[:, 1] >= seg[:, 0]).all()):
        return None
    counts = [len(items) for items in results.values()]
    return list(results), counts, seg, score, list(map(attrgetter("label"), records))


def load_activitynet_predictions(
    path: str, class_names: Sequence[str], videos: Collection[str], keep_other_videos: bool = True
) -> tuple[SegmentTable, int, int]:
    """Read an ActivityNet submission json (``results``: video -> list of segment/score/label).

    Every record is validated. Labels outside ``class_names`` are dropped; records of videos outside
    ``videos`` are kept (they can only be false positives, as officially) unless ``keep_other_videos``
    is false. Returns the table, the count of records on other videos and of dropped labels.
    """
    decoded = _decoded_records(path)
    if decoded is None:
        results = _section(_read_json(path, "prediction"), "results", path, "prediction")
        segments, scores, labels = _checked_records(results, path)
        decoded = list(results), [len(items) for items in results.values()], segments, scores, labels
    video_keys, counts, segments, scores, labels = decoded
    record_videos = np.repeat(np.array(video_keys, dtype=str), counts)
    inside = np.repeat(np.array([vid in videos for vid in video_keys], bool), counts)
    index = {name: i for i, name in enumerate(class_names)}
    label_ids = np.fromiter(map(index.get, labels, repeat(-1)), np.int64, len(labels))
    keep = inside | keep_other_videos
    known = label_ids >= 0
    rows = keep & known
    table = SegmentTable(record_videos[rows], segments[rows], label_ids[rows], scores[rows])
    return table, int((~inside).sum()), int((keep & ~known).sum())


def evaluate_files(
    gt_path: str,
    pred_path: str,
    subset: str = "validation",
    tiou_thresholds: Any = ANET_TIOU_THRESHOLDS,
    top_k: Sequence[int] = (),
    remove_duplicates: bool = False,
    ignore_other_videos: bool = False,
) -> dict[str, Any]:
    """The command line's json result for two ActivityNet-format files."""
    keys = threshold_keys(tiou_thresholds)
    gt = load_activitynet_gt(gt_path, subset)
    pred, other_videos, unknown_labels = load_activitynet_predictions(
        pred_path, gt.class_names, gt.videos, keep_other_videos=not ignore_other_videos
    )
    if other_videos or unknown_labels:
        fate = "ignored" if ignore_other_videos else "counted as false positives"
        print(
            f"note: {other_videos} predictions on videos outside subset {subset!r} ({fate}); "
            f"ignored {unknown_labels} with labels absent from its ground truth",
            file=sys.stderr,
        )
    table = remove_duplicate_annotations(gt.table) if remove_duplicates else gt.table
    res = evaluate_detection(table, pred, tiou_thresholds, top_k)
    out: dict[str, Any] = {
        "mAP": dict(zip(keys, res.mAP.tolist(), strict=True)),
        "average_mAP": res.average_mAP,
    }
    if res.top_k:
        recall = res.mean_recall
        out["recall"] = {
            f"{k}x": dict(zip(keys, recall[:, i].tolist(), strict=True)) for i, k in enumerate(res.top_k)
        }
        out["average_recall"] = {f"{k}x": float(recall[:, i].mean()) for i, k in enumerate(res.top_k)}
    return out


def detection_fields(where: str, video_id: str, k: int, item: object) -> tuple[float, float, float, int]:
    """``(start, end, score, label_id)`` of detection ``k`` of a video in an egolab predictions file, or an
    :class:`AnnotationFormatError` naming the file (``where``), the video and the detection."""
    try:
        start, end = item["segment"]
        return float(start), float(end), float(item["score"]), int(item["label_id"])
    except (KeyError, TypeError, ValueError) as err:
        raise AnnotationFormatError(
            f"{where}: video {video_id!r}, detection {k}: needs 'segment' [start, end], 'score' and an "
            f"integer 'label_id' (egolab predictions file); got {item!r} ({type(err).__name__}: {err})"
        ) from None


def score_predictions_file(path: str | Path) -> dict[str, float]:
    """Recompute a run's test metrics from its ``predictions.json`` (which carries the ground truth it
    was scored against, the tIoU thresholds and top-k), as :class:`DetectionMAP` computed them, or for
    point events (a file with ``point_tolerance_s``) as SnapFormer's :class:`PointEventMetric` did."""
    data = _read_json(str(path), "prediction")
    for key in ("results", "ground_truth", "tiou_thresholds"):
        if key not in data:
            raise AnnotationFormatError(f"{path}: not an egolab localization predictions file (no {key!r})")
    if data.get("point_tolerance_s") is not None:
        return _score_point_events(data)
    rows = [
        (vid, *detection_fields(str(path), vid, k, item))
        for vid, items in data["results"].items()
        for k, item in enumerate(items)
    ]
    pred = SegmentTable(
        np.array([r[0] for r in rows]),
        np.array([r[1:3] for r in rows]).reshape(-1, 2),
        np.array([r[4] for r in rows], np.int64),
        np.array([r[3] for r in rows]),
    )
    truth = data["ground_truth"]
    gt = SegmentTable(
        np.array([vid for vid, g in truth.items() for _ in g["label_ids"]]),
        np.array([s for g in truth.values() for s in g["segments"]]).reshape(-1, 2),
        np.array([label for g in truth.values() for label in g["label_ids"]], np.int64),
    )
    res = evaluate_detection(gt, pred, data["tiou_thresholds"], data.get("top_k", []))
    return result_values(res, data["tiou_thresholds"])


def _score_point_events(data: Mapping[str, Any]) -> dict[str, float]:
    """The point metrics of a SnapFormer predictions file (its detections are points ``[t, t]``)."""
    from egolab.models.snapformer import PointEventMetric

    metric = PointEventMetric(data["point_tolerance_s"], data["tiou_thresholds"], data.get("top_k", []))
    preds, targets = [], []
    for vid, truth in data["ground_truth"].items():
        items = data["results"].get(vid, [])
        preds.append(
            {
                "video_id": vid,
                "segments": np.array([r["segment"] for r in items], np.float64).reshape(-1, 2),
                "scores": np.array([r["score"] for r in items], np.float64),
                "labels": np.array([r["label_id"] for r in items], np.int64),
            }
        )
        targets.append(
            {
                "video_id": vid,
                "segments": np.array(truth["segments"], np.float64).reshape(-1, 2),
                "labels": np.array(truth["label_ids"], np.int64),
            }
        )
    metric.update(preds, targets)
    return {name: float(value) for name, value in metric.compute().items()}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: print the detection mAP of a submission as one json object."""
    parser = argparse.ArgumentParser(
        prog="python -m egolab.metrics.localization",
        description="ActivityNet temporal action detection mAP (and Recall@kx) of a submission json.",
    )
    parser.add_argument(
        "--gt", required=True, help="ground truth json: {'database': {video: {subset, annotations}}}"
    )
    parser.add_argument(
        "--pred", required=True, help="submission json: {'results': {video: [{segment, score, label}]}}"
    )
    parser.add_argument(
        "--subset", default="validation", help="ground-truth subset, case-insensitive (default: %(default)s)"
    )
    parser.add_argument(
        "--tiou",
        type=float,
        nargs="+",
        default=None,
        help="tIoU thresholds (default: 0.5:0.95 step 0.05, as ActivityNet)",
    )
    parser.add_argument(
        "--top-k", type=int, nargs="+", default=[], help="also report Recall@kx for these k (e.g. 1 5)"
    )
    parser.add_argument(
        "--remove-duplicates",
        action="store_true",
        help="drop repeated and shorter-than-1ms GT segments first, as ActionFormer does (official: off)",
    )
    parser.add_argument(
        "--ignore-other-videos",
        action="store_true",
        help="drop predictions on videos outside the GT subset (official: they count as false positives)",
    )
    args = parser.parse_args(argv)
    thresholds = ANET_TIOU_THRESHOLDS if args.tiou is None else args.tiou
    try:
        out = evaluate_files(
            args.gt,
            args.pred,
            args.subset,
            thresholds,
            args.top_k,
            args.remove_duplicates,
            args.ignore_other_videos,
        )
    except ValueError as e:  # AnnotationFormatError included
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
