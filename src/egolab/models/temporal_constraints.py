"""Temporal constraints on localization detections, applied per video after NMS.

:class:`TemporalConstraints` filters the post-processor's per-video predictions
(``{video_id, segments (N, 2) seconds, scores (N,), labels (N,)}``, docs/localization_contract.md) with
prior knowledge about the actions, in this order:

1. ``duration_range``: drop detections whose length lies outside ``[min_s, max_s]`` of their class;
2. ``min_gap`` / ``max_overlap``: one greedy pass in descending score order drops a detection when a
   kept detection of its class is closer than ``min_gap`` seconds (edge to edge; overlapping ones are 0
   apart) or overlaps it with tIoU > ``max_overlap``;
3. ``merge_gap``: same-class detections less than ``merge_gap`` seconds apart (overlapping included)
   are merged into their union with the highest score. Merged segments are not checked again against
   ``duration_range``.

Per-class values are ``{class_id: value}`` (classes not listed are unconstrained) or one value for every
class. Everything is off by default. The result is sorted by score, like the post-processor's.

:class:`ConstrainedPostProcessor` wraps a post-processor so that the task needs no change; in an
experiment TXT (every other ``task.postprocess.*`` line keeps working)::

    task.postprocess._target_=egolab.models.temporal_constraints.constrained_postprocessor
    +task.postprocess.constraints={duration_range:{0:[0.5,60]},min_gap:1.0,max_overlap:0.7}

Differences from the fork's ``libs/utils/temporal_constraints.py``: its ``max_overlap`` suppression ignores
the classes (and is on by default, at 0.5), its ``min_gap`` compares centre distances, its filters are
computed independently on the unfiltered set (a detection dropped for its duration still suppresses
others), and its merge chains on the last member's end instead of the group's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

PerClass = float | Sequence[float] | Mapping[Any, Any]


def _per_class(value: PerClass | None, name: str) -> tuple[dict[int, Any], Any]:
    """Split a per-class option into ({class_id: value}, the value for every class or None)."""
    if not isinstance(value, Mapping):
        return {}, value
    try:
        return {int(k): v for k, v in value.items()}, None
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name}: class keys must be integer class ids, got {list(value)}") from err


def _is_bounds(value: Any) -> bool:
    """Whether a value is ``[min_s, max_s]`` with 0 <= min_s <= max_s."""
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != 2:
        return False
    return all(isinstance(v, int | float) for v in value) and 0 <= value[0] <= value[1]


class TemporalConstraints:
    """Per-class duration bounds, minimum gap, maximum overlap and merging of detections (module doc)."""

    def __init__(
        self,
        duration_range: PerClass | None = None,
        min_gap: PerClass | None = None,
        max_overlap: float | None = None,
        merge_gap: float | None = None,
    ) -> None:
        self._durations, self._all_durations = _per_class(duration_range, "duration_range")
        self._gaps, self._all_gaps = _per_class(min_gap, "min_gap")
        for cls, bounds in [*self._durations.items(), ("(all)", self._all_durations)]:
            if bounds is not None and not _is_bounds(bounds):
                raise ValueError(f"duration_range of class {cls} must be [min_s, max_s], 0 <= min <= max")
        for cls, gap in [*self._gaps.items(), ("(all)", self._all_gaps)]:
            if gap is not None and not (isinstance(gap, int | float) and gap >= 0):
                raise ValueError(f"min_gap of class {cls} must be a number >= 0, got {gap!r}")
        if max_overlap is not None and not 0.0 <= max_overlap <= 1.0:
            raise ValueError(f"max_overlap must lie in [0, 1], got {max_overlap}")
        if merge_gap is not None and merge_gap < 0:
            raise ValueError(f"merge_gap must be >= 0, got {merge_gap}")
        self.max_overlap = max_overlap
        self.merge_gap = merge_gap

    def _duration_ok(self, segs: np.ndarray, labels: np.ndarray) -> np.ndarray:
        lengths = segs[:, 1] - segs[:, 0]
        keep = np.ones(len(labels), dtype=bool)
        for i, (length, label) in enumerate(zip(lengths, labels.tolist())):
            bounds = self._durations.get(label, self._all_durations)
            if bounds is not None:
                keep[i] = float(bounds[0]) <= length <= float(bounds[1])
        return keep

    def _suppress(self, segs: np.ndarray, labels: np.ndarray, order: np.ndarray) -> list[int]:
        """Greedy pass in ``order``: indices kept under ``min_gap`` and ``max_overlap`` (same class)."""
        kept: dict[int, list[int]] = {}
        result = []
        for i in order.tolist():
            label = int(labels[i])
            others = segs[kept.get(label, [])]
            if len(others):
                inter = np.minimum(others[:, 1], segs[i, 1]) - np.maximum(others[:, 0], segs[i, 0])
                gap = self._gaps.get(label, self._all_gaps)
                if gap is not None and (np.maximum(-inter, 0.0) < float(gap)).any():
                    continue
                if self.max_overlap is not None:
                    inter = np.maximum(inter, 0.0)
                    union = (others[:, 1] - others[:, 0]) + (segs[i, 1] - segs[i, 0]) - inter
                    iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
                    if (iou > self.max_overlap).any():
                        continue
            kept.setdefault(label, []).append(i)
            result.append(i)
        return result

    def _merge(
        self, segs: np.ndarray, scores: np.ndarray, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Union of same-class detections less than ``merge_gap`` apart, with their highest score."""
        out_segs, out_scores, out_labels = [], [], []
        for label in np.unique(labels):
            idx = np.flatnonzero(labels == label)
            idx = idx[np.argsort(segs[idx, 0], kind="stable")]
            start, end, score = segs[idx[0], 0], segs[idx[0], 1], scores[idx[0]]
            for i in idx[1:]:
                if segs[i, 0] - end < self.merge_gap:
                    end, score = max(end, segs[i, 1]), max(score, scores[i])
                    continue
                out_segs.append((start, end))
                out_scores.append(score)
                out_labels.append(label)
                start, end, score = segs[i, 0], segs[i, 1], scores[i]
            out_segs.append((start, end))
            out_scores.append(score)
            out_labels.append(label)
        return (
            np.asarray(out_segs, dtype=segs.dtype).reshape(-1, 2),
            np.asarray(out_scores, dtype=scores.dtype),
            np.asarray(out_labels, dtype=labels.dtype),
        )

    def __call__(self, prediction: Mapping[str, Any]) -> dict:
        """Constrained copy of one video's predictions (torch tensors, sorted by score)."""
        seg_t = torch.as_tensor(prediction["segments"])
        score_t = torch.as_tensor(prediction["scores"])
        segs = seg_t.detach().cpu().double().numpy().reshape(-1, 2)
        scores = score_t.detach().cpu().double().numpy().reshape(-1)
        labels = torch.as_tensor(prediction["labels"]).detach().cpu().long().numpy().reshape(-1)
        order = np.argsort(-scores, kind="stable")
        order = order[self._duration_ok(segs, labels)[order]]
        if self._gaps or self._all_gaps is not None or self.max_overlap is not None:
            order = np.asarray(self._suppress(segs, labels, order), dtype=np.int64)
        segs, scores, labels = segs[order], scores[order], labels[order]
        if self.merge_gap is not None and len(labels):
            segs, scores, labels = self._merge(segs, scores, labels)
            order = np.argsort(-scores, kind="stable")
            segs, scores, labels = segs[order], scores[order], labels[order]
        return {
            **prediction,
            "segments": torch.from_numpy(segs).to(seg_t.dtype),
            "scores": torch.from_numpy(scores).to(score_t.dtype),
            "labels": torch.from_numpy(labels),
        }

    def apply(self, predictions: Sequence[Mapping[str, Any]]) -> list[dict]:
        """Constrain every video of a post-processor's output."""
        return [self(p) for p in predictions]


