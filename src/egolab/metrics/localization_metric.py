"""``DetectionMAP``: the ActivityNet detection mAP of :mod:`egolab.metrics.localization` as a DDP-safe
torchmetrics metric.

Kept apart from :mod:`egolab.metrics.localization` so that its file evaluation and command line import
only NumPy; ``egolab.metrics.localization.DetectionMAP`` still resolves here (lazily).
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities.data import dim_zero_cat

from egolab.metrics.localization import (
    DetectionResult,
    SegmentTable,
    _check_segments,
    _check_thresholds,
    _check_top_k,
    evaluate_detection,
    remove_duplicate_annotations,
    result_values,
    threshold_keys,
)

_STATE_COLUMNS = {"records": 4, "pred_rows": 4, "gt_rows": 3}
"""Flat int64 list states and their row widths: records = (video hash, check hash, #preds, #GTs) per
video; pred_rows = (start, end, score, label); gt_rows = (start, end, label)."""


def _video_hash(video_id: str) -> tuple[int, int]:
    """Deterministic 64-bit id of a video (same in every process) plus an independent CRC32 that
    reveals collisions."""
    data = video_id.encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True), zlib.crc32(
        data
    )


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _float_bits(values: np.ndarray) -> np.ndarray:
    """Float64 columns reinterpreted as int64 (exact round trip through the int64 states)."""
    return np.ascontiguousarray(values, dtype=np.float64).view(np.int64)


class DetectionMAP(Metric):
    """ActivityNet detection mAP (and optionally Recall@kx) over a validation epoch.

    ``update(preds, targets)`` takes the post-processor's list of dicts (video_id, segments (N, 2) in
    seconds, scores (N,), labels (N,)) and the matching targets (video_id, segments (M, 2), labels (M,)),
    covering the same videos. ``compute()`` returns float64 tensors ``mAP@{t}``, ``average_mAP`` and,
    for each k in ``top_k``, ``recall@{k}x@{t}`` and ``average_recall@{k}x``.

    DDP: states are int64 lists gathered with ``cat`` (floats are stored bit-cast, so module dtype casts
    never touch them); videos are identified by a 64-bit hash of their id. A video seen more than once
    (DistributedSampler pads the last batch by repeating samples) is counted once, its first record
    kept. Tied scores are broken in the order the videos reach ``compute`` (gather order under DDP).
    Call ``update``, not ``forward``: the metric is meant for the whole epoch.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        tiou_thresholds: Sequence[float] = (0.3, 0.4, 0.5, 0.6, 0.7),
        top_k: Sequence[int] = (),
        remove_duplicates: bool = False,
        label_names: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.tiou_thresholds = tuple(float(t) for t in _check_thresholds(tiou_thresholds))
        self._keys = threshold_keys(self.tiou_thresholds)
        self.top_k = _check_top_k(top_k)
        self.remove_duplicates = remove_duplicates
        self.label_names = None if label_names is None else list(label_names)
        for name in _STATE_COLUMNS:
            self.add_state(name, default=[], dist_reduce_fx="cat")
        self._result: DetectionResult | None = None
        self._add_placeholders()

    def _add_placeholders(self) -> None:
        # An empty int64 tensor in every list: a rank that saw no data still gathers int64 (torchmetrics
        # would otherwise substitute a float tensor and the ranks would disagree on the dtype).
        for name in _STATE_COLUMNS:
            getattr(self, name).append(torch.zeros(0, dtype=torch.int64, device=self.device))

    def reset(self) -> None:
        """Clear the accumulated videos."""
        super().reset()
        self._result = None
        self._add_placeholders()

    def _by_video(self, items: Sequence[Mapping[str, Any]], what: str) -> dict[str, Mapping[str, Any]]:
        out: dict[str, Mapping[str, Any]] = {}
        for item in items:
            vid = str(item["video_id"])
            if vid in out:
                raise ValueError(f"{what}: video {vid!r} appears twice in one update")
            out[vid] = item
        return out

    def _labels(self, value: Any, where: str) -> np.ndarray:
        labels = _as_numpy(value).reshape(-1)
        if labels.size and not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{where}: labels must be integers, got dtype {labels.dtype}")
        labels = labels.astype(np.int64)
        if labels.size and labels.min() < 0:
            raise ValueError(f"{where}: labels must be >= 0, got {labels.min()}")
        if labels.size and self.label_names is not None and labels.max() >= len(self.label_names):
            raise ValueError(
                f"{where}: label {labels.max()} is beyond the {len(self.label_names)} label_names"
            )
        return labels

    def update(self, preds: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]]) -> None:
        """Add one batch of per-video predictions and targets (same set of videos)."""
        pred_by_vid = self._by_video(preds, "preds")
        target_by_vid = self._by_video(targets, "targets")
        if pred_by_vid.keys() != target_by_vid.keys():
            only_p = sorted(pred_by_vid.keys() - target_by_vid.keys())
            only_t = sorted(target_by_vid.keys() - pred_by_vid.keys())
            raise ValueError(
                f"preds and targets cover different videos: only in preds {only_p}, only in targets {only_t}"
            )
        records, pred_rows, gt_rows = [], [], []
        for vid, target in target_by_vid.items():
            pred = pred_by_vid[vid]
            p_seg = _as_numpy(pred["segments"]).astype(np.float64).reshape(-1, 2)
            p_score = _as_numpy(pred["scores"]).astype(np.float64).reshape(-1)
            p_label = self._labels(pred["labels"], f"preds[{vid!r}]")
            g_seg = _as_numpy(target["segments"]).astype(np.float64).reshape(-1, 2)
            g_label = self._labels(target["labels"], f"targets[{vid!r}]")
            _check_segments(p_seg, f"preds[{vid!r}]")
            _check_segments(g_seg, f"targets[{vid!r}]")
            if not len(p_seg) == len(p_score) == len(p_label) or not np.isfinite(p_score).all():
                raise ValueError(f"preds[{vid!r}]: need as many finite scores and labels as segments")
            if len(g_seg) != len(g_label):
                raise ValueError(f"targets[{vid!r}]: need as many labels as segments")
            records.append([*_video_hash(vid), len(p_seg), len(g_seg)])
            pred_rows.append(np.column_stack([_float_bits(np.column_stack([p_seg, p_score])), p_label]))
            gt_rows.append(np.column_stack([_float_bits(g_seg), g_label]))
        for name, rows in (
            ("records", [np.asarray(records, np.int64)]),
            ("pred_rows", pred_rows),
            ("gt_rows", gt_rows),
        ):
            flat = np.concatenate([r.reshape(-1) for r in rows]) if rows else np.zeros(0, np.int64)
            getattr(self, name).append(torch.from_numpy(flat.astype(np.int64)).to(self.device))

    def _tables(self) -> tuple[SegmentTable, SegmentTable]:
        """Ground truth and predictions from the (synced) states, one record per video."""
        rec, pred, gt = (
            dim_zero_cat(getattr(self, name)).cpu().numpy().reshape(-1, width)
            for name, width in _STATE_COLUMNS.items()
        )
        code, check, n_pred, n_gt = rec.T
        _, first, inverse = np.unique(code, return_index=True, return_inverse=True)
        if (check != check[first][inverse]).any():
            raise RuntimeError("two different video ids share a 64-bit hash; rename one of them")
        keep = np.zeros(len(code), bool)
        keep[first] = True
        p_keep, g_keep = np.repeat(keep, n_pred), np.repeat(keep, n_gt)
        p_float = np.ascontiguousarray(pred[p_keep, :3]).view(np.float64)
        g_float = np.ascontiguousarray(gt[g_keep, :2]).view(np.float64)
        preds = SegmentTable(np.repeat(code, n_pred)[p_keep], p_float[:, :2], pred[p_keep, 3], p_float[:, 2])
        targets = SegmentTable(np.repeat(code, n_gt)[g_keep], g_float, gt[g_keep, 2])
        return targets, preds

    def compute(self) -> dict[str, torch.Tensor]:
        """mAP per threshold, average mAP and, when ``top_k`` is set, Recall@kx (NaN without GT)."""
        gt, pred = self._tables()
        if self.remove_duplicates:
            gt = remove_duplicate_annotations(gt)
        self._result = res = evaluate_detection(gt, pred, self.tiou_thresholds, self.top_k)
        values = result_values(res, self.tiou_thresholds)
        return {name: torch.tensor(v, dtype=torch.float64, device=self.device) for name, v in values.items()}

    def per_class_ap(self) -> dict[str | int, torch.Tensor]:
        """AP of each GT class (one value per threshold), keyed by label name when names were given."""
        self.compute()
        assert self._result is not None
        res = self._result
        names = self.label_names
        return {
            (names[c] if names is not None else int(c)): torch.tensor(res.ap[:, i], dtype=torch.float64)
            for i, c in enumerate(res.classes.tolist())
        }


def records_by_video(gt: SegmentTable, pred: SegmentTable) -> tuple[list[dict], list[dict]]:
    """Two tables as :meth:`DetectionMAP.update` takes them: one prediction and one target record per
    video of ``gt`` (``gt`` sorted by video), in video order."""
    videos = np.unique(gt.videos)
    order = np.argsort(pred.videos, kind="stable")
    p_first = np.searchsorted(pred.videos[order], videos).tolist() + [len(pred)]
    g_first = np.searchsorted(gt.videos, videos).tolist() + [len(gt)]
    preds, targets = [], []
    for i, vid in enumerate(videos.tolist()):
        p, g = order[p_first[i] : p_first[i + 1]], slice(g_first[i], g_first[i + 1])
        preds.append(
            {
                "video_id": vid,
                "segments": torch.from_numpy(pred.segments[p]),
                "scores": torch.from_numpy(pred.scores[p]),
                "labels": torch.from_numpy(pred.labels[p]),
            }
        )
        targets.append(
            {
                "video_id": vid,
                "segments": torch.from_numpy(gt.segments[g]),
                "labels": torch.from_numpy(gt.labels[g]),
            }
        )
    return preds, targets
