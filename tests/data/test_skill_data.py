"""Skill data: official json -> jsonl, sampling indices, preprocessing against the HF processor, decord on
real clips, the multi-view dataset, bad-video errors naming file and take, the data module, the demo."""

import json
import re
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from shared_data import SHARED_DATA, require_shared

from egolab.data.demo_skill import make_demo_skill
from egolab.data.skill import (
    LABEL_NAMES,
    SkillDataModule,
    SkillDataset,
    VideoReadError,
    collate_skill,
    convert_official_records,
    eval_window_starts,
    main,
    open_video,
    prepare_annotation,
    preprocess_frames,
    read_annotation_jsonl,
    read_frames,
    sample_frame_indices,
    window_length,
)
from egolab.data.skill_annotations import read_release_jsonl

VIDEOS = SHARED_DATA / "videos"
DOCS = SHARED_DATA / "ego4d" / "egoexo4d_docs_annotations_proficiency_estimation.md"
EGOEXO4D = SHARED_DATA / "egoexo4d"
PAPER_POPULATION = EGOEXO4D / "skillformer_release" / "paper_eval_population_test.jsonl"
MEAN, STD = (0.45, 0.45, 0.45), (0.225, 0.225, 0.225)
SMALL_DEMO = {"num_takes": {"train": 8, "val": 8, "test": 8}, "num_views": 3, "num_frames": 40}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("skill_demo")
    make_demo_skill(root, **SMALL_DEMO)
    return root


def dataset(root: Path, split: str = "train", **kwargs) -> SkillDataset:
    args = dict(camera_indices=[0, 1], num_frames=4, frame_sample_rate=2, shortest_edge=32, crop_size=32)
    args["training"] = split == "train"
    return SkillDataset(root / "annotations" / f"skill_{split}.jsonl", root, **{**args, **kwargs})


# ------------------------------------------------------------------------------------------ annotations
def documented_record() -> dict:
    """The demonstrator sample record of the official docs (its trailing `...` removed)."""
    require_shared(DOCS)
    text = DOCS.read_text().split("## Demonstrator Annotations", 1)[1]
    block = re.search(r"```json\s*\[(.*?)\]\s*```", text, re.S).group(1)
    return json.loads(block.replace("...", "").strip().rstrip(","))


