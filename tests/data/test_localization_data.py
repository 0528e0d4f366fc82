"""Localization data: json validation, seconds -> grid, crop, collate, data module, real THUMOS json, demo."""

import functools
import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from shared_data import SHARED_DATA, require_shared

import egolab.data.localization as loc
from egolab.data.demo_localization import DEMO_DEFAULTS, make_demo_localization
from egolab.data.localization import (
    ActivityNetFeatureDataset,
    LocalizationCollate,
    LocalizationDataModule,
    collate_localization,
    truncate_feats,
)

THUMOS_JSON = SHARED_DATA / "thumos14" / "thumos14_actionformer.json"
THUMOS_CFG = {"feat_stride": 4, "num_frames": 16, "num_classes": 20, "max_seq_len": 2304}


def write_data(
    root: Path, database: dict, steps: dict[str, int], dim: int = 3, folder: str = "feats"
) -> Path:
    """An ActivityNet-style json plus ramp features (value = step index) for the videos in ``steps``."""
    (root / folder).mkdir(parents=True, exist_ok=True)
    for vid, t in steps.items():
        np.save(root / folder / f"{vid}.npy", np.repeat(np.arange(t, dtype=np.float32)[:, None], dim, 1))
    path = root / "anno.json"
    path.write_text(json.dumps({"version": "test", "database": database}))
    return path


def ann(label: str, start: float, end: float, label_id: int) -> dict:
    return {
        "label": label,
        "segment": [start, end],
        "segment(frames)": [start * 30, end * 30],
        "label_id": label_id,
    }


def video(subset: str = "training", duration: float = 10.0, fps: float | None = 30.0, anns=()) -> dict:
    entry = {"subset": subset, "duration": duration, "annotations": list(anns)}
    if fps is not None:
        entry["fps"] = fps
    return entry


@pytest.fixture
def simple(tmp_path) -> Path:
    database = {
        "v1": video("Training", anns=[ann("jump", 2.0, 4.0, 1), ann("run", 0.5, 1.0, 0)]),
        "v2": video("training", anns=[ann("run", 6.0, 9.0, 0)]),
        "v3": video("validation", anns=[ann("jump", 1.0, 3.0, 1)]),
    }
    return write_data(tmp_path, database, {"v1": 75, "v2": 75, "v3": 75})


def dataset(json_file: Path, split=("training",), **kwargs) -> ActivityNetFeatureDataset:
    args = {"feat_stride": 4, "num_frames": 16, "max_seq_len": 128, **kwargs}
    return ActivityNetFeatureDataset(json_file, json_file.parent / "feats", list(split), **args)


# ---------------------------------------------------------------------------------------------- items


def test_seconds_to_grid_hand_example(simple):
    ds = dataset(simple)
    assert ds.video_ids == ["v1", "v2"]  # subset compared lower-cased
    assert ds.label_names == ["run", "jump"] and ds.num_classes == 2
    item = ds[0]
    # offset = 0.5 * 16 / 4 = 2; grid = t * 30 / 4 - 2
    torch.testing.assert_close(item["segments"], torch.tensor([[13.0, 28.0], [1.75, 5.5]]))
    assert item["labels"].tolist() == [1, 0] and item["labels"].dtype == torch.int64
    assert item["feats"].shape == (3, 75) and item["feats"].dtype == torch.float32
    assert item["feats"][0, 7] == 7  # (C, T): transposed from the file's (T, C)
    assert (item["fps"], item["duration"], item["feat_stride"], item["feat_num_frames"]) == (
        30.0,
        10.0,
        4,
        16,
    )


def test_downsample_rate(simple):
    item = dataset(simple, downsample_rate=2)[0]
    assert item["feats"].shape == (3, 38)
    assert item["feats"][0, :3].tolist() == [0, 2, 4]
    # stride 8, offset 0.5 * 16 / 8 = 1; 2 s -> 2 * 30 / 8 - 1 = 6.5
    torch.testing.assert_close(item["segments"][0], torch.tensor([6.5, 14.0]))
    assert item["feat_stride"] == 8


def test_force_upsampling(tmp_path):
    path = write_data(tmp_path, {"a": video(fps=15, anns=[ann("x", 2.0, 4.0, 0)])}, {"a": 10})
    item = dataset(path, feat_stride=16, num_frames=16, max_seq_len=20, force_upsampling=True)[0]
    # feat_stride = ((10 - 1) * 16 + 16) / 20 = 8, num_frames = 8 -> offset 0.5
    assert item["feat_stride"] == 8 and item["feat_num_frames"] == 8
    torch.testing.assert_close(item["segments"][0], torch.tensor([2 * 15 / 8 - 0.5, 4 * 15 / 8 - 0.5]))
    # linear resize, align_corners=False: output i samples input position i / 2 - 0.25 (clamped)
    expected = np.clip(np.arange(20) / 2 - 0.25, 0, 9)
    np.testing.assert_allclose(item["feats"][0].numpy(), expected, atol=1e-6)


