"""Feature extraction end to end on small videos: which frames each feature comes from, skipping finished
videos, sharding, and failures listed without stopping the run."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from egolab.extract.plan import ClipPlan
from egolab.extract.run import Tally, video_features


def write_video(path: Path, num_frames: int, fps: int = 30) -> Path:
    """A lossless video whose frame k is uniformly grey at level 5 k (mod 255): its content encodes its
    index (below 51 frames)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv444p"
        for k in range(num_frames):
            frame = av.VideoFrame.from_ndarray(np.full((24, 32, 3), 5 * k % 255, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


class FrameIndex(nn.Module):
    """A backbone stub: the feature of a clip is the index of each of its frames (read from the pixels)."""

    size, mean, std = 16, (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return (clips.mean(dim=(2, 3, 4)) / 5).round()


def features_of(path: Path, plan: ClipPlan, batch_size: int = 3) -> np.ndarray:
    from egolab.data.skill import preprocess_frames

    def preprocess(frames):
        return preprocess_frames(frames, 16, 16, FrameIndex.mean, FrameIndex.std)

    return video_features(path, plan, FrameIndex(), preprocess, batch_size, Tally())


@pytest.mark.parametrize(
    ("plan", "expected"),
    [
        (ClipPlan(None, 4, 2), [[0, 1, 2, 3], [2, 3, 4, 5], [36, 37, 38, 39]]),  # rows 0, 1 and last
        (ClipPlan(15, 4, 2), [[0, 2, 4, 6], [4, 6, 8, 10], [32, 34, 36, 38]]),  # a 15 fps timeline
        (ClipPlan(30, 3, 1, "end"), [[0, 0, 0], [0, 0, 1], [37, 38, 39]]),  # RULSTM: ends on each frame
    ],
)
def test_each_feature_comes_from_exactly_the_frames_the_plan_says(tmp_path, plan, expected):
    video = write_video(tmp_path / "v.mkv", 40)
    features = features_of(video, plan)
    np.testing.assert_array_equal(features, plan.clips(40, 30.0))
    np.testing.assert_array_equal(features[[0, 1, -1]], expected)
    assert len(features) == {None: 19, 15: 9, 30: 40}[plan.fps]


def test_a_video_shorter_than_a_clip_is_refused(tmp_path):
    with pytest.raises(ValueError, match="too short: 3 frames, fewer than one clip \\(16 frames\\)"):
        features_of(write_video(tmp_path / "short.mkv", 3), ClipPlan(None, 16, 4))


def extract(videos: Path, out: Path, run_dir: Path, *extra: str) -> dict:
    """One extraction with the tiny random frame model, in this process, as launch.py runs it (``extra``
    overrides come last)."""
    from egolab.train import run_from_overrides

    chosen = any(e.startswith("data=") for e in extra)  # else localization, window 8, stride 8
    target = [] if chosen else ["data=extract/localization", "data.plan.window=8", "data.plan.stride=8"]
    overrides = ["task=extract", "model=extract/tiny_random", "logger=csv", *target, *extra]
    overrides += [f"data.video_dir={videos}", f"data.out_dir={out}"]
    return run_from_overrides(overrides, run_dir)


def test_real_videos_sharded_like_unsharded_failures_listed_and_finished_videos_skipped(tmp_path, caplog):
    """Two real sample videos (h264 mp4, mpeg4 avi), a synthetic one and a corrupt file: the corrupt one is
    listed in failed.txt and the run exits 1 after the others; two shards give the same files as one run;
    a relaunch skips every finished video and recomputes nothing."""
    from shared_data import SHARED_DATA, require_shared

    videos = tmp_path / "videos"
    videos.mkdir()
    for name in ("mmaction2_tests_data_test.mp4", "mmaction2_tests_data_test.avi"):
        (videos / name.replace("mmaction2_tests_data_test", name[-3:])).symlink_to(
            require_shared(SHARED_DATA / "videos" / name)
        )
    write_video(videos / "synthetic.mkv", 40)
    (videos / "corrupt.mp4").write_bytes(b"not a video" * 100)

    with pytest.raises(SystemExit) as stopped:
        extract(videos, tmp_path / "all", tmp_path / "run_all")
    assert stopped.value.code == 1
    failed = (tmp_path / "all" / "failed.txt").read_text()
    assert failed.startswith(f"corrupt\tunreadable video {videos / 'corrupt.mp4'}")
    assert failed.count("\n") == 1
    files = sorted(p.name for p in (tmp_path / "all").glob("*.npy"))
    assert files == ["avi.npy", "mp4.npy", "synthetic.npy"]
    plan = ClipPlan(None, 8, 8)
    assert np.load(tmp_path / "all" / "synthetic.npy").shape == (len(plan.clips(40, 30.0)), 192)

    for shard in ("0/2", "1/2"):
        with pytest.raises(SystemExit) if shard == "1/2" else _no_error():  # the corrupt video is in shard 1
            extract(videos, tmp_path / "sharded", tmp_path / f"run_{shard[0]}", f"data.shard={shard}")
    for name in files:
        np.testing.assert_array_equal(np.load(tmp_path / "sharded" / name), np.load(tmp_path / "all" / name))

    written = {name: (tmp_path / "all" / name).stat().st_mtime_ns for name in files}
    (videos / "corrupt.mp4").unlink()
    metrics = extract(videos, tmp_path / "all", tmp_path / "run_again")
    assert metrics["videos_skipped"] == 3 and metrics["videos_done"] == 0
    assert {name: (tmp_path / "all" / name).stat().st_mtime_ns for name in files} == written

    # a truncated output (as a copy cut short leaves) is computed again; the other videos are not
    expected = np.load(tmp_path / "all" / "mp4.npy")
    (tmp_path / "all" / "mp4.npy").write_bytes((tmp_path / "all" / "mp4.npy").read_bytes()[:100])
    metrics = extract(videos, tmp_path / "all", tmp_path / "run_resumed")
    assert metrics["videos_skipped"] == 2 and metrics["videos_done"] == 1
    np.testing.assert_array_equal(np.load(tmp_path / "all" / "mp4.npy"), expected)
    assert (tmp_path / "all" / "avi.npy").stat().st_mtime_ns == written["avi.npy"]


class _no_error:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_anticipation_shards_merge_into_an_lmdb_the_anticipation_reader_reads(tmp_path):
    """Two shards of three synthetic videos at window 3, stride 1, anchored at the end (RULSTM): each
    shard writes its LMDB, the merge command joins them, and the anticipation task's reader finds, for
    every 30 fps frame (key frame t + 1), the feature of the clip that ends on frame t."""
    from egolab.data.anticipation import LMDBFeatureReader, Segment
    from egolab.extract.merge import main as merge

    videos = tmp_path / "videos"
    videos.mkdir()
    for name, frames in (("a", 12), ("b", 9), ("c", 15)):
        write_video(videos / f"{name}.mkv", frames)
    settings = ["data=extract/anticipation", "data.plan.window=3", "data.plan.stride=1", "task.batch_size=4"]
    for shard in ("0/2", "1/2"):
        extract(videos, tmp_path / "out", tmp_path / f"run_{shard[0]}", *settings, f"data.shard={shard}")
    shards = sorted((tmp_path / "out").glob("shard_*_of_2.lmdb"))
    assert [p.name for p in shards] == ["shard_0_of_2.lmdb", "shard_1_of_2.lmdb"]
    assert merge([str(tmp_path / "merged.lmdb"), *map(str, shards)]) == 0

    reader = LMDBFeatureReader(tmp_path / "merged.lmdb", dims=192)
    for name, frames in (("a", 12), ("b", 9), ("c", 15)):
        per_frame = np.load(tmp_path / "out" / "frames" / f"{name}.npy")
        assert per_frame.shape == (frames, 192)
        read = reader(Segment("s", name, "P", 0.0, 1.0), np.arange(1, frames + 1))
        np.testing.assert_array_equal(np.asarray(read), per_frame)


def test_extracted_real_video_features_train_the_localization_task(tmp_path):
    """The three steps of the README: extract features of the real sample videos, put the data config
    lines extraction prints into the training settings, and run a localization step on them (a json
    written for those videos; fast_dev_run)."""
    import json

    from shared_data import SHARED_DATA, require_shared

    from egolab.train import run_from_overrides

    videos = tmp_path / "videos"
    videos.mkdir()
    sources = {"mp4": "mmaction2_tests_data_test.mp4", "avi": "mmaction2_tests_data_test.avi"}
    sources["ego"] = "lavila_ego4d_3c0dffd0_012_014.mp4"
    for name, source in sources.items():
        (videos / f"{name}{Path(source).suffix}").symlink_to(require_shared(SHARED_DATA / "videos" / source))
    extract(videos, tmp_path / "features", tmp_path / "extract", "data.plan.window=4", "data.plan.stride=2")
    lines = ClipPlan(None, 4, 2).data_config_lines(30.0)
    assert lines[1:] == ["data.dataset.feat_stride=2", "data.dataset.num_frames=4"]

    timing = {"mp4": (300, 30.0, "training"), "avi": (164, 25.0, "validation"), "ego": (60, 30.0, "testing")}
    database = {
        name: {
            "subset": subset,
            "duration": frames / fps,
            "fps": fps,
            "annotations": [
                {"label": "action", "label_id": 0, "segment": [0.2 * frames / fps, 0.6 * frames / fps]}
            ],
        }
        for name, (frames, fps, subset) in timing.items()
    }
    (tmp_path / "gt.json").write_text(json.dumps({"version": "test", "database": database}))
    for name, (frames, _, _) in timing.items():
        assert np.load(tmp_path / "features" / f"{name}.npy").shape == ((frames - 4) // 2 + 1, 192)

    overrides = ["task=localization", "model=actionformer/demo", "data=localization/demo", "logger=csv"]
    overrides += ["data.demo=null", f"data.dataset.json_file={tmp_path / 'gt.json'}", "data.batch_size=1"]
    overrides += [f"data.dataset.feat_folders={tmp_path / 'features'}", "data.dataset.default_fps=null"]
    overrides += [*lines[1:], "model.input_dim=192", "model.num_classes=1", "data.num_workers=0"]
    overrides += ["trainer.fast_dev_run=true", "trainer.accelerator=cpu"]
    metrics = run_from_overrides(overrides, tmp_path / "train")
    assert set(metrics) >= {"test/average_mAP"}


def test_backpack_features_are_read_by_the_backpack_feature_store(tmp_path):
    """Window 32 / stride 16 at 30 fps (Ego4D's SlowFast layout): ``<video_uid>.pt`` per video, which
    EgoPack's feature store converts and reads back unchanged."""
    from egolab.data.backpack import FeatureStore

    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "uid1.mkv", 80)
    extract(videos, tmp_path / "pt", tmp_path / "run", "data=extract/backpack")
    features = torch.load(tmp_path / "pt" / "uid1.pt", weights_only=True)
    assert features.shape == (1 + (80 - 32) // 16, 192) and features.dtype == torch.float32
    store = FeatureStore(tmp_path / "pt", tmp_path / "cache", feature_dim=192)
    assert store.prepare(["uid1"], "meta.csv") == {"uid1": len(features)}
    np.testing.assert_array_equal(store.get("uid1"), features.numpy())


def test_two_videos_with_one_name_are_refused(tmp_path):
    from egolab.errors import BadValue
    from egolab.extract.run import list_videos

    for name in ("a.mp4", "a.avi", "b.mkv", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(BadValue, match="a.avi and a.mp4 in .* would write the same output"):
        list_videos(tmp_path)
    (tmp_path / "a.avi").unlink()
    assert list(list_videos(tmp_path)) == ["a", "b"]


def test_a_frame_model_computes_each_shared_frame_once_with_the_same_features(tmp_path):
    """Overlapping clips (window 8, stride 2) through a timm frame model: the pipeline's features (each
    decoded frame through the model once) equal the model applied to each clip."""
    from egolab.data.skill import open_video, preprocess_frames
    from egolab.extract.backbones import FrameBackbone

    torch.manual_seed(0)
    backbone = FrameBackbone(
        "vit_tiny_patch16_224", pretrained=False, model_kwargs={"img_size": 32, "depth": 2}
    )
    backbone.eval()
    calls = []
    backbone.model.register_forward_hook(lambda module, args, out: calls.append(len(args[0])))
    video, plan = write_video(tmp_path / "v.mkv", 30), ClipPlan(None, 8, 2)

    def preprocess(frames):
        return preprocess_frames(frames, 32, 32, backbone.mean, backbone.std)

    features = video_features(video, plan, backbone, preprocess, 64, Tally())
    assert calls == [30], "30 frames, each through the model once"
    clips = plan.clips(30, 30.0)
    pixels = preprocess(open_video(video).get_batch(list(range(30))).asnumpy())[torch.from_numpy(clips)]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(features), backbone(pixels), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_a_killed_extraction_relaunched_ends_with_the_same_files_without_redoing_finished_videos(tmp_path):
    """launch.py extracting four videos, SIGKILLed once the first output exists; the same command again
    finishes the others, leaves the first one as it was, and the files equal an uninterrupted run's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[2]
    videos = tmp_path / "videos"
    videos.mkdir()
    for k in range(4):
        write_video(videos / f"v{k}.mkv", 120)
    settings = ["task=extract", "model=extract/tiny_random", "data=extract/localization", "task.batch_size=1"]
    settings += ["data.plan.window=2", "data.plan.stride=1", f"data.video_dir={videos}"]
    env = dict(os.environ, EGOLAB_OUTPUTS=str(tmp_path / "OUT"), OMP_NUM_THREADS="1", WANDB_MODE="offline")

    def command(out: str) -> list[str]:
        experiment = ["launch.py", "-c", "expts/extract/thumos_videomae.txt", "-l"]
        return [sys.executable, *experiment, *settings, f"data.out_dir={tmp_path / out}"]

    reference_env = dict(env, EGOLAB_OUTPUTS=str(tmp_path / "REF"))
    subprocess.run(command("reference"), cwd=root, env=reference_env, check=True, capture_output=True)
    proc = subprocess.Popen(command("killed"), cwd=root, env=env, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "killed" / "v0.npy").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    first = (tmp_path / "killed" / "v0.npy").stat().st_mtime_ns
    assert not (tmp_path / "killed" / "v3.npy").exists(), "killed before the end"
    subprocess.run(command("killed"), cwd=root, env=env, check=True, capture_output=True)
    assert (tmp_path / "killed" / "v0.npy").stat().st_mtime_ns == first
    for k in range(4):
        np.testing.assert_array_equal(
            np.load(tmp_path / "killed" / f"v{k}.npy"), np.load(tmp_path / "reference" / f"v{k}.npy")
        )
    assert not list((tmp_path / "killed").glob("*.tmp-*"))


def test_precision_auto_is_bf16_on_a_gpu_fp32_on_the_cpu_and_a_bad_value_is_refused():
    from egolab.errors import UserError
    from egolab.extract.run import autocast_dtype

    assert autocast_dtype(torch.device("cuda"), "auto") is torch.bfloat16
    assert autocast_dtype(torch.device("cpu"), "auto") is None
    assert autocast_dtype(torch.device("cpu"), "fp16") is torch.float16
    with pytest.raises(UserError, match="task.precision='half': one of auto, bf16, fp16, fp32"):
        autocast_dtype(torch.device("cpu"), "half")


def test_half_precision_features_are_stored_as_float32_close_to_full_precision(tmp_path):
    """The GPU path's autocast, run on the CPU: bf16 changes the features a little (so it is applied) and
    they are written as float32."""
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "v.mkv", 40)
    for precision in ("fp32", "bf16"):
        extract(videos, tmp_path / precision, tmp_path / f"run_{precision}", f"task.precision={precision}")
    full, half = np.load(tmp_path / "fp32" / "v.npy"), np.load(tmp_path / "bf16" / "v.npy")
    assert half.dtype == np.float32 and half.shape == full.shape
    assert not np.array_equal(half, full)
    np.testing.assert_allclose(half, full, rtol=0.05, atol=0.05 * np.abs(full).max())


def test_a_feature_folder_keeps_one_setting(tmp_path, caplog):
    """A rerun into the same data.out_dir with another clip plan or backbone is refused before any video is
    read (its finished videos would be skipped and two settings mixed); batch size and shard may change."""
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "v.mkv", 40)
    extract(videos, tmp_path / "out", tmp_path / "run_0")
    setting = json.loads((tmp_path / "out" / "extraction.json").read_text())
    assert setting["plan"]["window"] == 8 and setting["precision"] == "float32" and setting["seed"] == 0

    metrics = extract(videos, tmp_path / "out", tmp_path / "run_1", "task.batch_size=3", "data.shard=0/1")
    assert metrics["videos_skipped"] == 1
    changes = {"data.plan.window=4": "plan.window: 8 -> 4", "seed=1": "seed: 0 -> 1"}
    for attempt, (change, listed) in enumerate(changes.items(), start=2):
        caplog.clear()
        with pytest.raises(SystemExit) as refused:
            extract(videos, tmp_path / "out", tmp_path / f"run_{attempt}", change)
        assert refused.value.code == 1
        assert "holds features extracted with another setting" in caplog.text and listed in caplog.text
    assert json.loads((tmp_path / "out" / "extraction.json").read_text()) == setting
