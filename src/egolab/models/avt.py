"""AVT (Anticipative Video Transformer): the AVT-h causal decoder, heads, and the anticipation model.

* :class:`CausalDecoder` is AVT-h (AVT ``models/future_prediction.py:AVTh``, S-GEAR's ``TCD``): a GPT-2
  transformer without token embeddings. Inputs (B, T, C) are mapped by ``Linear(C, D, bias=False)``,
  given learned positions 0..T-1, run through ``n_layer`` pre-LN blocks with causal self-attention and a
  4D GELU MLP, a final LayerNorm, and mapped back by ``Linear(D, C, bias=False)``. Output t predicts
  the feature of step t+1 (released defaults: D=2048, 6 layers, 4 heads, GPT-2 dropout 0.1).
* :class:`AnticipationModel` wires backbone -> projection -> (S-GEAR prototype attention) -> AVT-h ->
  head. The predicted future feature ``z`` is the decoder output at the last step; the "updated past"
  ``[x_0, y_0 .. y_{T-2}]`` (each step's prediction of it) is classified too for the past loss.
* Heads: :class:`LinearHead` (AVT: dropout + linear) or S-GEAR's gated prototype head
  (:class:`egolab.models.sgear.GatedPrototypeHead`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class CausalSelfAttention(nn.Module):
    """GPT-2 multi-head self-attention with a causal mask (fused qkv with bias, output projection)."""

    def __init__(self, dim: int, n_head: int, dropout: float = 0.1) -> None:
        super().__init__()
        if dim % n_head:
            raise ValueError(f"inter_dim {dim} is not divisible by n_head {n_head}")
        self.n_head = n_head
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attn_dropout = dropout
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_head, c // self.n_head).permute(2, 0, 3, 1, 4)
        dropout = self.attn_dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, is_causal=True)
        return self.resid_dropout(self.proj(out.transpose(1, 2).reshape(b, t, c)))


class CausalBlock(nn.Module):
    """GPT-2 block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, dim: int, n_head: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = CausalSelfAttention(dim, n_head, dropout)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = nn.Sequential(
            nn.Linear(dim, 4 * dim), nn.GELU(approximate="tanh"), nn.Linear(4 * dim, dim), nn.Dropout(dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class CausalDecoder(nn.Module):
    """AVT-h: next-step feature predictor, (B, T, in_dim) -> (B, T, in_dim); output t sees inputs <= t."""

    def __init__(
        self,
        in_dim: int,
        inter_dim: int = 2048,
        n_layer: int = 6,
        n_head: int = 4,
        max_len: int = 64,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.max_len = max_len
        self.encoder = nn.Linear(in_dim, inter_dim, bias=False)
        self.pos = nn.Embedding(max_len, inter_dim)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(CausalBlock(inter_dim, n_head, dropout) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(inter_dim, eps=1e-5)
        self.decoder = nn.Linear(inter_dim, in_dim, bias=False)
        self.apply(self._init)
        for name, param in self.named_parameters():  # GPT-2: residual projections scaled by depth
            if name.endswith("attn.proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(param, std=0.02 / math.sqrt(2 * max(n_layer, 1)))

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        if t > self.max_len:
            raise ValueError(f"sequence of {t} steps exceeds the decoder's max_len={self.max_len}")
        h = self.drop(self.encoder(x) + self.pos(torch.arange(t, device=x.device)))
        for block in self.blocks:
            h = block(h)
        return self.decoder(self.ln_f(h))


class FeatureInput(nn.Module):
    """Backbone for pre-extracted features: checks the channel count and passes them through."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.out_dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.out_dim:
            raise ValueError(f"features have {x.shape[-1]} channels, the model expects {self.out_dim}")
        return x


class LinearHead(nn.Module):
    """AVT classifier: dropout + linear over the actions. Returns ``logits`` and the ``embedding`` fed.

    ``prototypes`` and ``past`` (the call on the updated past) are accepted for the heads' shared
    signature and unused.
    """

    def __init__(self, dim: int, num_actions: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_actions)

    def forward(
        self, x: torch.Tensor, prototypes: torch.Tensor | None = None, past: bool = False
    ) -> dict[str, torch.Tensor]:
        return {"logits": self.fc(self.dropout(x)), "embedding": x}


class AnticipationModel(nn.Module):
    """Backbone + projection + optional prototype attention + AVT-h + head.

    ``forward(inputs)`` with inputs (B, T, C_in) features or (B, T, 3, H, W) frames returns a dict:
    ``features`` (B, T, C) the decoder inputs, ``decoded`` (B, T, C) the next-step predictions, ``future``
    (B, C) the predicted future feature z, ``logits`` (B, A), ``embedding`` (B, C) the head's input after
    prototype gating; with ``classifier_on_past`` also ``past_logits`` (B, T, A); with prototypes also
    ``similarities`` (B, A) and ``past_similarities`` (B, T, A), cosine similarities to the prototypes.
    """

    def __init__(
        self,
        backbone: nn.Module,
        decoder: CausalDecoder,
        head: nn.Module,
        feat_dim: int,
        num_actions: int,
        prototypes: nn.Module | None = None,
        prototype_attention: nn.Module | None = None,
        classifier_on_past: bool = True,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        in_dim = backbone.out_dim
        self.mapper = nn.Identity() if in_dim == feat_dim else nn.Linear(in_dim, feat_dim, bias=False)
        self.prototypes = prototypes
        self.prototype_attention = prototype_attention
        if prototype_attention is not None and prototypes is None:
            raise ValueError("prototype attention needs prototypes")
        self.decoder = decoder
        self.head = head
        fc = getattr(head, "fc", None)
        if fc is not None and fc.out_features != num_actions:
            raise ValueError(f"the head classifies {fc.out_features} actions, num_actions={num_actions}")
        if prototypes is not None and prototypes.visual.shape != (num_actions, feat_dim):
            raise ValueError(f"prototypes {tuple(prototypes.visual.shape)} != (num_actions, feat_dim)")
        self.num_actions = num_actions
        self.classifier_on_past = classifier_on_past

    def load_pretrained(self) -> None:
        """Load pretrained backbone weights and prototype files (called by the task before fitting)."""
        for module in (self.backbone, self.prototypes):
            if module is not None and hasattr(module, "load_pretrained"):
                module.load_pretrained()

    def forward(self, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.mapper(self.backbone(inputs))
        protos = None if self.prototypes is None else self.prototypes.visual
        if self.prototype_attention is not None:
            feats = self.prototype_attention(feats, protos)
        decoded = self.decoder(feats)
        out = {"features": feats, "decoded": decoded, "future": decoded[:, -1]}
        head = self.head(decoded[:, -1], protos)
        out.update(head)
        if self.classifier_on_past:
            past = torch.cat([feats[:, :1], decoded[:, :-1]], dim=1)
            past_head = self.head(past, protos, past=True)
            out["past_logits"] = past_head["logits"]
            if "similarities" in past_head:
                out["past_similarities"] = past_head["similarities"]
        return out
