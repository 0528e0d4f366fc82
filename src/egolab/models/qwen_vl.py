"""Qwen-VL (Qwen3-VL or Qwen2.5-VL) for EgoCross: HF ``*ForConditionalGeneration`` plus optional peft LoRA.

The network is built in :meth:`QwenVL.build` (called from the task's ``configure_model``), not in the
constructor, so that composing an experiment does not download or allocate a 4B model, and so that a
sharding strategy (FSDP) can wrap it as it is made. ``pretrained`` is a hub name or a local folder loaded
with ``from_pretrained``; ``pretrained: null`` builds random weights from ``config`` (the offline tests and
the demo do this, with a processor saved by :mod:`egolab.data.demo_vqa`).

What is trained follows LLaMA-Factory's defaults for the challenge recipes: the vision tower and its merger
are frozen; with ``lora`` the language model is frozen too and adapters go on every linear layer of the
language model (``lora_target: all`` minus the vision tower and ``lm_head``), with trainable weights kept in
float32; without ``lora`` the whole language model (and ``lm_head``) is trained.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

ARCHITECTURES = {
    "qwen3_vl": ("Qwen3VLForConditionalGeneration", "Qwen3VLConfig"),
    "qwen2_5_vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLConfig"),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
LORA_KEYS = {"r", "alpha", "dropout", "target_modules"}
# Inputs the HF model takes from a collated batch (see egolab.data.vqa.QwenVLCollator).
MODEL_INPUTS = (
    "input_ids",
    "attention_mask",
    "mm_token_type_ids",
    "pixel_values",
    "image_grid_thw",
    "pixel_values_videos",
    "video_grid_thw",
)


def _transformers_class(name: str) -> type:
    import transformers

    return getattr(transformers, name)


def language_model_linear_pattern(net: nn.Module) -> str:
    """A peft ``target_modules`` regex matching every ``nn.Linear`` of the language model (not ``lm_head``,
    not the vision tower): LLaMA-Factory's ``lora_target: all`` with the vision tower frozen."""
    names = sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, m in _language_model(net).named_modules()
            if isinstance(m, nn.Linear)
        }
    )
    if not names:
        raise ValueError("the language model has no nn.Linear layers to put LoRA on")
    return r".*\.language_model\..*\.(" + "|".join(map(re.escape, names)) + r")$"


