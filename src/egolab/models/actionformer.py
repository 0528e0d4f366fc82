"""ActionFormer (Zhang et al., ECCV 2022): single-stage temporal action localization on clip features.

Behaviour follows the released code (happyharrycn/actionformer_release, ``convTransformer`` backbone,
``identity``/``fpn`` neck, point generator and shared heads); see docs/localization_contract.md for the
input and output formats. Reading order: masked primitives, positional encoding, attention, transformer
block, backbone, necks, point generator, heads, the full model, optimizer parameter groups.

Options from the enhanced fork (``backbone_type: convTransformerv2``, ``head_type: v2``,
``fpn_type: cs_fpn``) live in :mod:`egolab.models.actionformer_v2`; the defaults build the release model.

Internally every tensor is channel-first (B, C, T) and masks are bool (B, 1, T).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_REGRESSION_RANGE = ((0, 4), (4, 8), (8, 16), (16, 32), (32, 64), (64, 10000))
FPN_TYPES = ("identity", "fpn", "cs_fpn")
BACKBONE_TYPES = ("convTransformer", "convTransformerv2")
HEAD_TYPES = ("v1", "v2")
TRIM_MODES = ("auto", "sample", "batch", "none")
SAMPLE_TRIM_MIN_NUMEL = 2**20  # C x T of one padded video (THUMOS I3D: 2048 x 2304 = 4.7 M)
EMPTY_CLASS_PRIOR = 1e-6
PADDED_KEY_BIAS = -1e4
MIN_QUERY_BLOCK = 32


# --------------------------------------------------------------------------------------- primitives
class MaskedConv1D(nn.Module):
    """Conv1d ('same' padding, odd kernel) whose output is zeroed at padded steps.

    With stride s the mask is downsampled by nearest neighbour (every s-th step); T must divide by s.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"MaskedConv1D needs an odd kernel size, got {kernel_size}")
        self.stride = stride
        self.conv = nn.Conv1d(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=kernel_size // 2,
            groups=groups,
            bias=bias,
        )
        if bias:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.shape[-1] % self.stride != 0:
            raise ValueError(
                f"sequence length {x.shape[-1]} is not divisible by the conv stride {self.stride}"
            )
        out_mask = mask[..., :: self.stride]
        return self.conv(x) * out_mask.to(x.dtype), out_mask


class LayerNorm(nn.Module):
    """LayerNorm over the channel axis of a (B, C, T) tensor, with a per-channel affine.

    Computed directly along the channel axis, as the release does, rather than through ``F.layer_norm``
    on a transposed tensor, whose two layout copies made it the slowest op after the convolutions.
    Half-precision inputs (autocast) are normalised in float32.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        if dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        centred = x - x.mean(dim=1, keepdim=True)
        scale = torch.rsqrt(centred.square().mean(dim=1, keepdim=True) + self.eps)
        return (centred * scale * self.weight[:, None] + self.bias[:, None]).to(dtype)


class Scale(nn.Module):
    """A learnable scalar multiplier (per-level regression scale)."""

    def __init__(self, init_value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class AffineDropPath(nn.Module):
    """Per-channel scale (init 1e-4, LayerScale-style) followed by stochastic depth on the residual."""

    def __init__(self, num_channels: int, drop_prob: float = 0.0, init_scale: float = 1e-4) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((1, num_channels, 1), init_scale))
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.scale * x
        if not self.training or self.drop_prob == 0.0:
            return x
        keep_prob = 1.0 - self.drop_prob
        keep = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device) < keep_prob
        return x * keep.to(x.dtype) / keep_prob


def sinusoid_encoding(length: int, dim: int) -> torch.Tensor:
    """Transformer sine/cosine table as (1, dim, length): sin on even channels, cos on odd ones."""
    position = torch.arange(length, dtype=torch.float64)[:, None]
    channel = torch.arange(dim)
    angles = position / torch.pow(10000.0, 2 * (channel // 2) / dim).to(torch.float64)
    table = torch.where(channel % 2 == 0, torch.sin(angles), torch.cos(angles))
    return table.T[None].to(torch.float32)


# --------------------------------------------------------------------------------------- attention
class ConvProjection(nn.Module):
    """One of the query/key/value maps of MHCA: depthwise (strided) conv -> LayerNorm -> 1x1 conv.

    ``out_channels`` (default n_embd) is smaller for the keys / values of grouped-query attention.
    """

    def __init__(self, n_embd: int, stride: int, out_channels: int | None = None) -> None:
        super().__init__()
        kernel_size = stride + 1 if stride > 1 else 3
        self.conv = MaskedConv1D(n_embd, n_embd, kernel_size, stride=stride, groups=n_embd, bias=False)
        self.norm = LayerNorm(n_embd)
        self.proj = nn.Conv1d(n_embd, out_channels or n_embd, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, out_mask = self.conv(x, mask)
        return self.proj(self.norm(out)), out_mask


def split_heads(x: torch.Tensor, n_head: int) -> torch.Tensor:
    """(B, C, T) -> (B, H, T, C/H)."""
    batch, channels, length = x.shape
    return x.view(batch, n_head, channels // n_head, length).transpose(2, 3)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, H, T, C/H) -> (B, C, T)."""
    batch, n_head, length, head_dim = x.shape
    return x.transpose(2, 3).reshape(batch, n_head * head_dim, length)


