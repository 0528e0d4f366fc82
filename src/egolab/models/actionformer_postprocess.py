"""ActionFormer decoding: per-level score filtering, offset decoding, NMS, grid -> seconds.

Follows the released ``inference_single_video`` + ``postprocessing`` (spec section 1.5); the input and
output formats are those of docs/localization_contract.md.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from egolab.models.segment_nms import batched_nms, validate_nms_options

NMS_METHODS = ("soft", "hard", "none")


class ActionFormerPostProcessor:
    """Turn ActionFormer outputs into per-video detections in seconds, sorted by score.

    Per level: ``p = sigmoid(logits / score_temperature) * mask`` flattened over (T, C); keep
    ``p > pre_nms_thresh``, then the ``pre_nms_topk`` best; decode ``[t - o_l * s, t + o_r * s]`` and drop
    segments not longer than ``duration_thresh`` grid units. The levels are concatenated and passed
    through :func:`~egolab.models.segment_nms.batched_nms` (unless ``nms_method="none"``, which only
    sorts), then mapped to seconds with ``(grid * feat_stride + 0.5 * num_frames) / fps`` clipped to
    [0, duration].

    Options of the enhanced fork (spec section 2.2), off by default: ``score_temperature`` T (a fixed
    post-hoc scaling, not a fitted calibration; T > 1 flattens the scores), ``use_diou_nms`` (Gaussian
    soft-NMS on the DIoU; needs ``nms_method="soft"``) and ``class_sigma`` ({class id: sigma} for
    multiclass soft-NMS; other classes use ``nms_sigma``).
    """

    def __init__(
        self,
        pre_nms_thresh: float = 0.001,
        pre_nms_topk: int = 5000,
        duration_thresh: float = 0.05,
        nms_method: str = "soft",
        iou_threshold: float = 0.1,
        min_score: float = 0.01,
        max_seg_num: int = 1000,
        nms_sigma: float = 0.5,
        multiclass_nms: bool = True,
        voting_thresh: float = 0.75,
        score_temperature: float = 1.0,
        use_diou_nms: bool = False,
        class_sigma: Mapping[Any, float] | None = None,
    ) -> None:
        if nms_method not in NMS_METHODS:
            raise ValueError(f"nms_method must be one of {NMS_METHODS}, got {nms_method!r}")
        if score_temperature <= 0:
            raise ValueError(f"score_temperature must be > 0, got {score_temperature}")
        if pre_nms_topk <= 0:
            raise ValueError(f"pre_nms_topk must be positive, got {pre_nms_topk}")
        if nms_method == "soft" and nms_sigma <= 0:
            raise ValueError(f"nms_sigma must be > 0, got {nms_sigma}")
        self.pre_nms_thresh = pre_nms_thresh
        self.pre_nms_topk = pre_nms_topk
        self.duration_thresh = duration_thresh
        self.nms_method = nms_method
        self.iou_threshold = iou_threshold
        self.min_score = min_score
        self.max_seg_num = max_seg_num
        self.nms_sigma = nms_sigma
        self.multiclass_nms = multiclass_nms
        self.voting_thresh = voting_thresh
        self.score_temperature = score_temperature
        self.use_diou_nms = use_diou_nms
        self.class_sigma = validate_nms_options(
            nms_method == "soft", multiclass_nms, use_diou_nms, class_sigma
        )

    def decode_video(
        self,
        cls_logits: Sequence[torch.Tensor],
        offsets: Sequence[torch.Tensor],
        masks: Sequence[torch.Tensor],
        points: Sequence[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Candidates of one video before NMS: (N, 2) grid segments, (N,) scores, (N,) int64 labels.

        Per level ``l``: ``cls_logits[l]`` (T_l, C), ``offsets[l]`` (T_l, 2), ``masks[l]`` (T_l,),
        ``points[l]`` (T_l, 4) with rows [t, r_min, r_max, stride].
        """
        all_segs, all_scores, all_labels = [], [], []
        for logits, offs, mask, pts in zip(cls_logits, offsets, masks, points, strict=True):
            num_classes = logits.shape[-1]
            scaled = logits.float() / self.score_temperature
            prob = (scaled.sigmoid() * mask[:, None].to(torch.float32)).flatten()
            flat_idx = torch.nonzero(prob > self.pre_nms_thresh, as_tuple=True)[0]
            prob = prob[flat_idx]
            num_topk = min(self.pre_nms_topk, flat_idx.numel())
            prob, order = prob.sort(descending=True, stable=True)
            prob, flat_idx = prob[:num_topk], flat_idx[order[:num_topk]]
            pt_idx = torch.div(flat_idx, num_classes, rounding_mode="floor")
            labels = flat_idx % num_classes
            sel_pts = pts[pt_idx].to(torch.float32)
            sel_offs = offs[pt_idx].to(torch.float32)
            left = sel_pts[:, 0] - sel_offs[:, 0] * sel_pts[:, 3]
            right = sel_pts[:, 0] + sel_offs[:, 1] * sel_pts[:, 3]
            keep = (right - left) > self.duration_thresh
            all_segs.append(torch.stack((left, right), dim=-1)[keep])
            all_scores.append(prob[keep])
            all_labels.append(labels[keep])
        if not all_segs:
            return torch.zeros(0, 2), torch.zeros(0), torch.zeros(0, dtype=torch.int64)
        return (
            torch.cat(all_segs).detach().cpu(),
            torch.cat(all_scores).detach().cpu(),
            torch.cat(all_labels).detach().cpu().to(torch.int64),
        )

    def suppress(
        self, segs: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """NMS on grid segments (``nms_method="none"``: only sort by score)."""
        if self.nms_method == "none":
            order = torch.argsort(scores, descending=True, stable=True)
            return segs[order], scores[order], labels[order]
        return batched_nms(
            segs,
            scores,
            labels,
            iou_threshold=self.iou_threshold,
            min_score=self.min_score,
            max_seg_num=self.max_seg_num,
            use_soft_nms=self.nms_method == "soft",
            multiclass=self.multiclass_nms,
            sigma=self.nms_sigma,
            voting_thresh=self.voting_thresh,
            use_diou_nms=self.use_diou_nms,
            class_sigma=self.class_sigma,
        )

    @staticmethod
    def to_seconds(
        segs: torch.Tensor, fps: float, duration: float, feat_stride: float, num_frames: float
    ) -> torch.Tensor:
        """Grid -> seconds: ``(grid * feat_stride + 0.5 * num_frames) / fps``, clipped to [0, duration]."""
        secs = (segs.to(torch.float64) * feat_stride + 0.5 * num_frames) / fps
        return secs.clamp(min=0.0, max=duration)

    @torch.no_grad()
    def __call__(self, outputs: Mapping[str, Any], batch: Mapping[str, Any]) -> list[dict]:
        """Detections per video: dict(video_id, segments (N, 2) seconds, scores (N,), labels (N,))."""
        results = []
        for b, video_id in enumerate(batch["video_ids"]):
            segs, scores, labels = self.decode_video(
                [x[b] for x in outputs["cls_logits"]],
                [x[b] for x in outputs["offsets"]],
                [x[b] for x in outputs["masks"]],
                outputs["points"],
            )
            segs, scores, labels = self.suppress(segs, scores, labels)
            secs = self.to_seconds(
                segs,
                fps=float(batch["fps"][b]),
                duration=float(batch["duration"][b]),
                feat_stride=float(batch["feat_stride"][b]),
                num_frames=float(batch["feat_num_frames"][b]),
            )
            results.append({"video_id": video_id, "segments": secs, "scores": scores, "labels": labels})
        return results
