"""Qwen-VL wrapper: what trains (LoRA on the language model's linears, or full with the vision frozen),
loading a saved folder through from_pretrained, config errors, the FSDP wrapping units."""

import pytest
import torch
from tiny_qwen import TINY_CONFIG, tiny_qwen
from torch import nn

from egolab.models.qwen_vl import QwenVL, fsdp_strategy, language_model_linear_pattern

LANGUAGE_LINEARS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def _batch(model: QwenVL, length: int = 12) -> dict:
    vocab = TINY_CONFIG["text_config"]["vocab_size"]
    ids = torch.randint(10, vocab, (2, length))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def test_lora_goes_on_every_language_model_linear_and_nowhere_else():
    model = tiny_qwen(lora={"r": 4, "alpha": 8, "dropout": 0.0})
    adapted = {
        name.removesuffix(".lora_A") for name, _ in model.net.named_modules() if name.endswith(".lora_A")
    }
    layers = TINY_CONFIG["text_config"]["num_hidden_layers"]
    assert len(adapted) == layers * len(LANGUAGE_LINEARS)
    assert all(".language_model.layers." in name for name in adapted)
    assert {name.rsplit(".", 1)[-1] for name in adapted} == LANGUAGE_LINEARS
    trainable = [(n, p) for n, p in model.net.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and p.dtype == torch.float32 for n, p in trainable)
    assert 2 * layers * len(LANGUAGE_LINEARS) == len(trainable)  # lora_A and lora_B of each


def test_lora_adapters_stay_float32_under_a_bf16_base():
    model = tiny_qwen(lora={"r": 4, "alpha": 8}, dtype="bfloat16")
    dtypes = {(p.requires_grad, p.dtype) for p in model.net.parameters()}
    assert dtypes == {(True, torch.float32), (False, torch.bfloat16)}


def test_full_fine_tuning_freezes_the_vision_tower_unless_asked():
    model = tiny_qwen()
    frozen = {n for n, p in model.net.named_parameters() if not p.requires_grad}
    trained = {n for n, p in model.net.named_parameters() if p.requires_grad}
    assert frozen and all(".visual." in f".{n}" for n in frozen)
    assert any("embed_tokens" in n for n in trained) and any("lm_head" in n for n in trained)
    assert not any(".visual." in f".{n}" for n in trained)
    everything = tiny_qwen(train_vision=True)
    assert all(p.requires_grad for p in everything.net.parameters())


def test_pattern_names_the_language_model_linears():
    model = tiny_qwen()
    pattern = language_model_linear_pattern(model.net)
    assert pattern.startswith(r".*\.language_model\.")
    assert all(name in pattern for name in LANGUAGE_LINEARS) and "lm_head" not in pattern


def test_from_pretrained_folder_reproduces_the_saved_model(tmp_path):
    """The real loading path (from_pretrained on a folder) gives the saved weights back."""
    model = tiny_qwen()
    model.net.save_pretrained(tmp_path / "tiny")
    loaded = QwenVL(pretrained=str(tmp_path / "tiny"), dtype="float32", gradient_checkpointing=False)
    assert not loaded.built
    loaded.build()
    batch = _batch(model)
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(batch), loaded(batch))


def test_loss_backpropagates_through_lora_only():
    model = tiny_qwen(lora={"r": 4, "alpha": 8})
    model(_batch(model)).backward()
    grads = [n for n, p in model.net.named_parameters() if p.grad is not None]
    assert grads and all("lora_" in n for n in grads)


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = tiny_qwen(gradient_checkpointing=False)
    checkpointed = QwenVL(pretrained=None, config=TINY_CONFIG, dtype="float32", gradient_checkpointing=True)
    checkpointed.build()
    checkpointed.net.load_state_dict(plain.net.state_dict())
    batch = _batch(plain)
    plain(batch).backward()
    checkpointed.train()
    checkpointed(batch).backward()
    for (name, a), (_, b) in zip(
        plain.net.named_parameters(), checkpointed.net.named_parameters(), strict=True
    ):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, msg=name)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"architecture": "llava"}, "architecture"),
        ({"dtype": "float8"}, "dtype"),
        ({"pretrained": None, "config": None}, "model.config"),
        ({"lora": {"r": 8}}, "r and alpha"),
        ({"lora": {"r": 8, "alpha": 16, "rank": 3}}, "allowed keys"),
    ],
)
def test_bad_settings_fail_when_composed(kwargs, message):
    with pytest.raises(ValueError, match=message):
        QwenVL(**kwargs)