def test_prepare_annotation_converts_the_documented_record(tmp_path):
    record = documented_record()
    official = tmp_path / "proficiency_demonstrator_val.json"
    official.write_text(json.dumps({"ds": "test", "annotations": [record, {**record, "take_uid": "t2"}]}))
    assert main(["prepare_annotation", str(official), str(tmp_path / "out" / "val.jsonl")]) == 0
    lines = [json.loads(x) for x in (tmp_path / "out" / "val.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    assert lines[0] == {
        "take_uid": "000a19fe-776e-4c88-b0c3-2fad016a6025",
        "take_name": "uniandes_bouldering_028_7",
        "scenario_name": "Rock Climbing",
        "task_name": "LosAndes_V2_R1",
        "video_paths": [
            "takes/uniandes_bouldering_028_7/frame_aligned_videos/aria01_214-1.mp4",
            *(f"takes/uniandes_bouldering_028_7/frame_aligned_videos/cam0{i}.mp4" for i in range(1, 5)),
        ],
        "proficiency_level": "Early Expert",
        "label": 1,
    }
    takes = read_annotation_jsonl(tmp_path / "out" / "val.jsonl")
    assert [t.take_uid for t in takes] == [record["take_uid"], "t2"] and takes[0].label == 1
    # a plain list (the docs' form) works as well
    official.write_text(json.dumps([record]))
    assert prepare_annotation(official, tmp_path / "list.jsonl") == 1


def test_label_mapping_missing_views_and_errors():
    base = {
        "take_uid": "u",
        "scenario_name": "Cooking",
        "video_paths": {"exo2": "takes/k/frame_aligned_videos/gp02.mp4"},
    }
    levels = [convert_official_records([{**base, "proficiency_score": n}])[0]["label"] for n in LABEL_NAMES]
    assert levels == [0, 1, 2, 3]
    assert convert_official_records([{**base, "proficiency_score": "late expert"}])[0]["label"] == 3
    hidden = convert_official_records([base])[0]
    assert hidden["label"] is None and hidden["proficiency_level"] is None
    assert hidden["video_paths"] == [None, None, "takes/k/frame_aligned_videos/gp02.mp4", None, None]
    assert hidden["take_name"] == "k"
    with pytest.raises(ValueError, match=r"src.json: take u: unknown proficiency_score 'Master'"):
        convert_official_records([{**base, "proficiency_score": "Master"}], "src.json")
    with pytest.raises(ValueError, match="take u: duplicate take_uid"):
        convert_official_records([base, base])
    with pytest.raises(ValueError, match="unknown video_paths keys"):
        convert_official_records([{**base, "video_paths": {"exo5": "x"}}])


@pytest.mark.parametrize(
    ("split", "levels", "scenarios", "gopro"),
    [
        (
            "train",
            [336, 480, 512, 576],
            {
                "Rock Climbing": 620,
                "Basketball": 576,
                "Dance": 408,
                "Music": 149,
                "Cooking": 83,
                "Soccer": 68,
            },
            213,
        ),
        (
            "val",
            [29, 157, 155, 125],
            {"Rock Climbing": 162, "Dance": 124, "Basketball": 105, "Music": 39, "Cooking": 20, "Soccer": 16},
            59,
        ),
    ],
)
def test_prepare_annotation_on_the_official_files(tmp_path, split, levels, scenarios, gopro):
    """The real proficiency_demonstrator_{train,val}.json (ds 20231211): 1904 / 466 takes, every record kept
    with its level, scenario and five views in ego, exo1..exo4 order (cam0N or, for some takes, gp0N)."""
    official = require_shared(EGOEXO4D / f"proficiency_demonstrator_{split}.json")
    records = json.loads(official.read_text())["annotations"]
    out = tmp_path / f"skill_{split}.jsonl"
    assert prepare_annotation(official, out) == len(records) == {"train": 1904, "val": 466}[split]
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["take_uid"] for x in lines] == [r["take_uid"] for r in records]
    assert [sum(x["label"] == k for x in lines) for k in range(4)] == levels
    assert [sum(r["proficiency_score"] == name for r in records) for name in LABEL_NAMES] == levels
    assert {name: sum(x["scenario_name"] == name for x in lines) for name in scenarios} == scenarios
    for line, rec in zip(lines, records):
        views = rec["video_paths"]
        assert line["video_paths"] == [views[k] for k in ("ego", "exo1", "exo2", "exo3", "exo4")]
        assert line["take_name"] == views["ego"].split("/")[1]
        assert line["proficiency_level"] == rec["proficiency_score"]
    assert sum(x["video_paths"][1].endswith("/gp01.mp4") for x in lines) == gopro
    takes = read_annotation_jsonl(out)
    assert len({t.take_name for t in takes}) == len(records)  # take folders are unique per split


def test_read_release_jsonl_keeps_repeats_and_names_bad_rows(tmp_path):
    path = tmp_path / "release.jsonl"
    row = {
        "video_paths": ["takes/a_dance_1/frame_aligned_videos/cam01.mp4"],
        "analysis": "",
        "proficiency_level": "Novice",
    }
    path.write_text(json.dumps(row) + "\n\n" + json.dumps({**row, "proficiency_level": "late expert"}) + "\n")
    rows = read_release_jsonl(path)
    assert [(r.line, r.take_name, r.label) for r in rows] == [(1, "a_dance_1", 0), (3, "a_dance_1", 3)]
    assert rows[0].first_path == row["video_paths"][0]
    for bad, message in [
        ("{", rf"{path}:1: not valid json"),
        (
            json.dumps({**row, "proficiency_level": "Master"}),
            rf"{path}:1: take a_dance_1: unknown proficiency_score",
        ),
        (
            json.dumps({**row, "proficiency_level": None}),
            rf"{path}:1: take a_dance_1 has no proficiency_level",
        ),
        (
            json.dumps({**row, "video_paths": ["a/b.mp4"]}),
            rf"{path}:1: video path 'a/b.mp4' is not takes/<take>",
        ),
        (json.dumps({**row, "video_paths": []}), rf"{path}:1: expected 'video_paths'"),
        ("", rf"{path}: no rows"),
    ]:
        path.write_text(bad + "\n")
        with pytest.raises(ValueError, match=message):
            read_release_jsonl(path)
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        read_release_jsonl(tmp_path / "missing.jsonl")


