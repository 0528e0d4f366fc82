"""Late fusion of localization predictions: pool every run's detections (scores weighted), then NMS."""

from __future__ import annotations

import numpy as np


def fuse_localization(
    payloads: list[dict],
    weights: list[float],
    iou_threshold: float = 0.1,
    sigma: float = 0.5,
    min_score: float = 0.001,
    max_seg_num: int | None = None,
    soft: bool = True,
) -> dict:
    """Per video: the union of the runs' detections with score × weight, then per-class (soft-)NMS.

    Weights are rescaled to sum to 1 so that fused scores stay in [0, 1]. ``max_seg_num`` defaults to
    the largest number of detections any input run kept for one video. Point events (files with
    ``point_tolerance_s``, from SnapFormer) go through the NMS as windows ``t +/- tolerance`` and come out
    as points again.
    """
    import torch

    from egolab.metrics.localization import detection_fields
    from egolab.models.segment_nms import batched_nms

    truth = payloads[0].get("ground_truth")
    for payload in payloads[1:]:
        if payload.get("ground_truth") != truth or payload.get("label_names") != payloads[0].get(
            "label_names"
        ):
            raise ValueError("runs were scored against different ground truth or classes; cannot fuse them")
    tolerances = {payload.get("point_tolerance_s") for payload in payloads}
    if len(tolerances) > 1:
        raise ValueError(f"runs have different point tolerances {sorted(map(str, tolerances))}; cannot fuse")
    tolerance = tolerances.pop() or 0.0
    total = sum(weights)
    if total <= 0:
        raise ValueError("fusion weights must sum to a positive number")
    limit = max_seg_num or max((len(d) for p in payloads for d in p["results"].values()), default=0)
    names = {}
    pooled: dict[str, list] = {}
    for payload, weight in zip(payloads, weights, strict=True):
        for vid, detections in payload["results"].items():
            for k, det in enumerate(detections):
                start, end, score, label_id = detection_fields("predictions to fuse", vid, k, det)
                pooled.setdefault(vid, []).append((start, end, score * weight / total, label_id))
                names[label_id] = det.get("label", str(label_id))
    results = {}
    for vid in sorted(pooled):
        rows = np.array(pooled[vid], np.float64).reshape(-1, 4)
        windows = rows[:, :2] + np.array([-tolerance, tolerance])
        segs, scores, labels = batched_nms(
            torch.from_numpy(windows),
            torch.from_numpy(rows[:, 2]),
            torch.from_numpy(rows[:, 3].astype(np.int64)),
            iou_threshold=iou_threshold,
            min_score=min_score,
            max_seg_num=limit,
            use_soft_nms=soft,
            multiclass=True,
            sigma=sigma,
        )
        if tolerance:
            segs = segs.mean(dim=1, keepdim=True).expand(-1, 2)
        results[vid] = [
            {"segment": [float(s), float(e)], "score": float(p), "label": names[int(c)], "label_id": int(c)}
            for (s, e), p, c in zip(segs.tolist(), scores.tolist(), labels.tolist(), strict=True)
        ]
    return {**payloads[0], "results": results, "fused_from": len(payloads)}