class MaskedMHCA(nn.Module):
    """Global multi-head conv attention; padded keys are excluded, padded query steps zeroed."""

    def __init__(self, n_embd: int, n_head: int, stride: int = 1, proj_pdrop: float = 0.0) -> None:
        super().__init__()
        self.n_head = n_head
        self.query = ConvProjection(n_embd, stride)
        self.key = ConvProjection(n_embd, stride)
        self.value = ConvProjection(n_embd, stride)
        self.proj = nn.Conv1d(n_embd, n_embd, 1)
        self.proj_drop = nn.Dropout(proj_pdrop)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, q_mask = self.query(x, mask)
        k, kv_mask = self.key(x, mask)
        v, _ = self.value(x, mask)
        out = F.scaled_dot_product_attention(
            split_heads(q, self.n_head),
            split_heads(k, self.n_head),
            split_heads(v, self.n_head),
            attn_mask=kv_mask[:, None],  # (B, 1, 1, T_k), True where the key is valid
        )
        out = self.proj_drop(self.proj(merge_heads(out)))
        return out * q_mask.to(out.dtype), q_mask


def local_window_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    window: int,
    rel_bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Scaled dot-product attention restricted to keys j with |i - j| <= window // 2, the explicit way:
    every window materialised with unfold (the reference the fast :func:`windowed_sdpa_attention` is
    tested against, and the v2 blocks' ``use_sdpa=False`` path).

    q, k, v: (B, H, T, D) sharing the same time steps; mask: (B, T) bool, True on valid steps.
    rel_bias: optional (H, window) additive bias indexed by the key offset j - i + window // 2.
    As in the released sliding-chunk implementation, padded keys get a -1e4 bias, keys beyond the
    sequence ends are excluded, and rows at padded queries are zeroed after the softmax.
    Returns (B, H, T, D).
    """
    half = window // 2
    length = q.shape[2]

    def windows(x: torch.Tensor) -> torch.Tensor:  # (B, H, T, D) -> (B, H, T, D, window), zero-padded ends
        return F.pad(x, (0, 0, half, half)).unfold(2, window, 1)

    scores = torch.einsum("bhtd,bhtdw->bhtw", q * q.shape[-1] ** -0.5, windows(k))
    if rel_bias is not None:
        scores = scores + rel_bias[None, :, None, :].to(scores.dtype)
    inside = F.pad(torch.ones(length, dtype=torch.bool, device=q.device), (half, half)).unfold(0, window, 1)
    key_valid = F.pad(mask, (half, half)).unfold(1, window, 1)  # (B, T, window)
    key_bias = torch.zeros(key_valid.shape, dtype=scores.dtype, device=q.device)
    key_bias = key_bias.masked_fill(~key_valid, PADDED_KEY_BIAS).masked_fill(~inside, float("-inf"))
    attn = torch.softmax(scores + key_bias[:, None], dim=-1)
    attn = attn.masked_fill(~mask[:, None, :, None], 0.0)
    return torch.einsum("bhtw,bhtdw->bhtd", attn, windows(v))


def windowed_sdpa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    window: int,
    rel_bias: torch.Tensor | None = None,
    block: int | None = None,
) -> torch.Tensor:
    """Local-window attention (keys j with |i - j| <= window // 2) through F.scaled_dot_product_attention.

    Same inputs and result as :func:`egolab.models.actionformer.local_window_attention`, except that k
    and v may have fewer heads than q (grouped-query attention: H_q a multiple of H_kv). Queries are cut
    into blocks of ``block`` steps (default max(2 * (window - 1), 32)); each block attends to its keys
    widened by window // 2 on both sides, with a banded additive mask, so SDPA's fused kernels do the
    work on small dense tiles instead of a (T, T) score matrix. Masking: padded keys and keys beyond the
    sequence ends get a -1e4 bias, keys outside the band -inf, and padded query rows are zeroed. v1 gives
    the keys beyond the ends -inf instead; the results are the same (exp(-1e4) is 0 in floating point
    next to a valid key, and rows without a valid key are zeroed), and no row is ever all -inf, not even
    the rows that fill the last block, so neither the output nor its gradient can turn NaN.
    q: (B, H, T, D); k, v: (B, H_kv, T, D); mask: (B, T) bool; rel_bias: (H, window). Returns (B, H, T, D).
    """
    batch, n_head, length, head_dim = q.shape
    half = window // 2
    block = block or max(2 * (window - 1), MIN_QUERY_BLOCK)
    n_blocks = math.ceil(length / block)
    extra = n_blocks * block - length  # query rows added to fill the last block (dropped at the end)
    span = block + 2 * half

    def key_blocks(x: torch.Tensor) -> torch.Tensor:  # (B, H, T, D) -> (B, n_blocks, H, span, D)
        return F.pad(x, (0, 0, half, half + extra)).unfold(2, span, block).permute(0, 2, 1, 4, 3)

    queries = F.pad(q, (0, 0, 0, extra)).view(batch, n_head, n_blocks, block, head_dim).transpose(1, 2)
    key_valid = F.pad(mask, (half, half + extra)).unfold(1, span, block)  # (B, n_blocks, span), ends False
    key_bias = torch.zeros(key_valid.shape, dtype=q.dtype, device=q.device)
    key_bias = key_bias.masked_fill(~key_valid, PADDED_KEY_BIAS)
    offset = torch.arange(span, device=q.device)[None] - torch.arange(block, device=q.device)[:, None]
    in_band = (offset >= 0) & (offset <= 2 * half)  # key (span index) within the query's window
    bias = key_bias[:, :, None, None, :]  # (B, n_blocks, 1, 1, span)
    if rel_bias is not None:  # (H, window), indexed by key offset j - i + half
        bias = bias + rel_bias[:, offset.clamp(0, 2 * half)].to(q.dtype)[None, None]
    bias = bias.masked_fill(~in_band, float("-inf"))
    out = F.scaled_dot_product_attention(
        queries, key_blocks(k), key_blocks(v), attn_mask=bias, enable_gqa=k.shape[1] != n_head
    )
    out = out.transpose(1, 2).reshape(batch, n_head, n_blocks * block, head_dim)[:, :, :length]
    return out.masked_fill(~mask[:, None, :, None], 0.0)


class LocalMaskedMHCA(nn.Module):
    """Multi-head conv attention within a sliding window of odd size w (optionally with a relative bias),
    computed by :func:`windowed_sdpa_attention` (the release's banded attention, same function)."""

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        window_size: int,
        stride: int = 1,
        proj_pdrop: float = 0.0,
        use_rel_pe: bool = False,
    ) -> None:
        super().__init__()
        if window_size <= 1 or window_size % 2 != 1:
            raise ValueError(f"local attention needs an odd window size > 1, got {window_size}")
        self.n_head = n_head
        self.window_size = window_size
        self.query = ConvProjection(n_embd, stride)
        self.key = ConvProjection(n_embd, stride)
        self.value = ConvProjection(n_embd, stride)
        self.proj = nn.Conv1d(n_embd, n_embd, 1)
        self.proj_drop = nn.Dropout(proj_pdrop)
        self.rel_pe = None
        if use_rel_pe:
            self.rel_pe = nn.Parameter(torch.zeros(1, 1, n_head, window_size))
            nn.init.trunc_normal_(self.rel_pe, std=(2.0 / n_embd) ** 0.5)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q, q_mask = self.query(x, mask)
        k, kv_mask = self.key(x, mask)
        v, _ = self.value(x, mask)
        out = windowed_sdpa_attention(
            split_heads(q, self.n_head),
            split_heads(k, self.n_head),
            split_heads(v, self.n_head),
            kv_mask[:, 0],
            self.window_size,
            rel_bias=None if self.rel_pe is None else self.rel_pe[0, 0],
        )
        out = self.proj_drop(self.proj(merge_heads(out)))
        return out * q_mask.to(out.dtype), q_mask


# --------------------------------------------------------------------------------------- transformer
def feed_forward(n_embd: int, pdrop: float = 0.0) -> nn.Sequential:
    """The block MLP: 1x1 conv to 4C, GELU, 1x1 conv back to C, with dropout."""
    return nn.Sequential(
        nn.Conv1d(n_embd, 4 * n_embd, 1),
        nn.GELU(),
        nn.Dropout(pdrop),
        nn.Conv1d(4 * n_embd, n_embd, 1),
        nn.Dropout(pdrop),
    )


class TransformerBlock(nn.Module):
    """Pre-LN block; with stride > 1 it downsamples (strided attention + max-pooled skip)."""

    def __init__(
        self,
        n_embd: int,
        n_head: int,
        stride: int = 1,
        window_size: int = -1,
        proj_pdrop: float = 0.0,
        path_pdrop: float = 0.0,
        use_rel_pe: bool = False,
    ) -> None:
        super().__init__()
        self.ln1 = LayerNorm(n_embd)
        self.ln2 = LayerNorm(n_embd)
        if window_size > 1:
            self.attn = LocalMaskedMHCA(n_embd, n_head, window_size, stride, proj_pdrop, use_rel_pe)
        else:
            self.attn = MaskedMHCA(n_embd, n_head, stride, proj_pdrop)
        if stride > 1:
            self.pool_skip = nn.MaxPool1d(stride + 1, stride=stride, padding=(stride + 1) // 2)
        else:
            self.pool_skip = nn.Identity()
        self.mlp = feed_forward(n_embd, proj_pdrop)
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


class ConvTransformerBackbone(nn.Module):
    """Conv embedding, stride-1 stem blocks, then downsampling branch blocks (one pyramid level each).

    Returns the stem output and every branch output: ``n_branch + 1`` levels with strides
    ``scale_factor ** l``. A list ``input_dim`` with ``proj_dims`` projects each stream (1x1) first.
    ``make_block(stride, window)`` builds each transformer block (default: the v1 TransformerBlock) and
    ``embd_norm(channels)`` the norm after each embedding conv when ``with_ln`` (default LayerNorm).
    """

    def __init__(
        self,
        input_dim: int | Sequence[int],
        n_embd: int,
        n_head: int,
        embd_kernel_size: int,
        max_len: int,
        arch: tuple[int, int, int],
        window_sizes: Sequence[int],
        scale_factor: int = 2,
        with_ln: bool = True,
        proj_dims: Sequence[int] | None = None,
        proj_pdrop: float = 0.0,
        path_pdrop: float = 0.0,
        use_abs_pe: bool = False,
        use_rel_pe: bool = False,
        make_block: Callable[[int, int], nn.Module] | None = None,
        embd_norm: Callable[[int], nn.Module] = LayerNorm,
    ) -> None:
        super().__init__()
        n_embd_layers, n_stem, n_branch = arch
        self.max_len = max_len
        self.stream_dims = list(input_dim) if isinstance(input_dim, Sequence) else [input_dim]
        self.proj = None
        in_channels = sum(self.stream_dims)
        if proj_dims is not None:
            self.proj = nn.ModuleList(
                MaskedConv1D(c_in, c_out, 1) for c_in, c_out in zip(self.stream_dims, proj_dims)
            )
            in_channels = sum(proj_dims)
        self.embd = nn.ModuleList()
        self.embd_norm = nn.ModuleList()
        for idx in range(n_embd_layers):
            self.embd.append(
                MaskedConv1D(in_channels if idx == 0 else n_embd, n_embd, embd_kernel_size, bias=not with_ln)
            )
            self.embd_norm.append(embd_norm(n_embd) if with_ln else nn.Identity())
        self.use_abs_pe = use_abs_pe
        if use_abs_pe:
            self.register_buffer(
                "pos_embd", sinusoid_encoding(max_len, n_embd) / n_embd**0.5, persistent=False
            )
        if make_block is None:
            make_block = functools.partial(
                TransformerBlock,
                n_embd,
                n_head,
                proj_pdrop=proj_pdrop,
                path_pdrop=path_pdrop,
                use_rel_pe=use_rel_pe,
            )
        self.stem = nn.ModuleList(make_block(1, window_sizes[0]) for _ in range(n_stem))
        self.branch = nn.ModuleList(
            make_block(scale_factor, window_sizes[1 + idx]) for idx in range(n_branch)
        )

    def _position_encoding(self, length: int) -> torch.Tensor:
        """The PE table for ``length`` steps; longer inputs at inference use a linearly stretched table."""
        if self.training:
            if length > self.max_len:
                raise ValueError(f"training sequence length {length} exceeds max_seq_len={self.max_len}")
            return self.pos_embd[..., :length]
        if length >= self.max_len:
            return F.interpolate(self.pos_embd, size=length, mode="linear", align_corners=False)
        return self.pos_embd[..., :length]

    def forward(
        self, x: torch.Tensor, mask: torch.Tensor, pe_length: int | None = None
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``pe_length``: the padded length the absolute PE is built for when x is a trimmed prefix of it."""
        if self.proj is not None:
            streams = x.split(self.stream_dims, dim=1)
            x = torch.cat([proj(s, mask)[0] for proj, s in zip(self.proj, streams)], dim=1)
        for conv, norm in zip(self.embd, self.embd_norm):
            x, mask = conv(x, mask)
            x = F.relu(norm(x))
        if self.use_abs_pe:
            table = self._position_encoding(pe_length or x.shape[-1])[..., : x.shape[-1]]
            x = x + table.to(x.dtype) * mask.to(x.dtype)
        for block in self.stem:
            x, mask = block(x, mask)
        feats, masks = [x], [mask]
        for block in self.branch:
            x, mask = block(x, mask)
            feats.append(x)
            masks.append(mask)
        return feats, masks


# --------------------------------------------------------------------------------------- necks
class IdentityNeck(nn.Module):
    """Per-level LayerNorm on the backbone levels from ``start_level`` on."""

    def __init__(self, channels: int, num_levels: int, start_level: int = 0, with_ln: bool = True) -> None:
        super().__init__()
        self.start_level = start_level
        self.norms = nn.ModuleList(
            LayerNorm(channels) if with_ln else nn.Identity() for _ in range(start_level, num_levels)
        )

    def forward(
        self, feats: list[torch.Tensor], masks: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        feats, masks = feats[self.start_level :], masks[self.start_level :]
        return [norm(x) for norm, x in zip(self.norms, feats)], masks


class FPNNeck(nn.Module):
    """Feature pyramid: 1x1 laterals, top-down nearest upsampling, depthwise 3-tap conv, LayerNorm."""

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
        outs = [norm(conv(x, m)[0]) for conv, norm, x, m in zip(self.convs, self.norms, laterals, masks)]
        return outs, masks


# --------------------------------------------------------------------------------------- points
class PointGenerator(nn.Module):
    """Candidate points per level: rows [t, r_min, r_max, stride] with t = 0, s, 2s, ... (grid units).

    Tables cover ``max_len`` grid steps and are non-persistent buffers (rebuilt, never checkpointed).
    """

    def __init__(
        self, max_len: float, strides: Sequence[int], regression_range: Sequence[Sequence[float]]
    ) -> None:
        super().__init__()
        self.num_levels = len(strides)
        for level, (stride, (r_min, r_max)) in enumerate(zip(strides, regression_range)):
            t = torch.arange(0, max_len, stride, dtype=torch.float32)
            table = torch.stack(
                [t, torch.full_like(t, r_min), torch.full_like(t, r_max), torch.full_like(t, stride)], 1
            )
            self.register_buffer(f"points_{level}", table, persistent=False)

    def forward(self, lengths: Sequence[int]) -> list[torch.Tensor]:
        tables = [getattr(self, f"points_{level}") for level in range(self.num_levels)]
        for level, (length, table) in enumerate(zip(lengths, tables)):
            if length > table.shape[0]:
                raise ValueError(
                    f"level {level} has {length} steps but the point buffer holds {table.shape[0]}; "
                    "raise max_buffer_len_factor"
                )
        return [table[:length] for length, table in zip(lengths, tables)]


# --------------------------------------------------------------------------------------- heads
def make_trunk(
    head_type: str, in_dim: int, feat_dim: int, num_layers: int, kernel_size: int, with_ln: bool
) -> nn.Module:
    """The shared conv trunk of a head: v1 (``HeadTrunk``) or v2 (``actionformer_v2.HeadTrunkV2``)."""
    if head_type == "v2":
        from egolab.models.actionformer_v2 import HeadTrunkV2

        return HeadTrunkV2(in_dim, feat_dim, num_layers, kernel_size, with_ln)
    return HeadTrunk(in_dim, feat_dim, num_layers, kernel_size, with_ln)


class HeadTrunk(nn.Module):
    """(num_layers - 1) x [MaskedConv1D -> LayerNorm -> ReLU], applied to each level separately."""

    def __init__(self, in_dim: int, feat_dim: int, num_layers: int, kernel_size: int, with_ln: bool) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            MaskedConv1D(in_dim if idx == 0 else feat_dim, feat_dim, kernel_size, bias=not with_ln)
            for idx in range(num_layers - 1)
        )
        self.norms = nn.ModuleList(LayerNorm(feat_dim) if with_ln else nn.Identity() for _ in self.convs)
        self.out_dim = feat_dim if num_layers > 1 else in_dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for conv, norm in zip(self.convs, self.norms):
            x = F.relu(norm(conv(x, mask)[0]))
        return x


class ClsHead(nn.Module):
    """Classification head shared by all levels; bias set to the prior (empty classes to ~0)."""

    def __init__(
        self,
        in_dim: int,
        feat_dim: int,
        num_classes: int,
        num_layers: int = 3,
        kernel_size: int = 3,
        with_ln: bool = True,
        prior_prob: float = 0.01,
        empty_cls: Sequence[int] = (),
        head_type: str = "v1",
    ) -> None:
        super().__init__()
        self.trunk = make_trunk(head_type, in_dim, feat_dim, num_layers, kernel_size, with_ln)
        self.cls = MaskedConv1D(self.trunk.out_dim, num_classes, kernel_size)
        with torch.no_grad():
            self.cls.conv.bias.fill_(-math.log((1 - prior_prob) / prior_prob))
        self.mark_empty_classes(empty_cls)

    def mark_empty_classes(self, class_ids: Sequence[int]) -> None:
        """Give classes without training annotations a bias for probability ~1e-6, as released."""
        with torch.no_grad():
            for idx in class_ids:
                self.cls.conv.bias[int(idx)] = -math.log((1 - EMPTY_CLASS_PRIOR) / EMPTY_CLASS_PRIOR)

    def forward(self, feats: list[torch.Tensor], masks: list[torch.Tensor]) -> list[torch.Tensor]:
        return [self.cls(self.trunk(x, m), m)[0] for x, m in zip(feats, masks)]


class RegHead(nn.Module):
    """Offset head shared by all levels: (o_left, o_right) = ReLU(Scale_l * conv(x)), in stride units."""

    def __init__(
        self,
        in_dim: int,
        feat_dim: int,
        num_levels: int,
        num_layers: int = 3,
        kernel_size: int = 3,
        with_ln: bool = True,
        head_type: str = "v1",
    ) -> None:
        super().__init__()
        self.trunk = make_trunk(head_type, in_dim, feat_dim, num_layers, kernel_size, with_ln)
        self.offset = MaskedConv1D(self.trunk.out_dim, 2, kernel_size)
        self.scales = nn.ModuleList(Scale(1.0) for _ in range(num_levels))

    def forward(self, feats: list[torch.Tensor], masks: list[torch.Tensor]) -> list[torch.Tensor]:
        return [
            F.relu(scale(self.offset(self.trunk(x, m), m)[0]))
            for scale, x, m in zip(self.scales, feats, masks)
        ]


# --------------------------------------------------------------------------------------- padding
def check_feature_batch(
    feats: torch.Tensor, masks: torch.Tensor, in_channels: int, max_div_factor: int
) -> None:
    """Raise ValueError unless feats is (B, in_channels, T), T a multiple of max_div_factor, masks (B, T)."""
    if feats.dim() != 3 or masks.shape != (feats.shape[0], feats.shape[2]):
        raise ValueError(
            f"expected feats (B, C, T) and masks (B, T), got {tuple(feats.shape)}, {tuple(masks.shape)}"
        )
    if feats.shape[1] != in_channels:
        raise ValueError(f"features have {feats.shape[1]} channels but the model expects {in_channels}")
    if feats.shape[2] % max_div_factor != 0:
        raise ValueError(
            f"sequence length {feats.shape[2]} is not a multiple of max_div_factor={max_div_factor}; "
            "pad the batch (see docs/localization_contract.md)"
        )


def trimmed_lengths(masks: torch.Tensor, unit: int) -> list[int]:
    """Per video, the shortest prefix (a multiple of ``unit``) whose valid outputs equal the full input's.

    Padded steps are not all zero inside the network (a LayerNorm maps a zeroed step to its bias), and
    'same' convolutions read one step past the last valid one, so the cut keeps at least one padded step
    on every pyramid level: the last valid step plus ``unit`` (the coarsest stride), rounded up.
    """
    full = masks.shape[-1]
    extent = torch.where(masks.any(-1), full - masks.flip(-1).int().argmax(-1), 0)
    return [min(full, -(-(int(e) + unit) // unit) * unit) for e in extent.tolist()]


def trimmed_forward(
    levels: Callable[[torch.Tensor, torch.Tensor, int], dict[str, list[torch.Tensor]]],
    feats: torch.Tensor,
    masks: torch.Tensor,
    unit: int,
    mode: str,
) -> dict[str, list[torch.Tensor]]:
    """``levels(feats, masks, padded_length)`` on the batch cut short of the padding that cannot change it.

    ``levels`` maps (B, C, T') inputs to per-level (B, *, T'_l) outputs; they are zero-padded back to the
    full length (masks with False) so callers see the usual shapes. Modes: ``sample`` runs each group of
    videos with the same cut separately (least work: a short video in a batch costs its own length),
    ``batch`` cuts the whole batch to its longest video (one pass, the better trade on a GPU), ``none``
    runs the padded batch, ``auto`` is ``sample`` on CPU for videos of at least ``SAMPLE_TRIM_MIN_NUMEL``
    input values (below that, a pass per video costs more in overhead than it saves: the CPU demo model
    trains 2x slower) and ``batch`` otherwise. The outputs at valid steps equal the untrimmed ones
    (tests/models/test_actionformer.py checks it), as do the gradients.
    """
    if mode not in TRIM_MODES:
        raise ValueError(f"trim_padding must be one of {TRIM_MODES}, got {mode!r}")
    full = feats.shape[-1]
    if mode == "auto":
        large = feats[0].numel() >= SAMPLE_TRIM_MIN_NUMEL
        mode = "sample" if feats.device.type == "cpu" and large else "batch"
    if mode == "none":
        return levels(feats, masks, full)
    cuts = trimmed_lengths(masks, unit)
    if mode == "batch":
        cuts = [max(cuts)] * len(cuts)
    groups: dict[int, list[int]] = {}
    for index, cut in enumerate(cuts):
        groups.setdefault(cut, []).append(index)
    if len(groups) == 1:
        cut = cuts[0]
        if cut == full:
            return levels(feats, masks, full)
        return _pad_levels(levels(feats[..., :cut], masks[..., :cut], full), cut, full)
    parts, order = [], []
    for cut, indices in groups.items():
        rows = torch.tensor(indices, device=feats.device)
        out = levels(feats.index_select(0, rows)[..., :cut], masks.index_select(0, rows)[..., :cut], full)
        parts.append(_pad_levels(out, cut, full))
        order += indices
    restore = torch.tensor(order, device=feats.device).argsort()
    return {
        key: [torch.cat([part[key][level] for part in parts]).index_select(0, restore) for level in range(n)]
        for key, n in ((key, len(value)) for key, value in parts[0].items())
    }


def _pad_levels(outputs: dict[str, list[torch.Tensor]], cut: int, full: int) -> dict[str, list[torch.Tensor]]:
    """Zero-pad (False for masks) per-level outputs computed on ``cut`` input steps to ``full`` steps."""
    return {
        key: [F.pad(x, (0, x.shape[-1] * (full - cut) // cut)) for x in value]
        for key, value in outputs.items()
    }


# --------------------------------------------------------------------------------------- model
def _level_divisor(stride: int, window: int) -> int:
    """What max_seq_len must divide by at a level: stride * (w // 2) * 2, or the stride (global attn)."""
    return stride * (window // 2) * 2 if window > 1 else stride


class ActionFormer(nn.Module):
    """ActionFormer: conv-transformer backbone, neck, point generator, classification and offset heads.

    Constructor keys mirror the released ``model`` config (with ``proj_dims`` holding the per-stream
    projection sizes that the released code packs into a list ``embd_dim``), plus the ``train_cfg``
    entries that shape the model (dropout, droppath, cls_prior_prob, head_empty_cls). Configuration
    errors raise ``ValueError`` at construction.

    Fork options (see :mod:`egolab.models.actionformer_v2`), all off by default:
    ``backbone_type="convTransformerv2"`` builds v2 transformer blocks, each switch independent:
    ``use_rope`` (rotary positions on q/k), ``use_sdpa`` (local windows through SDPA), ``use_rms_norm``
    (RMSNorm in the embedding and the blocks, as the fork), ``use_swiglu``, ``n_kv_head`` (grouped-query
    attention; None means n_head). ``head_type="v2"`` gives
    the deeper residual heads, ``fpn_type="cs_fpn"`` the cross-scale (top-down + bottom-up) neck.
    """

    def __init__(
        self,
        input_dim: int | Sequence[int],
        num_classes: int,
        max_seq_len: int,
        backbone_arch: Sequence[int] = (2, 2, 5),
        scale_factor: int = 2,
        regression_range: Sequence[Sequence[float]] = DEFAULT_REGRESSION_RANGE,
        n_head: int = 4,
        n_mha_win_size: int | Sequence[int] = -1,
        embd_kernel_size: int = 3,
        embd_dim: int = 512,
        embd_with_ln: bool = True,
        proj_dims: Sequence[int] | None = None,
        fpn_type: str = "identity",
        fpn_dim: int = 512,
        fpn_with_ln: bool = True,
        fpn_start_level: int = 0,
        head_dim: int = 512,
        head_kernel_size: int = 3,
        head_num_layers: int = 3,
        head_with_ln: bool = True,
        max_buffer_len_factor: float = 6.0,
        use_abs_pe: bool = False,
        use_rel_pe: bool = False,
        dropout: float = 0.0,
        droppath: float = 0.1,
        cls_prior_prob: float = 0.01,
        head_empty_cls: Sequence[int] = (),
        backbone_type: str = "convTransformer",
        n_kv_head: int | None = None,
        use_rope: bool = False,
        use_sdpa: bool = False,
        use_rms_norm: bool = False,
        use_swiglu: bool = False,
        head_type: str = "v1",
        trim_padding: str = "auto",
    ) -> None:
        super().__init__()
        if trim_padding not in TRIM_MODES:
            raise ValueError(f"trim_padding must be one of {TRIM_MODES}, got {trim_padding!r}")
        self.trim_padding = trim_padding
        self.input_dim = int(input_dim) if isinstance(input_dim, int) else [int(d) for d in input_dim]
        self.num_classes = int(num_classes)
        self.max_seq_len = int(max_seq_len)
        arch = tuple(int(a) for a in backbone_arch)
        if len(arch) != 3:
            raise ValueError(f"backbone_arch must be (n_embd, n_stem, n_branch), got {backbone_arch}")
        if scale_factor < 1 or (scale_factor > 1 and scale_factor % 2 != 0):
            raise ValueError(f"scale_factor must be 1 or an even integer, got {scale_factor}")
        num_backbone_levels = arch[2] + 1
        if not 0 <= fpn_start_level < num_backbone_levels:
            raise ValueError(f"fpn_start_level={fpn_start_level} must lie in [0, {num_backbone_levels - 1}]")
        self.backbone_strides = [scale_factor**level for level in range(num_backbone_levels)]
        self.fpn_strides = self.backbone_strides[fpn_start_level:]
        self.window_sizes = self._check_windows(n_mha_win_size, num_backbone_levels)
        self._max_div_factor = max(
            _level_divisor(s, w) for s, w in zip(self.backbone_strides, self.window_sizes)
        )
        ranges = self._check_ranges(regression_range)
        proj_dims = None if proj_dims is None else [int(d) for d in proj_dims]
        self._check_dims(embd_dim, n_head, proj_dims, fpn_type, fpn_dim)
        empty_cls = [int(c) for c in head_empty_cls]
        self._check_head(head_num_layers, cls_prior_prob, empty_cls, head_type)
        v2_switches = dict(
            use_rope=use_rope, use_sdpa=use_sdpa, use_rms_norm=use_rms_norm, use_swiglu=use_swiglu
        )
        self._check_backbone(backbone_type, embd_dim, n_head, n_kv_head, v2_switches)

        make_block, embd_norm = None, LayerNorm
        if backbone_type == "convTransformerv2":
            from egolab.models.actionformer_v2 import RMSNorm, TransformerBlockV2

            embd_norm = RMSNorm if use_rms_norm else LayerNorm
            make_block = functools.partial(
                TransformerBlockV2,
                embd_dim,
                n_head,
                n_kv_head=n_kv_head,
                proj_pdrop=dropout,
                path_pdrop=droppath,
                use_rel_pe=use_rel_pe,
                **v2_switches,
            )
        self.backbone = ConvTransformerBackbone(
            self.input_dim,
            embd_dim,
            n_head,
            embd_kernel_size,
            self.max_seq_len,
            arch,
            self.window_sizes,
            scale_factor=scale_factor,
            with_ln=embd_with_ln,
            proj_dims=proj_dims,
            proj_pdrop=dropout,
            path_pdrop=droppath,
            use_abs_pe=use_abs_pe,
            use_rel_pe=use_rel_pe,
            make_block=make_block,
            embd_norm=embd_norm,
        )
        neck_args = (embd_dim, fpn_dim, num_backbone_levels, scale_factor, fpn_start_level, fpn_with_ln)
        if fpn_type == "identity":
            self.neck = IdentityNeck(embd_dim, num_backbone_levels, fpn_start_level, fpn_with_ln)
        elif fpn_type == "fpn":
            self.neck = FPNNeck(*neck_args)
        else:
            from egolab.models.actionformer_v2 import CrossScaleFPN

            self.neck = CrossScaleFPN(*neck_args)
        buffer_len = self.max_seq_len * max_buffer_len_factor
        self.point_generator = PointGenerator(buffer_len, self.fpn_strides, ranges)
        self._zero_conv_biases()
        num_levels = len(self.fpn_strides)
        head_args = dict(
            num_layers=head_num_layers,
            kernel_size=head_kernel_size,
            with_ln=head_with_ln,
            head_type=head_type,
        )
        self.cls_head = ClsHead(
            fpn_dim, head_dim, self.num_classes, **head_args, prior_prob=cls_prior_prob, empty_cls=empty_cls
        )
        self.reg_head = RegHead(fpn_dim, head_dim, num_levels, **head_args)

    # ------------------------------------------------------------------ configuration checks
    def _check_windows(self, n_mha_win_size: int | Sequence[int], num_levels: int) -> list[int]:
        """Per-level window sizes (odd, or <= 1 for global attention) that max_seq_len is compatible with."""
        if isinstance(n_mha_win_size, int):
            windows = [n_mha_win_size] * num_levels
        else:
            windows = [int(w) for w in n_mha_win_size]
        if len(windows) != num_levels:
            raise ValueError(
                f"n_mha_win_size lists {len(windows)} window sizes but the backbone has {num_levels} "
                "levels (backbone_arch[2] + 1)"
            )
        for level, w in enumerate(windows):
            if w > 1 and w % 2 != 1:
                raise ValueError(f"n_mha_win_size at level {level} is {w}; windows must be odd (or <= 1)")
        divisors = [_level_divisor(s, w) for s, w in zip(self.backbone_strides, windows)]
        for level, (s, w, d) in enumerate(zip(self.backbone_strides, windows, divisors)):
            if self.max_seq_len % d != 0:
                raise ValueError(
                    f"max_seq_len={self.max_seq_len} must be divisible by {d} at pyramid level {level} "
                    f"(stride {s}, window {w}: stride * (w // 2) * 2); use a multiple of "
                    f"{math.lcm(*divisors)} or change n_mha_win_size / backbone_arch"
                )
        return windows

    def _check_ranges(self, regression_range: Sequence[Sequence[float]]) -> list[tuple[float, ...]]:
        """One [r_min, r_max] per output level, with r_min < r_max."""
        ranges = [tuple(float(v) for v in r) for r in regression_range]
        if len(ranges) != len(self.fpn_strides):
            raise ValueError(
                f"regression_range has {len(ranges)} entries but the model has {len(self.fpn_strides)} "
                "pyramid levels (backbone_arch[2] + 1 - fpn_start_level)"
            )
        for level, r in enumerate(ranges):
            if len(r) != 2 or not r[0] < r[1]:
                raise ValueError(f"regression_range[{level}]={list(r)} must be [r_min, r_max], r_min < r_max")
        return ranges

    def _check_dims(
        self, embd_dim: int, n_head: int, proj_dims: list[int] | None, fpn_type: str, fpn_dim: int
    ) -> None:
        if embd_dim % n_head != 0:
            raise ValueError(f"embd_dim={embd_dim} must be divisible by n_head={n_head}")
        if proj_dims is not None and (
            isinstance(self.input_dim, int) or len(proj_dims) != len(self.input_dim)
        ):
            raise ValueError(
                f"proj_dims={proj_dims} needs a list input_dim with one entry per stream, "
                f"got input_dim={self.input_dim}"
            )
        if fpn_type not in FPN_TYPES:
            raise ValueError(f"fpn_type must be one of {FPN_TYPES}, got {fpn_type!r}")
        if fpn_type == "identity" and embd_dim != fpn_dim:
            raise ValueError(f"the identity neck needs embd_dim == fpn_dim, got {embd_dim} and {fpn_dim}")

    def _check_head(
        self, head_num_layers: int, cls_prior_prob: float, empty_cls: list[int], head_type: str
    ) -> None:
        if head_type not in HEAD_TYPES:
            raise ValueError(f"head_type must be one of {HEAD_TYPES}, got {head_type!r}")
        if head_num_layers < 1:
            raise ValueError(f"head_num_layers must be >= 1, got {head_num_layers}")
        if not 0.0 < cls_prior_prob < 1.0:
            raise ValueError(f"cls_prior_prob must lie in (0, 1), got {cls_prior_prob}")
        bad = [c for c in empty_cls if not 0 <= c < self.num_classes]
        if bad:
            raise ValueError(f"head_empty_cls has ids outside [0, {self.num_classes}): {bad}")

    def _check_backbone(
        self,
        backbone_type: str,
        embd_dim: int,
        n_head: int,
        n_kv_head: int | None,
        switches: dict[str, bool],
    ) -> None:
        """The v2 switches need the v2 backbone; grouped-query heads must divide n_head; RoPE even dims."""
        if backbone_type not in BACKBONE_TYPES:
            raise ValueError(f"backbone_type must be one of {BACKBONE_TYPES}, got {backbone_type!r}")
        if backbone_type == "convTransformer":
            used = [name for name, on in switches.items() if on]
            if n_kv_head is not None and n_kv_head != n_head:
                used.append(f"n_kv_head={n_kv_head}")
            if used:
                raise ValueError(
                    f"{', '.join(used)}: these options need backbone_type='convTransformerv2' "
                    "(the v1 convTransformer backbone has none of them)"
                )
            return
        if n_kv_head is not None and (n_kv_head < 1 or n_head % n_kv_head != 0):
            raise ValueError(
                f"n_head={n_head} must be divisible by n_kv_head={n_kv_head} (grouped-query attention)"
            )
        if switches["use_rope"] and (embd_dim // n_head) % 2 != 0:
            raise ValueError(
                f"use_rope needs an even head dimension, got embd_dim / n_head = {embd_dim} / {n_head}"
            )

    def _zero_conv_biases(self) -> None:
        """Released initialisation: every conv / linear bias of backbone and neck starts at zero."""
        for module in self.modules():
            if isinstance(module, (nn.Conv1d, nn.Linear)) and module.bias is not None:
                nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ inference
    @property
    def max_div_factor(self) -> int:
        """Inference inputs longer than max_seq_len are padded to a multiple of this."""
        return self._max_div_factor

    @property
    def in_channels(self) -> int:
        return self.input_dim if isinstance(self.input_dim, int) else sum(self.input_dim)

    def forward(self, feats: torch.Tensor, masks: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """feats (B, C, T), masks (B, T) bool -> per-level cls_logits, offsets, masks and points."""
        check_feature_batch(feats, masks, self.in_channels, self.max_div_factor)
        out = trimmed_forward(self._levels, feats, masks.bool(), self.backbone_strides[-1], self.trim_padding)
        return {
            "cls_logits": [x.transpose(1, 2) for x in out["cls_logits"]],
            "offsets": [x.transpose(1, 2) for x in out["offsets"]],
            "masks": [m[:, 0] for m in out["masks"]],
            "points": self.point_generator([m.shape[-1] for m in out["masks"]]),
        }

    def _levels(
        self, feats: torch.Tensor, masks: torch.Tensor, padded_length: int
    ) -> dict[str, list[torch.Tensor]]:
        level_feats, level_masks = self.backbone(feats, masks[:, None, :], padded_length)
        level_feats, level_masks = self.neck(level_feats, level_masks)
        return {
            "cls_logits": self.cls_head(level_feats, level_masks),
            "offsets": self.reg_head(level_feats, level_masks),
            "masks": level_masks,
        }


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Optimizer groups as released: decay only the weights of Linear / Conv1d (incl. MaskedConv1D).

    Biases, norms, Scale and AffineDropPath scales, and relative position biases are not decayed.
    """
    decay, no_decay = [], []
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if name == "weight" and isinstance(module, (nn.Linear, nn.Conv1d)):
                decay.append(param)
            else:
                no_decay.append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
