"""ActionFormer losses: a classification loss on every valid point, a centre IoU-family loss on positives.

Follows the released ``PtTransformer.losses`` (spec section 1.4, "Losses"): the released code regresses
with DIoU (not the GIoU named in the paper) and divides both terms by an EMA of the positive count.
That is the default. The options of the enhanced fork (spec section 2.1) are selectable here, and the
fork's library-only ones are wired into training:

* ``reg_loss_type``: ``diou`` | ``eiou`` | ``giou`` | ``iou`` (see the ``ctr_*_loss_1d`` functions);
* ``reg_loss_variant``: ``none`` | ``focal`` (``(1 - IoU)**gamma * base``) | ``iou_weighted``
  (``(2 - IoU) * base``), both applied on top of the chosen base loss;
* ``cls_loss_type``: ``focal`` | ``qfl`` (quality focal loss with the IoU of the predicted segment).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from egolab.models.actionformer_targets import CENTER_SAMPLE_MODES, assign_labels_batch

REDUCTIONS = ("none", "mean", "sum")
CLS_LOSS_TYPES = ("focal", "qfl")
REG_LOSS_VARIANTS = ("none", "focal", "iou_weighted")


def _reduce(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else loss.sum()
    return loss


def sigmoid_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "sum",
) -> torch.Tensor:
    """Focal loss (Lin et al.) in the fvcore form, computed in float32; soft targets are allowed.

    ``loss = alpha_t * BCE(logits, y) * (1 - p_t)**gamma`` with ``p_t = p*y + (1-p)*(1-y)`` and
    ``alpha_t = alpha*y + (1-alpha)*(1-y)`` (no alpha weighting when alpha < 0).
    """
    logits, targets = logits.float(), targets.float()
    prob = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return _reduce(loss, reduction)


def quality_focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    quality: torch.Tensor,
    alpha: float = 0.25,
    gamma: float = 2.0,
    reduction: str = "sum",
) -> torch.Tensor:
    """Quality focal loss (Li et al., GFL): the score is trained to predict the localisation quality.

    ``logits`` and binary ``targets`` y are (N, C); ``quality`` (N,) is one IoU per row, clamped to
    [0, 1]. With the soft target ``q = y * quality`` and ``p = sigmoid(logit)``:
    ``loss = alpha_t * BCE(logit, q) * |q - p|**gamma``. ``alpha_t = alpha*y + (1-alpha)*(1-y)`` uses the
    binary label y, as the fork does (the GFL paper has no alpha): positives and negatives are then
    balanced as in :func:`sigmoid_focal_loss`, so the two classification losses share one scale.
    ``alpha < 0`` turns the weighting off. Computed in float32.
    """
    logits, targets = logits.float(), targets.float()
    soft_targets = targets * quality.float().clamp(0.0, 1.0).unsqueeze(-1)
    prob = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, soft_targets, reduction="none")
    loss = ce * (soft_targets - prob).abs() ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return _reduce(loss, reduction)


class _OffsetGeometry(NamedTuple):
    """Terms shared by the IoU-family losses, for segments given as (left, right) offsets of one point."""

    iou: torch.Tensor
    union: torch.Tensor
    enclosing: torch.Tensor
    rho: torch.Tensor
    len_pred: torch.Tensor
    len_target: torch.Tensor


def _offset_geometry(pred_offsets: torch.Tensor, target_offsets: torch.Tensor, eps: float) -> _OffsetGeometry:
    pred, target = pred_offsets.float(), target_offsets.float()
    lp, rp = pred[:, 0], pred[:, 1]
    lg, rg = target[:, 0], target[:, 1]
    inter = torch.minimum(lp, lg) + torch.minimum(rp, rg)
    union = (lp + rp) + (lg + rg) - inter
    return _OffsetGeometry(
        iou=inter / union.clamp(min=eps),
        union=union,
        enclosing=torch.maximum(lp, lg) + torch.maximum(rp, rg),
        rho=0.5 * (rp - lp - rg + lg),
        len_pred=lp + rp,
        len_target=lg + rg,
    )


def offset_iou_1d(
    pred_offsets: torch.Tensor, target_offsets: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """IoU (N,) of segments given as (left, right) offsets >= 0 from the same point, (N, 2) each."""
    return _offset_geometry(pred_offsets, target_offsets, eps).iou


def ctr_iou_loss_1d(
    pred_offsets: torch.Tensor, target_offsets: torch.Tensor, reduction: str = "sum", eps: float = 1e-8
) -> torch.Tensor:
    """1-D IoU loss ``1 - IoU`` between segments given as (left, right) offsets from the same point."""
    return _reduce(1.0 - offset_iou_1d(pred_offsets, target_offsets, eps), reduction)


def ctr_giou_loss_1d(
    pred_offsets: torch.Tensor, target_offsets: torch.Tensor, reduction: str = "sum", eps: float = 1e-8
) -> torch.Tensor:
    """1-D generalised IoU loss ``1 - IoU + (c - union) / c``, c the length of the enclosing segment.

    Both segments contain their common point, so they overlap and ``union == c``: the GIoU term is zero
    and the loss equals :func:`ctr_iou_loss_1d` (the released code says so in its GIoU function).
    """
    g = _offset_geometry(pred_offsets, target_offsets, eps)
    loss = 1.0 - g.iou + (g.enclosing - g.union) / g.enclosing.clamp(min=eps)
    return _reduce(loss, reduction)


def ctr_diou_loss_1d(
    pred_offsets: torch.Tensor,
    target_offsets: torch.Tensor,
    reduction: str = "sum",
    eps: float = 1e-8,
) -> torch.Tensor:
    """1-D Distance-IoU loss between segments given as (left, right) offsets from the same point.

    ``1 - IoU + (rho / c)**2`` with rho the centre distance and c the length of the enclosing segment.
    """
    g = _offset_geometry(pred_offsets, target_offsets, eps)
    loss = 1.0 - g.iou + torch.square(g.rho / g.enclosing.clamp(min=eps))
    return _reduce(loss, reduction)


def ctr_eiou_loss_1d(
    pred_offsets: torch.Tensor,
    target_offsets: torch.Tensor,
    reduction: str = "sum",
    eps: float = 1e-8,
) -> torch.Tensor:
    """1-D Efficient-IoU loss: DIoU plus a length penalty, ``1 - IoU + (rho/c)**2 + ((len_p - len_g)/c)**2``.

    ``len = left + right``; c is the length of the enclosing segment. The extra term pulls the predicted
    duration straight towards the target one (Zhang et al., EIoU).
    """
    g = _offset_geometry(pred_offsets, target_offsets, eps)
    enclosing = g.enclosing.clamp(min=eps)
    loss = (
        1.0 - g.iou + torch.square(g.rho / enclosing) + torch.square((g.len_pred - g.len_target) / enclosing)
    )
    return _reduce(loss, reduction)


REG_LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "diou": ctr_diou_loss_1d,
    "eiou": ctr_eiou_loss_1d,
    "giou": ctr_giou_loss_1d,
    "iou": ctr_iou_loss_1d,
}


def regression_loss_1d(
    pred_offsets: torch.Tensor,
    target_offsets: torch.Tensor,
    loss_type: str = "diou",
    variant: str = "none",
    gamma: float = 2.0,
    reduction: str = "sum",
) -> torch.Tensor:
    """Base IoU-family loss ``loss_type`` (a key of ``REG_LOSSES``), optionally re-weighted per segment.

    ``variant="focal"``: ``(1 - IoU)**gamma * base``, which focuses on poorly localised segments; with
    base ``iou`` it is the spec's ``(1 - IoU)**gamma * (1 - IoU)``. ``variant="iou_weighted"``:
    ``(2 - IoU) * base``, a linear version of the same idea (weight in [1, 2]). The weights are part of
    the loss (not detached), so they are differentiated too; hence ``gamma >= 1`` (a smaller gamma has an
    infinite derivative at IoU = 1, which turns a perfect prediction's gradient into NaN).
    """
    if loss_type not in REG_LOSSES:
        raise ValueError(f"reg loss type must be one of {tuple(REG_LOSSES)}, got {loss_type!r}")
    if variant not in REG_LOSS_VARIANTS:
        raise ValueError(f"reg loss variant must be one of {REG_LOSS_VARIANTS}, got {variant!r}")
    if variant == "focal" and gamma < 1:
        raise ValueError(f"the focal regression gamma must be >= 1, got {gamma}")
    loss = REG_LOSSES[loss_type](pred_offsets, target_offsets, reduction="none")
    if variant == "focal":
        loss = (1.0 - offset_iou_1d(pred_offsets, target_offsets)) ** gamma * loss
    elif variant == "iou_weighted":
        loss = (2.0 - offset_iou_1d(pred_offsets, target_offsets)) * loss
    return _reduce(loss, reduction)


def mean_over_processes(value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar tensor over the processes of the default group (itself without one)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value
    world = torch.distributed.get_world_size()
    if world == 1:
        return value
    total = value.detach().clone()
    torch.distributed.all_reduce(total)
    return total / world


class ActionFormerLoss(nn.Module):
    """Training loss of ActionFormer: ``final = cls / N + lambda * reg / N``.

    N is an EMA of the batch's positive count, ``N <- m*N + (1-m)*max(num_pos, 1)``, updated in training
    mode only and kept as a persistent buffer so that resuming from a checkpoint is exact. Under DDP
    num_pos is the mean over processes: with gradients averaged over processes, the loss is then the
    one-process loss of the global batch, and N is the same on every rank. lambda is
    ``loss_weight``, or ``cls.detach() / max(reg, 0.01)`` when ``loss_weight <= 0``. Label smoothing
    uses ``y <- y*(1-eps) + eps/(C+1)`` (focal loss only).

    ``cls_loss_type="qfl"`` replaces the focal loss by :func:`quality_focal_loss` whose target at a
    positive point is the IoU of its (detached) predicted segment with its ground truth, for the GT
    class(es), and 0 elsewhere. ``reg_loss_type`` / ``reg_loss_variant`` / ``reg_loss_gamma`` select the
    regression loss (:func:`regression_loss_1d`); ``cls_loss_alpha`` / ``cls_loss_gamma`` are the alpha
    and gamma of either classification loss. The defaults are the released recipe.
    """

    def __init__(
        self,
        num_classes: int,
        center_sample: str = "radius",
        center_sample_radius: float = 1.5,
        loss_weight: float = 1.0,
        init_loss_norm: float = 2000.0,
        label_smoothing: float = 0.0,
        loss_norm_momentum: float = 0.9,
        cls_loss_type: str = "focal",
        cls_loss_alpha: float = 0.25,
        cls_loss_gamma: float = 2.0,
        reg_loss_type: str = "diou",
        reg_loss_variant: str = "none",
        reg_loss_gamma: float = 2.0,
    ) -> None:
        super().__init__()
        if center_sample not in CENTER_SAMPLE_MODES:
            raise ValueError(f"center_sample must be one of {CENTER_SAMPLE_MODES}, got {center_sample!r}")
        if init_loss_norm <= 0:
            raise ValueError(f"init_loss_norm must be > 0, got {init_loss_norm}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}")
        if not 0.0 <= loss_norm_momentum < 1.0:
            raise ValueError(f"loss_norm_momentum must lie in [0, 1), got {loss_norm_momentum}")
        if cls_loss_type not in CLS_LOSS_TYPES:
            raise ValueError(f"cls_loss_type must be one of {CLS_LOSS_TYPES}, got {cls_loss_type!r}")
        if cls_loss_type == "qfl" and label_smoothing > 0:
            raise ValueError("label_smoothing is not defined for cls_loss_type='qfl' (its targets are IoUs)")
        if reg_loss_type not in REG_LOSSES:
            raise ValueError(f"reg_loss_type must be one of {tuple(REG_LOSSES)}, got {reg_loss_type!r}")
        if reg_loss_variant not in REG_LOSS_VARIANTS:
            raise ValueError(f"reg_loss_variant must be one of {REG_LOSS_VARIANTS}, got {reg_loss_variant!r}")
        if cls_loss_gamma < 0:
            raise ValueError(f"cls_loss_gamma must be >= 0, got {cls_loss_gamma}")
        if reg_loss_gamma < 1:
            raise ValueError(f"reg_loss_gamma must be >= 1 (see regression_loss_1d), got {reg_loss_gamma}")
        self.num_classes = int(num_classes)
        self.center_sample = center_sample
        self.center_sample_radius = center_sample_radius
        self.loss_weight = loss_weight
        self.label_smoothing = label_smoothing
        self.loss_norm_momentum = loss_norm_momentum
        self.cls_loss_type = cls_loss_type
        self.cls_loss_alpha = cls_loss_alpha
        self.cls_loss_gamma = cls_loss_gamma
        self.reg_loss_type = reg_loss_type
        self.reg_loss_variant = reg_loss_variant
        self.reg_loss_gamma = reg_loss_gamma
        self.register_buffer("loss_normalizer", torch.tensor(float(init_loss_norm)))

    def forward(
        self,
        outputs: Mapping[str, Sequence[torch.Tensor]],
        gt_segments: Sequence[torch.Tensor],
        gt_labels: Sequence[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """``outputs`` from ActionFormer.forward; GT segments (N_i, 2) in grid units, labels (N_i,)."""
        with torch.no_grad():
            cls_targets, reg_targets = assign_labels_batch(
                outputs["points"],
                gt_segments,
                gt_labels,
                self.num_classes,
                self.center_sample,
                self.center_sample_radius,
            )
        valid = torch.cat(list(outputs["masks"]), dim=1)
        positive = valid & (cls_targets.sum(-1) > 0)
        if self.training:
            num_pos = mean_over_processes(positive.sum().to(self.loss_normalizer.dtype)).clamp(min=1)
            momentum = self.loss_norm_momentum
            self.loss_normalizer.mul_(momentum).add_((1 - momentum) * num_pos)
        normalizer = self.loss_normalizer.clone()

        pred_offsets = torch.cat(list(outputs["offsets"]), dim=1)
        pos_offsets, pos_targets = pred_offsets[positive], reg_targets[positive]
        logits = torch.cat(list(outputs["cls_logits"]), dim=1)[valid]
        alpha, gamma = self.cls_loss_alpha, self.cls_loss_gamma
        if self.cls_loss_type == "qfl":
            quality = torch.zeros(positive.shape, device=logits.device)
            quality[positive] = offset_iou_1d(pos_offsets.detach(), pos_targets)
            cls_loss = quality_focal_loss(logits, cls_targets[valid], quality[valid], alpha, gamma)
        else:
            targets = cls_targets[valid]
            targets = targets * (1 - self.label_smoothing) + self.label_smoothing / (self.num_classes + 1)
            cls_loss = sigmoid_focal_loss(logits, targets, alpha, gamma)
        cls_loss = cls_loss / normalizer

        reg_loss = regression_loss_1d(
            pos_offsets, pos_targets, self.reg_loss_type, self.reg_loss_variant, self.reg_loss_gamma
        )
        reg_loss = reg_loss / normalizer

        if self.loss_weight > 0:
            weight = torch.as_tensor(float(self.loss_weight), device=cls_loss.device)
        else:
            weight = cls_loss.detach() / reg_loss.detach().clamp(min=0.01)
        return {"cls_loss": cls_loss, "reg_loss": reg_loss, "final_loss": cls_loss + weight * reg_loss}