def test_two_streams_concatenated_and_input_dim(tmp_path):
    database = {"a": video(anns=[ann("x", 1.0, 2.0, 0)])}
    write_data(tmp_path, database, {"a": 8}, dim=2, folder="s")
    path = write_data(tmp_path, database, {"a": 9}, dim=3, folder="o")
    ds = ActivityNetFeatureDataset(path, [tmp_path / "s", tmp_path / "o"], ["training"], input_dim=[2, 3])
    assert ds[0]["feats"].shape == (5, 8)  # truncated to the shorter stream
    ds = ActivityNetFeatureDataset(path, [tmp_path / "s", tmp_path / "o"], ["training"], input_dim=5)
    assert ds[0]["feats"].shape == (5, 8)
    with pytest.raises(ValueError, match=r"s/a\.npy.*expected feature dim \[2, 4\], got \[2, 3\]"):
        ActivityNetFeatureDataset(path, [tmp_path / "s", tmp_path / "o"], ["training"], input_dim=[2, 4])


def test_input_dim_mismatch_names_file(simple):
    assert (
        dataset(simple, input_dim=[1, 2])[0]["feats"].shape[0] == 3
    )  # per-stream dims of one concatenated file
    with pytest.raises(ValueError, match=r"feats/v1\.npy: expected feature dim 4, got \[3\]"):
        dataset(simple, input_dim=4)  # checked at start-up, on the first video


def test_default_fps_and_missing_fps(tmp_path):
    path = write_data(tmp_path, {"a": video(fps=None, anns=[ann("x", 2.0, 4.0, 0)])}, {"a": 10})
    with pytest.raises(ValueError, match=r"anno\.json: video 'a' has no valid 'fps'"):
        dataset(path)
    item = dataset(path, default_fps=15)[0]
    assert item["fps"] == 15 and item["segments"][0, 0] == pytest.approx(2 * 15 / 4 - 2)


def test_missing_duration_uses_release_default(tmp_path):
    entry = video(anns=[ann("x", 2.0, 400.0, 0)])
    del entry["duration"]
    path = write_data(tmp_path, {"a": entry}, {"a": 10})
    assert dataset(path)[0]["duration"] == 1e8


# ---------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"label": "x", "segment": [1.0], "label_id": 0}, r"'segment' must be 2 finite numbers"),
        ({"label": "x", "segment": [1.0, "2"], "label_id": 0}, r"'segment' must be 2 finite numbers"),
        ({"label": "x", "segment": [3.0, 2.0], "label_id": 0}, r"segment end 2.0 < start 3.0"),
        ({"label": "x", "segment": [1.0, 2.0], "label_id": 1}, r"label_id inconsistent"),
        ({"label": "y", "segment": [1.0, 2.0], "label_id": 0}, r"label_id inconsistent"),
        ({"label": "x", "segment": [1.0, 2.0], "label_id": -1}, r"non-negative integer"),
        ({"segment": [1.0, 2.0], "label_id": 0}, r"missing or non-text label"),
    ],
)
def test_invalid_annotation_names_file_video_index(tmp_path, bad, message):
    database = {"good": video(anns=[ann("x", 1.0, 2.0, 0)]), "vid7": video(anns=[ann("x", 1.0, 2.0, 0), bad])}
    path = write_data(tmp_path, database, {"good": 10, "vid7": 10})
    with pytest.raises(ValueError, match=r"anno\.json: video 'vid7', annotation 1: .*" + message):
        dataset(path)


def test_unknown_label_and_label_id_against_label_names(tmp_path):
    path = write_data(tmp_path, {"a": video(anns=[ann("x", 1.0, 2.0, 0), ann("z", 1.0, 2.0, 1)])}, {"a": 10})
    with pytest.raises(ValueError, match=r"video 'a', annotation 1: unknown label 'z'"):
        dataset(path, label_names=["x", "y"])
    with pytest.raises(ValueError, match=r"video 'a', annotation 1: label_id 1 of 'z' disagrees .* index 2"):
        dataset(path, label_names=["x", "w", "z"])
    ds = dataset(path, label_names=["x", "z", "w"], num_classes=3)
    assert ds[0]["labels"].tolist() == [0, 1] and ds.empty_label_ids == [2]
    with pytest.raises(ValueError, match=r"3 names but num_classes=4"):
        dataset(path, label_names=["x", "z", "w"], num_classes=4)


def test_num_classes_checked(simple):
    with pytest.raises(ValueError, match=r"anno\.json: labels use class ids up to 1 but num_classes=0"):
        dataset(simple, num_classes=0)
    ds = dataset(simple, num_classes=4)
    assert ds.label_names == ["run", "jump", "class_2", "class_3"] and ds.empty_label_ids == [2, 3]
    agnostic = dataset(simple, num_classes=1)  # class-agnostic proposals (ANet recipe)
    assert agnostic[0]["labels"].tolist() == [0, 0]
    assert agnostic.ground_truth()[0]["labels"].tolist() == [1, 0]


