"""Feature-extraction throughput on this machine: decoding alone vs the whole pipeline, in one run.

For every video of ``--videos`` (default: the real sample clips in ../shared/data/videos), the clip plan
(``--window``, ``--stride``, each video's own rate) says which frames to read. First those frames are
only decoded (decord, batches of ``--batch`` clips); then the whole pipeline runs on them (decode, resize,
normalise, a randomly initialised timm ``--model`` at its own input size, write nothing). Printed: frames
decoded per second in each pass, features per second, and the ratio pipeline / decode.

    python benchmarks/extract_throughput.py [--model vit_small_patch16_224] [--threads 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from egolab.data.skill import open_video, preprocess_frames
from egolab.extract.backbones import FrameBackbone
from egolab.extract.plan import ClipPlan
from egolab.extract.run import VIDEO_EXTENSIONS, Tally, clip_batches, video_features

DEFAULT_VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"


def decode_only(paths: list[Path], plan: ClipPlan, batch: int) -> tuple[int, float]:
    """Frames decoded and seconds taken, reading each batch's frames as the pipeline does."""
    frames, started = 0, time.perf_counter()
    for path in paths:
        reader = open_video(path)
        for clips in clip_batches(plan.clips(len(reader), float(reader.get_avg_fps())), batch):
            unique = np.unique(clips)
            reader.get_batch(unique.tolist()).asnumpy()
            frames += len(unique)
    return frames, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=Path, default=DEFAULT_VIDEOS)
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--stride", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8, help="clips per forward pass")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    paths = sorted(p for p in args.videos.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
    plan = ClipPlan(None, args.window, args.stride)
    backbone = FrameBackbone(args.model, pretrained=False).eval()

    def preprocess(frames: np.ndarray) -> torch.Tensor:
        return preprocess_frames(frames, backbone.size, backbone.size, backbone.mean, backbone.std)

    decode_only(paths[:1], plan, args.batch)  # warm the file cache and decord
    decoded, decode_s = decode_only(paths, plan, args.batch)
    tally, started = Tally(), time.perf_counter()
    for path in paths:
        tally.features += len(video_features(path, plan, backbone, preprocess, args.batch, tally))
    pipeline_s = time.perf_counter() - started
    print(f"{len(paths)} videos, plan window {args.window} stride {args.stride}, model {args.model}")
    print(f"decode only: {decoded} frames in {decode_s:.2f} s = {decoded / decode_s:.0f} frames/s")
    print(
        f"pipeline:    {tally.frames_decoded} frames, {tally.features} features in {pipeline_s:.2f} s = "
        f"{tally.frames_decoded / pipeline_s:.0f} frames/s, {tally.features / pipeline_s:.1f} features/s"
    )
    ratio = (tally.frames_decoded / pipeline_s) / (decoded / decode_s)
    print(f"ratio pipeline / decode (frames/s): {ratio:.3f}")


if __name__ == "__main__":
    main()
