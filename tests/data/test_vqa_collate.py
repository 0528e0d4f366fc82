"""Qwen-VL encoding of EgoCross conversations: ChatML pieces, answer-only labels, image / video tokens,
padding sides, the letter-scoring inputs, and the data module on the generated demo."""

import json

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor

from egolab.data.vqa import (
    IGNORE_INDEX,
    THINK_PREFIX,
    QwenVLCollator,
    TestbedDataset,
    VQADataModule,
    chatml_pieces,
    letter_candidates,
    letter_prompt,
    read_testbed,
)

REPLY = '{"prediction": "B"}'


@pytest.fixture(scope="module")
def processor(vqa_demo):
    return AutoProcessor.from_pretrained(vqa_demo / "processor")


def _frame(colour=(200, 30, 30), size=64) -> Image.Image:
    return Image.new("RGB", (size, size), colour)


def _example(images=2, answer=REPLY, item_id="x1") -> dict:
    messages = [{"role": "user", "content": "<image>" * images + "Which colour?\nA) red\nB) green"}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return {"id": item_id, "messages": messages, "images": [_frame()] * images, "video": None, "meta": {}}


def test_chatml_pieces_follow_the_qwen3_vl_templates():
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q"},
        {"role": "assistant", "content": "A"},
    ]
    assert chatml_pieces(messages) == [
        ("<|im_start|>system\nS<|im_end|>\n", False),
        ("<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n", False),
        ("A<|im_end|>\n", True),
    ]
    assert chatml_pieces(messages, "think")[-2:] == [
        ("<think>\n\n</think>\n\n", True),
        ("A<|im_end|>\n", True),
    ]
    with pytest.raises(ValueError, match="template"):
        chatml_pieces(messages, "qwen2")


def test_training_labels_cover_the_answer_only(processor):
    batch = QwenVLCollator(processor, training=True)([_example(2), _example(1, answer='{"prediction": "D"}')])
    tokenizer = processor.tokenizer
    for row, answer in zip(range(2), (REPLY, '{"prediction": "D"}'), strict=True):
        labels = batch["labels"][row]
        kept = labels[labels != IGNORE_INDEX].tolist()
        assert tokenizer.decode(kept) == answer + "<|im_end|>\n"
        ids = batch["input_ids"][row][batch["attention_mask"][row].bool()].tolist()
        assert ids[-len(kept) :] == kept  # the labels are the last tokens, in place
        assert tokenizer.decode(ids[: -len(kept)]).endswith("<|im_end|>\n<|im_start|>assistant\n")
    # right padding: the shorter (one-image) row ends in padding with -100 labels
    assert batch["attention_mask"][1, -1] == 0 and batch["labels"][1, -1] == IGNORE_INDEX
    assert batch["attention_mask"][0].all()
    # 64x64 frames: a (1, 4, 4) grid of patches, 4 tokens after the 2x2 merge
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4]] * 3
    image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (batch["input_ids"] == image_pad).sum(1).tolist() == [8, 4]
    assert torch.equal(batch["mm_token_type_ids"] == 1, batch["input_ids"] == image_pad)
    assert batch["pixel_values"].shape[0] == 3 * 16


def test_think_template_trains_an_empty_think_block(processor):
    batch = QwenVLCollator(processor, training=True, template="think")([_example()])
    labels = batch["labels"][0]
    assert processor.tokenizer.decode(labels[labels != IGNORE_INDEX]) == THINK_PREFIX + REPLY + "<|im_end|>\n"


def test_system_prompt_is_prepended_and_not_trained(processor):
    batch = QwenVLCollator(processor, training=True, system_prompt="You are a helpful assistant.")(
        [_example()]
    )
    text = processor.tokenizer.decode(batch["input_ids"][0])
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n")


def test_evaluation_batches_are_left_padded_with_letter_scoring_inputs(processor):
    collate = QwenVLCollator(processor, training=False, answer_prefix='{"prediction": "')
    batch = collate([_example(2, answer=None), _example(1, answer=None)])
    assert "labels" not in batch
    assert batch["attention_mask"][1, 0] == 0 and batch["attention_mask"][:, -1].all()
    tokenizer = processor.tokenizer
    assert tokenizer.decode(batch["input_ids"][0]).endswith("<|im_start|>assistant\n")
    context = tokenizer.decode(batch["score_input_ids"][0, -len(collate.score_context) :])
    letters = [tokenizer.decode(t) for t in batch["letter_token_ids"]]
    assert all((context + letter).startswith('{"prediction":') for letter in letters)
    assert [(context + letter)[-1] for letter in letters] == ["A", "B", "C", "D"]
    assert torch.equal(batch["score_input_ids"][:, : -len(collate.score_context)], batch["input_ids"])


def test_letter_candidates_find_where_the_letters_part():
    class CharTokenizer:  # one token per character, ids = code points
        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}

    class QuoteMergingTokenizer:  # like Qwen's pre-tokenizer, a quote sticks to the letter after it
        def __call__(self, text, add_special_tokens=False):
            head, letter = text[:-2], text[-2:]
            return {"input_ids": [ord(c) for c in head] + [1000 + ord(letter[1])]}

    context, letters = letter_candidates(CharTokenizer(), 'x: "')
    assert context == [ord(c) for c in 'x: "'] and letters == [65, 66, 67, 68]
    context, letters = letter_candidates(QuoteMergingTokenizer(), 'x: "')
    assert context == [ord(c) for c in "x: "] and letters == [1065, 1066, 1067, 1068]


