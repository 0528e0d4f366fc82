"""Extract features from a folder of videos into the files a feature-based task reads.

Run by ``egolab.train`` (so by launch.py: ``-l``, ``-g``, ``-p``, job arrays) when the task config is
``task=extract``. Per video of this shard (``data.shard=i/n``, or ``array``: the SLURM array index):
decode the frames the :class:`~egolab.extract.plan.ClipPlan` asks for (decord), resize and normalise them
as the backbone wants, run the frozen backbone over batches of clips (bf16 autocast on GPU), and write
the ``(T, C)`` float32 features atomically:

- ``target=localization``: ``<out>/<video>.npy``, with the data-config lines that describe them printed;
- ``target=backpack``: ``<out>/<video>.pt``;
- ``target=anticipation``: one feature per frame at the end of its clip, kept per video in
  ``<out>/frames/<video>.npy`` and gathered into an LMDB with RULSTM keys (``<out>/features.lmdb``, or
  ``<out>/shard_<i>_of_<n>.lmdb`` to merge with ``python -m egolab.extract.merge``).

A video whose output is complete is skipped, so a relaunch picks up where a killed run stopped. A video
that cannot be read or is shorter than one clip is listed in ``<out>/failed.txt`` with the reason; the run
goes on and ends with exit code 1 when any failed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from egolab.extract.plan import ClipPlan
from egolab.extract.writers import (
    check_feature_folder,
    is_complete,
    resolve_shard,
    shard_of,
    write_array_atomically,
)

log = logging.getLogger("egolab")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm")
TARGET_FORMATS = {"localization": "npy", "backpack": "pt", "anticipation": "npy"}


@dataclass
class Tally:
    """What one extraction did, for the summary and ``metrics.json``."""

    done: int = 0
    skipped: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    frames_decoded: int = 0
    features: int = 0
    decode_s: float = 0.0
    total_s: float = 0.0


def list_videos(video_dir: Path, extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> dict[str, Path]:
    """``name -> path`` of the videos directly in ``video_dir`` (the name is the file stem)."""
    if not video_dir.is_dir():
        from egolab.errors import BadValue

        raise BadValue(f"data.video_dir {video_dir} is not a folder of videos")
    videos: dict[str, Path] = {}
    for path in sorted(video_dir.iterdir()):
        if path.suffix.lower() not in extensions:
            continue
        if path.stem in videos:
            from egolab.errors import BadValue

            raise BadValue(
                f"{videos[path.stem].name} and {path.name} in {video_dir} would write the same output"
            )
        videos[path.stem] = path
    return videos


def clip_batches(clips: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, len(clips), batch_size):
        yield clips[start : start + batch_size]


def video_features(
    path: Path,
    plan: ClipPlan,
    backbone: Callable[[torch.Tensor], torch.Tensor],
    preprocess: Callable[[np.ndarray], torch.Tensor],
    batch_size: int,
    tally: Tally,
    device: torch.device | None = None,
    threads: int = 1,
) -> np.ndarray:
    """``(num_clips, C)`` float32 features of one video; ``ValueError`` when it is shorter than a clip,
    ``VideoReadError`` when it cannot be decoded. Each batch decodes only the frames its clips use, and a
    per-frame backbone sees each of them once."""
    from egolab.data.skill import open_video, read_frames

    reader = open_video(path, num_threads=max(1, int(threads)))
    clips = plan.clips(len(reader), float(reader.get_avg_fps()))
    if len(clips) == 0:
        raise ValueError(f"too short: {len(reader)} frames, fewer than one clip ({plan.window} frames)")
    out = []
    for batch in clip_batches(clips, batch_size):
        frames, where = np.unique(batch, return_inverse=True)
        started = time.perf_counter()
        decoded = read_frames(path, frames.tolist(), reader=reader)
        tally.decode_s += time.perf_counter() - started
        tally.frames_decoded += len(frames)
        pixels = preprocess(decoded).to(device or "cpu")
        index = torch.from_numpy(where.reshape(batch.shape)).to(pixels.device)
        with torch.no_grad():
            if getattr(backbone, "per_frame", False):  # each frame once, however many clips share it
                features = backbone.frames(pixels)[index].mean(dim=1)
            else:
                features = backbone(pixels[index])
        out.append(features.float().cpu().numpy())
    return np.concatenate(out).astype(np.float32, copy=False)


def _output_path(out_dir: Path, target: str, name: str) -> Path:
    if target == "anticipation":
        return out_dir / "frames" / f"{name}.npy"
    return out_dir / f"{name}.{TARGET_FORMATS[target]}"


def _preprocessor(backbone: Any) -> Callable[[np.ndarray], torch.Tensor]:
    from egolab.data.skill import preprocess_frames

    def preprocess(frames: np.ndarray) -> torch.Tensor:
        return preprocess_frames(frames, backbone.size, backbone.size, backbone.mean, backbone.std)

    return preprocess


PRECISIONS = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype of ``task.precision`` (None: fp32). ``auto`` is bf16 on a GPU and fp32 on the
    CPU, where half precision is slow on most processors; an explicit bf16 / fp16 applies on either."""
    from egolab.errors import UserError

    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise UserError(f"task.precision={precision!r}: one of auto, {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def write_lmdb(out_dir: Path, names: list[str], shard: str | None, stride: int = 1) -> Path:
    """Gather the per-video frame features of ``names`` into this shard's LMDB (RULSTM keys): row ``r``
    belongs to timeline frame ``r * stride``."""
    from egolab.data.anticipation import lmdb_key
    from egolab.extract.plan import rulstm_frame_number
    from egolab.extract.writers import write_lmdb_shard

    if shard is None:
        path = out_dir / "features.lmdb"
    else:
        index, count = shard.split("/")
        path = out_dir / f"shard_{index}_of_{count}.lmdb"

    def items() -> Iterator[tuple[str, np.ndarray]]:
        for name in names:
            features = np.load(_output_path(out_dir, "anticipation", name), mmap_mode="r")
            for t, row in enumerate(features):
                yield lmdb_key(name, rulstm_frame_number(t * stride)), row

    if path.exists():
        import shutil

        shutil.rmtree(path)
    write_lmdb_shard(path, items())
    return path


def extraction_setting(cfg: DictConfig, dtype: torch.dtype | None) -> dict[str, Any]:
    """What the features depend on: the target, the clip plan, the backbone (and the seed of a randomly
    initialised one) and the autocast dtype; not the batch size, the devices or the shard."""
    from omegaconf import OmegaConf

    setting = {
        "target": str(cfg.data.target),
        "plan": OmegaConf.to_container(cfg.data.plan, resolve=True),
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "precision": str(dtype).removeprefix("torch.") if dtype else "float32",
    }
    if not cfg.model.get("pretrained", True):
        setting["seed"] = int(cfg.seed)
    return setting


def run_extraction(cfg: DictConfig, run_dir: Path) -> dict[str, float]:
    """Extract this shard's videos as ``cfg.data`` says with the backbone ``cfg.model``; write
    ``metrics.json`` (counts and rates) in ``run_dir`` and return it."""
    from hydra.utils import instantiate
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from egolab.errors import UserError

    data = cfg.data
    target = str(data.target)
    if target not in TARGET_FORMATS:
        raise UserError(f"data.target={target!r}: one of {sorted(TARGET_FORMATS)}")
    plan = ClipPlan(data.plan.fps, int(data.plan.window), int(data.plan.stride), str(data.plan.anchor))
    out_dir = Path(data.out_dir)
    shard = resolve_shard(data.get("shard"))
    videos = list_videos(Path(data.video_dir))
    names = shard_of(list(videos), shard)
    device = torch.device("cuda" if torch.cuda.is_available() and cfg.task.device != "cpu" else "cpu")
    dtype = autocast_dtype(device, str(cfg.task.precision))
    check_feature_folder(out_dir, extraction_setting(cfg, dtype))
    backbone = instantiate(cfg.model).eval().requires_grad_(False).to(device)
    preprocess = _preprocessor(backbone)
    fmt = TARGET_FORMATS[target]
    tally = Tally()
    started = time.perf_counter()
    log.info(
        "extract: %d of %d videos (shard %s) from %s to %s",
        len(names),
        len(videos),
        shard,
        data.video_dir,
        out_dir,
    )
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
    ]
    with Progress(*columns, TimeRemainingColumn(), transient=False) as progress:
        task = progress.add_task("extract", total=len(names), rate="")
        for name in names:
            output = _output_path(out_dir, target, name)
            if is_complete(output, fmt):
                tally.skipped += 1
            else:
                # a killed attempt's temporary file of this video (only this shard writes it)
                for leftover in output.parent.glob(f"{output.name}.tmp-*"):
                    leftover.unlink()
                try:
                    with torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext():
                        features = video_features(
                            videos[name],
                            plan,
                            backbone,
                            preprocess,
                            int(cfg.task.batch_size),
                            tally,
                            device,
                            int(data.num_workers),
                        )
                except (UserError, ValueError) as err:
                    tally.failed[name] = str(err)
                    log.warning("extract: %s failed: %s", name, err)
                else:
                    write_array_atomically(output, features, fmt)
                    tally.done += 1
                    tally.features += len(features)
            elapsed = max(time.perf_counter() - started, 1e-9)
            done = tally.done + tally.skipped
            rate = f"{done / elapsed:.2f} videos/s, {tally.frames_decoded / elapsed:.0f} frames/s"
            progress.update(task, advance=1, rate=rate)
    if target == "anticipation":
        done = [n for n in names if n not in tally.failed]
        log.info("extract: LMDB written to %s", write_lmdb(out_dir, done, shard, plan.stride))
    tally.total_s = time.perf_counter() - started
    return _report(tally, out_dir, run_dir, plan, target)