def test_bounds_clip_keep_drop_error(tmp_path):
    anns = [ann("x", -0.05, 1.0, 0), ann("x", 9.0, 10.08, 0), ann("x", 12.0, 13.0, 0)]
    path = write_data(tmp_path, {"a": video(duration=10.0, anns=anns)}, {"a": 10})
    kept = dataset(path).ground_truth()[0]["segments"]
    np.testing.assert_allclose(kept, [[0.0, 1.0], [9.0, 10.0], [12.0, 13.0]])  # tiny overshoots clipped
    dropped = dataset(path, out_of_bounds="drop").ground_truth()[0]["segments"]
    np.testing.assert_allclose(dropped, [[0.0, 1.0], [9.0, 10.0]])
    with pytest.raises(
        ValueError, match=r"anno\.json: video 'a', annotation 2: segment \[12.0, 13.0\] outside"
    ):
        dataset(path, out_of_bounds="error")


def test_remove_duplicates(tmp_path):
    anns = [ann("x", 1.0, 2.0, 0), ann("x", 1.0005, 2.0, 0), ann("y", 1.0, 2.0, 1), ann("x", 3.0, 3.0005, 0)]
    path = write_data(tmp_path, {"a": video(anns=anns)}, {"a": 10})
    assert len(dataset(path).ground_truth()[0]["labels"]) == 4
    gt = dataset(path, remove_duplicates=True).ground_truth()[0]
    np.testing.assert_allclose(gt["segments"], [[1.0, 2.0], [1.0, 2.0]])
    assert gt["labels"].tolist() == [0, 1]


def test_missing_features_error_and_skip(tmp_path, caplog):
    database = {f"v{i}": video(anns=[ann("x", 1.0, 2.0, 0)]) for i in range(8)}
    path = write_data(tmp_path, database, {"v0": 10, "v5": 10})
    with pytest.raises(FileNotFoundError, match=r"6 of 8 videos .* no feature file, e.g. .*v1\.npy"):
        dataset(path)
    with caplog.at_level(logging.WARNING, logger="egolab.data.localization"):
        ds = dataset(path, missing_features="skip")
    assert ds.video_ids == ["v0", "v5"] and ds.skipped == ["v1", "v2", "v3", "v4", "v6", "v7"]
    assert "skipped 6 of 8 videos" in caplog.text and "v1, v2, v3, v4, v6" in caplog.text


def test_no_video_in_split(simple):
    with pytest.raises(ValueError, match=r"no usable videos in split \['test'\]"):
        dataset(simple, split=["test"])


# ---------------------------------------------------------------------------------------------- crop


def crop_item(segments, labels=None, length=10) -> dict:
    segments = torch.tensor(segments, dtype=torch.float32).reshape(-1, 2)
    labels = torch.arange(len(segments)) if labels is None else torch.tensor(labels)
    return {
        "video_id": "v",
        "feats": torch.arange(length, dtype=torch.float32)[None],
        "segments": segments,
        "labels": labels,
    }


def fixed_draws(monkeypatch, *values):
    draws = iter(values)
    calls = []

    def fake(generator, low, high):
        calls.append((low, high))
        return next(draws)

    monkeypatch.setattr(loc, "_randint", fake)
    return calls


def test_truncate_hand_example(monkeypatch):
    calls = fixed_draws(monkeypatch, 3)
    item = crop_item([[1, 4], [5, 11], [0, 2], [8, 12]])
    out = truncate_feats(item, max_seq_len=6, trunc_thresh=0.5, offset=0.5)
    # window [3, 9], segments clipped to [2.5, 9.5]: kept ratios 1.5/3 = 0.5 and 4.5/6; dropped 0 and 1.5/4
    assert calls == [(0, 4)]
    assert out["feats"].tolist() == [[3, 4, 5, 6, 7, 8]]
    torch.testing.assert_close(out["segments"], torch.tensor([[-0.5, 1.0], [2.0, 6.5]]))
    assert out["labels"].tolist() == [0, 1]
    assert item["feats"].shape == (1, 10)  # input untouched


def test_truncate_retries_until_an_action_survives(monkeypatch):
    calls = fixed_draws(monkeypatch, 0, 0, 4)
    out = truncate_feats(crop_item([[8, 10]]), max_seq_len=6, trunc_thresh=0.5, offset=0.0)
    assert len(calls) == 3 and out["feats"][0, 0] == 4
    torch.testing.assert_close(out["segments"], torch.tensor([[4.0, 6.0]]))


def test_truncate_crop_ratio_for_short_items(monkeypatch):
    calls = fixed_draws(monkeypatch, 8, 1)
    out = truncate_feats(
        crop_item([[2, 5]]), max_seq_len=100, trunc_thresh=0.5, offset=0.0, crop_ratio=(0.8, 0.9)
    )
    assert calls == [(8, 9), (0, 2)]  # window length in [round(0.8 * 10), round(0.9 * 10)]
    assert out["feats"].tolist() == [[1, 2, 3, 4, 5, 6, 7, 8]]
    torch.testing.assert_close(out["segments"], torch.tensor([[1.0, 4.0]]))
    unchanged = truncate_feats(crop_item([[2, 5]]), max_seq_len=100, trunc_thresh=0.5, offset=0.0)
    assert unchanged["feats"].shape == (1, 10)


