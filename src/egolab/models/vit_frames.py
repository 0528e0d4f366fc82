"""Frame backbone for end-to-end anticipation: a timm ViT per frame, then S-GEAR temporal context blocks.

Frames (B, T, 3, H, W) go through ``timm.create_model(model_name, num_classes=0)`` (S-GEAR:
``vit_base_patch16_384``, AVT: ``vit_base_patch16_224``), giving all tokens per frame. ``temporal_blocks``
TCA blocks (S-GEAR ``models/attention.py``) follow: pre-LN ViT blocks attending within each frame whose
keys and values get a causal temporal context, ``k + cumsum_t(w_t * k.detach()) - k.detach()`` (w
learnable per step, initialised to 1, so each frame's keys start as its own plus the earlier frames'
detached keys). The CLS token of each frame is the output (B, T, C).

``pre_logits`` adds the representation layer of the original ImageNet-21k ViTs (``tanh(Linear(C, C))`` on
the CLS feature, keys ``pre_logits.fc.*``), which AVT's checkpoint ``jx_vit_base_patch16_224_in21k`` holds.
AVT's release ran without it: timm 0.4.12 removes that layer when ``num_classes`` differs from the
checkpoint's 21,843, and AVT's loader only logs the unused keys. ``pre_logits=False`` with ``pre_logits.``
in ``ignore_keys`` reproduces that.

Weights are never downloaded: ``pretrained_file`` (a timm/torch checkpoint of the same architecture) is
loaded by :meth:`ViTFrames.load_pretrained`, which the task calls before fitting. It logs the loaded,
ignored and missing keys and refuses unexpected ones, so no checkpoint weight is silently dropped.
"""

from __future__ import annotations

import logging
import math
import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


class TemporalContextBlock(nn.Module):
    """TCA block on (B, T, N, C) tokens: per-frame attention with causally accumulated keys/values."""

    def __init__(self, dim: int, num_heads: int, max_len: int = 64, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.time_weights = nn.Parameter(torch.ones(max_len))
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def _context(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, ...) -> x + cumsum_t(w_t * x.detach()) - x.detach()."""
        w = self.time_weights[: x.shape[1]].view(1, -1, *([1] * (x.ndim - 2)))
        detached = x.detach()
        return x + torch.cumsum(w * detached, dim=1) - detached

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, n, c = x.shape
        heads = self.num_heads
        q, k, v = self.qkv(self.norm1(x)).view(b, t, n, 3, heads, c // heads).unbind(3)
        k, v = self._context(k), self._context(v)
        q, k, v = (y.permute(0, 1, 3, 2, 4).reshape(b * t, heads, n, c // heads) for y in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.view(b, t, heads, n, c // heads).permute(0, 1, 3, 2, 4).reshape(b, t, n, c)
        x = x + self.proj(out)
        return x + self.mlp(self.norm2(x))


class ViTFrames(nn.Module):
    """timm ViT on every frame + TCA blocks; (B, T, 3, H, W) -> CLS features (B, T, C)."""

    def __init__(
        self,
        model_name: str = "vit_base_patch16_384",
        pretrained_file: str | None = None,
        temporal_blocks: int = 2,
        max_len: int = 64,
        model_kwargs: Mapping[str, Any] | None = None,
        pre_logits: bool = False,
        ignore_keys: Sequence[str] = ("head.",),
    ) -> None:
        super().__init__()
        import timm

        self.vit = timm.create_model(model_name, pretrained=False, num_classes=0, **dict(model_kwargs or {}))
        self.out_dim = int(self.vit.num_features)
        self.pretrained_file = pretrained_file
        self.ignore_keys = tuple(ignore_keys)
        self.pre_logits = (
            nn.Sequential(OrderedDict(fc=nn.Linear(self.out_dim, self.out_dim), act=nn.Tanh()))
            if pre_logits
            else None
        )
        heads = getattr(self.vit.blocks[0].attn, "num_heads", max(self.out_dim // 64, 1))
        self.temporal = nn.ModuleList(
            TemporalContextBlock(self.out_dim, heads, max_len) for _ in range(temporal_blocks)
        )
        self.norm = nn.LayerNorm(self.out_dim, eps=1e-6) if temporal_blocks else nn.Identity()
        for block in self.temporal:
            for module in block.modules():
                if isinstance(module, nn.Linear):
                    nn.init.trunc_normal_(module.weight, std=0.02)
                    nn.init.zeros_(module.bias)
            nn.init.normal_(block.proj.weight, std=0.02 / math.sqrt(2 * temporal_blocks))

    def load_pretrained(self) -> None:
        """Load ``pretrained_file`` (timm key layout) into the ViT and the pre-logits layer.

        Keys starting with one of ``ignore_keys`` (default: the pretraining classifier ``head.``) are
        skipped; loaded, ignored and missing keys are logged; any other key the model lacks raises.
        """
        if self.pretrained_file is None:
            return
        path = Path(os.path.expanduser(self.pretrained_file))
        if not path.is_file():
            raise FileNotFoundError(f"pretrained ViT weights not found: {path}")
        if path.suffix == ".safetensors":  # timm's hub format (safetensors comes with timm)
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        for wrapper in ("state_dict", "model"):  # training checkpoints wrap the weights
            if isinstance(state.get(wrapper), Mapping):
                state = state[wrapper]
                break
        ignored = sorted(k for k in state if k.startswith(self.ignore_keys))
        weights = {k: v for k, v in state.items() if not k.startswith(self.ignore_keys)}
        target = nn.ModuleDict({"vit": self.vit})
        if self.pre_logits is not None:
            target["pre_logits"] = self.pre_logits
        routed = {(k if k.startswith("pre_logits.") else f"vit.{k}"): v for k, v in weights.items()}
        unexpected = sorted(k.removeprefix("vit.") for k in set(routed) - set(target.state_dict()))
        if unexpected:
            hint = ""
            if any(k.startswith("pre_logits.") for k in unexpected):
                hint = (
                    "; the checkpoint has a pre-logits layer: set pre_logits=true to use it, or add "
                    "'pre_logits.' to ignore_keys to drop it as AVT's release did"
                )
            raise ValueError(f"{path}: keys the model does not have: {unexpected}{hint}")
        result = target.load_state_dict(routed, strict=False)
        missing = sorted(k.removeprefix("vit.") for k in result.missing_keys)
        log.info("%s: loaded %d tensors, ignored %s", path, len(routed), ignored)
        if missing:
            log.warning("%s: no weights for %s (left as initialised)", path, missing)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        if frames.ndim != 5:
            raise ValueError(f"expected frames (B, T, 3, H, W), got shape {tuple(frames.shape)}")
        b, t = frames.shape[:2]
        tokens = self.vit.forward_features(frames.flatten(0, 1))
        tokens = tokens.view(b, t, *tokens.shape[1:])
        for block in self.temporal:
            tokens = block(tokens)
        feats = self.norm(tokens[:, :, 0])
        return feats if self.pre_logits is None else self.pre_logits(feats)
