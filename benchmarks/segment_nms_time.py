"""Wall time of the vectorised segment NMS (soft, DIoU-soft and hard) on as many candidates as one
ActionFormer video yields before ``max_seg_num`` (5,000 random segments over 200 s), median of
``--repeats``. The tests check these functions against loop references; this shows they stay fast.

    python benchmarks/segment_nms_time.py [--candidates 5000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from egolab.models.segment_nms import diou_soft_nms, hard_nms, soft_nms


def random_segments(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` segments of 0.5-30 s starting anywhere in 200 s, with distinct scores in (0, 1]."""
    rng = np.random.default_rng(seed)
    start = rng.uniform(0, 200, n)
    segments = np.stack([start, start + rng.uniform(0.5, 30, n)], 1).astype(np.float32)
    return segments, rng.permutation(n).astype(np.float32) / n + 0.001


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--candidates", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    segments, scores = random_segments(args.candidates)
    runs = {
        "soft_nms": lambda: soft_nms(segments, scores, sigma=0.5, min_score=0.001),
        "diou_soft_nms": lambda: diou_soft_nms(segments, scores, sigma=0.5, min_score=0.001),
        "hard_nms": lambda: hard_nms(segments, scores, iou_threshold=0.3),
    }
    print(f"{args.candidates} candidates, {torch.get_num_threads()} threads, median of {args.repeats}")
    for name, run in runs.items():
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            kept = run()
            times.append(time.perf_counter() - start)
        print(f"{name:>14}: {statistics.median(times) * 1000:8.1f} ms, {len(kept.indices)} kept")


if __name__ == "__main__":
    main()
