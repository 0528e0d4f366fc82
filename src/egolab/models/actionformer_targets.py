"""ActionFormer training targets: which points are positive for which ground-truth action.

Follows the released ``label_points_single_video`` (spec section 1.4, "Label assignment"). All
coordinates are level-0 grid units; points are rows [t, r_min, r_max, stride] concatenated over levels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

CENTER_SAMPLE_MODES = ("radius", "none")
TIE_TOLERANCE = 1e-3


def assign_labels(
    points: torch.Tensor,
    gt_segments: torch.Tensor,
    gt_labels: torch.Tensor,
    num_classes: int,
    center_sample: str = "radius",
    center_sample_radius: float = 1.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets for one video: cls (P, num_classes) in {0, 1} and reg (P, 2) offsets in stride units.

    A point t (stride s) matches a GT [g_s, g_e] when
    - it lies in the centre region: ``t - max(c - r*s, g_s) > 0`` and ``min(c + r*s, g_e) - t > 0`` with
      c the GT centre (``center_sample="radius"``), or strictly inside the GT (``"none"``), and
    - ``r_min <= max(t - g_s, g_e - t) <= r_max`` (both ends inclusive).
    Among matches the shortest GT wins; every GT within 1e-3 of that length adds its class (multi-hot).
    The reg target ``(t - g_s, g_e - t) / s`` comes from the first shortest GT. Unmatched points get a zero
    cls row (their reg row is meaningless and never used).
    """
    if center_sample not in CENTER_SAMPLE_MODES:
        raise ValueError(f"center_sample must be one of {CENTER_SAMPLE_MODES}, got {center_sample!r}")
    num_points = points.shape[0]
    segs = gt_segments.to(device=points.device, dtype=points.dtype).reshape(-1, 2)
    if segs.shape[0] == 0:
        return points.new_zeros(num_points, num_classes), points.new_zeros(num_points, 2)

    t, r_min, r_max, stride = (points[:, i : i + 1] for i in range(4))  # each (P, 1)
    starts, ends = segs[:, 0], segs[:, 1]  # (N,)
    left = t - starts  # (P, N)
    right = ends - t
    if center_sample == "radius":
        centers = 0.5 * (starts + ends)
        region_start = torch.maximum(centers - center_sample_radius * stride, starts)
        region_end = torch.minimum(centers + center_sample_radius * stride, ends)
        inside = (t - region_start > 0) & (region_end - t > 0)
    else:
        inside = torch.minimum(left, right) > 0
    reach = torch.maximum(left, right)
    in_range = (reach >= r_min) & (reach <= r_max)

    lengths = (ends - starts).expand(num_points, -1).masked_fill(~(inside & in_range), float("inf"))
    min_length, best = lengths.min(dim=1)
    winners = (lengths <= min_length[:, None] + TIE_TOLERANCE) & torch.isfinite(lengths)
    one_hot = F.one_hot(gt_labels.to(points.device).long().reshape(-1), num_classes).to(points.dtype)
    cls_targets = (winners.to(points.dtype) @ one_hot).clamp_(0.0, 1.0)
    rows = torch.arange(num_points, device=points.device)
    reg_targets = torch.stack((left[rows, best], right[rows, best]), dim=-1) / stride
    return cls_targets, reg_targets


def assign_labels_batch(
    points: Sequence[torch.Tensor],
    gt_segments: Sequence[torch.Tensor],
    gt_labels: Sequence[torch.Tensor],
    num_classes: int,
    center_sample: str = "radius",
    center_sample_radius: float = 1.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets for a batch: per-level ``points`` (the model's output) -> (B, sum_T, C) and (B, sum_T, 2)."""
    all_points = torch.cat(list(points), dim=0)
    per_video = [
        assign_labels(all_points, segs, labels, num_classes, center_sample, center_sample_radius)
        for segs, labels in zip(gt_segments, gt_labels, strict=True)
    ]
    cls_targets = torch.stack([cls for cls, _ in per_video])
    reg_targets = torch.stack([reg for _, reg in per_video])
    return cls_targets, reg_targets