def _report(tally: Tally, out_dir: Path, run_dir: Path, plan: ClipPlan, target: str) -> dict[str, float]:
    """Summary on the console, ``failed.txt`` and ``metrics.json``."""
    from egolab.errors import UserError

    metrics = {
        "videos_done": float(tally.done),
        "videos_skipped": float(tally.skipped),
        "videos_failed": float(len(tally.failed)),
        "frames_decoded": float(tally.frames_decoded),
        "features": float(tally.features),
        "decode_frames_per_s": tally.frames_decoded / tally.decode_s if tally.decode_s else 0.0,
        "pipeline_frames_per_s": tally.frames_decoded / tally.total_s if tally.total_s else 0.0,
        "features_per_s": tally.features / tally.total_s if tally.total_s else 0.0,
    }
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    log.info(
        "extract: %d done, %d skipped (already complete), %d failed; %.0f frames/s decoded, %.1f features/s",
        tally.done,
        tally.skipped,
        len(tally.failed),
        metrics["decode_frames_per_s"],
        metrics["features_per_s"],
    )
    if target == "localization" and tally.done + tally.skipped + len(tally.failed):  # the shard had videos
        lines = "\n".join(plan.data_config_lines())
        log.info("extract: data config lines for these features (add them to the training TXT):\n%s", lines)
    failed_file = out_dir / "failed.txt"
    if tally.failed:
        out_dir.mkdir(parents=True, exist_ok=True)
        failed_file.write_text("".join(f"{name}\t{why}\n" for name, why in sorted(tally.failed.items())))
        raise UserError(
            f"extract: {len(tally.failed)} video(s) failed, listed with the reason in {failed_file}"
        )
    return metrics
