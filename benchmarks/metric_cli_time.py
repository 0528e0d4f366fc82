"""End-to-end wall time of ``python -m egolab.metrics.localization`` on an ActivityNet-val-sized submission
(4,728 videos, 100 predictions each, 200 classes, the 10 official tIoU thresholds, Recall@1x/5x).

The ground truth and submission json files are generated into a temporary folder; the command line runs
in a fresh subprocess ``--repeats`` times and the median wall time is printed beside the 1 s target,
together with the time of a bare ``import egolab.metrics.localization``. Then, in this process, the
evaluation itself: :func:`evaluate_detection` on the tables and :class:`DetectionMAP` fed per video in
batches of 16 (as a validation epoch would), each once.

    python benchmarks/metric_cli_time.py [--repeats 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from egolab.metrics.localization import ANET_TIOU_THRESHOLDS, SegmentTable, evaluate_detection

TARGET_S = 1.0
N_VIDEOS, N_CLASSES, PER_VIDEO = 4728, 200, 100


def activitynet_like(seed: int) -> tuple[SegmentTable, SegmentTable]:
    """1-3 GTs of one class per video; ``PER_VIDEO`` predictions per video, 80% of that class, 70% of
    them jittered GTs, scores rounded to 3 decimals (so with ties)."""
    rng = np.random.default_rng(seed)
    dur = rng.uniform(30, 240, N_VIDEOS)
    n_gt = rng.integers(1, 4, N_VIDEOS)
    gvid = np.repeat(np.arange(N_VIDEOS), n_gt)
    glen = rng.uniform(0.05, 0.6, gvid.size) * dur[gvid]
    gstart = rng.random(gvid.size) * (dur[gvid] - glen)
    vcls = rng.integers(0, N_CLASSES, N_VIDEOS)
    pvid = np.repeat(np.arange(N_VIDEOS), PER_VIDEO)
    src = (np.cumsum(n_gt) - n_gt)[pvid] + rng.integers(0, n_gt[pvid])
    jitter = rng.normal(0, 0.15, (pvid.size, 2)) * glen[src, None]
    start, end = gstart[src] + jitter[:, 0], gstart[src] + glen[src] + jitter[:, 1]
    rand = rng.random(pvid.size) < 0.3
    start[rand] = rng.random(rand.sum()) * dur[pvid[rand]]
    end[rand] = start[rand] + rng.uniform(0.02, 0.5, rand.sum()) * dur[pvid[rand]]
    start, end = np.clip(start, 0, dur[pvid]), np.clip(end, 0, dur[pvid])
    labels = np.where(rng.random(pvid.size) < 0.8, vcls[pvid], rng.integers(0, N_CLASSES, pvid.size))
    names = np.array([f"v{i:05d}" for i in range(N_VIDEOS)])
    gt = SegmentTable(names[gvid], np.round(np.column_stack([gstart, gstart + glen]), 2), vcls[gvid])
    segments = np.round(np.column_stack([np.minimum(start, end), np.maximum(start, end)]), 2)
    pred = SegmentTable(names[pvid], segments, labels, np.round(rng.random(pvid.size), 3))
    return gt, pred


def write_files(gt: SegmentTable, pred: SegmentTable, folder: Path) -> tuple[Path, Path]:
    """ActivityNet-format ground truth (all videos in ``validation``) and submission json files."""
    label = [f"class_{c:03d}" for c in range(N_CLASSES)]
    database: dict[str, dict] = {}
    for vid, (s, e), c in zip(gt.videos.tolist(), gt.segments.tolist(), gt.labels.tolist(), strict=True):
        entry = database.setdefault(vid, {"subset": "validation", "annotations": []})
        entry["annotations"].append({"segment": [s, e], "label": label[c]})
    results: dict[str, list] = {}
    rows = zip(pred.videos.tolist(), pred.segments.tolist(), pred.scores.tolist(), pred.labels.tolist())
    for vid, (s, e), score, c in rows:
        results.setdefault(vid, []).append({"segment": [s, e], "score": score, "label": label[c]})
    gt_path, pred_path = folder / "gt.json", folder / "submission.json"
    gt_path.write_text(json.dumps({"version": "1.3", "database": database}))
    pred_path.write_text(json.dumps({"version": "1.3", "results": results}))
    return gt_path, pred_path


def wall(cmd: list[str]) -> float:
    """Seconds one subprocess takes, start to exit."""
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def detection_map_seconds(gt: SegmentTable, pred: SegmentTable) -> tuple[float, float]:
    """Time of ``DetectionMAP`` over the data in batches of 16 videos, and its average mAP."""
    import torch

    from egolab.metrics.localization import DetectionMAP

    metric = DetectionMAP(tiou_thresholds=ANET_TIOU_THRESHOLDS.tolist(), top_k=(1, 5))
    t0 = time.perf_counter()
    videos = np.unique(gt.videos)
    p_order = np.argsort(pred.videos, kind="stable")
    p_bounds = np.searchsorted(pred.videos[p_order], videos).tolist() + [len(pred)]
    g_bounds = np.searchsorted(gt.videos, videos).tolist() + [len(gt)]
    preds, targets = [], []
    for i, vid in enumerate(videos.tolist()):
        p, g = p_order[p_bounds[i] : p_bounds[i + 1]], slice(g_bounds[i], g_bounds[i + 1])
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
    for b in range(0, len(preds), 16):
        metric.update(preds[b : b + 16], targets[b : b + 16])
    value = metric.compute()["average_mAP"].item()
    return time.perf_counter() - t0, value


def main() -> None:
    """Generate the files, time the command line and the in-process evaluation, print the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="command-line runs (median reported)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    gt, pred = activitynet_like(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        gt_path, pred_path = write_files(gt, pred, Path(tmp))
        mib = pred_path.stat().st_size / 2**20
        print(f"{N_VIDEOS} videos, {len(gt)} GT segments, {len(pred)} predictions ({mib:.0f} MiB json)")
        cli = [sys.executable, "-m", "egolab.metrics.localization", "--gt", str(gt_path), "--pred"]
        cli += [str(pred_path), "--top-k", "1", "5"]
        imports = [sys.executable, "-c", "import egolab.metrics.localization"]
        cli_s = statistics.median(wall(cli) for _ in range(args.repeats))
        import_s = statistics.median(wall(imports) for _ in range(args.repeats))
    print(f"command line, end to end:  {cli_s:6.2f} s wall (median of {args.repeats}; target {TARGET_S:g} s)")
    print(f"  of which python + import: {import_s:6.2f} s wall (median of {args.repeats})")

    t0 = time.perf_counter()
    res = evaluate_detection(gt, pred, ANET_TIOU_THRESHOLDS, top_k=(1, 5))
    api_s = time.perf_counter() - t0
    metric_s, metric_map = detection_map_seconds(gt, pred)
    assert abs(metric_map - res.average_mAP) < 1e-12, (metric_map, res.average_mAP)
    print(f"evaluate_detection:         {api_s:6.2f} s (in process, once)")
    print(f"DetectionMAP update+compute:{metric_s:6.2f} s (in process, once; batches of 16 videos)")


if __name__ == "__main__":
    main()
