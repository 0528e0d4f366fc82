"""ActionFormer losses: sigmoid focal loss on every valid point, centre DIoU on positive points.

Follows the released ``PtTransformer.losses`` (spec section 1.4, "Losses"): the released code regresses
with DIoU (not the GIoU named in the paper) and divides both terms by an EMA of the positive count.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from egolab.models.actionformer_targets import CENTER_SAMPLE_MODES, assign_labels_batch

REDUCTIONS = ("none", "mean", "sum")


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


def ctr_diou_loss_1d(
    pred_offsets: torch.Tensor,
    target_offsets: torch.Tensor,
    reduction: str = "sum",
    eps: float = 1e-8,
) -> torch.Tensor:
    """1-D Distance-IoU loss between segments given as (left, right) offsets from the same point.

    ``1 - IoU + (rho / c)**2`` with rho the centre distance and c the length of the enclosing segment.
    """
    pred, target = pred_offsets.float(), target_offsets.float()
    lp, rp = pred[:, 0], pred[:, 1]
    lg, rg = target[:, 0], target[:, 1]
    inter = torch.minimum(lp, lg) + torch.minimum(rp, rg)
    union = (lp + rp) + (lg + rg) - inter
    iou = inter / union.clamp(min=eps)
    enclosing = torch.maximum(lp, lg) + torch.maximum(rp, rg)
    rho = 0.5 * (rp - lp - rg + lg)
    loss = 1.0 - iou + torch.square(rho / enclosing.clamp(min=eps))
    return _reduce(loss, reduction)


class ActionFormerLoss(nn.Module):
    """Training loss of ActionFormer: ``final = cls / N + lambda * reg / N``.

    N is an EMA of the batch's positive count, ``N <- m*N + (1-m)*max(num_pos, 1)``, updated in training
    mode only and kept as a persistent buffer so that resuming from a checkpoint is exact. lambda is
    ``loss_weight``, or ``cls.detach() / max(reg, 0.01)`` when ``loss_weight <= 0``. Label smoothing
    uses ``y <- y*(1-eps) + eps/(C+1)``.
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
        self.num_classes = int(num_classes)
        self.center_sample = center_sample
        self.center_sample_radius = center_sample_radius
        self.loss_weight = loss_weight
        self.label_smoothing = label_smoothing
        self.loss_norm_momentum = loss_norm_momentum
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
            num_pos = positive.sum().clamp(min=1).to(self.loss_normalizer.dtype)
            momentum = self.loss_norm_momentum
            self.loss_normalizer.mul_(momentum).add_((1 - momentum) * num_pos)
        normalizer = self.loss_normalizer.clone()

        targets = cls_targets[valid]
        targets = targets * (1 - self.label_smoothing) + self.label_smoothing / (self.num_classes + 1)
        logits = torch.cat(list(outputs["cls_logits"]), dim=1)[valid]
        cls_loss = sigmoid_focal_loss(logits, targets, reduction="sum") / normalizer

        pred_offsets = torch.cat(list(outputs["offsets"]), dim=1)[positive]
        reg_loss = ctr_diou_loss_1d(pred_offsets, reg_targets[positive], reduction="sum") / normalizer

        if self.loss_weight > 0:
            weight = torch.as_tensor(float(self.loss_weight), device=cls_loss.device)
        else:
            weight = cls_loss.detach() / reg_loss.detach().clamp(min=0.01)
        return {"cls_loss": cls_loss, "reg_loss": reg_loss, "final_loss": cls_loss + weight * reg_loss}