def test_read_release_jsonl_on_the_paper_population():
    """The paper's evaluation file: 590 rows (291 + 299), 319 distinct official-val takes, 271 listed twice,
    every row's level that of its take in the official val json."""
    rows = read_release_jsonl(require_shared(PAPER_POPULATION))
    assert len(rows) == 590 and [r.line for r in rows] == list(range(1, 591))
    names = [r.take_name for r in rows]
    assert len(set(names)) == 319
    assert sum(names.count(n) == 2 for n in set(names)) == 271
    official = json.loads(require_shared(EGOEXO4D / "proficiency_demonstrator_val.json").read_text())
    level = {r["video_paths"]["ego"].split("/")[1]: r["proficiency_score"] for r in official["annotations"]}
    assert all(LABEL_NAMES[r.label] == level[r.take_name] for r in rows)
    assert [sum(r.label == k for r in rows) for k in range(4)] == [29, 159, 182, 220]


# ------------------------------------------------------------------------------------------ sampling
def test_sampling_indices_hand_computed():
    # linspace(0, 32, 8) = 0, 4.57, 9.14, 13.71, 18.29, 22.86, 27.43, 32 -> truncated, last clipped to 31
    assert sample_frame_indices(0, 8, 32).tolist() == [0, 4, 9, 13, 18, 22, 27, 31]
    assert sample_frame_indices(10, 8, 32).tolist() == [10, 14, 19, 23, 28, 32, 37, 41]
    assert sample_frame_indices(0, 4, 4).tolist() == [0, 1, 2, 3]
    assert window_length(8, 4, 300) == 32 and window_length(8, 4, 20) == 20
    assert eval_window_starts(100, 32, 1) == [34]
    assert eval_window_starts(100, 32, 3) == [0, 34, 68]
    assert eval_window_starts(20, 20, 1) == [0]


# ------------------------------------------------------------------------------------------ decoding
def test_decord_reads_the_real_clips_like_pyav():
    for name, count in [("mmaction2_tests_data_test.mp4", 300), ("lavila_ego4d_3c0dffd0_012_014.mp4", 60)]:
        path = VIDEOS / name
        require_shared(path)
        reader = open_video(path, "t")
        assert len(reader) == count
        frames = read_frames(path, [0, 7, count - 1], "t", reader)
        with av.open(str(path)) as container:
            reference = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        assert frames.shape == (3, *reference[0].shape) and frames.dtype == np.uint8
        for got, index in zip(frames, [0, 7, count - 1]):
            assert np.abs(got.astype(int) - reference[index].astype(int)).mean() < 2.0
    avi = read_frames(require_shared(VIDEOS / "mmaction2_tests_data_test.avi"), [0, 5], "t")
    assert avi.shape == (2, 240, 320, 3)


def test_preprocessing_matches_the_checkpoint_processor():
    from transformers import VideoMAEImageProcessor

    clip = require_shared(VIDEOS / "lavila_ego4d_3c0dffd0_012_014.mp4")  # 384 x 288
    frames = read_frames(clip, [0, 20, 40], "t")
    processor = VideoMAEImageProcessor(
        size={"shortest_edge": 224},
        crop_size={"height": 224, "width": 224},
        resample=2,
        image_mean=list(MEAN),
        image_std=list(STD),
    )
    expected = processor(list(frames), return_tensors="pt")["pixel_values"][0]
    got = preprocess_frames(frames, 224, 224, MEAN, STD)
    assert got.shape == expected.shape == (3, 3, 224, 224)
    assert (got - expected).abs().max() < 0.02  # within one grey level (PIL vs torch antialiasing)


def grey_levels_to_hf(frames: np.ndarray, shortest_edge: int, crop: int) -> dict[str, float]:
    """max |preprocess_frames - HF| in grey levels (0-255) against both backends of the VideoMAE processor;
    also checks the output's shape, dtype and layout."""
    from transformers import VideoMAEImageProcessor, VideoMAEImageProcessorPil

    options = dict(
        size={"shortest_edge": shortest_edge},
        crop_size={"height": crop, "width": crop},
        resample=2,
        image_mean=list(MEAN),
        image_std=list(STD),
    )
    got = preprocess_frames(frames, shortest_edge, crop, MEAN, STD)
    assert got.shape == (len(frames), 3, crop, crop) and got.dtype == torch.float32 and got.is_contiguous()
    levels = {}
    for name, processor in (
        ("torchvision", VideoMAEImageProcessor(**options)),
        ("PIL", VideoMAEImageProcessorPil(**options)),
    ):
        expected = processor(list(frames), return_tensors="pt")["pixel_values"][0]
        levels[name] = float(((got - expected).abs() * torch.tensor(STD).view(1, 3, 1, 1) * 255).max())
    return levels