def test_truncate_deterministic_with_generator():
    item = crop_item([[i, i + 3] for i in range(0, 90, 10)], length=100)

    def run(seed, gen_type):
        gen = torch.Generator().manual_seed(seed) if gen_type == "torch" else np.random.default_rng(seed)
        return [truncate_feats(item, 20, 0.5, 0.0, (0.9, 1.0), gen)["feats"][0, 0].item() for _ in range(10)]

    for kind in ("torch", "numpy"):
        assert run(1, kind) == run(1, kind)
        assert run(1, kind) != run(2, kind)


def test_training_items_cropped_and_reproducible(tmp_path):
    database = {"long": video(duration=100.0, anns=[ann("x", t, t + 2.0, 0) for t in range(5, 95, 10)])}
    path = write_data(tmp_path, database, {"long": 750})

    def starts(seed):
        ds = dataset(path, training=True, max_seq_len=128, seed=seed)
        items = [ds[0] for _ in range(6)]
        assert all(it["feats"].shape == (3, 128) and len(it["labels"]) for it in items)
        return [it["feats"][0, 0].item() for it in items]

    assert starts(3) == starts(3) and len(set(starts(3))) > 1 and starts(3) != starts(4)
    assert dataset(path, max_seq_len=128)[0]["feats"].shape == (3, 750)  # evaluation: never cropped


def test_training_drops_actions_beyond_features(tmp_path):
    # 10 steps -> map ends at 10 + offset 2 = 12; grid of [2, 3] s is [13, 20.5] -> dropped; [1, 1.6] kept
    anns = [ann("x", 1.0, 1.6, 0), ann("x", 2.0, 3.0, 0)]
    path = write_data(tmp_path, {"a": video(anns=anns)}, {"a": 10})
    item = dataset(path, training=True)[0]
    torch.testing.assert_close(item["segments"], torch.tensor([[5.5, 10.0]]))
    assert len(dataset(path)[0]["labels"]) == 2


# ---------------------------------------------------------------------------------------------- collate


def item_of(length: int, n_seg: int = 1, vid: str = "v") -> dict:
    return {
        "video_id": vid,
        "feats": torch.ones(4, length),
        "segments": torch.zeros(n_seg, 2),
        "labels": torch.zeros(n_seg, dtype=torch.int64),
        "fps": 30.0,
        "duration": 5.0,
        "feat_stride": 4,
        "feat_num_frames": 16,
    }


def test_collate_training_pads_to_max_seq_len():
    batch = collate_localization([item_of(10), item_of(7, 0, "w")], max_seq_len=16, training=True)
    assert batch["feats"].shape == (2, 4, 16) and batch["masks"].dtype == torch.bool
    assert batch["masks"].sum(1).tolist() == [10, 7]
    assert batch["feats"][1, :, 7:].abs().sum() == 0 and batch["feats"][1, :, :7].min() == 1
    assert batch["segments"][1].shape == (0, 2) and batch["labels"][1].dtype == torch.int64
    assert batch["video_ids"] == ["v", "w"]
    assert batch["fps"].dtype == torch.float64 and batch["feat_stride"].tolist() == [4.0, 4.0]
    with pytest.raises(ValueError, match=r"'long' has 17 steps > max_seq_len=16"):
        collate_localization([item_of(17, vid="long")], max_seq_len=16, training=True)


def test_collate_inference_padding():
    assert collate_localization([item_of(10)], 16, 8)["feats"].shape == (1, 4, 16)
    batch = collate_localization([item_of(70), item_of(30)], max_seq_len=64, max_div_factor=32)
    assert batch["feats"].shape == (2, 4, 96) and batch["masks"].sum(1).tolist() == [70, 30]


def test_collate_class_is_picklable():
    collate = pickle.loads(pickle.dumps(LocalizationCollate(16, 4, training=True)))
    assert collate([item_of(3)])["feats"].shape == (1, 4, 16)


# ---------------------------------------------------------------------------------------------- data module


def test_data_module_with_partial_and_demo(tmp_path):
    calls = []

    def demo():
        calls.append(1)
        return make_demo_localization(tmp_path, num_videos={"training": 6, "validation": 3}, feat_dim=8)

    partial = functools.partial(
        ActivityNetFeatureDataset,
        json_file=tmp_path / "annotations" / "demo.json",
        feat_folders=tmp_path / "features",
        feat_stride=4,
        num_frames=16,
        max_seq_len=256,
        crop_ratio=[0.9, 1.0],
    )
    dm = LocalizationDataModule(
        dataset=partial,
        train_split=["training"],
        val_split=["validation"],
        test_split=["validation"],
        demo=demo,
        batch_size=4,
        eval_batch_size=2,
    )
    dm.prepare_data()
    dm.setup("fit")
    dm.setup("test")
    assert calls == [1] and dm.val_dataset is dm.test_dataset and dm.train_dataset.training
    assert not dm.val_dataset.training
    dm.max_div_factor = 32
    batches = list(dm.train_dataloader())
    assert len(batches) == 1 and batches[0]["feats"].shape == (4, 8, 256)  # drop_last: 6 -> one batch of 4
    val = list(dm.val_dataloader())
    assert [b["feats"].shape[0] for b in val] == [2, 1]


