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

from egolab.data.demo_localization import synthetic_detections
from egolab.metrics.localization import ANET_TIOU_THRESHOLDS, SegmentTable, evaluate_detection

TARGET_S = 1.0
N_VIDEOS, N_CLASSES, PER_VIDEO = 4728, 200, 100


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
    from egolab.metrics.localization_metric import DetectionMAP, records_by_video

    metric = DetectionMAP(tiou_thresholds=ANET_TIOU_THRESHOLDS.tolist(), top_k=(1, 5))
    t0 = time.perf_counter()
    preds, targets = records_by_video(gt, pred)
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

    gt, pred = synthetic_detections(N_VIDEOS, N_CLASSES, PER_VIDEO, args.seed, segment_decimals=2)
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