class ConstrainedPostProcessor:
    """A post-processor followed by :class:`TemporalConstraints` on each video it returns."""

    def __init__(
        self,
        postprocess: Callable[[Mapping[str, Any], Mapping[str, Any]], list[dict]],
        constraints: TemporalConstraints | Mapping[str, Any],
    ) -> None:
        self.postprocess = postprocess
        if not isinstance(constraints, TemporalConstraints):
            constraints = TemporalConstraints(**constraints)
        self.constraints = constraints

    @property
    def assigns_labels(self) -> bool:
        """Whether the inner post-processor labels class-agnostic proposals (classifier fusion)."""
        return bool(getattr(self.postprocess, "assigns_labels", False))

    def __call__(self, outputs: Mapping[str, Any], batch: Mapping[str, Any]) -> list[dict]:
        return self.constraints.apply(self.postprocess(outputs, batch))


def constrained_postprocessor(
    constraints: Mapping[str, Any], **postprocess_kwargs: Any
) -> ConstrainedPostProcessor:
    """Hydra target: ``ActionFormerPostProcessor(**postprocess_kwargs)`` followed by ``constraints``.

    Taking the post-processor's own keyword arguments lets an experiment switch ``task.postprocess`` to
    this target with one line while the other ``task.postprocess.*`` keys keep their meaning.
    """
    from egolab.models.actionformer_postprocess import ActionFormerPostProcessor

    return ConstrainedPostProcessor(ActionFormerPostProcessor(**postprocess_kwargs), constraints)