def test_data_module_built_datasets_and_reproducible_workers(tmp_path):
    path = make_demo_localization(tmp_path, num_videos={"training": 8}, feat_dim=4)
    train = ActivityNetFeatureDataset(
        path,
        tmp_path / "features",
        ["training"],
        feat_stride=4,
        num_frames=16,
        max_seq_len=256,
        crop_ratio=[0.5, 1.0],
        training=True,
    )
    dm = LocalizationDataModule(train_dataset=train, batch_size=2, num_workers=2, max_seq_len=256)
    dm.setup("fit")

    def epoch_lengths():
        torch.manual_seed(123)  # what seed_everything does; worker seeds derive from it
        return [b["masks"].sum(1).tolist() for b in dm.train_dataloader()]

    first = epoch_lengths()
    assert len(first) == 4 and first == epoch_lengths()
    assert len({n for batch in first for n in batch}) > 1
    small = LocalizationDataModule(train_dataset=train, batch_size=9)
    small.setup("fit")
    with pytest.raises(ValueError, match="8 videos, fewer than batch_size=9"):
        small.train_dataloader()


# ---------------------------------------------------------------------------------------------- real THUMOS


@pytest.fixture(scope="module")
def thumos(tmp_path_factory):
    require_shared(THUMOS_JSON)
    database = json.loads(THUMOS_JSON.read_text())["database"]
    root = tmp_path_factory.mktemp("thumos")
    for vid, entry in database.items():
        steps = round(entry["duration"] * entry["fps"] / THUMOS_CFG["feat_stride"])
        np.save(root / f"{vid}.npy", np.zeros((steps, 2), np.float32))
    return root, database


def test_real_thumos_json_all_videos(thumos):
    root, database = thumos
    train = ActivityNetFeatureDataset(
        THUMOS_JSON, root, ["validation"], training=True, input_dim=2, crop_ratio=[0.9, 1.0], **THUMOS_CFG
    )
    test = ActivityNetFeatureDataset(THUMOS_JSON, root, ["test"], input_dim=2, **THUMOS_CFG)
    assert (len(train), len(test)) == (200, 212)
    assert sum(len(g["labels"]) for g in train.ground_truth()) == 3007
    assert sum(len(g["labels"]) for g in test.ground_truth()) == 3358
    assert train.label_names[:3] == ["BaseballPitch", "BasketballDunk", "Billiards"]
    assert train.label_names[19] == "VolleyballSpiking" and train.empty_label_ids == []
    # evaluation items: 0.2 s -> 0.2 * 30 / 4 - 2 = -0.5 (small negatives allowed), 1.1 s -> 6.25
    item = test[test.video_ids.index("video_test_0000004")]
    torch.testing.assert_close(item["segments"][0], torch.tensor([-0.5, 6.25]))
    assert item["labels"][0] == 5 and len(item["labels"]) == len(
        database["video_test_0000004"]["annotations"]
    )
    # a 25 fps video: 11.6 s -> 11.6 * 25 / 4 - 2 = 70.5, 20.8 s -> 128.0
    item = test[test.video_ids.index("video_test_0000950")]
    torch.testing.assert_close(item["segments"][0], torch.tensor([70.5, 128.0]))
    # annotations lying after the video's end (a known THUMOS defect) are kept by default, rejected on demand
    assert len(test.ground_truth()[test.video_ids.index("video_test_0000270")]["labels"]) == 29
    with pytest.raises(ValueError, match=r"video 'video_test_0000270', annotation 7: .* outside"):
        ActivityNetFeatureDataset(THUMOS_JSON, root, ["test"], out_of_bounds="error", **THUMOS_CFG)


def test_real_thumos_handful_with_skip(thumos, tmp_path):
    root, database = thumos
    chosen = {s: [v for v, e in database.items() if e["subset"] == s][:4] for s in ("Validation", "Test")}
    for vids in chosen.values():
        for vid in vids:
            (tmp_path / f"{vid}.npy").symlink_to(root / f"{vid}.npy")
    train = ActivityNetFeatureDataset(
        THUMOS_JSON,
        tmp_path,
        ["validation"],
        training=True,
        missing_features="skip",
        crop_ratio=[0.9, 1.0],
        **THUMOS_CFG,
    )
    assert train.video_ids == chosen["Validation"] and len(train.skipped) == 196
    expected = sum(len(database[v]["annotations"]) for v in chosen["Validation"])
    assert sum(len(g["labels"]) for g in train.ground_truth()) == expected
    # video_validation_0000051, first action 67.5 - 75.9 s: 67.5 * 7.5 - 2 = 504.25, 75.9 * 7.5 - 2 = 567.25
    np.testing.assert_allclose(train.ground_truth()[0]["segments"][0], [67.5, 75.9])
    evaluation = ActivityNetFeatureDataset(
        THUMOS_JSON, tmp_path, ["validation"], missing_features="skip", **THUMOS_CFG
    )
    torch.testing.assert_close(evaluation[0]["segments"][0], torch.tensor([504.25, 567.25]))
    batch = collate_localization([train[i] for i in range(4)], 2304, training=True)
    assert batch["feats"].shape == (4, 2, 2304) and all(len(s) for s in batch["segments"])