@pytest.mark.parametrize(("height", "width"), [(90, 160), (160, 90), (40, 50)])
def test_uint8_resize_matches_the_hf_processor_on_sharp_edges(height, width):
    """Checkerboard, one-pixel stripes, a step, a ramp and noise, shrunk (landscape, portrait) and enlarged:
    the same as the processor's torchvision backend (uint8 resize), within one grey level of PIL's."""
    y, x = np.mgrid[:height, :width]
    frames = np.zeros((3, height, width, 3), np.uint8)
    frames[0] = np.where((x // 3 + y // 3) % 2, 255, 0)[..., None]
    frames[1, ..., 0] = np.where(x % 2, 255, 0)
    frames[1, ..., 1] = np.where(x > width // 2, 255, 0)
    frames[1, ..., 2] = x * 255 // (width - 1)
    frames[2] = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    levels = grey_levels_to_hf(frames, 64, 56)
    assert levels["torchvision"] < 0.01 and levels["PIL"] <= 1.001, levels
    out = torch.full((3, 3, 56, 56), float("nan"))
    assert preprocess_frames(frames, 64, 56, MEAN, STD, out=out) is out
    torch.testing.assert_close(out, preprocess_frames(frames, 64, 56, MEAN, STD), rtol=0, atol=0)


@pytest.mark.parametrize(
    "name",
    [
        "lavila_ego4d_3c0dffd0_012_014.mp4",
        "mmaction2_tests_data_test.mp4",
        "bikes.mp4",
        "carphone_distorted.mp4",
    ],
)
def test_uint8_resize_matches_the_hf_processor_on_real_clips(name):
    """8 frames of each real clip at 224, shrunk (or enlarged: the 176x144 one) as the model sees them."""
    path = require_shared(VIDEOS / name)
    reader = open_video(path, "t")
    frames = read_frames(path, np.linspace(0, len(reader) - 1, 8).astype(int).tolist(), "t", reader)
    levels = grey_levels_to_hf(frames, 224, 224)
    assert levels["torchvision"] < 0.01 and levels["PIL"] <= 1.001, levels


# ------------------------------------------------------------------------------------------ dataset
def test_dataset_items_select_the_configured_views(demo):
    train = dataset(demo, camera_indices=[2, 0])
    item = train[0]
    assert item["pixel_values"].shape == (2, 4, 3, 32, 32)
    assert item["label"] in range(4) and item["scenario"] in ("Basketball", "Rock Climbing")
    evaluation = dataset(demo, "val", camera_indices=[2, 0], num_clips=2)
    take = evaluation.takes[0]
    pixels = evaluation[0]["pixel_values"]
    assert pixels.shape == (2, 2, 4, 3, 32, 32)
    # clip 1 of view 0 is camera index 2 (cam02) at the last of 2 evenly spread windows of 8 frames
    path = demo / take.video_paths[2].replace("frame_aligned_videos/", "frame_aligned_videos/downscaled/448/")
    assert path.name == "cam02.mp4"
    indices = sample_frame_indices(eval_window_starts(40, 8, 2)[1], 4, 8)
    assert indices.tolist() == [32, 34, 37, 39]  # linspace(32, 40, 4) = 32, 34.7, 37.3, 40 -> 39
    expected = preprocess_frames(read_frames(path, indices, "t"), 32, 32, MEAN, STD)
    torch.testing.assert_close(pixels[1, 0], expected)
    # clip 0 of view 1 is camera index 0 (the ego view) at the first window
    ego = demo / take.video_paths[0].replace("frame_aligned_videos/", "frame_aligned_videos/downscaled/448/")
    ego_frames = read_frames(ego, sample_frame_indices(0, 4, 8), "t")
    torch.testing.assert_close(pixels[0, 1], preprocess_frames(ego_frames, 32, 32, MEAN, STD))
    assert pixels.dtype == torch.float32 and pixels.is_contiguous()
    assert torch.equal(evaluation[0]["pixel_values"], pixels)  # evaluation is deterministic


def test_training_windows_are_random_and_per_view(demo):
    train = dataset(demo, camera_indices=[0, 1])
    torch.manual_seed(0)
    draws = [train._starts([40, 40]) for _ in range(50)]
    assert all(0 <= s[0][0] <= 32 and 0 <= s[1][0] <= 32 for s in draws)
    assert any(s[0] != s[1] for s in draws) and len({s[0][0] for s in draws}) > 5
    shared = dataset(demo, independent_view_windows=False)
    assert all(s[0] == s[1] for s in (shared._starts([40, 44]) for _ in range(20)))


def test_missing_and_corrupt_videos_name_the_file_and_the_take(demo, tmp_path):
    root = tmp_path / "copy"
    import shutil

    shutil.copytree(demo, root)
    takes = read_annotation_jsonl(root / "annotations" / "skill_train.jsonl")
    folder = "frame_aligned_videos/downscaled/448"
    missing = root / "takes" / takes[1].take_name / folder / "cam01.mp4"
    missing.unlink()
    corrupt = root / "takes" / takes[2].take_name / folder / "aria01_214-1.mp4"
    corrupt.write_bytes(b"not a video" * 50)

    with pytest.raises(
        VideoReadError, match=rf"take {takes[1].take_uid} \({takes[1].take_name}\): missing video {missing}"
    ):
        dataset(root)
    data = dataset(
        root, camera_indices=[0], training=False
    )  # cam01 not needed: only the corrupt ego video fails, when read
    index = data.take_uids.index(takes[2].take_uid)
    with pytest.raises(
        VideoReadError,
        match=rf"take {takes[2].take_uid} \({takes[2].take_name}\): unreadable video {corrupt}",
    ):
        data[index]
    assert data[index - 1]["take_uid"] == takes[1].take_uid

    skipping = dataset(root, bad_videos="skip", training=False)
    assert skipping.skipped == [takes[1].take_uid] and len(skipping) == len(takes) - 1
    items = [skipping[i] for i in range(len(skipping))]  # evaluation items: (1, V, T, C, H, W)
    assert sum(item is None for item in items) == 1  # the corrupt take, never another take's video
    batch = collate_skill(items)
    assert takes[2].take_uid not in batch["take_uids"] and len(batch["take_uids"]) == len(takes) - 2
    assert collate_skill([None, None]) is None


def test_data_module_batches(demo):
    module = SkillDataModule(
        root=demo,
        dataset=lambda **kw: SkillDataset(
            **kw, camera_indices=[0, 1, 2], num_frames=4, shortest_edge=32, crop_size=32
        ),
        train_file="annotations/skill_train.jsonl",
        val_file="annotations/skill_val.jsonl",
        test_file="annotations/skill_val.jsonl",
        batch_size=4,
        eval_batch_size=3,
    )
    module.setup("fit")
    module.setup("test")
    assert module.val_dataset is module.test_dataset
    batch = next(iter(module.train_dataloader()))
    assert batch["pixel_values"].shape == (4, 3, 4, 3, 32, 32) and batch["labels"].dtype == torch.int64
    assert len(module.train_dataloader()) == 2
    val = next(iter(module.val_dataloader()))
    assert val["pixel_values"].shape == (3, 1, 3, 4, 3, 32, 32) and len(val["take_uids"]) == 3


def test_demo_is_deterministic_balanced_and_in_the_official_layout(demo, tmp_path):
    again = tmp_path / "again"
    make_demo_skill(again, **SMALL_DEMO)
    for split in ("train", "val", "test"):
        name = f"annotations/skill_{split}.jsonl"
        assert (again / name).read_text() == (demo / name).read_text()
        official = json.loads((demo / f"annotations/proficiency_demonstrator_{split}.json").read_text())
        assert set(official["annotations"][0]["video_paths"]) == {"ego", "exo1", "exo2"}
        labels = [t.label for t in read_annotation_jsonl(demo / name)]
        assert sorted(labels) == sorted([0, 1, 2, 3] * 2)
    take = read_annotation_jsonl(demo / "annotations/skill_test.jsonl")[0]
    video = f"takes/{take.take_name}/frame_aligned_videos/downscaled/448/cam01.mp4"
    assert (again / video).read_bytes() == (demo / video).read_bytes()
    assert len(open_video(demo / video, "t")) == 40
    mtime = (demo / "demo_params.json").stat().st_mtime_ns
    make_demo_skill(demo, **SMALL_DEMO)  # already there: not regenerated
    assert (demo / "demo_params.json").stat().st_mtime_ns == mtime


def test_demo_speed_grows_with_the_level(demo):
    """The planted signal: frame-to-frame change grows with the proficiency level."""
    data = dataset(demo, "train", num_frames=8, frame_sample_rate=1, camera_indices=[0], training=False)
    energy = {}
    for i in range(len(data)):
        item = data[i]
        x = item["pixel_values"][0, 0]
        energy.setdefault(item["label"], []).append((x[1:] - x[:-1]).abs().mean().item())
    means = [np.mean(energy[k]) for k in range(4)]
    assert means == sorted(means), means
