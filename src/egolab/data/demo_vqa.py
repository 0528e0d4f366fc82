"""Synthetic EgoCross-style QA in the official formats, and a tiny Qwen3-VL processor, made on first use.

Writes, under ``root``:

* ``frames/<Dataset>/<item>/frame_<k>.png``: ``num_frames`` small frames per question;
* ``train.json`` (the challenge's ShareGPT: ``messages``, ``images``, ``domain``) and
  ``train_<domain>.json`` per domain, with absolute frame paths, as ``scripts/prepare_data.py`` writes them;
* ``{val,test}_testbed.json`` in the testbed format (``id, dataset, primary_category, question_type,
  question_text, options, original_video_fps, video_path``; frame paths relative to the json, which the
  readers join onto its folder) and ``{val,test}_answers.json`` (``id, correct_option_letter,
  answer_text, question_id``);
* ``processor/``: a Qwen3-VL processor (the real ``Qwen3VLProcessor`` with its image and video processors)
  around a byte-level BPE tokenizer trained on the demo text with the Qwen special tokens, loadable with
  ``AutoProcessor.from_pretrained``; nothing is downloaded.

One question type per domain, each with a planted answer in the frames (the option order is fixed per
domain, the correct letter is balanced): Surgery: the colour of the held tool (a square); Industry: how
many parts (squares in 1-4 of the quadrants); XSports: which way the object moves between the first and
the last frame; Animal: which shape appears. Training replies are the official CloseQA json
(``{"prediction": "B"}``), so the trained model is scored with the official extraction rule.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf
from PIL import Image

from egolab.data.vqa import IMAGE_PLACEHOLDER, TestbedItem, closeqa_prompt

DEMO_DEFAULTS: dict[str, Any] = {
    "num_items": {"train": 96, "val": 16, "test": 32},  # per domain and split, multiples of 4
    "num_frames": 2,
    "size": 64,  # frame side (pixels): 16 patches of 16 px, 4 tokens after the 2x2 merge
    "vocab_size": 600,
    "seed": 0,
}
"""Default generator parameters (keyword arguments of :func:`make_demo_vqa`)."""

FORMAT_VERSION = 1
MARKER = "demo_params.json"
SPLITS = ("train", "val", "test")
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (235, 220, 40)}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
SHAPES = ("square", "cross", "ring", "bar")
# domain -> (source dataset, primary category, question type, question, option texts in A-D order)
QUESTIONS = {
    "Surgery": (
        "CholecTrack20",
        "Identification",
        "dominant held-object identification",
        "What is the colour of the tool held in this clip?",
        tuple(COLOURS),
    ),
    "Industry": (
        "ENIGMA",
        "Counting",
        "object counting",
        "How many parts appear on the workbench?",
        ("1", "2", "3", "4"),
    ),
    "XSports": (
        "ExtremeSportFPV",
        "Prediction",
        "next direction prediction",
        "In which direction is the rider moving?",
        tuple(DIRECTIONS),
    ),
    "Animal": (
        "EgoPet",
        "Identification",
        "animal identification",
        "Which animal shape is seen by the pet?",
        SHAPES,
    ),
}
LETTERS = ("A", "B", "C", "D")


def _square(frame: np.ndarray, x: int, y: int, side: int, colour: tuple[int, int, int]) -> None:
    frame[y : y + side, x : x + side] = colour


def _shape(frame: np.ndarray, shape: str, x: int, y: int, side: int, colour: tuple[int, int, int]) -> None:
    patch = np.zeros((side, side), bool)
    third = side // 3
    if shape == "square":
        patch[:] = True
    elif shape == "cross":
        patch[third : side - third, :] = True
        patch[:, third : side - third] = True
    elif shape == "ring":
        patch[:] = True
        patch[third : side - third, third : side - third] = False
    else:  # bar
        patch[third : side - third, :] = True
    frame[y : y + side, x : x + side][patch] = colour


def _frames(domain: str, answer: int, rng: np.random.Generator, params: dict) -> list[np.ndarray]:
    """The frames of one question whose correct option is ``answer`` (0-3)."""
    size, count = params["size"], params["num_frames"]
    background = rng.integers(70, 120, 3)
    frames = [np.tile(background, (size, size, 1)).astype(np.uint8) for _ in range(count)]
    for frame in frames:
        frame += rng.integers(0, 12, frame.shape, dtype=np.uint8)
    half = size // 2
    if domain == "Surgery":
        colour = list(COLOURS.values())[answer]
        for frame in frames:
            x, y = rng.integers(4, size - 28, 2)
            _square(frame, int(x), int(y), 24, colour)
    elif domain == "Industry":
        quadrants = rng.permutation(4)[: answer + 1]
        for q in quadrants:
            x, y = (q % 2) * half + 6, (q // 2) * half + 6
            for frame in frames:
                _square(frame, int(x), int(y), 20, (235, 235, 235))
    elif domain == "XSports":
        dx, dy = list(DIRECTIONS.values())[answer]
        start = np.array([half, half]) - 10 - np.array([dx, dy]) * 16 + rng.integers(-3, 4, 2)
        for k, frame in enumerate(frames):
            t = k / max(count - 1, 1)
            x, y = start + np.array([dx, dy]) * 32 * t
            _square(frame, int(x), int(y), 20, (240, 240, 240))
    else:
        colour = tuple(int(c) for c in rng.integers(180, 256, 3))
        for frame in frames:
            x, y = rng.integers(4, size - 28, 2)
            _shape(frame, SHAPES[answer], int(x), int(y), 24, colour)
    return frames


def _items(split: str, params: dict, rng: np.random.Generator, root: Path) -> list[dict]:
    """Testbed-format items (with their answers) of one split, frames written under ``root/frames``."""
    items = []
    for domain, (dataset, category, qtype, question, options) in QUESTIONS.items():
        count = params["num_items"][split]
        answers = rng.permutation(np.arange(count) % 4)
        for k, answer in enumerate(answers):
            uid = f"{split}_{domain.lower()}_{k:03d}"
            folder = root / "frames" / dataset / uid
            folder.mkdir(parents=True, exist_ok=True)
            paths = []
            for j, frame in enumerate(_frames(domain, int(answer), rng, params)):
                path = folder / f"frame_{j}.png"
                Image.fromarray(frame).save(path)
                paths.append(path.relative_to(root).as_posix())
            items.append(
                {
                    "id": len(items),
                    "dataset": dataset,
                    "primary_category": category,
                    "question_type": qtype,
                    "question_text": question,
                    "options": [f"{letter}: {text}" for letter, text in zip(LETTERS, options, strict=True)],
                    "original_video_fps": 30,
                    "video_path": paths,
                    "correct_option_letter": LETTERS[int(answer)],
                    "answer_text": options[int(answer)],
                    "question_id": f"{dataset}_{uid}",
                    "domain": domain,
                }
            )
    return items


def _reply(letter: str) -> str:
    return json.dumps({"prediction": letter})


def _sharegpt(items: list[dict], root: Path) -> list[dict]:
    """The challenge's ShareGPT rows for items: the official CloseQA prompt after the frames, json reply."""
    rows = []
    for item in items:
        testbed_item = TestbedItem(
            id=item["id"],
            dataset=item["dataset"],
            domain=item["domain"],
            primary_category=item["primary_category"],
            question_type=item["question_type"],
            question=item["question_text"],
            options=tuple(item["options"]),
            original_fps=float(item["original_video_fps"]),
            frames=tuple(root / p for p in item["video_path"]),
        )
        rows.append(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": IMAGE_PLACEHOLDER * len(item["video_path"]) + closeqa_prompt(testbed_item),
                    },
                    {"role": "assistant", "content": _reply(item["correct_option_letter"])},
                ],
                "images": [str(root / p) for p in item["video_path"]],
                "domain": item["domain"].lower(),
            }
        )
    return rows


