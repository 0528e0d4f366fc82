"""ActionFormer v2 options: a modernised transformer backbone block, v2 heads and a cross-scale FPN neck.

The enhanced fork of ActionFormer (sreevadde/actionformer_release) adds these parts; this file
re-implements them as options of :class:`egolab.models.actionformer.ActionFormer`, with two fixes: the
v2 attention (rotary positions, scaled-dot-product attention, grouped-query attention) also runs in the
local-window and strided blocks (the fork falls back to the v1 modules there, so windowed configs got none
of it), and the v2 heads and the ``cs_fpn`` neck can actually be built.

Every switch is independent, and with all of them off a v2 block computes exactly the v1 block (same
parameter names, so v1 weights load into it). Reading order: RMSNorm, SwiGLU, rotary embedding, the v2
attention and block, v2 head trunk, cross-scale FPN. The windowed SDPA kernel lives in the v1 file, whose
local attention uses it too.

Tensors are channel-first (B, C, T) with bool masks (B, 1, T), as in the v1 file.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from egolab.models.actionformer import (
    AffineDropPath,
    ConvProjection,
    LayerNorm,
    MaskedConv1D,
    feed_forward,
    local_window_attention,
    merge_heads,
    split_heads,
    windowed_sdpa_attention,
)

ROPE_BASE = 10000.0


# --------------------------------------------------------------------------------------- primitives
class RMSNorm(nn.Module):
    """RMSNorm over the channel axis of (B, C, T): y = x / sqrt(mean_C(x^2) + eps) * gamma (no centring)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x.transpose(1, 2), (x.shape[1],), self.weight, self.eps).transpose(1, 2)


def swiglu_hidden_dim(n_embd: int) -> int:
    """SwiGLU hidden width: 8C/3 (the parameter count of a 4C GELU MLP) rounded up to a multiple of 64."""
    return 64 * math.ceil(8 * n_embd / (3 * 64))


class SwiGLU(nn.Module):
    """Gated feed-forward W2(SiLU(W3 x) * W1 x) with 1x1 convs, replacing the 4C GELU MLP."""

    def __init__(self, n_embd: int, pdrop: float = 0.0) -> None:
        super().__init__()
        hidden = swiglu_hidden_dim(n_embd)
        self.w1 = nn.Conv1d(n_embd, hidden, 1)
        self.w3 = nn.Conv1d(n_embd, hidden, 1)
        self.w2 = nn.Conv1d(hidden, n_embd, 1)
        self.drop = nn.Dropout(pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.w2(self.drop(F.silu(self.w3(x)) * self.w1(x))))


