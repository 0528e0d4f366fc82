"""Clips per second of the SkillFormer clip loader against raw decord decoding of the same frames, and the
loader's distance to the HF processor in grey levels.

Raw is ``decord.VideoReader(path, num_threads).get_batch(indices).asnumpy()``: the uint8 frames the loader
samples, the floor any loader pays. Ours is ``SkillDataset[i]["pixel_values"]`` (evaluation, one view,
shortest edge 224, centre crop 224) over a jsonl listing the clips: it opens the video, decodes the same
indices and turns them into the model's input. Each clip is read by raw and by ours in turn (the order
swapped every repetition), so that a busy host slows both alike; per-clip medians of wall time and of the
process's CPU time (steadier on a shared host) are summed into throughputs per second and per CPU second,
and the ratios ours/raw are printed (the target is 0.80 or more). The grey-level difference is
max |ours - HF| * std * 255 over every pixel of every clip, against transformers' ``VideoMAEImageProcessor``
(torchvision backend, the default) and ``VideoMAEImageProcessorPil``, both configured like the TimeSformer
checkpoint's preprocessor.

    python benchmarks/skill_clip_loading.py [--videos PATHS] [--threads 1] [--repeats 15] [--num-frames 8]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import decord
import numpy as np
import torch

from egolab.data.skill import SkillDataset, eval_window_starts, sample_frame_indices, window_length

VIDEOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "videos"
DEFAULT_VIDEOS = [
    VIDEOS / name
    for name in (
        "lavila_ego4d_3c0dffd0_012_014.mp4",
        "mmaction2_tests_data_test.mp4",
        "bikes.mp4",
        "carphone_distorted.mp4",
    )
]
MEAN, STD, SIZE, RATE = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225), 224, 4
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def clip_dataset(videos: list[Path], folder: Path, num_frames: int, threads: int) -> SkillDataset:
    """An evaluation :class:`SkillDataset` with one take per video (the ego view, an absolute path)."""
    lines = [
        {"take_uid": f"clip{k}", "take_name": path.stem, "video_paths": [str(path), None, None, None, None]}
        for k, path in enumerate(videos)
    ]
    jsonl = folder / "clips.jsonl"
    jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return SkillDataset(
        jsonl,
        folder,
        num_frames=num_frames,
        frame_sample_rate=RATE,
        shortest_edge=SIZE,
        crop_size=SIZE,
        mean=MEAN,
        std=STD,
        video_subdir=None,
        decode_threads=threads,
    )


def sampled_indices(path: Path, num_frames: int) -> list[int]:
    """The frame indices the evaluation dataset reads from ``path`` (one centred window)."""
    count = len(decord.VideoReader(str(path)))
    window = window_length(num_frames, RATE, count)
    return sample_frame_indices(eval_window_starts(count, window, 1)[0], num_frames, window).tolist()


def median_seconds(
    readers: dict[str, list[Callable[[], object]]], repeats: int
) -> dict[str, dict[str, list[float]]]:
    """Per-clip median wall and CPU (this process) seconds of each reader: ``[clock][reader][clip]``; the
    readers take turns clip by clip."""
    names = list(readers)
    times = {clock: {name: [[] for _ in readers[name]] for name in names} for clock in CLOCKS}
    for rep in range(repeats + 1):  # the first repetition warms up and is not counted
        order = names if rep % 2 else names[::-1]
        for clip in range(len(readers[names[0]])):
            for name in order:
                start = {clock: now() for clock, now in CLOCKS.items()}
                readers[name][clip]()
                if rep:
                    for clock, now in CLOCKS.items():
                        times[clock][name][clip].append(now() - start[clock])
    return {
        clock: {name: [statistics.median(t) for t in times[clock][name]] for name in names}
        for clock in CLOCKS
    }


def max_grey_levels(ours: torch.Tensor, processor: Callable, frames: np.ndarray) -> float:
    """max |ours - processor(frames)| in grey levels (0-255) of ``(T, C, H, W)`` normalised pixels."""
    expected = processor(list(frames), return_tensors="pt")["pixel_values"][0]
    std = torch.tensor(STD).view(1, -1, 1, 1)
    return float(((ours - expected).abs() * std * 255).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", nargs="+", type=Path, default=DEFAULT_VIDEOS)
    parser.add_argument("--threads", type=int, default=1, help="torch threads and decord threads")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--num-frames", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    videos = []
    for path in args.videos:
        if path.is_file():
            videos.append(path.resolve())
        else:
            print(f"skipping {path}: not found")
    if not videos:
        raise SystemExit("no clips to read")
    from transformers import VideoMAEImageProcessor, VideoMAEImageProcessorPil

    options = dict(
        size={"shortest_edge": SIZE},
        crop_size={"height": SIZE, "width": SIZE},
        resample=2,
        image_mean=list(MEAN),
        image_std=list(STD),
    )
    processors = {
        "torchvision": VideoMAEImageProcessor(**options),
        "PIL": VideoMAEImageProcessorPil(**options),
    }

    with tempfile.TemporaryDirectory() as tmp:
        data = clip_dataset(videos, Path(tmp), args.num_frames, args.threads)
        indices = [sampled_indices(path, args.num_frames) for path in videos]

        def raw(path: Path, frames: list[int]) -> Callable[[], np.ndarray]:
            return lambda: decord.VideoReader(str(path), num_threads=args.threads).get_batch(frames).asnumpy()

        def ours(k: int) -> Callable[[], torch.Tensor]:
            return lambda: data[k]["pixel_values"]

        medians = median_seconds(
            {
                "raw": [raw(path, frames) for path, frames in zip(videos, indices)],
                "ours": [ours(k) for k in range(len(videos))],
            },
            args.repeats,
        )
        grey = {name: 0.0 for name in processors}
        print(
            f"{len(videos)} clips of {args.num_frames} frames (rate {RATE}) -> {SIZE}x{SIZE}, "
            f"{args.threads} thread(s), median of {args.repeats} interleaved repetitions"
        )
        for k, (path, frames) in enumerate(zip(videos, indices)):
            decoded = decord.VideoReader(str(path)).get_batch(frames).asnumpy()
            pixels = data[k]["pixel_values"][0, 0]
            for name, processor in processors.items():
                grey[name] = max(grey[name], max_grey_levels(pixels, processor, decoded))
            ms = {clock: [medians[clock][name][k] * 1e3 for name in ("raw", "ours")] for clock in CLOCKS}
            print(
                f"  {path.name:36s} {decoded.shape[2]}x{decoded.shape[1]}  "
                + "  ".join(
                    f"{clock} ms raw {raw:6.2f} ours {ours:6.2f} ({raw / ours:.2f})"
                    for clock, (raw, ours) in ms.items()
                )
            )
    frames = len(videos) * args.num_frames
    for clock, unit in (("wall", "s"), ("cpu", "CPU s")):
        raw_s, ours_s = sum(medians[clock]["raw"]), sum(medians[clock]["ours"])
        print(
            f"per {unit}: raw decord {len(videos) / raw_s:6.1f} clips {frames / raw_s:7.1f} frames; "
            f"ours {len(videos) / ours_s:6.1f} clips {frames / ours_s:7.1f} frames; "
            f"ratio ours/raw {raw_s / ours_s:.2f} (target >= 0.80)"
        )
    print(
        f"max |ours - HF VideoMAEImageProcessor| {grey['torchvision']:.3f} grey levels "
        f"(PIL backend: {grey['PIL']:.3f})"
    )


if __name__ == "__main__":
    main()