def build_tiny_processor(texts: list[str], out_dir: str | os.PathLike, vocab_size: int = 600) -> Path:
    """Save a Qwen3-VL processor with a byte-level BPE tokenizer trained on ``texts`` (offline).

    The image processor is Qwen3-VL's (patch 16, temporal patch 2, merge 2, mean/std 0.5) limited to
    32x32 .. 64x64 pixels; the video processor takes up to 4 such frames per group.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        Qwen2TokenizerFast,
        Qwen2VLImageProcessor,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(texts, trainer)
    tokenizer = Qwen2TokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    vision = {
        "patch_size": 16,
        "merge_size": 2,
        "temporal_patch_size": 2,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    }
    processor = Qwen3VLProcessor(
        image_processor=Qwen2VLImageProcessor(
            **vision, size={"shortest_edge": 32 * 32, "longest_edge": 64 * 64}
        ),
        tokenizer=tokenizer,
        video_processor=Qwen3VLVideoProcessor(
            **vision, size={"shortest_edge": 32 * 32, "longest_edge": 4 * 64 * 64}
        ),
        chat_template=CHAT_TEMPLATE,
    )
    out = Path(out_dir)
    processor.save_pretrained(out)
    return out


def make_demo_vqa(root: str | os.PathLike, **overrides: Any) -> Path:
    """Create the demo data and processor under ``root`` (idempotent) and return ``root``.

    Keyword arguments override :data:`DEMO_DEFAULTS`. Generation is deterministic given the parameters
    and is skipped when ``root/demo_params.json`` (written last) records the same parameters.
    """
    unknown = sorted(set(overrides) - set(DEMO_DEFAULTS))
    if unknown:
        raise TypeError(f"unknown demo parameters {unknown}")
    plain = {k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v for k, v in overrides.items()}
    params = json.loads(json.dumps({**DEMO_DEFAULTS, **plain, "format_version": FORMAT_VERSION}))
    if any(params["num_items"][s] % 4 for s in SPLITS):
        raise ValueError(f"num_items per split must be multiples of 4, got {params['num_items']}")
    root = Path(root).absolute()
    marker = root / MARKER
    if marker.is_file() and json.loads(marker.read_text()) == params:
        return root
    marker.unlink(missing_ok=True)
    rng = np.random.default_rng(params["seed"])
    texts = []
    for split in SPLITS:
        items = _items(split, params, rng, root)
        if split == "train":
            rows = _sharegpt(items, root)
            (root / "train.json").write_text(json.dumps(rows, indent=1))
            for domain in QUESTIONS:
                own = [r for r in rows if r["domain"] == domain.lower()]
                (root / f"train_{domain.lower()}.json").write_text(json.dumps(own, indent=1))
            texts += [m["content"] for r in rows for m in r["messages"]]
            continue
        answer_keys = ("id", "correct_option_letter", "answer_text", "question_id", "dataset")
        testbed = [
            {k: v for k, v in item.items() if k not in (*answer_keys[1:4], "domain")} for item in items
        ]
        (root / f"{split}_testbed.json").write_text(json.dumps(testbed, indent=1))
        answers = [{k: item[k] for k in answer_keys} for item in items]
        (root / f"{split}_answers.json").write_text(json.dumps(answers, indent=1))
    build_tiny_processor(texts, root / "processor", params["vocab_size"])
    marker.write_text(json.dumps(params, indent=1, sort_keys=True))
    return root