# ---------------------------------------------------------------------------------------------- demo data


def test_demo_deterministic_idempotent_and_official_format(tmp_path):
    small = {"num_videos": {"training": 5, "validation": 2, "testing": 2}, "feat_dim": 6}
    a = make_demo_localization(tmp_path / "a", **small)
    b = make_demo_localization(tmp_path / "b", **small)
    assert a.read_bytes() == b.read_bytes()
    for f in (tmp_path / "a" / "features").iterdir():
        assert f.read_bytes() == (tmp_path / "b" / "features" / f.name).read_bytes()
    stamp = a.stat().st_mtime_ns
    assert make_demo_localization(tmp_path / "a", **small) == a and a.stat().st_mtime_ns == stamp
    make_demo_localization(tmp_path / "a", **{**small, "seed": 1})
    assert a.read_bytes() != b.read_bytes()

    data = json.loads(b.read_text())
    assert set(data) == {"version", "database"} and len(data["database"]) == 9
    for vid, entry in data["database"].items():
        assert set(entry) == {"subset", "duration", "fps", "annotations"}
        feats = np.load(tmp_path / "b" / "features" / f"{vid}.npy")
        assert feats.dtype == np.float32 and feats.ndim == 2 and feats.shape[1] == 6
        assert DEMO_DEFAULTS["min_steps"] <= feats.shape[0] <= DEMO_DEFAULTS["max_steps"]
        assert 1 <= len(entry["annotations"]) <= DEMO_DEFAULTS["max_actions"]
        for x in entry["annotations"]:
            assert set(x) == {"label", "segment", "segment(frames)", "label_id"}
            assert x["label"] == f"action_{x['label_id']}" and 0 <= x["segment"][0] < x["segment"][1]
            assert x["segment"][1] <= entry["duration"]
    removed = tmp_path / "b" / "features" / "demo_testing_0001.npy"
    content = removed.read_bytes()
    removed.unlink()
    make_demo_localization(tmp_path / "b", **small)  # incomplete data is regenerated
    assert removed.read_bytes() == content
    with pytest.raises(TypeError):
        make_demo_localization(tmp_path / "c", colour="red")


def test_demo_round_trip_through_dataset(tmp_path):
    path = make_demo_localization(tmp_path)
    kwargs = {"feat_stride": 4, "num_frames": 16, "max_seq_len": 256, "num_classes": 5, "input_dim": 32}
    splits = {
        s: ActivityNetFeatureDataset(path, tmp_path / "features", [s], **kwargs)
        for s in ("training", "validation", "testing")
    }
    assert {s: len(d) for s, d in splits.items()} == DEMO_DEFAULTS["num_videos"]
    ds = splits["training"]
    assert ds.label_names == [f"action_{k}" for k in range(5)] and ds.empty_label_ids == []
    # the planted actions sit where the json says: strong features inside the grid segments, noise outside
    inside, outside = [], []
    for i in range(len(ds)):
        item = ds[i]
        energy = (item["feats"] ** 2).mean(0)
        mask = torch.zeros_like(energy, dtype=torch.bool)
        for s, e in item["segments"].tolist():
            assert -0.5 <= s < e <= item["feats"].shape[1] - 0.5
            mask[int(np.ceil(s + 0.5)) : int(np.floor(e + 0.5))] = True
        inside.append(energy[mask])
        outside.append(energy[~mask])
    assert torch.cat(outside).mean() == pytest.approx(1.0, abs=0.05)  # unit noise
    assert torch.cat(inside).mean() > 1.08


# ---------------------------------------------------------------------------------------------- HDF5 features


def write_h5(path: Path, arrays: dict) -> Path:
    import h5py

    with h5py.File(path, "w") as handle:
        for key, array in arrays.items():
            handle.create_dataset(key, data=array)
    return path


def ramp(steps: int, dim: int = 3) -> np.ndarray:
    return np.repeat(np.arange(steps, dtype=np.float32)[:, None], dim, 1)


def test_hdf5_one_file_for_all_videos_matches_npy(simple):
    """Release ANet layout: one file, one (T, C) dataset per video under <file_prefix><video_id>."""
    h5 = write_h5(simple.parent / "feats.h5", {"v_v1": ramp(75), "v_v2": ramp(75).astype(np.float64)})
    ds = ActivityNetFeatureDataset(simple, h5, ["training"], file_prefix="v_", feat_stride=4, num_frames=16)
    reference = dataset(simple)
    for i in range(2):
        item, expected = ds[i], reference[i]
        torch.testing.assert_close(item["feats"], expected["feats"])
        torch.testing.assert_close(item["segments"], expected["segments"])
    assert ds[1]["feats"].dtype == torch.float32
    with pytest.raises(ValueError, match=r"feats\.h5\[v_v1\]: expected feature dim 4, got \[3\]"):
        ActivityNetFeatureDataset(simple, h5, ["training"], file_prefix="v_", input_dim=4)
    # an HDF5 stream beside a .npy folder: concatenated on channels
    plain = write_h5(simple.parent / "plain.hdf5", {"v1": ramp(75, 2), "v2": ramp(75, 2)})
    both = ActivityNetFeatureDataset(simple, [simple.parent / "feats", plain], ["training"], input_dim=[3, 2])
    assert both[0]["feats"].shape == (5, 75)


