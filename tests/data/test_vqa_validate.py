"""VQADataModule.check_files: every unreadable frame or json of every split, before fitting, on tiny files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from egolab.data.vqa import IMAGE_PLACEHOLDER, VQADataModule

NOT_LOADED = "no/such/processor"  # check_files must never load the processor


def frame(path: Path, fmt: str = "PNG") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(len(str(path))).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, fmt)
    return str(path)


def bed_item(item_id: int, frames: list[str]) -> dict:
    return {
        "id": item_id, "dataset": "EgoPet", "primary_category": "Identification",
        "question_type": "animal identification", "question_text": "Which animal?",
        "options": ["A: cat", "B: dog", "C: cow", "D: owl"], "original_video_fps": 30.0, "video_path": frames,
    }  # fmt: skip


@pytest.fixture
def vqa_root(tmp_path) -> Path:
    """ShareGPT train.json (absolute frame paths, items 0-1), val/test testbeds (frames relative to the
    json, ids 10-11 and 20-21) with their answers; two noise frames per item, PNG (test: JPEG)."""
    train = []
    for n in range(2):
        images = [frame(tmp_path / f"frames/train/{n}_{k}.png") for k in range(2)]
        user = {"role": "user", "content": IMAGE_PLACEHOLDER * 2 + "Which animal?\nA) cat\nB) dog"}
        messages = [user, {"role": "assistant", "content": "B"}]
        train.append({"id": f"t{n}", "messages": messages, "images": images, "domain": "animal"})
    (tmp_path / "train.json").write_text(json.dumps(train))
    for split, first, fmt in (("val", 10, "PNG"), ("test", 20, "JPEG")):
        items, answers = [], []
        for item_id in (first, first + 1):
            names = [f"frames/{split}/{item_id}_{k}.{fmt.lower()}" for k in range(2)]
            for name in names:
                frame(tmp_path / name, fmt)
            items.append(bed_item(item_id, names))
            answers.append(
                {"id": item_id, "correct_option_letter": "B", "answer_text": "dog", "question_id": item_id}
            )
        (tmp_path / f"{split}_testbed.json").write_text(json.dumps(items))
        (tmp_path / f"{split}_answers.json").write_text(json.dumps(answers))
    return tmp_path


def module(root: Path, validate: str = "headers", **kwargs) -> VQADataModule:
    files = dict(
        train_files=["train.json"],
        val_file="val_testbed.json",
        val_answers="val_answers.json",
        test_file="test_testbed.json",
        test_answers="test_answers.json",
    )
    return VQADataModule(NOT_LOADED, root, validate=validate, **{**files, **kwargs})


def test_clean_data_has_no_problems(vqa_root):
    assert module(vqa_root, "headers").check_files() == []
    dm = module(vqa_root, "full")
    assert dm.check_files() == [] and dm.processor is None
    with pytest.raises(ValueError, match="validate must be one of"):
        module(vqa_root, "all")


def test_every_bad_frame_of_every_split_is_named_with_its_item(vqa_root):
    missing = vqa_root / "frames/train/1_0.png"
    missing.unlink()
    garbage = vqa_root / "frames/val/10_1.png"
    garbage.write_bytes(b"not a png")
    truncated = vqa_root / "frames/test/21_0.jpeg"
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) * 3 // 4])  # the header parses, the pixels do not decode
    expected = [
        f"train split: sample t1: frame not found: {missing}",
        f"val split: testbed item 10: cannot read frame {garbage} (cannot identify image file",
    ]
    headers = module(vqa_root, "headers").check_files()
    assert [p[: len(e)] for p, e in zip(headers, expected)] == expected and len(headers) == 2
    full = module(vqa_root, "full").check_files()
    assert [p[: len(e)] for p, e in zip(full, expected)] == expected and len(full) == 3
    assert full[2].startswith(f"test split: testbed item 21: cannot read frame {truncated} (image file is")
    assert module(vqa_root, "none").check_files() == []


def test_json_problems_and_shared_frames(vqa_root):
    items = json.loads((vqa_root / "val_testbed.json").read_text())
    items[1]["video_path"] = items[0]["video_path"]  # two items show the same frames
    (vqa_root / "val_testbed.json").write_text(json.dumps(items))
    (vqa_root / items[0]["video_path"][0]).unlink()
    answers = json.loads((vqa_root / "test_answers.json").read_text())
    (vqa_root / "test_answers.json").write_text(json.dumps(answers[:1]))  # item 21 has no answer
    (vqa_root / "train.json").write_text("[{")
    problems = module(vqa_root).check_files()
    assert len(problems) == 3, problems
    assert problems[0].startswith(f"train split: {vqa_root / 'train.json'}: not valid json")
    shared = vqa_root / items[0]["video_path"][0]
    assert problems[1] == f"val split: testbed item 10 (and 1 more): frame not found: {shared}"
    assert problems[2].startswith("test split: 1 testbed items have no answer, e.g. ids [21]")


def test_skip_policy_logs_bad_frames(vqa_root, caplog):
    (vqa_root / "frames/val/11_0.png").unlink()
    with caplog.at_level(logging.WARNING, logger="egolab.data.vqa"):
        assert module(vqa_root, bad_items="skip").check_files() == []
    assert (
        "1 missing or unreadable frames (bad_items=skip" in caplog.text and "testbed item 11" in caplog.text
    )


def test_domain_filter_and_demo_not_yet_made(vqa_root, tmp_path):
    (vqa_root / "frames/train/0_0.png").unlink()
    assert module(vqa_root, domain="surgery", train_files=[]).check_files() == []  # EgoPet is Animal
    assert module(vqa_root, val_file=None, test_file=None, train_files=[]).check_files() == []

    def demo() -> None:
        raise AssertionError("check_files must not generate the demo")

    assert module(tmp_path / "not_made", demo=demo).check_files() == []