def test_video_mode_writes_timestamps_and_video_tokens(processor):
    example = {
        "id": "v1",
        "messages": [{"role": "user", "content": "<video>Where does it move?"}],
        "images": [],
        "video": ([_frame(), _frame((0, 0, 200)), _frame(), _frame()], 0.5),
        "meta": {},
    }
    batch = QwenVLCollator(processor, training=False)([example])
    text = processor.tokenizer.decode(batch["input_ids"][0])
    # 4 frames at 0.5 fps in groups of 2: timestamps are the groups' mean times, 1 s and 5 s
    assert "<1.0 seconds><|vision_start|>" in text and "<5.0 seconds><|vision_start|>" in text
    assert batch["video_grid_thw"].tolist() == [[2, 4, 4]] and "pixel_values" not in batch
    assert (batch["mm_token_type_ids"] == 2).sum() == 8


def test_bad_examples_name_the_item(processor):
    collate = QwenVLCollator(processor, training=True, cutoff_len=20)
    with pytest.raises(ValueError, match="item x1: .* tokens exceed cutoff_len 20"):
        collate([_example()])
    extra = _example()
    extra["images"] = extra["images"] + [_frame()]
    with pytest.raises(ValueError, match="item x1: 1 images left over"):
        QwenVLCollator(processor, training=True)([extra])
    with pytest.raises(ValueError, match="end with the user's turn"):
        QwenVLCollator(processor, training=False)([_example()])


def test_testbed_dataset_prompts_and_answers(vqa_demo):
    items = read_testbed(vqa_demo / "test_testbed.json")
    answers = {a["id"]: a for a in json.loads((vqa_demo / "test_answers.json").read_text())}
    assert letter_prompt(items[0]) == (
        "What is the colour of the tool held in this clip?\nA) red\nB) green\nC) blue\nD) yellow"
    )
    dataset = TestbedDataset(items, answers, 4096, 1024, prompt_style="letter")
    example = dataset[0]
    assert example["messages"][0]["content"] == "<image><image>" + letter_prompt(items[0])
    assert example["meta"]["answer"] == answers[items[0].id]["correct_option_letter"]
    assert example["meta"]["question_id"] == answers[items[0].id]["question_id"]
    video = TestbedDataset(items, None, 4096, 1024, frames_as="video")[0]
    assert video["messages"][0]["content"].startswith("<video>Please carefully read")
    assert len(video["video"][0]) == 2 and video["video"][1] == 1.0  # CholecTrack20 .png frames: 1 fps
    with pytest.raises(ValueError, match="have no answer"):
        TestbedDataset(items, {}, 4096, 1024)
    with pytest.raises(ValueError, match="prompt_style"):
        TestbedDataset(items, None, 4096, 1024, prompt_style="free")


def test_data_module_on_the_demo_filters_a_domain(vqa_demo):
    module = VQADataModule(
        processor=str(vqa_demo / "processor"),
        root=vqa_demo,
        train_files=["train.json"],
        val_file="val_testbed.json",
        val_answers="val_answers.json",
        domain="xsports",
        image_max_pixels=4096,
        image_min_pixels=1024,
        batch_size=4,
        answer_prefix='{"prediction": "',
    )
    module.setup("fit")
    assert len(module.datasets["train"]) == 96 and len(module.datasets["val"]) == 16
    assert {s.domain for s in module.datasets["train"].samples} == {"XSports"}
    batch = next(iter(module.train_dataloader()))
    assert batch["input_ids"].shape[0] == 4 and (batch["labels"] != IGNORE_INDEX).any()
    val = next(iter(module.val_dataloader()))
    assert {m["dataset"] for m in val["meta"]} == {"ExtremeSportFPV"}
    with pytest.raises(ValueError, match="fitting needs data.train_files"):
        VQADataModule(processor=str(vqa_demo / "processor"), root=vqa_demo).setup("fit")


def test_data_module_skips_or_names_items_with_bad_frames(vqa_demo, tmp_path):
    items = json.loads((vqa_demo / "val_testbed.json").read_text())
    items[0]["video_path"][0] = "frames/missing.png"
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not a png")
    items[1]["video_path"][1] = str(corrupt)
    for item in items:
        item["video_path"] = [p if p.startswith("/") else str(vqa_demo / p) for p in item["video_path"]]
    (tmp_path / "val.json").write_text(json.dumps(items))

    def module(bad_items):
        return VQADataModule(
            processor=str(vqa_demo / "processor"),
            root=tmp_path,
            train_files=[str(vqa_demo / "train_surgery.json")],
            val_file="val.json",
            bad_items=bad_items,
            image_max_pixels=4096,
            image_min_pixels=1024,
        )

    skipping = module("skip")
    skipping.setup("fit")
    assert skipping.skipped["val"] == [str(items[0]["id"]), str(items[1]["id"])]
    assert len(skipping.datasets["val"]) == len(items) - 2
    with pytest.raises(FileNotFoundError, match=f"testbed item {items[0]['id']}: frame not found"):
        module("error").setup("fit")
