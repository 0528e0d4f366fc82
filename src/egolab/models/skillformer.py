"""SkillFormer (Bianchi & Liotta, 2025): a shared TimeSformer over every camera view, LoRA-adapted,
CrossViewFusion of the per-view features, and a linear proficiency classifier.

* :class:`TimesformerBackbone` wraps HF ``transformers.TimesformerModel``. It is built from a
  ``TimesformerConfig`` (random weights; fast and offline), and :meth:`TimesformerBackbone.load_pretrained`
  later copies a checkpoint's weights in (e.g. ``facebook/timesformer-base-finetuned-k600``), with the
  checkpoint's time embeddings linearly interpolated to ``num_frames``. With ``lora`` the encoder is
  wrapped by ``peft`` on the SkillFormer target modules and everything else in it is frozen (time
  embeddings included); without, the whole backbone trains (the full fine-tuning baselines). With
  ``freeze`` nothing in the backbone trains, adapters included: the released code's effective model.
  Its ``gradient_checkpointing_enable()`` uses reentrant checkpointing (the transformers 4.x default),
  which passes no gradient into a layer whose inputs do not require one, and the inputs of the first
  layer come from frozen embeddings; so no LoRA tensor ever gets a gradient, ``lora_B`` stays 0, the
  adapters add nothing, and only CrossViewFusion and the classifier learn. Ours checkpoints without
  reentrancy, so the adapters do train unless ``freeze`` is set.
* :class:`CrossViewFusion` is the released ``AttentiveProjector`` (spec section 1.3); :class:`MeanViewFusion`
  averages the views (baselines).
* :class:`SkillFormer` maps ``(B, V, T, C, H, W)`` pixels to ``(B, num_classes)`` logits.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

LORA_TARGET_MODULES = (
    "attention.attention.qkv",
    "attention.output.dense",
    "temporal_attention.attention.qkv",
    "temporal_attention.output.dense",
    "intermediate.dense",
    "output.dense",
    "temporal_dense",
)
"""Module-name suffixes that get LoRA adapters in every TimeSformer layer (released model.py)."""

TIME_EMBEDDINGS = "embeddings.time_embeddings"
ARCHITECTURE_FIELDS = (
    "image_size",
    "patch_size",
    "num_channels",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "hidden_act",
    "layer_norm_eps",
    "qkv_bias",
    "attention_type",
)
"""TimesformerConfig fields a checkpoint must share with the configured backbone."""


def interpolate_time_embeddings(embeddings: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Resize ``(1, T0, D)`` time embeddings to ``(1, num_frames, D)`` by linear interpolation.

    Frame ``t`` reads position ``min(t * T0 / num_frames, T0 - 1)`` of the original table and blends
    its floor and ceiling entries (the released ``_interpolate_time_embeddings``): 8 -> 16 gives
    ``e0, (e0+e1)/2, e1, ..., e7, e7``.
    """
    if embeddings.dim() != 3 or embeddings.shape[0] != 1:
        raise ValueError(f"expected time embeddings of shape (1, T, D), got {tuple(embeddings.shape)}")
    old = embeddings.shape[1]
    if old == num_frames:
        return embeddings.clone()
    pos = (torch.arange(num_frames, dtype=torch.float64) * old / num_frames).clamp(max=old - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=old - 1)
    weight = (pos - lo).to(embeddings.dtype)[None, :, None]
    return embeddings[:, lo] * (1 - weight) + embeddings[:, hi] * weight