def _plain(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """A plain dict of a mapping that may be an OmegaConf node (HF configs reject those)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(mapping, resolve=True) if OmegaConf.is_config(mapping) else dict(mapping)


def _language_model(net: nn.Module) -> nn.Module:
    inner = getattr(net, "model", None)
    language_model = getattr(inner, "language_model", None)
    if language_model is None:
        raise ValueError(f"{type(net).__name__} has no .model.language_model")
    return language_model


class QwenVL(nn.Module):
    """A Qwen-VL model for conditional generation, built on :meth:`build`.

    ``lora`` (``r``, ``alpha``, ``dropout``, optional ``target_modules`` regex or list; default: every linear
    layer of the language model) trains adapters only; ``null`` is full fine-tuning. ``train_vision`` also
    trains the vision tower and merger (LLaMA-Factory freezes them by default).
    """

    def __init__(
        self,
        pretrained: str | None = "Qwen/Qwen3-VL-4B-Instruct",
        architecture: str = "qwen3_vl",
        config: Mapping[str, Any] | None = None,
        dtype: str = "bfloat16",
        attn_implementation: str = "sdpa",
        lora: Mapping[str, Any] | None = None,
        train_vision: bool = False,
        gradient_checkpointing: bool = True,
    ) -> None:
        super().__init__()
        if architecture not in ARCHITECTURES:
            raise ValueError(
                f"model.architecture must be one of {sorted(ARCHITECTURES)}, got {architecture!r}"
            )
        if dtype not in DTYPES:
            raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if pretrained is None and not config:
            raise ValueError("model.pretrained is null: give model.config to build random weights")
        if lora is not None:
            unknown = set(lora) - LORA_KEYS
            if unknown or not {"r", "alpha"} <= set(lora):
                raise ValueError(
                    f"model.lora needs r and alpha (allowed keys {sorted(LORA_KEYS)}), got {dict(lora)}"
                )
        self.pretrained = pretrained
        self.architecture = architecture
        self.config = _plain(config) if config else None
        self.dtype_name = dtype
        self.attn_implementation = attn_implementation
        self.lora = _plain(lora) if lora is not None else None
        self.train_vision = train_vision
        self.gradient_checkpointing = gradient_checkpointing
        self.net: nn.Module | None = None

    @property
    def built(self) -> bool:
        return self.net is not None

    def build(self) -> None:
        """Load (or make) the network, freeze what is not trained, add LoRA, checkpoint. Idempotent."""
        if self.net is not None:
            return
        model_name, config_name = ARCHITECTURES[self.architecture]
        model_cls = _transformers_class(model_name)
        dtype = DTYPES[self.dtype_name]
        if self.pretrained is not None:
            log.info("loading %s from %s", model_name, self.pretrained)
            net = model_cls.from_pretrained(
                self.pretrained, dtype=dtype, attn_implementation=self.attn_implementation
            )
        else:
            config = _transformers_class(config_name)(**self.config)
            config._attn_implementation = self.attn_implementation
            net = model_cls(config).to(dtype)
        net.config.use_cache = False
        for name, param in net.named_parameters():
            in_vision = ".visual." in f".{name}"
            param.requires_grad_(self.lora is None and (self.train_vision or not in_vision))
        if self.lora is not None:
            net = self._add_lora(net)
        if self.gradient_checkpointing:
            net.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self.net = net
        trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
        total = sum(p.numel() for p in net.parameters())
        log.info(
            "%s: %d of %d parameters trainable (%.2f%%)",
            model_name,
            trainable,
            total,
            100 * trainable / total,
        )

    def _add_lora(self, net: nn.Module) -> nn.Module:
        from peft import LoraConfig, get_peft_model

        assert self.lora is not None
        targets = self.lora.get("target_modules") or language_model_linear_pattern(net)
        config = LoraConfig(
            r=int(self.lora["r"]),
            lora_alpha=float(self.lora["alpha"]),
            lora_dropout=float(self.lora.get("dropout", 0.0)),
            target_modules=targets if isinstance(targets, str) else list(targets),
            bias="none",
        )
        net = get_peft_model(net, config)
        for param in net.parameters():
            if param.requires_grad:  # adapters train in float32 under a bf16 base, as LLaMA-Factory upcasts
                param.data = param.data.float()
        if self.train_vision:
            for name, param in net.named_parameters():
                if ".visual." in f".{name}":
                    param.requires_grad_(True)
        return net

    def _require_net(self) -> nn.Module:
        if self.net is None:
            raise RuntimeError("QwenVL.build() has not been called (the task does it in configure_model)")
        return self.net

    @staticmethod
    def model_inputs(batch: Mapping[str, Any]) -> dict[str, Any]:
        return {k: batch[k] for k in MODEL_INPUTS if batch.get(k) is not None}

    def forward(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """Mean cross-entropy over the labelled (assistant) tokens of a training batch."""
        net = self._require_net()
        return net(**self.model_inputs(batch), labels=batch["labels"]).loss

    @torch.no_grad()
    def letter_probs(self, batch: Mapping[str, Any]) -> torch.Tensor:
        """``(B, 4)`` probabilities of the option letters at the answer position, renormalised over the four.

        The scoring inputs are the prompt followed by the answer's common prefix (left padded), so the
        next-token distribution at the last position is where the letter is written.
        """
        net = self._require_net()
        inputs = self.model_inputs(batch)
        inputs["input_ids"] = batch["score_input_ids"]
        inputs["attention_mask"] = batch["score_attention_mask"]
        inputs["mm_token_type_ids"] = batch["score_mm_token_type_ids"]
        logits = net(**inputs, logits_to_keep=1).logits[:, -1].float()
        letters = logits.log_softmax(-1)[:, batch["letter_token_ids"]]
        return letters.softmax(-1)

    @torch.no_grad()
    def generate(
        self, batch: Mapping[str, Any], max_new_tokens: int, eos_token_id: int, pad_token_id: int
    ) -> list:
        """Greedy continuations of the (left padded) prompts: the new token ids of each row."""
        net = self._require_net()
        out = net.generate(
            **self.model_inputs(batch),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            use_cache=True,
        )
        prompt_length = batch["input_ids"].shape[1]
        return [row[prompt_length:].tolist() for row in out]


def fsdp_strategy(sharding_strategy: str = "SHARD_GRAD_OP", **kwargs: Any) -> Any:
    """Lightning's FSDP for Qwen-VL: one unit per language-model decoder layer and one for the vision model.

    ``SHARD_GRAD_OP`` shards gradients and optimizer states (as DeepSpeed ZeRO-2, the challenge's setting);
    ``FULL_SHARD`` also shards the weights. The frozen vision model (bf16) is its own unit, so that no unit
    mixes it with the trained float32 weights. ``kwargs`` go to ``FSDPStrategy``.
    """
    from lightning.pytorch.strategies import FSDPStrategy
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (
        Qwen2_5_VisionTransformerPretrainedModel,
        Qwen2_5_VLDecoderLayer,
    )
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextDecoderLayer, Qwen3VLVisionModel

    units = {
        Qwen3VLTextDecoderLayer,
        Qwen3VLVisionModel,
        Qwen2_5_VLDecoderLayer,
        Qwen2_5_VisionTransformerPretrainedModel,
    }
    return FSDPStrategy(
        sharding_strategy=sharding_strategy,
        auto_wrap_policy=units,
        use_orig_params=True,
        state_dict_type="full",
        **kwargs,
    )