class RotaryEmbedding(nn.Module):
    """Rotary position embedding on the head dims: channel pair (i, i + D/2) turns by t * base^(-2i/D).

    Applied to queries and keys, it makes their dot product a function of the position difference only,
    so attention sees relative positions and extends to sequences longer than any seen in training.
    """

    def __init__(self, head_dim: int, base: float = ROPE_BASE) -> None:
        super().__init__()
        if head_dim % 2 != 0:
            raise ValueError(f"rotary embedding needs an even head dimension, got {head_dim}")
        exponents = torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim
        self.register_buffer("inv_freq", (base**-exponents).to(torch.float32), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Rotate x (..., T, D) by positions (T,), by default 0..T-1 (the level's own time steps)."""
        if positions is None:
            positions = torch.arange(x.shape[-2], device=x.device)
        angles = positions.to(torch.float32)[:, None] * self.inv_freq[None]
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


# --------------------------------------------------------------------------------------- attention
class MaskedMHCAv2(nn.Module):
    """Multi-head conv attention with the v2 options, global (window <= 1) or in local windows.

    q/k/v come from the v1 conv projections (depthwise conv with the block's stride -> LayerNorm -> 1x1),
    so strided blocks downsample q, k, v and the mask exactly like MaskedMHCA. Options: ``n_kv_head`` < n_head
    shares each key/value head among n_head / n_kv_head query heads (smaller k/v projections);
    ``use_rope`` rotates q and k by their time step on this level; ``use_sdpa`` computes local windows with
    :func:`windowed_sdpa_attention` (as v1 blocks do) instead of the explicit unfold kernel
    :func:`local_window_attention`, the fork's non-SDPA path; both compute the same function (global
    attention always goes through SDPA, as in v1). ``use_rel_pe`` keeps v1's learned relative bias.
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        n_kv_head: int | None = None,
        window_size: int = -1,
        stride: int = 1,
        proj_pdrop: float = 0.0,
        use_rel_pe: bool = False,
        use_rope: bool = False,
        use_sdpa: bool = False,
    ) -> None:
        super().__init__()
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        if n_embd % n_head != 0 or n_kv_head < 1 or n_head % n_kv_head != 0:
            raise ValueError(
                f"n_embd={n_embd} must be divisible by n_head={n_head}, and n_head by n_kv_head={n_kv_head}"
            )
        if window_size > 1 and window_size % 2 != 1:
            raise ValueError(f"local attention needs an odd window size > 1, got {window_size}")
        self.n_head = n_head
        self.n_kv_head = n_kv_head
        self.window_size = window_size
        self.use_sdpa = use_sdpa
        kv_channels = n_kv_head * (n_embd // n_head)
        self.query = ConvProjection(n_embd, stride)
        self.key = ConvProjection(n_embd, stride, out_channels=kv_channels)
        self.value = ConvProjection(n_embd, stride, out_channels=kv_channels)
        self.proj = nn.Conv1d(n_embd, n_embd, 1)
        self.proj_drop = nn.Dropout(proj_pdrop)
        self.rel_pe = None
        if use_rel_pe and window_size > 1:
            self.rel_pe = nn.Parameter(torch.zeros(1, 1, n_head, window_size))
            nn.init.trunc_normal_(self.rel_pe, std=(2.0 / n_embd) ** 0.5)
        self.rope = RotaryEmbedding(n_embd // n_head) if use_rope else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, q_mask = self.query(x, mask)
        k, kv_mask = self.key(x, mask)
        v, _ = self.value(x, mask)
        q = split_heads(q, self.n_head)
        k, v = split_heads(k, self.n_kv_head), split_heads(v, self.n_kv_head)
        if self.rope is not None:
            q, k = self.rope(q), self.rope(k)
        grouped = self.n_kv_head != self.n_head
        rel_bias = None if self.rel_pe is None else self.rel_pe[0, 0]
        if self.window_size <= 1:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=kv_mask[:, None], enable_gqa=grouped)
        elif self.use_sdpa:
            out = windowed_sdpa_attention(q, k, v, kv_mask[:, 0], self.window_size, rel_bias)
        else:
            group = self.n_head // self.n_kv_head
            k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
            out = local_window_attention(q, k, v, kv_mask[:, 0], self.window_size, rel_bias)
        out = self.proj_drop(self.proj(merge_heads(out)))
        return out * q_mask.to(out.dtype), q_mask


class TransformerBlockV2(nn.Module):
    """The v1 pre-norm block (strided attention + max-pooled skip when stride > 1) with v2 switches.

    ``use_rms_norm`` swaps its two pre-norms for RMSNorm (the model also swaps the embedding norms; the
    LayerNorm inside the q/k/v conv projections stays), ``use_swiglu`` its GELU MLP for SwiGLU; the
    attention options are those of :class:`MaskedMHCAv2`. All off: the v1 ``TransformerBlock``.
    """

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        stride: int = 1,
        window_size: int = -1,
        *,
        n_kv_head: int | None = None,
        proj_pdrop: float = 0.0,
        path_pdrop: float = 0.0,
        use_rel_pe: bool = False,
        use_rope: bool = False,
        use_sdpa: bool = False,
        use_rms_norm: bool = False,
        use_swiglu: bool = False,
    ) -> None:
        super().__init__()
        norm = RMSNorm if use_rms_norm else LayerNorm
        self.ln1 = norm(n_embd)
        self.ln2 = norm(n_embd)
        self.attn = MaskedMHCAv2(
            n_embd, n_head, n_kv_head, window_size, stride, proj_pdrop, use_rel_pe, use_rope, use_sdpa
        )
        if stride > 1:
            self.pool_skip = nn.MaxPool1d(stride + 1, stride=stride, padding=(stride + 1) // 2)
        else:
            self.pool_skip = nn.Identity()
        self.mlp = SwiGLU(n_embd, proj_pdrop) if use_swiglu else feed_forward(n_embd, proj_pdrop)
        if path_pdrop > 0.0:
            self.drop_path_attn = AffineDropPath(n_embd, path_pdrop)
            self.drop_path_mlp = AffineDropPath(n_embd, path_pdrop)
        else:
            self.drop_path_attn = nn.Identity()
            self.drop_path_mlp = nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        attn, out_mask = self.attn(self.ln1(x), mask)
        keep = out_mask.to(attn.dtype)
        out = self.pool_skip(x) * keep + self.drop_path_attn(attn)
        out = out + self.drop_path_mlp(self.mlp(self.ln2(out)) * keep)
        return out, out_mask


# --------------------------------------------------------------------------------------- heads
class HeadTrunkV2(nn.Module):
    """v2 head trunk: 1x1 input projection (+LayerNorm, ReLU), then (num_layers - 1) x [MaskedConv1D ->
    LayerNorm -> ReLU] with a residual around each consecutive pair of layers (a deeper head that still
    trains easily). An odd last layer has no residual.
    """

    def __init__(self, in_dim: int, feat_dim: int, num_layers: int, kernel_size: int, with_ln: bool) -> None:
        super().__init__()
        self.input_proj = MaskedConv1D(in_dim, feat_dim, 1, bias=not with_ln)
        self.input_norm = LayerNorm(feat_dim) if with_ln else nn.Identity()
        self.convs = nn.ModuleList(
            MaskedConv1D(feat_dim, feat_dim, kernel_size, bias=not with_ln) for _ in range(num_layers - 1)
        )
        self.norms = nn.ModuleList(LayerNorm(feat_dim) if with_ln else nn.Identity() for _ in self.convs)
        self.out_dim = feat_dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.input_norm(self.input_proj(x, mask)[0]))
        residual = x
        for idx, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = F.relu(norm(conv(x, mask)[0]))
            if idx % 2 == 1:
                x = x + residual
                residual = x
        return x


# --------------------------------------------------------------------------------------- neck
class CrossScaleFPN(nn.Module):
    """PANet-style neck: the v1 FPN top-down pass, then a bottom-up pass, then per-level conv + norm.

    Top-down: 1x1 laterals, each level adds its coarser neighbour upsampled (nearest). Bottom-up: from the
    finest level up, each level adds the previous (finer) output downsampled by a strided 3-tap conv, which
    gives coarse levels a short path to fine-grained features. Outputs: depthwise 3-tap conv -> LayerNorm.
    As in the v1 FPN, sums are not re-masked before the convs (padded steps next to the end of a video
    hold the upsampled coarser value); every output is masked.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_levels: int,
        scale_factor: int = 2,
        start_level: int = 0,
        with_ln: bool = True,
    ) -> None:
        super().__init__()
        self.start_level = start_level
        self.scale_factor = scale_factor
        used = range(start_level, num_levels)
        self.laterals = nn.ModuleList(
            MaskedConv1D(in_channels, out_channels, 1, bias=not with_ln) for _ in used
        )
        self.downsamples = nn.ModuleList(
            MaskedConv1D(out_channels, out_channels, 3, stride=scale_factor, bias=not with_ln)
            for _ in range(len(used) - 1)
        )
        self.convs = nn.ModuleList(
            MaskedConv1D(out_channels, out_channels, 3, groups=out_channels, bias=not with_ln) for _ in used
        )
        self.norms = nn.ModuleList(LayerNorm(out_channels) if with_ln else nn.Identity() for _ in used)

    def forward(
        self, feats: list[torch.Tensor], masks: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        feats, masks = feats[self.start_level :], masks[self.start_level :]
        laterals = [lateral(x, m)[0] for lateral, x, m in zip(self.laterals, feats, masks)]
        for idx in range(len(laterals) - 1, 0, -1):
            upsampled = F.interpolate(laterals[idx], scale_factor=float(self.scale_factor), mode="nearest")
            laterals[idx - 1] = laterals[idx - 1] + upsampled
        merged = [laterals[0]]
        for down, lateral, finer_mask in zip(self.downsamples, laterals[1:], masks[:-1]):
            merged.append(lateral + down(merged[-1], finer_mask)[0])
        outs = [norm(conv(x, m)[0]) for conv, norm, x, m in zip(self.convs, self.norms, merged, masks)]
        return outs, masks