class TimesformerBackbone(nn.Module):
    """One TimeSformer shared by all views: ``(N, T, C, H, W)`` -> mean over all tokens ``(N, D)``.

    ``config`` holds ``TimesformerConfig`` fields (those of the pretrained checkpoint when one is named);
    ``num_frames`` replaces the config's frame count. ``lora`` (``r``, ``alpha``, ``dropout``, optional
    ``target_modules``) adds adapters and freezes the rest; ``None`` trains every weight. ``freeze``
    trains no backbone weight at all (adapters keep their initial values, an identity).
    """

    def __init__(
        self,
        num_frames: int,
        config: Mapping[str, Any] | None = None,
        pretrained: str | None = None,
        lora: Mapping[str, Any] | None = None,
        gradient_checkpointing: bool = False,
        freeze: bool = False,
    ) -> None:
        super().__init__()
        from transformers import TimesformerConfig, TimesformerModel

        self.pretrained = pretrained
        self.num_frames = int(num_frames)
        self.config = TimesformerConfig(**{**dict(config or {}), "num_frames": self.num_frames})
        if self.config.attention_type != "divided_space_time":
            raise ValueError(
                f"SkillFormer uses divided space-time attention, got {self.config.attention_type!r}"
            )
        encoder = TimesformerModel(self.config)
        # HF leaves time embeddings at zero (its checkpoints bring their own); a model trained from scratch
        # needs them initialised like the position embeddings to tell frames apart.
        nn.init.trunc_normal_(encoder.embeddings.time_embeddings, std=self.config.initializer_range)
        self.lora = dict(lora) if lora is not None else None
        if self.lora is not None:
            from peft import LoraConfig, get_peft_model

            lora_config = LoraConfig(
                r=int(self.lora["r"]),
                lora_alpha=float(self.lora["alpha"]),
                lora_dropout=float(self.lora.get("dropout", 0.0)),
                bias="none",
                target_modules=list(self.lora.get("target_modules") or LORA_TARGET_MODULES),
            )
            encoder = get_peft_model(encoder, lora_config)
        self.encoder = encoder
        self.freeze = freeze
        if freeze:
            self.encoder.requires_grad_(False)
        if (
            gradient_checkpointing
        ):  # after peft, which would hook the (tuple-valued) patch embedding otherwise
            self._base_model().activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )

    @property
    def hidden_size(self) -> int:
        """Width D of the pooled feature."""
        return int(self.config.hidden_size)

    def _base_model(self) -> nn.Module:
        return self.encoder.get_base_model() if self.lora is not None else self.encoder

    def load_pretrained(self) -> None:
        """Copy the ``pretrained`` checkpoint's weights in (LoRA adapters keep their initial values).

        The checkpoint's time embeddings are interpolated to ``num_frames``; every other tensor must have
        the shape this backbone was built with (``config`` must describe the checkpoint).
        """
        if self.pretrained is None:
            raise ValueError("this backbone has no pretrained checkpoint configured")
        from transformers import TimesformerModel

        source = TimesformerModel.from_pretrained(self.pretrained)
        differ = {
            k: (getattr(source.config, k), getattr(self.config, k))
            for k in ARCHITECTURE_FIELDS
            if getattr(source.config, k) != getattr(self.config, k)
        }
        if differ:
            raise ValueError(
                f"{self.pretrained}: architecture differs from model.backbone.config "
                f"(checkpoint value, configured value): {differ}"
            )
        state = source.state_dict()
        state[TIME_EMBEDDINGS] = interpolate_time_embeddings(state[TIME_EMBEDDINGS], self.num_frames)
        target = self._base_model()
        own = target.state_dict()
        mapped: dict[str, torch.Tensor] = {}
        for name, tensor in state.items():
            key = name
            if key not in own:  # a LoRA-wrapped linear keeps its original weights under `base_layer`
                module, _, leaf = name.rpartition(".")
                key = f"{module}.base_layer.{leaf}"
            if key not in own:
                raise ValueError(f"{self.pretrained}: checkpoint tensor {name!r} has no counterpart here")
            if own[key].shape != tensor.shape:
                raise ValueError(
                    f"{self.pretrained}: {name!r} has shape {tuple(tensor.shape)}, this backbone "
                    f"{tuple(own[key].shape)} (does model.backbone.config describe the checkpoint?)"
                )
            mapped[key] = tensor
        missing = [k for k in own if k not in mapped and "lora_" not in k]
        if missing:
            raise ValueError(
                f"{self.pretrained}: checkpoint lacks {len(missing)} tensors, e.g. {missing[:3]}"
            )
        target.load_state_dict(mapped, strict=False)
        log.info(
            "loaded %s (%d tensors, time embeddings for %d frames)",
            self.pretrained,
            len(mapped),
            self.num_frames,
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``(N, T, C, H, W)`` normalised frames -> ``(N, D)``: the mean of CLS and all patch tokens."""
        n, t, c, h, w = pixel_values.shape
        size = self.config.image_size
        if t != self.num_frames or (h, w) != (size, size) or c != self.config.num_channels:
            raise ValueError(
                f"expected clips of {self.num_frames} x {self.config.num_channels} x {size} x {size}, "
                f"got {t} x {c} x {h} x {w}"
            )
        outputs = self.encoder(pixel_values=pixel_values)
        return outputs.last_hidden_state.mean(dim=1)


class CrossViewFusion(nn.Module):
    """Per-view features ``(B, V, D)`` -> one ``(B, D)`` feature (released ``AttentiveProjector``).

    LayerNorm per view; multi-head self-attention across the views (no residual); mean over views;
    Linear -> GELU -> LayerNorm -> Dropout to ``hidden_dim``; a sigmoid gate ``h * sigmoid(W_g h)``;
    Linear back to ``dim`` -> LayerNorm; then adaptive self-calibration: each sample is standardised over
    its features (unbiased std, +1e-6) and mapped to ``x * sigma + mu`` with learnable scalars.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        num_heads: int = 16,
        dropout: float = 0.1,
        use_gate: bool = True,
        init_mean: float = 0.0007,
        init_std: float = 0.1168,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.view_norm = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.project = nn.Sequential(
            nn.Linear(dim, hidden_dim), nn.GELU(), nn.LayerNorm(hidden_dim), nn.Dropout(dropout)
        )
        self.gate = nn.Linear(hidden_dim, hidden_dim) if use_gate else None
        self.out = nn.Sequential(nn.Linear(hidden_dim, dim), nn.LayerNorm(dim))
        self.mean = nn.Parameter(torch.tensor(float(init_mean)))
        self.std = nn.Parameter(torch.tensor(float(init_std)))

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        x = self.view_norm(views)
        attended, _ = self.attention(x, x, x, need_weights=False)
        h = self.project(attended.mean(dim=1))
        if self.gate is not None:
            h = h * torch.sigmoid(self.gate(h))
        o = self.out(h)
        o = (o - o.mean(dim=-1, keepdim=True)) / (o.std(dim=-1, keepdim=True) + 1e-6)
        return o * self.std + self.mean


class MeanViewFusion(nn.Module):
    """``(B, V, D)`` -> ``(B, D)``: the average of the views (the TimeSformer baselines)."""

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        return views.mean(dim=1)


class SkillFormer(nn.Module):
    """Proficiency classifier: shared backbone per view, view fusion, linear head.

    Input ``(B, V, T, C, H, W)``; output ``(B, num_classes)`` logits.
    """

    def __init__(self, backbone: TimesformerBackbone, fusion: nn.Module, num_classes: int = 4) -> None:
        super().__init__()
        self.backbone = backbone
        self.fusion = fusion
        self.classifier = nn.Linear(backbone.hidden_size, num_classes)

    def load_pretrained(self) -> bool:
        """Load the backbone's checkpoint if it names one; whether it did."""
        if self.backbone.pretrained is None:
            return False
        self.backbone.load_pretrained()
        return True

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.dim() != 6:
            raise ValueError(f"expected (B, V, T, C, H, W) pixels, got shape {tuple(pixel_values.shape)}")
        b, v = pixel_values.shape[:2]
        feats = self.backbone(pixel_values.flatten(0, 1)).reshape(b, v, -1)
        return self.classifier(self.fusion(feats))


def trainable_parameters(module: nn.Module) -> int:
    """Number of parameters that receive gradients (the paper's "trainable params")."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