def test_hdf5_missing_key_and_bad_shape_name_file_and_video(simple, caplog):
    h5 = write_h5(simple.parent / "feats.h5", {"v1": np.zeros((3, 4, 5), np.float32)})
    with pytest.raises(
        FileNotFoundError, match=r"1 of 2 videos .* no feature file, e\.g\. .*feats\.h5\[v2\]"
    ):
        ActivityNetFeatureDataset(simple, h5, ["training"])
    with caplog.at_level(logging.WARNING, logger="egolab.data.localization"):
        ds = ActivityNetFeatureDataset(simple, h5, ["training"], missing_features="skip")
    assert ds.video_ids == ["v1"] and ds.skipped == ["v2"]
    with pytest.raises(
        ValueError, match=r"feats\.h5: video 'v1': dataset 'v1' has shape \(3, 4, 5\), expected"
    ):
        ds[0]
    (simple.parent / "not_h5.h5").write_text("plain text")
    with pytest.raises(ValueError, match=r"not_h5\.h5: cannot open as HDF5"):
        ActivityNetFeatureDataset(simple, simple.parent / "not_h5.h5", ["training"])
    with pytest.raises(FileNotFoundError, match=r"feature folder \(or HDF5 file\) not found: .*absent\.h5"):
        ActivityNetFeatureDataset(simple, simple.parent / "absent.h5", ["training"])


def test_hdf5_file_per_video(simple):
    folder = simple.parent / "h5"
    folder.mkdir()
    write_h5(folder / "v1.h5", {"feats": ramp(75), "meta": np.zeros(2)})  # read under npz_key
    write_h5(folder / "v2.h5", {"clip_features": ramp(60)})  # the only dataset
    ds = ActivityNetFeatureDataset(simple, folder, ["training"], file_ext=".h5")
    assert ds[0]["feats"].shape == (3, 75) and ds[1]["feats"].shape == (3, 60)
    assert ds[1]["feats"][0, 59] == 59
    write_h5(folder / "v2.h5", {"a": ramp(5), "b": ramp(5)})
    with pytest.raises(ValueError, match=r"h5/v2\.h5: video 'v2': no dataset 'feats' and not exactly one"):
        ds[1]


# ---------------------------------------------------------------------------------------------- user dataset


class TinyDataset(torch.utils.data.Dataset):
    """A user dataset honouring the contract: two videos of 5 steps, kwargs kept for inspection."""

    def __init__(self, split, training, **kwargs) -> None:
        self.split, self.training, self.kwargs = split, training, kwargs
        self.label_names, self.class_agnostic = ["a", "b"], False

    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> dict:
        return {**item_of(5, vid=f"tiny{index}"), "labels": torch.tensor([index])}

    def ground_truth(self) -> list[dict]:
        return [
            {"video_id": f"tiny{i}", "segments": np.zeros((1, 2)), "labels": np.array([i])} for i in range(2)
        ]


class NoGroundTruth(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 0


class NotADataset:
    pass


class NoAttributes(TinyDataset):
    def __init__(self, split, training, **kwargs) -> None:
        self.split = split


class BadItems(TinyDataset):
    def __getitem__(self, index: int) -> dict:
        return {"video_id": "x", "feats": torch.zeros(4, 5)}


def not_a_class():
    return None


def custom(name: str) -> str:
    return f"{__name__}:{name}"


def test_custom_dataset_class_gets_the_partial_kwargs():
    partial = functools.partial(ActivityNetFeatureDataset, json_file="anno.json", num_frames=3)
    dm = LocalizationDataModule(
        dataset=partial,
        train_split=["training"],
        val_split=["validation"],
        custom_class=custom("TinyDataset"),
        batch_size=2,
        max_seq_len=8,
    )
    dm.setup("fit")
    train = dm.train_dataset
    assert isinstance(train, TinyDataset) and train.training and train.split == ["training"]
    assert train.kwargs == {"json_file": "anno.json", "num_frames": 3}
    assert not dm.val_dataset.training
    (batch,) = list(dm.train_dataloader())
    assert batch["feats"].shape == (2, 4, 8) and sorted(batch["video_ids"]) == ["tiny0", "tiny1"]
    bare = LocalizationDataModule(train_split=["x"], custom_class=custom("TinyDataset"))
    bare.setup("fit")
    assert bare.train_dataset.kwargs == {}


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        (
            "egolab.data.localization.ActivityNetFeatureDataset",
            ValueError,
            "must look like 'package.module:Class'",
        ),
        ("no_such_module_xyz:Data", ImportError, r"cannot import 'no_such_module_xyz'"),
        (custom("not_a_class"), TypeError, r"not_a_class is a function, not a class"),
        (custom("Missing"), TypeError, r"Missing is a NoneType, not a class"),
        (custom("NotADataset"), TypeError, r"NotADataset does not subclass torch's Dataset"),
        (custom("NoGroundTruth"), TypeError, r"NoGroundTruth lacks \['__getitem__', 'ground_truth'\]"),
    ],
)
def test_custom_dataset_class_errors_at_configuration(spec, error, message):
    with pytest.raises(error, match=message):
        LocalizationDataModule(train_split=["training"], custom_class=spec)


