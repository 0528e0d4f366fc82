"""SnapFormer: ActionFormer's backbone and neck with a per-class Gaussian heatmap head, for point events.

The enhanced fork (sreevadde/actionformer_release, spec section 2.5) detects instantaneous events as peaks
of a heatmap. This version keeps its recipe and fixes what kept it from running or being scored:

* targets: per level and per class, a Gaussian at each event centre with ``sigma = max(d / 6, 1)`` (d the
  event length; both in steps of that level), the step nearest the centre forced to exactly 1;
* loss: CornerNet's Gaussian focal loss (alpha 2, gamma 4) summed over every valid step, level and class and
  divided by the number of positives (steps with target 1), returned as ``final_loss``;
* decoding: per-class local maxima of one level's heatmap above ``min_score``, as zero-length segments
  ``[t, t]`` in seconds (the ActionFormer post-processor's grid -> seconds map) with their class labels;
* evaluation: :class:`PointEventMetric`, point MAE and recall within a tolerance plus the detection mAP of
  points widened to ``+/- tolerance``.

On the point-event demo (expts/localization/snapformer_demo.txt, seed 0, 15 epochs, about one CPU
minute) the test split scores point recall 0.93 within 0.5 s, point MAE 0.035 s (a quarter of a feature
step; random guessing: recall 0.04, MAE 0.21 s) and widened-window average mAP 0.95.

Reading order: the shared ActionFormer pyramid, targets, loss, model, decoding, metric.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from egolab.metrics.localization import DetectionMAP
from egolab.models.actionformer import ActionFormer, check_feature_batch, trimmed_forward
from egolab.models.actionformer_postprocess import ActionFormerPostProcessor


# --------------------------------------------------------------------------------------- pyramid
class ActionFormerPyramid(nn.Module):
    """ActionFormer up to its heads: backbone, neck and point generator of a built :class:`ActionFormer`.

    Heads other than ActionFormer's (SnapFormer's heatmap, TBTFormer's boundary distributions) are put on
    top of it. ``forward`` checks its inputs as ActionFormer does.
    """

    def __init__(self, base: ActionFormer) -> None:
        super().__init__()
        self.backbone = base.backbone
        self.neck = base.neck
        self.point_generator = base.point_generator
        self.in_channels = base.in_channels
        self.max_div_factor = base.max_div_factor
        self.coarsest_stride = base.backbone_strides[-1]
        self.trim_padding = base.trim_padding

    def forward(
        self, feats: torch.Tensor, masks: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """feats (B, C, T), masks (B, T) -> per-level features (B, D, T_l), masks (B, 1, T_l), points."""
        check_feature_batch(feats, masks, self.in_channels, self.max_div_factor)
        out = trimmed_forward(self._levels, feats, masks.bool(), self.coarsest_stride, self.trim_padding)
        points = self.point_generator([x.shape[-1] for x in out["feats"]])
        return out["feats"], out["masks"], points

    def _levels(
        self, feats: torch.Tensor, masks: torch.Tensor, padded_length: int
    ) -> dict[str, list[torch.Tensor]]:
        level_feats, level_masks = self.backbone(feats, masks[:, None, :], padded_length)
        level_feats, level_masks = self.neck(level_feats, level_masks)
        return {"feats": level_feats, "masks": level_masks}


# --------------------------------------------------------------------------------------- targets
def gaussian_heatmap(
    points: torch.Tensor, gt_segments: torch.Tensor, gt_labels: torch.Tensor, num_classes: int
) -> torch.Tensor:
    """Heatmap targets (T, num_classes) of one video on one level with point rows [t, r_min, r_max, s].

    Each event [g_s, g_e] (grid units) of class k adds ``exp(-((t - c) / s)**2 / (2 sigma**2))`` with c its
    centre and ``sigma = max((g_e - g_s) / (6 s), 1)`` to channel k (maximum over events); the step nearest
    the centre (``floor(c / s + 1/2)``, when it exists) is set to 1, the only value counted as positive.
    """
    num_points = points.shape[0]
    heat = points.new_zeros(num_points, num_classes)
    segs = gt_segments.to(device=points.device, dtype=points.dtype).reshape(-1, 2)
    if segs.shape[0] == 0 or num_points == 0:
        return heat
    t, stride = points[:, 0:1], points[0, 3]
    centres = 0.5 * (segs[:, 0] + segs[:, 1])
    sigma = torch.clamp((segs[:, 1] - segs[:, 0]) / (6.0 * stride), min=1.0)
    gauss = torch.exp(-torch.square((t - centres) / stride) / (2.0 * torch.square(sigma)))  # (T, N)
    peak = torch.floor(centres / stride + 0.5).long()
    inside = (peak >= 0) & (peak < num_points)
    gauss[peak[inside], torch.nonzero(inside).flatten()] = 1.0
    labels = gt_labels.to(points.device).long().reshape(1, -1).expand(num_points, -1)
    return heat.scatter_reduce_(1, labels, gauss, reduce="amax")


# --------------------------------------------------------------------------------------- loss
def gaussian_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, alpha: float = 2.0, gamma: float = 4.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """CornerNet focal loss on a heatmap: (summed loss, number of positives); divide the first by the second.

    ``-(1-p)**alpha log p`` where the target is 1, ``-(1-y)**gamma p**alpha log(1-p)`` elsewhere, with
    ``p = sigmoid(logits)`` (log-probabilities from ``logsigmoid``, so saturated logits stay finite).
    """
    logits, targets = logits.float(), targets.float()
    prob = torch.sigmoid(logits)
    positive = targets == 1.0
    pos_loss = -torch.pow(1.0 - prob, alpha) * F.logsigmoid(logits)
    neg_loss = -torch.pow(1.0 - targets, gamma) * torch.pow(prob, alpha) * F.logsigmoid(-logits)
    return torch.where(positive, pos_loss, neg_loss).sum(), positive.sum()


class GaussianFocalLoss(nn.Module):
    """SnapFormer's training loss: Gaussian focal loss over all levels, divided by the positive count.

    Targets come from :func:`gaussian_heatmap` on every level (padded steps excluded). The normaliser is
    ``max(#positives in the batch, 1)``, as in CornerNet/CenterNet.
    """

    def __init__(self, num_classes: int, alpha: float = 2.0, gamma: float = 4.0) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.alpha = alpha
        self.gamma = gamma

    def forward(
        self,
        outputs: Mapping[str, Sequence[torch.Tensor]],
        gt_segments: Sequence[torch.Tensor],
        gt_labels: Sequence[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """``outputs`` from :class:`SnapFormer`; GT segments (N_i, 2) in grid units, labels (N_i,)."""
        with torch.no_grad():
            targets = torch.stack(
                [
                    torch.cat(
                        [gaussian_heatmap(pts, segs, labels, self.num_classes) for pts in outputs["points"]]
                    )
                    for segs, labels in zip(gt_segments, gt_labels, strict=True)
                ]
            )
        valid = torch.cat(list(outputs["masks"]), dim=1)
        logits = torch.cat(list(outputs["heatmap_logits"]), dim=1)
        loss, num_pos = gaussian_focal_loss(logits[valid], targets[valid], self.alpha, self.gamma)
        loss = loss / num_pos.clamp(min=1)
        return {"heatmap_loss": loss, "final_loss": loss}


# --------------------------------------------------------------------------------------- model
class SnapFormer(nn.Module):
    """ActionFormer backbone, neck and point generator with a per-class heatmap head on every level.

    Takes ActionFormer's constructor arguments. The heatmap head is ActionFormer's classification head
    (same trunk, one logit per class, bias at the prior ``cls_prior_prob``, 0.01 by default), so it is
    named ``cls_head``; ActionFormer's offset head is not built. Outputs (per level l):
    ``heatmap_logits`` (B, T_l, C), ``masks`` (B, T_l) and ``points`` (T_l, 4).
    """

    def __init__(self, **actionformer_kwargs: Any) -> None:
        super().__init__()
        base = ActionFormer(**actionformer_kwargs)
        self.pyramid = ActionFormerPyramid(base)
        self.cls_head = base.cls_head
        self.max_seq_len = base.max_seq_len  # read by the task (batch padding)
        self.max_div_factor = base.max_div_factor

    def forward(self, feats: torch.Tensor, masks: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        level_feats, level_masks, points = self.pyramid(feats, masks)
        heatmaps = self.cls_head(level_feats, level_masks)
        return {
            "heatmap_logits": [x.transpose(1, 2) for x in heatmaps],
            "masks": [m[:, 0] for m in level_masks],
            "points": points,
        }


# --------------------------------------------------------------------------------------- decoding
def heatmap_peaks(heat: torch.Tensor, min_score: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Local maxima of each column of ``heat`` (T, C) above ``min_score``: (step, class) indices.

    A step is a peak when it is higher than the step before it and not lower than the one after it (the
    sequence is padded with zeros), so a plateau gives one peak, at its first step.
    """
    before = F.pad(heat, (0, 0, 1, 0))[:-1]
    after = F.pad(heat, (0, 0, 0, 1))[1:]
    peaks = (heat > before) & (heat >= after) & (heat > min_score)
    steps, classes = torch.nonzero(peaks, as_tuple=True)
    return steps, classes


class SnapPostProcessor:
    """SnapFormer decoding: per-class heatmap peaks of level ``level`` -> point detections in seconds.

    Scores are the sigmoid heights of the peaks (padded steps are zero); a peak at step i sits at
    ``t = points[level][i, 0]`` grid units, and becomes the zero-length segment ``[t, t]`` mapped to
    seconds by :meth:`ActionFormerPostProcessor.to_seconds`. The ``max_seg_num`` best are kept per video.
    """

    def __init__(self, level: int = 0, min_score: float = 0.01, max_seg_num: int = 200) -> None:
        if level < 0:
            raise ValueError(f"level must be >= 0, got {level}")
        if max_seg_num <= 0:
            raise ValueError(f"max_seg_num must be positive, got {max_seg_num}")
        self.level = level
        self.min_score = min_score
        self.max_seg_num = max_seg_num

    @torch.no_grad()
    def __call__(self, outputs: Mapping[str, Any], batch: Mapping[str, Any]) -> list[dict]:
        """Detections per video: dict(video_id, segments (N, 2) seconds, scores (N,), labels (N,))."""
        if self.level >= len(outputs["heatmap_logits"]):
            raise ValueError(f"level {self.level} but the model has {len(outputs['heatmap_logits'])} levels")
        logits, masks = outputs["heatmap_logits"][self.level], outputs["masks"][self.level]
        times = outputs["points"][self.level][:, 0].detach().float().cpu()
        results = []
        for b, video_id in enumerate(batch["video_ids"]):
            heat = (logits[b].float().sigmoid() * masks[b, :, None]).detach().cpu()
            steps, labels = heatmap_peaks(heat, self.min_score)
            scores = heat[steps, labels]
            order = torch.argsort(scores, descending=True, stable=True)[: self.max_seg_num]
            grid = times[steps[order]]
            secs = ActionFormerPostProcessor.to_seconds(
                torch.stack((grid, grid), dim=-1),
                fps=float(batch["fps"][b]),
                duration=float(batch["duration"][b]),
                feat_stride=float(batch["feat_stride"][b]),
                num_frames=float(batch["feat_num_frames"][b]),
            )
            results.append(
                {"video_id": video_id, "segments": secs, "scores": scores[order], "labels": labels[order]}
            )
        return results


# --------------------------------------------------------------------------------------- metric
def match_points(
    pred_times: np.ndarray,
    pred_scores: np.ndarray,
    gt_times: np.ndarray,
    tolerance: float,
) -> np.ndarray:
    """Absolute errors of the GT points of one video and class that a prediction hits (greedy, one-to-one).

    Only the ``len(gt_times)`` best-scored predictions take part (as Recall@1x); in score order each takes
    the nearest GT not taken yet, a hit when it is at most ``tolerance`` away.
    """
    order = np.argsort(-pred_scores, kind="stable")[: len(gt_times)]
    free = np.ones(len(gt_times), bool)
    errors = []
    for t in pred_times[order]:
        dist = np.where(free, np.abs(gt_times - t), np.inf)
        j = int(np.argmin(dist)) if dist.size else -1
        if j >= 0 and dist[j] <= tolerance:
            free[j] = False
            errors.append(dist[j])
    return np.asarray(errors, np.float64)


def _numpy(value: Any, dtype: type) -> np.ndarray:
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    return array.astype(dtype).reshape(-1)


def _centres(segments: Any) -> np.ndarray:
    """Segments (N, 2) -> their centres (N,)."""
    return _numpy(segments, np.float64).reshape(-1, 2).mean(axis=1)


def _widen(segments: Any, tolerance: float) -> np.ndarray:
    """Segments (N, 2) -> windows ``[centre - tolerance, centre + tolerance]``."""
    centres = _centres(segments)
    return np.stack((centres - tolerance, centres + tolerance), axis=1)


class PointEventMetric(nn.Module):
    """Point-event evaluation with the interface of :class:`~egolab.metrics.localization.DetectionMAP`.

    Events are compared by their centres (GT segment centres, detection points), in seconds:

    * ``point_recall``: fraction of GT events hit, per video and class, by one of the top-n predictions
      (n = its GT count) within ``tolerance_s`` (greedy one-to-one matching in score order);
    * ``point_mae_s``: mean absolute time error of those hits (NaN without any);
    * ``mAP@{t}`` / ``average_mAP``: DetectionMAP of the windows ``centre +/- tolerance_s`` of both. Two
      such windows at distance d have ``tIoU = (2 tol - d) / (2 tol + d)``, so threshold t credits
      detections within ``2 tol (1 - t) / (1 + t)`` (tol 0.5 s: 0.54 s at 0.3, 0.33 s at 0.5, 0.18 s at 0.7).

    A video seen more than once counts once, with its first record (as in DetectionMAP).
    """

    def __init__(
        self,
        tolerance_s: float = 0.5,
        tiou_thresholds: Sequence[float] = (0.3, 0.4, 0.5, 0.6, 0.7),
        top_k: Sequence[int] = (),
    ) -> None:
        super().__init__()
        if tolerance_s <= 0:
            raise ValueError(f"tolerance_s must be > 0, got {tolerance_s}")
        self.tolerance_s = float(tolerance_s)
        self.detection = DetectionMAP(tiou_thresholds=tiou_thresholds, top_k=top_k)
        self.tiou_thresholds = self.detection.tiou_thresholds
        self.top_k = self.detection.top_k
        self._points: dict[str, tuple[np.ndarray, ...]] = {}

    def reset(self) -> None:
        """Forget every video."""
        self.detection.reset()
        self._points = {}

    def update(self, preds: Sequence[Mapping[str, Any]], targets: Sequence[Mapping[str, Any]]) -> None:
        """Add per-video predictions (video_id, segments seconds, scores, labels) and their targets."""
        tol = self.tolerance_s
        self.detection.update(
            [dict(p, segments=_widen(p["segments"], tol)) for p in preds],
            [dict(t, segments=_widen(t["segments"], tol)) for t in targets],
        )
        truth = {str(t["video_id"]): t for t in targets}
        for p in preds:
            t = truth[str(p["video_id"])]
            self._points.setdefault(
                str(p["video_id"]),
                (
                    _centres(p["segments"]),
                    _numpy(p["scores"], np.float64),
                    _numpy(p["labels"], np.int64),
                    _centres(t["segments"]),
                    _numpy(t["labels"], np.int64),
                ),
            )

    def compute(self) -> dict[str, torch.Tensor]:
        """DetectionMAP's values on the widened windows plus ``point_mae_s`` and ``point_recall``."""
        values = self.detection.compute()
        errors, num_gt = [np.zeros(0)], 0
        for p_time, p_score, p_label, g_time, g_label in self._points.values():
            for label in np.unique(g_label):
                mine = p_label == label
                gt_times = g_time[g_label == label]
                errors.append(match_points(p_time[mine], p_score[mine], gt_times, self.tolerance_s))
            num_gt += len(g_label)
        hits = np.concatenate(errors)
        mae = hits.mean() if hits.size else np.nan
        recall = hits.size / num_gt if num_gt else np.nan
        device = values["average_mAP"].device
        values["point_mae_s"] = torch.tensor(mae, dtype=torch.float64, device=device)
        values["point_recall"] = torch.tensor(recall, dtype=torch.float64, device=device)
        return values
