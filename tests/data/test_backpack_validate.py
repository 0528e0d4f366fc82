"""BackpackDataModule.check_files: every unusable feature or annotation file of every split."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from egolab.data.backpack import BackpackDataModule

VIDEOS = {  # annotation file -> its videos
    "fho_lta_train.json": ["a1", "a2"],
    "fho_lta_val.json": ["b1", "b2"],
    "fho_lta_test.json": ["e1"],
    "fho_oscc-pnr_train.json": ["a1", "c1"],
    "fho_oscc-pnr_val.json": ["d1"],
    "fho_oscc-pnr_test.json": ["e1"],
}


def record(file: str, video: str, k: int) -> dict:
    if file.startswith("fho_lta"):
        return {
            "video_uid": video, "clip_uid": f"clip-{video}", "clip_parent_start_frame": 0, "action_idx": k,
            "action_clip_start_frame": 32 * k, "action_clip_end_frame": 32 * k + 32,
            "verb_label": 0, "noun_label": 1,
        }  # fmt: skip
    return {
        "video_uid": video, "unique_id": f"oscc-{video}-{k}", "parent_start_frame": 0,
        "parent_end_frame": 240, "parent_start_sec": 0.0, "parent_end_sec": 8.0, "state_change": True,
        "parent_pnr_frame": 100,
    }  # fmt: skip


@pytest.fixture
def ego4d(tmp_path) -> Path:
    """Official-layout annotations (two records per video) and (30, 4) features: ``.pt`` files (b2 in the
    legacy non-zip format), d1 as ``.npy``."""
    ann, feats = tmp_path / "annotations", tmp_path / "features"
    ann.mkdir()
    feats.mkdir()
    (ann / "fho_lta_taxonomy.json").write_text(
        json.dumps({"verbs": ["take", "put"], "nouns": ["cup", "pan"]})
    )
    for file, videos in VIDEOS.items():
        (ann / file).write_text(json.dumps({"clips": [record(file, v, k) for v in videos for k in range(2)]}))
        for video in videos:
            torch.save(
                torch.randn(30, 4), feats / f"{video}.pt", _use_new_zipfile_serialization=video != "b2"
            )
    (feats / "d1.pt").unlink()
    np.save(feats / "d1.npy", np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32))
    return tmp_path


def module(root: Path, validate: str = "headers", **kwargs) -> BackpackDataModule:
    args = dict(feature_dim=4, test_split="test", validate=validate)
    return BackpackDataModule(
        ["ar", "oscc"], root / "annotations", root / "features", root / "cache", **{**args, **kwargs}
    )


def test_clean_data_has_no_problems(ego4d):
    for level in ("headers", "full"):
        dm = module(ego4d, level)
        assert dm.check_files() == []
        assert not dm._records and dm._taxonomy is None and not (ego4d / "cache").exists()  # nothing kept
    with pytest.raises(ValueError, match="validate must be one of"):
        module(ego4d, "cheap")


def needed(ann: Path, file: str, video: str) -> str:
    """How a problem names a video and its first record (lta: record 2 k, clip; oscc: unique_id)."""
    k = VIDEOS[file].index(video)
    split = file.rsplit("_", 1)[1].removesuffix(".json")
    if file.startswith("fho_lta"):
        source = f"record {2 * k} (clip_uid clip-{video}, action_idx 0)"
    else:
        source = f"record {2 * k} (unique_id oscc-{video}-0)"
    return f"{split} split: video {video} (needed by {ann / file}, {source}): "


def test_every_bad_feature_file_of_every_split_is_named_with_its_record(ego4d):
    feats, ann = ego4d / "features", ego4d / "annotations"
    (feats / "a2.pt").unlink()  # missing, train
    (feats / "b1.pt").write_bytes(b"garbage" * 30)  # unreadable, val
    torch.save(torch.zeros(30, 7), feats / "e1.pt")  # wrong feature size, test
    torch.save(torch.full((30, 4), float("nan")), feats / "c1.pt")  # non-finite values, train (full only)
    missing = needed(ann, "fho_lta_train.json", "a2") + f"no feature file {feats / 'a2.pt'} (or .npy)"
    nan = needed(ann, "fho_oscc-pnr_train.json", "c1") + f"{feats / 'c1.pt'}: 120 non-finite values"
    garbage = needed(ann, "fho_lta_val.json", "b1") + f"{feats / 'b1.pt'}: cannot read feature file ("
    shape = needed(ann, "fho_lta_test.json", "e1") + f"{feats / 'e1.pt'}: expected (T, 4) features with "
    for level, expected in (("headers", [missing, garbage, shape]), ("full", [missing, nan, garbage, shape])):
        problems = module(ego4d, level).check_files()
        assert len(problems) == len(expected), problems
        assert all(p.startswith(e) for p, e in zip(problems, expected)), problems
    assert module(ego4d, "none").check_files() == []


def test_converted_cache_is_what_gets_checked(ego4d):
    dm = module(ego4d)
    dm.prepare_data()
    (ego4d / "features" / "d1.npy").unlink()  # converted already: the raw file is no longer read
    cached = ego4d / "cache" / "b2.npy"
    cached.write_bytes(cached.read_bytes()[:-40])  # truncated
    (problem,) = module(ego4d).check_files()
    assert problem.startswith(
        f"val split: video b2 (needed by {ego4d / 'annotations' / 'fho_lta_val.json'}, "
    )
    assert f"{cached}: cannot read (ValueError: " in problem


def test_annotation_problems_and_skip_policy(ego4d, caplog):
    (ego4d / "annotations" / "fho_oscc-pnr_val.json").write_text("{")
    (ego4d / "features" / "e1.pt").unlink()
    with caplog.at_level(logging.WARNING, logger="egolab.data.backpack"):
        (problem,) = module(ego4d, missing_features="skip").check_files()
    assert problem.startswith(f"val split: {ego4d / 'annotations' / 'fho_oscc-pnr_val.json'}: not valid JSON")
    assert "1 videos without features (missing_features='skip'" in caplog.text and "e1.pt" in caplog.text


def test_demo_not_yet_made_is_not_a_problem(tmp_path):
    def demo() -> None:
        raise AssertionError("check_files must not generate the demo")

    assert module(tmp_path, demo=demo).check_files() == []
    problems = module(tmp_path).check_files()
    assert len(problems) == 6 and all("not found" in p for p in problems)
