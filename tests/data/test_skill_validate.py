"""SkillDataModule.check_files: every unreadable video of every split, before fitting, on tiny mp4 files."""

import json
import logging
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from egolab.data.demo_skill import write_video
from egolab.data.skill import SkillDataModule, SkillDataset

SUBDIR = "frame_aligned_videos/downscaled/448"


def video(root: Path, take: str, cam: str = "aria01") -> Path:
    return root / "takes" / take / SUBDIR / f"{cam}.mp4"


@pytest.fixture
def skill_root(tmp_path) -> Path:
    """Two takes per split, each with an ego view only: 12-frame 32x32 mp4 videos and the task's jsonl."""
    frames = np.random.default_rng(0).integers(0, 255, (12, 32, 32, 3), dtype=np.uint8)
    (tmp_path / "annotations").mkdir()
    for split in ("train", "val", "test"):
        lines = []
        for n in range(2):
            take = f"{split}{n}"
            write_video(video(tmp_path, take), frames)
            paths = [f"takes/{take}/frame_aligned_videos/aria01.mp4", None, None, None, None]
            record = {"take_uid": f"uid-{take}", "scenario_name": "Cooking", "video_paths": paths, "label": n}
            lines.append(json.dumps(record))
        (tmp_path / "annotations" / f"skill_{split}.jsonl").write_text("\n".join(lines) + "\n")
    return tmp_path


def module(root: Path, validate: str = "headers", test: str = "test", **dataset) -> SkillDataModule:
    return SkillDataModule(
        root,
        partial(SkillDataset, **dataset),
        train_file="annotations/skill_train.jsonl",
        val_file="annotations/skill_val.jsonl",
        test_file=f"annotations/skill_{test}.jsonl",
        validate=validate,
    )


def test_clean_data_has_no_problems(skill_root):
    assert module(skill_root, "headers", camera_indices=[0]).check_files() == []
    assert module(skill_root, "full", camera_indices=[0]).check_files() == []
    with pytest.raises(ValueError, match="validate must be one of"):
        module(skill_root, "quick")


def test_every_bad_video_of_every_split_is_named_with_its_take(skill_root):
    missing, garbage, truncated = (
        video(skill_root, "train0"),
        video(skill_root, "val1"),
        video(skill_root, "test0"),
    )
    missing.unlink()
    garbage.write_bytes(b"not a video" * 40)
    truncated.write_bytes(truncated.read_bytes()[:-300])
    for level in ("headers", "full"):
        problems = module(skill_root, level, camera_indices=[0]).check_files()
        assert len(problems) == 3, problems
        assert problems[0] == f"train split: take uid-train0 (train0): missing video {missing}"
        assert problems[1].startswith(f"val split: take uid-val1 (val1): unreadable video {garbage}: ")
        assert problems[2].startswith(f"test split: take uid-test0 (test0): unreadable video {truncated}: ")
    assert module(skill_root, "none", camera_indices=[0]).check_files() == []


def test_views_absent_from_the_annotation_are_named(skill_root):
    problems = module(skill_root, camera_indices=[0, 1]).check_files()
    assert len(problems) == 6 and all("has no exo1 video (camera index 1)" in p for p in problems)
    assert problems[0].startswith("train split: take uid-train0 (train0) in ")


def zero_late_frames(path: Path) -> None:
    """Zero the second half of the mp4's ``mdat`` payload: the index (``moov``) still opens, frames fail."""
    data = bytearray(path.read_bytes())
    start = data.index(b"mdat") + 4
    end = start - 8 + int.from_bytes(data[start - 8 : start - 4], "big")
    data[(start + end) // 2 : end] = bytes(end - (start + end) // 2)
    path.write_bytes(bytes(data))


def test_full_decodes_what_headers_do_not(skill_root):
    path = video(skill_root, "val0")
    zero_late_frames(path)
    assert module(skill_root, "headers", camera_indices=[0]).check_files() == []
    (problem,) = module(skill_root, "full", camera_indices=[0]).check_files()
    assert problem.startswith(f"val split: take uid-val0 (val0): unreadable video {path}: ")


def test_shared_eval_file_is_checked_once(skill_root):
    video(skill_root, "val0").unlink()
    assert module(skill_root, test="val", camera_indices=[0]).check_files() == [
        f"val/test split: take uid-val0 (val0): missing video {video(skill_root, 'val0')}"
    ]


def test_skip_policy_logs_unless_no_take_is_left(skill_root, caplog):
    video(skill_root, "val0").unlink()
    with caplog.at_level(logging.WARNING, logger="egolab.data.skill"):
        assert module(skill_root, camera_indices=[0], bad_videos="skip").check_files() == []
    assert "1 unreadable videos (bad_videos=skip" in caplog.text and "uid-val0" in caplog.text
    video(skill_root, "val1").unlink()
    assert len(module(skill_root, camera_indices=[0], bad_videos="skip").check_files()) == 2


def test_demo_not_yet_made_is_not_a_problem(tmp_path):
    def demo() -> None:
        raise AssertionError("check_files must not generate the demo")

    dm = SkillDataModule(tmp_path, SkillDataset, "a/train.jsonl", "a/val.jsonl", "a/val.jsonl", demo=demo)
    assert dm.check_files() == []
    (problem,) = SkillDataModule(tmp_path, SkillDataset, "a/train.jsonl").check_files()
    assert problem.startswith("train split: annotation jsonl not found")