def test_unbuilt_model_says_so():
    with pytest.raises(RuntimeError, match="build"):
        QwenVL()({"input_ids": None})


def test_fsdp_units_are_decoder_layers_and_the_vision_model():
    strategy = fsdp_strategy()
    policy = strategy.kwargs["auto_wrap_policy"]
    names = {cls.__name__ for cls in policy._module_classes}
    assert names == {
        "Qwen3VLTextDecoderLayer",
        "Qwen3VLVisionModel",
        "Qwen2_5_VLDecoderLayer",
        "Qwen2_5_VisionTransformerPretrainedModel",
    }
    model = tiny_qwen()
    units = [m for m in model.net.modules() if type(m) in policy._module_classes]
    layers = TINY_CONFIG["text_config"]["num_hidden_layers"]
    assert len(units) == layers + 1
    for unit in units:  # no unit mixes frozen and trained parameters (FSDP flattens each unit)
        assert len({p.requires_grad for p in unit.parameters()}) == 1
    assert isinstance(model.net.lm_head, nn.Linear)


def test_qwen25_vl_option_trains_and_scores_through_the_same_collator(vqa_demo):
    """architecture=qwen2_5_vl: a tiny Qwen2.5-VL (patch 14) with LoRA takes the same batches."""
    from transformers import AutoProcessor, Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    from egolab.data.vqa import (
        ConversationDataset,
        QwenVLCollator,
        TestbedDataset,
        read_sharegpt,
        read_testbed,
    )

    tokenizer = AutoProcessor.from_pretrained(vqa_demo / "processor").tokenizer
    vision = {"patch_size": 14, "merge_size": 2, "temporal_patch_size": 2, "image_mean": [0.5] * 3}
    vision["image_std"] = [0.5] * 3
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(**vision, min_pixels=28 * 28, max_pixels=112 * 112),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(**vision),
    )
    text = {
        key: TINY_CONFIG["text_config"][key] for key in ("vocab_size", "hidden_size", "intermediate_size")
    }
    config = {
        **{key: TINY_CONFIG[key] for key in TINY_CONFIG if key.endswith("_token_id")},
        "text_config": {
            **text,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
        },
        "vision_config": {
            "depth": 2,
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_heads": 4,
            "out_hidden_size": 64,
            "patch_size": 14,
            "window_size": 56,
            "fullatt_block_indexes": [1],
        },
    }
    model = tiny_qwen(architecture="qwen2_5_vl", config=config, lora={"r": 4, "alpha": 8})
    assert type(model.net.base_model.model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    samples = read_sharegpt(vqa_demo / "train.json")[:2]
    train = QwenVLCollator(processor, training=True, system_prompt="You are a helpful assistant.")
    dataset = ConversationDataset(samples, 4096, 1024)
    loss = model(train([dataset[0], dataset[1]]))
    assert torch.isfinite(loss) and loss.requires_grad
    items = TestbedDataset(read_testbed(vqa_demo / "test_testbed.json")[:2], None, 4096, 1024)
    batch = QwenVLCollator(processor, training=False, answer_prefix='{"prediction": "')([items[0], items[1]])
    probs = model.letter_probs(batch)
    assert probs.shape == (2, 4) and torch.allclose(probs.sum(1), torch.ones(2))
    assert [len(row) for row in model.generate(batch, 3, eos_token_id=-1, pad_token_id=0)] == [3, 3]
