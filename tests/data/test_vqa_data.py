"""EgoCross readers: real testbed / support / dataset_info files, ShareGPT checks, prompt, frame loading."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shared_data import SHARED_DATA, require_shared

from egolab.data.vqa import (
    IMAGE_PLACEHOLDER,
    SHAREGPT_COLUMNS,
    SHAREGPT_TAGS,
    ShareGPTSample,
    closeqa_prompt,
    drop_bad_items,
    load_frames,
    load_item_frames,
    read_sharegpt,
    read_support_flattened,
    read_testbed,
    rescaled_size,
    sampling_fps,
)

EGOCROSS = SHARED_DATA / "egocross"
TESTBED = EGOCROSS / "egocross_testbed_imgs.json"
SUPPORT = EGOCROSS / "support_set_flattened.json"
DATASET_INFO = EGOCROSS / "dataset_info_egocross.json"


@pytest.fixture(scope="module")
def testbed() -> list:
    return read_testbed(require_shared(TESTBED))


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def _image(path: Path, size: tuple[int, int], mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size).save(path)
    return path


# ----------------------------------------------------------------------------------------------------
# Real files


def test_real_testbed_counts(testbed: list) -> None:
    assert len(testbed) == 957
    assert Counter(item.domain for item in testbed) == {
        "Surgery": 283,
        "Industry": 245,
        "XSports": 246,
        "Animal": 183,
    }
    lengths = [len(item.frames) for item in testbed]
    assert min(lengths) == 1 and max(lengths) == 91
    assert all(item.options[3].startswith("D: ") for item in testbed)
    assert sum(sampling_fps(item) == 1.0 for item in testbed) == 22 + 100  # CholecTrack20 .png + EgoSurgery


def test_real_testbed_reroot(tmp_path: Path) -> None:
    items = read_testbed(require_shared(TESTBED), image_root=tmp_path)
    first = items[0].frames[0]
    assert first == tmp_path / "CholecTrack20/generated/VID01/frames/oc_q1/frame_00000.jpg"
    stripped = read_testbed(TESTBED, image_root=tmp_path, strip_prefix="/egocross_testbed")
    assert [i.frames for i in stripped] == [i.frames for i in items]
    assert all(str(f).startswith(str(tmp_path)) for item in items for f in item.frames)

    item = items[0]
    for frame in item.frames:
        _image(frame, (40, 30))
    kept, skipped = drop_bad_items(items[:2], bad_items="skip")
    assert kept == [item] and skipped == [str(items[1].id)]
    with pytest.raises(FileNotFoundError, match=f"testbed item {items[1].id}: frame not found"):
        drop_bad_items(items[:2])
    assert [im.size for im in load_item_frames(item, 360000, 50176)] == [
        rescaled_size(40, 30, 360000, 50176)
    ] * 5


def test_real_support_set(tmp_path: Path) -> None:
    samples = read_support_flattened(require_shared(SUPPORT), image_root=tmp_path)
    assert len(samples) == 80
    assert Counter(s.domain for s in samples) == {d: 20 for d in ("Surgery", "Industry", "XSports", "Animal")}
    for sample in samples:
        assert sample.messages[0]["content"].count(IMAGE_PLACEHOLDER) == len(sample.images) > 0
        assert sample.answer in "ABCD" and sample.messages[1]["role"] == "assistant"
    assert samples[0].images[0] == tmp_path / "EgoPet/022/frames/ai_q5/frame_0.jpg"


def test_dataset_info_matches_reader(tmp_path: Path) -> None:
    entries = json.loads(require_shared(DATASET_INFO).read_text())
    assert set(entries) == {
        "egocross",
        *(f"egocross_{d}" for d in ("animal", "industry", "xsports", "surgery")),
    }
    samples = read_support_flattened(require_shared(SUPPORT))
    for name, entry in entries.items():
        assert entry["formatting"] == "sharegpt"
        assert entry["columns"] == SHAREGPT_COLUMNS and entry["tags"] == SHAREGPT_TAGS
        domain = name.removeprefix("egocross").lstrip("_") or None
        chosen = [s for s in samples if domain is None or s.domain.lower() == domain]
        rows = [
            {"messages": s.messages, "images": [str(p) for p in s.images], "domain": s.domain.lower()}
            for s in chosen
        ]
        path = _write(tmp_path / f"{name}.json", rows)
        read = read_sharegpt(path, domain=domain, columns=entry["columns"], tags=entry["tags"])
        assert [(r.messages, r.images, r.domain) for r in read] == [
            (s.messages, s.images, s.domain) for s in chosen
        ]


# ----------------------------------------------------------------------------------------------------
# ShareGPT checks


def _item(n_images: int, n_tags: int, domain: str = "surgery") -> dict:
    return {
        "messages": [
            {"role": "user", "content": IMAGE_PLACEHOLDER * n_tags + "Which tool?\nA) a\nB) b\nC) c\nD) d"},
            {"role": "assistant", "content": "B"},
        ],
        "images": [f"frames/f{k}.jpg" for k in range(n_images)],
        "domain": domain,
    }


def test_sharegpt_relative_paths_and_domain(tmp_path: Path) -> None:
    path = _write(tmp_path / "train.json", [_item(2, 2), _item(1, 1, domain="animal")])
    root = tmp_path / "root"
    samples = read_sharegpt(path, image_root=root)
    assert [s.domain for s in samples] == ["Surgery", "Animal"]
    assert samples[0].images == [root / "frames/f0.jpg", root / "frames/f1.jpg"]
    assert read_sharegpt(path)[0].images[0] == tmp_path / "frames/f0.jpg"  # no root: the json's folder
    only = read_sharegpt(path, image_root=root, domain="Animal")
    assert len(only) == 1 and only[0].index == 1 and only[0].answer == "B"


def test_sharegpt_absolute_paths(tmp_path: Path) -> None:
    item = _item(2, 2)
    existing = _image(tmp_path / "here.jpg", (8, 8))
    item["images"] = [str(existing), "/old/place/EgoSurgery/v1/f0.jpg"]
    path = _write(tmp_path / "train.json", [item])
    root = tmp_path / "root"
    assert read_sharegpt(path, image_root=root)[0].images == [existing, root / "EgoSurgery/v1/f0.jpg"]
    assert (
        read_sharegpt(path, image_root=root, strip_prefix="/old")[0].images[1]
        == root / "place/EgoSurgery/v1/f0.jpg"
    )
    assert read_sharegpt(path)[0].images[1] == Path("/old/place/EgoSurgery/v1/f0.jpg")
    item["images"][1] = "/old/place/unknown/f0.jpg"
    with pytest.raises(ValueError, match="item 0: cannot re-root"):
        read_sharegpt(_write(path, [item]), image_root=root)


def test_sharegpt_placeholder_mismatch(tmp_path: Path) -> None:
    path = _write(tmp_path / "bad.json", [_item(2, 2), _item(3, 2)])
    with pytest.raises(ValueError, match=r"bad\.json: item 1: 2 <image> placeholders but 3 images"):
        read_sharegpt(path)


@pytest.mark.parametrize(
    "roles",
    [["assistant", "user"], ["user", "user"], ["user"], ["user", "assistant", "user"]],
)
def test_sharegpt_role_order(tmp_path: Path, roles: list[str]) -> None:
    item = _item(0, 0)
    item["messages"] = [{"role": r, "content": "x"} for r in roles]
    path = _write(tmp_path / "roles.json", [item])
    with pytest.raises(ValueError, match=r"roles\.json: item 0: roles must alternate"):
        read_sharegpt(path)


def test_sharegpt_empty_content_and_unknown_role(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="item 0: 'conversations' must be a non-empty list"):
        read_sharegpt(_write(tmp_path / "a.json", [{"images": []}]))
    item = _item(0, 0)
    item["messages"][1]["content"] = "  "
    with pytest.raises(ValueError, match="item 0: message 1 has empty"):
        read_sharegpt(_write(tmp_path / "a.json", [item]))
    item["messages"][1] = {"role": "bot", "content": "A"}
    with pytest.raises(ValueError, match="message 1 has role 'bot'"):
        read_sharegpt(_write(tmp_path / "a.json", [item]))


def test_sharegpt_from_value_variant(tmp_path: Path) -> None:
    item = {
        "conversations": [
            {"from": "system", "value": "You watch egocentric videos."},
            {"from": "human", "value": f"{IMAGE_PLACEHOLDER}What happens next?"},
            {"from": "gpt", "value": "C"},
        ],
        "images": ["f.jpg"],
    }
    (sample,) = read_sharegpt(_write(tmp_path / "lf.json", [item]), image_root=tmp_path)
    assert [m["role"] for m in sample.messages] == ["system", "user", "assistant"]
    assert sample.answer == "C" and sample.images == [tmp_path / "f.jpg"] and sample.domain is None


# ----------------------------------------------------------------------------------------------------
# Prompt


def test_closeqa_prompt(testbed: list) -> None:
    item = next(i for i in testbed if i.dataset == "ENIGMA")
    prompt = closeqa_prompt(item)
    assert prompt.startswith("Please carefully read the question and its options")
    assert f"Question: {item.question}\n\nOptions:\n" in prompt
    lines = prompt.split("\n")
    for option in item.options[:3]:
        assert option in lines
    assert f"\n{item.options[3]}The original FPS of the video is {item.original_fps}. " in prompt
    assert "This image set is obtained by sampling at 0.5 fps.Respond in JSON format" in prompt
    assert "'prediction' (the correct option letter: A, B, C, or D)" in prompt
    assert json.loads(prompt[prompt.index("{") :])["prediction"] == "B"

    surgery = next(i for i in testbed if i.dataset == "EgoSurgery")
    assert "sampling at 1.0 fps." in closeqa_prompt(surgery)
    assert "sampling at 0.5 fps." in closeqa_prompt(surgery, rule="official")
    png = next(i for i in testbed if i.dataset == "CholecTrack20" and i.frames[0].suffix == ".png")
    assert "sampling at 1.0 fps." in closeqa_prompt(png, rule="official")


def test_testbed_validation(tmp_path: Path) -> None:
    good = {
        "id": 7,
        "dataset": "EgoPet",
        "primary_category": "Identification",
        "question_type": "animal identification",
        "question_text": "Which animal?",
        "options": ["A: cat", "B: dog", "C: cow", "D: owl"],
        "original_video_fps": 30.0,
        "video_path": ["/egocross_testbed/EgoPet/1/f0.jpg"],
    }
    (item,) = read_testbed(_write(tmp_path / "t.json", [good]))
    assert item.domain == "Animal" and sampling_fps(item) == 0.5
    for key, value, message in [
        ("options", ["A: cat", "C: dog", "B: cow", "D: owl"], "item 7: option 'C: dog' does not start"),
        ("options", ["A: cat", "B: dog", "C: cow"], "item 7: expected 4 options"),
        ("video_path", [], "item 7: video_path must be a non-empty list"),
        ("original_video_fps", "30", "item id 7: original_video_fps must be a positive number"),
        ("dataset", "EgoCat", "item 7: unknown EgoCross dataset 'EgoCat'"),
    ]:
        with pytest.raises(ValueError, match=rf"t\.json: {message}"):
            read_testbed(_write(tmp_path / "t.json", [{**good, key: value}]))
    with pytest.raises(ValueError, match=r"t\.json: duplicate ids \[7\]"):
        read_testbed(_write(tmp_path / "t.json", [good, good]))


def test_support_validation(tmp_path: Path) -> None:
    good = {"domain": "industry", "question": "Q?\nA. a\nB. b", "answer": "A", "images": ["x.jpg"]}
    (sample,) = read_support_flattened(_write(tmp_path / "s.json", [good]))
    assert isinstance(sample, ShareGPTSample) and sample.id == "s.json#0"
    with pytest.raises(ValueError, match=r"s\.json: item 0: answer must be one of"):
        read_support_flattened(_write(tmp_path / "s.json", [{**good, "answer": "E"}]))
    with pytest.raises(ValueError, match="item 0: unknown domain 'kitchen'"):
        read_support_flattened(_write(tmp_path / "s.json", [{**good, "domain": "kitchen"}]))


# ----------------------------------------------------------------------------------------------------
# Frames


def test_load_frames_sizes_and_rgb(tmp_path: Path) -> None:
    big = _image(tmp_path / "big.jpg", (1000, 800))
    small = _image(tmp_path / "small.png", (100, 50), mode="RGBA")
    thin = _image(tmp_path / "thin.png", (10, 400), mode="L")
    out = load_frames([big, small, thin], max_pixels=360000, min_pixels=0)
    # 1000x800 > 360000: factor sqrt(0.45) = 0.6708 -> 670.8 x 536.7 -> 670 x 536; 10 px side -> 28
    assert [im.size for im in out] == [(670, 536), (100, 50), (28, 400)]
    assert all(im.mode == "RGB" for im in out)
    # 100x50 < 50176: factor sqrt(10.0352) = 3.1678 -> 316.8 x 158.4 -> 316 x 158
    (up,) = load_frames([small], max_pixels=360000, min_pixels=50176)
    assert up.size == (316, 158) and up.mode == "RGB"
    assert rescaled_size(1000, 800, 360000, 50176) == (670, 536)
    assert rescaled_size(5, 2000, 10**7, 0) == (28, 2000)
    assert rescaled_size(3, 1000, 10**7, 0) == (28, 1000)
    assert rescaled_size(30, 7000, 10**8, 0) == (30, 5400)  # over 200:1 -> cut to 180:1


def test_load_frames_keeps_content(tmp_path: Path) -> None:
    path = tmp_path / "red.png"
    Image.new("RGBA", (64, 48), (255, 0, 0, 255)).save(path)
    (im,) = load_frames([path], max_pixels=10**6, min_pixels=0)
    assert im.size == (64, 48) and (np.asarray(im) == [255, 0, 0]).all()


def test_load_frames_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jpg"
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        load_frames([missing], 360000, 50176)
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(np.random.default_rng(0).bytes(512))
    with pytest.raises(ValueError, match="cannot read frame .*corrupt.jpg"):
        load_frames([corrupt], 360000, 50176)
    sample = ShareGPTSample("s7", 0, [], [corrupt], "Animal")
    with pytest.raises(ValueError, match="sample s7: cannot read frame .*corrupt.jpg"):
        load_item_frames(sample, 360000, 50176)
    kept, skipped = drop_bad_items([sample], bad_items="skip", verify=True)
    assert kept == [] and skipped == ["s7"]
    assert drop_bad_items([sample], bad_items="skip") == ([sample], [])  # present; not opened without verify
    with pytest.raises(ValueError, match="sample s7: cannot read frame"):
        drop_bad_items([sample], verify=True)
    with pytest.raises(ValueError, match="bad_items must be"):
        drop_bad_items([sample], bad_items="drop")  # type: ignore[arg-type]
