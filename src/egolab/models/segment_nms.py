"""1D non-maximum suppression for temporal segments: hard NMS, soft-NMS, DIoU soft-NMS, voting, batched NMS.

Pure PyTorch/NumPy replacement for ActionFormer's compiled ``nms_1d_cpu`` extension, with the same
semantics (see the spec, section 1.5):

* IoU adds ``1e-6`` to every segment length, as the C++ code does (voting uses the plain IoU).
* Hard NMS first drops scores ``<= min_score`` (when ``min_score > 0``), then greedily suppresses
  ``IoU >= iou_threshold``.
* Soft-NMS repeatedly takes the highest remaining score, decays the others (Gaussian
  ``exp(-IoU^2 / sigma)``, linear ``1 - IoU`` above the threshold, or hard), and discards those that
  fall below ``min_score``. The selected segment itself is never discarded, so the best input always
  survives. Computation is float32 like the extension. Ties between equal scores are broken by input
  order (the extension breaks them by its internal swap order, which only matters for exact ties).

Soft-NMS is sequential, but each step is one argmax plus one vectorised IoU against the remaining
segments, and it stops once ``max_num`` segments are selected (later steps cannot change them).

Options of the enhanced fork (spec section 2.2), for :func:`batched_nms`:

* DIoU soft-NMS (:func:`diou_soft_nms`): the Gaussian decay uses ``max(DIoU, 0)`` instead of the IoU, so a
  segment whose centre is far from the selected one is decayed less.
* ``class_sigma``: a Gaussian sigma per class in multiclass NMS (soft-NMS and DIoU soft-NMS).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch

LENGTH_EPS = 1e-6
"""Added to segment lengths in the NMS IoU, as in the released C++ extension."""

SOFT_NMS_METHODS = ("gaussian", "linear", "hard")


class NMSOutput(NamedTuple):
    """Kept segments sorted by (decayed) score, descending, with their indices into the input."""

    segments: torch.Tensor
    scores: torch.Tensor
    labels: torch.Tensor | None
    indices: torch.Tensor


def _as_float_tensor(x: Any) -> torch.Tensor:
    return torch.as_tensor(x).detach().cpu().to(torch.float32)


def _check_inputs(segs: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor | None) -> None:
    if segs.ndim != 2 or segs.shape[1] != 2:
        raise ValueError(f"segments must have shape (N, 2), got {tuple(segs.shape)}")
    if scores.shape != (segs.shape[0],):
        raise ValueError(f"scores must have shape ({segs.shape[0]},), got {tuple(scores.shape)}")
    if labels is not None and labels.shape != (segs.shape[0],):
        raise ValueError(f"labels must have shape ({segs.shape[0]},), got {tuple(labels.shape)}")


def segment_iou(segs_a: Any, segs_b: Any, eps: float = LENGTH_EPS) -> torch.Tensor:
    """Pairwise IoU between (N, 2) and (M, 2) segments -> (N, M); ``eps`` is added to each length."""
    a = torch.as_tensor(segs_a).reshape(-1, 2)
    b = torch.as_tensor(segs_b).reshape(-1, 2).to(a.dtype)
    left = torch.maximum(a[:, None, 0], b[None, :, 0])
    right = torch.minimum(a[:, None, 1], b[None, :, 1])
    inter = (right - left).clamp(min=0)
    len_a = a[:, 1] - a[:, 0] + eps
    len_b = b[:, 1] - b[:, 0] + eps
    return inter / (len_a[:, None] + len_b[None, :] - inter)


def segment_diou(segs_a: Any, segs_b: Any, eps: float = LENGTH_EPS) -> torch.Tensor:
    """Pairwise Distance-IoU (N, M): ``IoU - (centre distance)**2 / (enclosing length)**2``.

    The IoU term is :func:`segment_iou` (with the same length ``eps``, so that DIoU soft-NMS equals
    soft-NMS when the centres coincide); the enclosing length is clamped to at least ``eps``.
    """
    a = torch.as_tensor(segs_a).reshape(-1, 2)
    b = torch.as_tensor(segs_b).reshape(-1, 2).to(a.dtype)
    centre_dist = 0.5 * ((a[:, None, 0] + a[:, None, 1]) - (b[None, :, 0] + b[None, :, 1]))
    enclosing = torch.maximum(a[:, None, 1], b[None, :, 1]) - torch.minimum(a[:, None, 0], b[None, :, 0])
    return segment_iou(a, b, eps) - torch.square(centre_dist / enclosing.clamp(min=eps))


def _iou_one(x1: float, x2: float, area: float, xs1: np.ndarray, xs2: np.ndarray, areas: np.ndarray):
    inter = np.maximum(np.minimum(x2, xs2) - np.maximum(x1, xs1), np.float32(0))
    return inter / (area + areas - inter)


def _pack(
    segs: torch.Tensor, labels: torch.Tensor | None, keep: np.ndarray, kept_scores: np.ndarray
) -> NMSOutput:
    idx = torch.from_numpy(keep.astype(np.int64))
    return NMSOutput(
        segments=segs[idx].clone(),
        scores=torch.from_numpy(kept_scores.astype(np.float32)),
        labels=None if labels is None else labels[idx].clone(),
        indices=idx,
    )


def hard_nms(
    segs: Any,
    scores: Any,
    labels: Any = None,
    iou_threshold: float = 0.5,
    min_score: float = 0.0,
    max_num: int = -1,
) -> NMSOutput:
    """Greedy NMS: drop scores ``<= min_score`` (if > 0), then suppress ``IoU >= iou_threshold``."""
    segs = _as_float_tensor(segs)
    scores = _as_float_tensor(scores)
    labels = None if labels is None else torch.as_tensor(labels).cpu()
    _check_inputs(segs, scores, labels)
    sc = scores.numpy()
    candidates = np.flatnonzero(sc > min_score) if min_score > 0 else np.arange(len(sc))
    order = candidates[np.argsort(-sc[candidates], kind="stable")]
    x1 = segs[:, 0].numpy()[order]
    x2 = segs[:, 1].numpy()[order]
    areas = x2 - x1 + np.float32(LENGTH_EPS)
    keep: list[int] = []
    alive = np.arange(len(order))
    while alive.size and (max_num <= 0 or len(keep) < max_num):
        i, rest = alive[0], alive[1:]
        keep.append(int(order[i]))
        ovr = _iou_one(x1[i], x2[i], areas[i], x1[rest], x2[rest], areas[rest])
        alive = rest[ovr < iou_threshold]
    keep_arr = np.asarray(keep, dtype=np.int64)
    return _pack(segs, labels, keep_arr, sc[keep_arr])


def soft_nms(
    segs: Any,
    scores: Any,
    labels: Any = None,
    iou_threshold: float = 0.1,
    sigma: float = 0.5,
    min_score: float = 0.001,
    method: str = "gaussian",
    max_num: int = -1,
) -> NMSOutput:
    """Soft-NMS; returns the selected segments with their decayed scores, in selection order.

    ``gaussian``: w = exp(-IoU^2 / sigma) (``iou_threshold`` unused); ``linear``: w = 1 - IoU when
    IoU >= iou_threshold; ``hard``: w = 0 when IoU >= iou_threshold. After each decay, segments whose
    score is below ``min_score`` are discarded.
    """
    if method not in SOFT_NMS_METHODS:
        raise ValueError(f"unknown soft-NMS method {method!r}; use one of {SOFT_NMS_METHODS}")
    if method == "gaussian" and sigma <= 0:
        raise ValueError(f"soft-NMS sigma must be > 0, got {sigma}")
    segs = _as_float_tensor(segs)
    scores = _as_float_tensor(scores)
    labels = None if labels is None else torch.as_tensor(labels).cpu()
    _check_inputs(segs, scores, labels)
    x1 = segs[:, 0].numpy().copy()
    x2 = segs[:, 1].numpy().copy()
    areas = x2 - x1 + np.float32(LENGTH_EPS)
    sc = scores.numpy().copy()
    idx = np.arange(len(sc))
    sigma32, thr32, min32 = np.float32(sigma), np.float32(iou_threshold), np.float32(min_score)
    keep: list[int] = []
    kept_scores: list[float] = []
    while idx.size and (max_num <= 0 or len(keep) < max_num):
        k = int(np.argmax(sc))
        keep.append(int(idx[k]))
        kept_scores.append(float(sc[k]))
        ovr = _iou_one(x1[k], x2[k], areas[k], x1, x2, areas)
        if method == "gaussian":
            weight = np.exp(-(ovr * ovr) / sigma32)
        elif method == "linear":
            weight = np.where(ovr >= thr32, np.float32(1) - ovr, np.float32(1))
        else:
            weight = np.where(ovr >= thr32, np.float32(0), np.float32(1))
        sc = sc * weight.astype(np.float32)
        alive = sc >= min32
        alive[k] = False
        x1, x2, areas, sc, idx = x1[alive], x2[alive], areas[alive], sc[alive], idx[alive]
    return _pack(segs, labels, np.asarray(keep, dtype=np.int64), np.asarray(kept_scores, dtype=np.float32))


def diou_soft_nms(
    segs: Any,
    scores: Any,
    labels: Any = None,
    sigma: float = 0.5,
    min_score: float = 0.001,
    max_num: int = -1,
) -> NMSOutput:
    """Gaussian soft-NMS with DIoU: ``w = exp(-max(DIoU, 0)**2 / sigma)``; returns selection order.

    Same loop as :func:`soft_nms` (take the highest *current* score, decay the rest, discard those below
    ``min_score``, stop after ``max_num`` selections), in float32 torch: each step is one argmax and one
    DIoU row over all remaining segments.
    """
    if sigma <= 0:
        raise ValueError(f"DIoU soft-NMS sigma must be > 0, got {sigma}")
    segs = _as_float_tensor(segs)
    scores = _as_float_tensor(scores)
    labels = None if labels is None else torch.as_tensor(labels).cpu()
    _check_inputs(segs, scores, labels)
    rest, sc, idx = segs, scores.clone(), torch.arange(segs.shape[0])
    keep: list[int] = []
    kept_scores: list[float] = []
    while idx.numel() and (max_num <= 0 or len(keep) < max_num):
        k = int(torch.argmax(sc))
        keep.append(int(idx[k]))
        kept_scores.append(float(sc[k]))
        diou = segment_diou(rest[k : k + 1], rest)[0]
        sc = sc * torch.exp(-torch.square(diou.clamp(min=0)) / sigma)
        alive = sc >= min_score
        alive[k] = False
        rest, sc, idx = rest[alive], sc[alive], idx[alive]
    return _pack(segs, labels, np.asarray(keep, dtype=np.int64), np.asarray(kept_scores, dtype=np.float32))


def validate_nms_options(
    use_soft_nms: bool,
    multiclass: bool,
    use_diou_nms: bool = False,
    class_sigma: Mapping[Any, float] | None = None,
) -> dict[int, float] | None:
    """Reject option combinations that would be silently ignored; return ``class_sigma`` as {int: float}.

    DIoU-NMS is a soft-NMS, and a per-class sigma needs both soft-NMS and per-class (multiclass) NMS.
    """
    if use_diou_nms and not use_soft_nms:
        raise ValueError("DIoU-NMS is a Gaussian soft-NMS: it needs soft-NMS (nms_method='soft')")
    if class_sigma is None:
        return None
    if not (use_soft_nms and multiclass):
        raise ValueError("class_sigma needs soft-NMS (nms_method='soft') with multiclass NMS")
    sigmas = {int(c): float(s) for c, s in class_sigma.items()}
    bad = {c: s for c, s in sigmas.items() if s <= 0}
    if bad:
        raise ValueError(f"class_sigma values must be > 0, got {bad}")
    return sigmas


def segment_voting(nms_segs: Any, all_segs: Any, all_scores: Any, iou_threshold: float) -> torch.Tensor:
    """Refine each kept segment as the IoU*score-weighted mean of all segments with IoU >= threshold.

    ``w_ij = [IoU_ij >= thr] * score_j * IoU_ij`` over every pre-NMS segment j (plain IoU, no epsilon).
    A kept segment with no neighbour of positive weight (only possible for zero-length input) is
    returned unchanged.
    """
    nms_segs = _as_float_tensor(nms_segs).reshape(-1, 2)
    all_segs = _as_float_tensor(all_segs).reshape(-1, 2)
    all_scores = _as_float_tensor(all_scores).reshape(-1)
    iou = torch.nan_to_num(segment_iou(nms_segs, all_segs, eps=0.0), nan=0.0)
    weights = (iou >= iou_threshold).to(iou.dtype) * all_scores[None, :] * iou
    total = weights.sum(dim=1, keepdim=True)
    refined = (weights @ all_segs) / total.clamp(min=torch.finfo(total.dtype).tiny)
    return torch.where(total > 0, refined, nms_segs)


def batched_nms(
    segs: Any,
    scores: Any,
    labels: Any,
    iou_threshold: float,
    min_score: float,
    max_seg_num: int,
    use_soft_nms: bool = True,
    multiclass: bool = True,
    sigma: float = 0.5,
    voting_thresh: float = 0.75,
    use_diou_nms: bool = False,
    class_sigma: Mapping[Any, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ActionFormer's NMS step: per class (``multiclass``) or class-agnostic with optional voting.

    Soft-NMS uses the Gaussian decay, on the IoU or, with ``use_diou_nms``, on the DIoU
    (:func:`diou_soft_nms`). In multiclass mode ``class_sigma`` ({class id: sigma}) overrides ``sigma``
    for the classes it names. Each NMS call keeps at most ``max_seg_num`` segments; the union is
    then sorted by score and truncated to ``max_seg_num``. Class-agnostic mode refines the kept
    segments by :func:`segment_voting` over all input segments when ``voting_thresh > 0``.
    Returns float32 (N, 2) segments, float32 (N,) scores and int64 (N,) labels.
    """
    sigmas = validate_nms_options(use_soft_nms, multiclass, use_diou_nms, class_sigma) or {}
    segs = _as_float_tensor(segs).reshape(-1, 2)
    scores = _as_float_tensor(scores).reshape(-1)
    labels = torch.as_tensor(labels).cpu().reshape(-1).to(torch.int64)
    _check_inputs(segs, scores, labels)
    if segs.shape[0] == 0:
        return torch.zeros(0, 2), torch.zeros(0), torch.zeros(0, dtype=torch.int64)

    def run(s: torch.Tensor, p: torch.Tensor, lab: torch.Tensor, sig: float) -> NMSOutput:
        if use_diou_nms:  # validated: only with soft-NMS
            return diou_soft_nms(s, p, lab, sig, min_score, max_seg_num)
        if use_soft_nms:
            return soft_nms(s, p, lab, iou_threshold, sig, min_score, "gaussian", max_seg_num)
        return hard_nms(s, p, lab, iou_threshold, min_score, max_seg_num)

    if multiclass:
        parts = [
            run(segs[labels == c], scores[labels == c], labels[labels == c], sigmas.get(int(c), sigma))
            for c in labels.unique()
        ]
        new_segs = torch.cat([p.segments for p in parts])
        new_scores = torch.cat([p.scores for p in parts])
        new_labels = torch.cat([p.labels for p in parts])
    else:
        out = run(segs, scores, labels, sigma)
        new_segs, new_scores, new_labels = out.segments, out.scores, out.labels
        if voting_thresh > 0 and new_segs.shape[0] > 0:
            new_segs = segment_voting(new_segs, segs, scores, voting_thresh)
    order = torch.argsort(new_scores, descending=True, stable=True)
    if max_seg_num > 0:
        order = order[:max_seg_num]
    return new_segs[order], new_scores[order], new_labels[order]