def test_custom_dataset_instance_checked_when_built():
    dm = LocalizationDataModule(train_split=["training"], custom_class=custom("NoAttributes"))
    with pytest.raises(
        TypeError, match=r"NoAttributes'.* no attribute\(s\) \['label_names', 'class_agnostic'\]"
    ):
        dm.setup("fit")
    dm = LocalizationDataModule(train_split=["training"], custom_class=custom("BadItems"))
    with pytest.raises(TypeError, match=r"item 0 lacks the key\(s\) \['segments', 'labels', 'fps'"):
        dm.setup("fit")
    with pytest.raises(TypeError, match="needs `dataset` to be a partial"):
        LocalizationDataModule(dataset=TinyDataset, train_split=["x"], custom_class=custom("TinyDataset"))


def test_custom_dataset_class_from_the_data_config():
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from egolab.paths import CONF_DIR

    overrides = [
        "task=localization",
        "model=actionformer/demo",
        "data=localization/demo",
        "paths.root=/nowhere",
    ]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"data.custom_class={custom('TinyDataset')}"])
        assert compose("config", overrides=overrides).data.custom_class is None  # default: the json dataset
    dm = instantiate(cfg.data)
    dm.setup("fit")
    assert isinstance(dm.train_dataset, TinyDataset)
    assert dm.train_dataset.kwargs["json_file"].endswith("localization/annotations/demo.json")


# ---------------------------------------------------------------------------------------------- real Ego4D MQ
EGO4D_MQ = SHARED_DATA / "ego4d" / "mq" / "ego4d_mq_clip_annotations.json"
EGO4D_LABEL_MAP = SHARED_DATA / "ego4d" / "ego4d_mq_label_map_actionformer.txt"


def test_real_ego4d_mq_clip_file_reads_as_shipped(tmp_path):
    """The Ego4D experiment's data config reads the MQ clip json as shipped (no `database` wrapper,
    subsets train / val / test, labels with literal quotes) with its three feature streams."""
    from hydra.utils import instantiate

    from egolab.launch.txtfile import compose_experiment
    from egolab.paths import REPO_ROOT

    require_shared(EGO4D_MQ)
    clips = json.loads(EGO4D_MQ.read_text())
    assert len(clips) == 2495 and "database" not in clips
    chosen = {
        s: [c for c, e in clips.items() if e["subset"] == s and e["annotations"]][:3]
        for s in ("train", "val")
    }
    folders = [tmp_path / name for name in ("slowfast", "omnivore", "egovlp")]
    for folder, dim in zip(folders, (2304, 1536, 256)):
        folder.mkdir()
        for clip in chosen["train"] + chosen["val"]:
            np.save(folder / f"{clip}.npy", np.zeros((40, dim), np.float32))
    feat_folders = f"data.dataset.feat_folders=[{','.join(map(str, folders))}]"
    cfg = compose_experiment(
        REPO_ROOT / "expts" / "localization" / "ego4d_mq.txt",
        [f"data.dataset.json_file={EGO4D_MQ}", feat_folders],
    )
    make = instantiate(cfg.data.dataset)
    val = make(split=list(cfg.data.val_split), training=False)
    train = make(split=list(cfg.data.train_split), training=True)
    assert (val.video_ids, train.video_ids) == (chosen["val"], chosen["train"])  # in json order
    assert (len(val.skipped), len(train.skipped)) == (521 - 3, 1486 - 3)  # clips without features
    # class ids are the json's label_id; the names are the ActionFormer label map's 110, quotes kept (the
    # clip file numbers them in an order of its own: its id 0 is the map's 91)
    label_map = [line.split("\t", 1)[1] for line in EGO4D_LABEL_MAP.read_text().splitlines() if line.strip()]
    assert sorted(val.label_names) == sorted(label_map) and len(label_map) == 110
    ids = {a["label"]: a["label_id"] for e in clips.values() for a in e["annotations"]}
    assert all(val.label_names[i] == name for name, i in ids.items())
    clip, item = val.video_ids[0], val[0]
    annotations = clips[clip]["annotations"]
    assert item["feats"].shape == (2304 + 1536 + 256, 40)
    assert item["labels"].tolist() == [a["label_id"] for a in annotations]
    # seconds -> grid at 30 fps, stride 16, 32 frames: t * 30 / 16 - 1
    start, end = annotations[0]["segment"]
    torch.testing.assert_close(item["segments"][0], torch.tensor([start * 1.875 - 1, end * 1.875 - 1]))
