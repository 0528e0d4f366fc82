"""ActionFormer v2 options: windowed SDPA, RoPE, GQA, RMSNorm, SwiGLU, v2 heads, cross-scale FPN, wiring."""

import math

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from egolab.models.actionformer import (
    ActionFormer,
    ClsHead,
    FPNNeck,
    LayerNorm,
    LocalMaskedMHCA,
    MaskedMHCA,
    TransformerBlock,
    local_window_attention,
    param_groups,
    windowed_sdpa_attention,
)
from egolab.models.actionformer_v2 import (
    CrossScaleFPN,
    HeadTrunkV2,
    MaskedMHCAv2,
    RMSNorm,
    RotaryEmbedding,
    SwiGLU,
    TransformerBlockV2,
    swiglu_hidden_dim,
)
from egolab.paths import CONF_DIR

V2_ALL = dict(
    backbone_type="convTransformerv2",
    use_rope=True,
    use_sdpa=True,
    use_rms_norm=True,
    use_swiglu=True,
    n_kv_head=2,
    head_type="v2",
    fpn_type="cs_fpn",
)
SMALL = dict(
    input_dim=16,
    num_classes=3,
    max_seq_len=128,
    n_mha_win_size=5,
    embd_dim=32,
    fpn_dim=32,
    head_dim=32,
    n_head=4,
)


def _demo_v2_model() -> ActionFormer:
    """The model of expts/demo/localization_v2.txt, built from conf/model/actionformer/demo_v2.yaml."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("model/actionformer/demo_v2")
    return instantiate(cfg.model.actionformer)


def _lengths_to_mask(lengths: list[int], total: int) -> torch.Tensor:
    return torch.arange(total)[None] < torch.tensor(lengths)[:, None]


def _banded_reference(q, k, v, mask, window, rel_bias=None):
    """Hand-built dense attention: full (T, T) scores, -1e4 on padded keys, -inf outside the band."""
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
    length, half = q.shape[2], window // 2
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    offset = torch.arange(length)[None, :] - torch.arange(length)[:, None]  # j - i
    if rel_bias is not None:
        scores = scores + rel_bias[:, offset.clamp(-half, half) + half][None]
    scores = scores + (~mask)[:, None, None, :] * -1e4
    scores = scores.masked_fill(offset.abs() > half, float("-inf"))
    attn = torch.softmax(scores, -1).masked_fill(~mask[:, None, :, None], 0.0)
    return attn @ v


def _zero_biases_random_norms(module: torch.nn.Module) -> None:
    """Give norms a non-trivial affine so that padded steps carry non-zero values (masking is tested)."""
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, (LayerNorm, RMSNorm)):
                sub.weight.uniform_(0.5, 1.5)
                if isinstance(sub, LayerNorm):
                    sub.bias.normal_()


# --------------------------------------------------------------------------------------- primitives
def test_rms_norm_formula():
    torch.manual_seed(0)
    norm = RMSNorm(6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
    x = torch.randn(2, 6, 5)
    expected = x / torch.sqrt(x.pow(2).mean(1, keepdim=True) + 1e-6) * norm.weight[None, :, None]
    assert torch.allclose(norm(x), expected, atol=1e-6)
    assert (norm(torch.zeros(1, 6, 3)) == 0).all()  # padded (zero) steps stay zero


@pytest.mark.parametrize(
    ("channels", "hidden"), [(512, 1408), (256, 704), (64, 192), (1024, 2752), (96, 256)]
)
def test_swiglu_hidden_is_8c_over_3_rounded_up_to_64(channels, hidden):
    assert swiglu_hidden_dim(channels) == hidden
    assert hidden % 64 == 0 and hidden >= 8 * channels / 3 > hidden - 64


def test_swiglu_formula():
    torch.manual_seed(0)
    ffn = SwiGLU(8).eval()
    x = torch.randn(2, 8, 5)
    w1, w2, w3 = (layer.weight[..., 0] for layer in (ffn.w1, ffn.w2, ffn.w3))
    b1, b2, b3 = ffn.w1.bias, ffn.w2.bias, ffn.w3.bias
    xt = x.transpose(1, 2)
    expected = (F.silu(xt @ w3.T + b3) * (xt @ w1.T + b1)) @ w2.T + b2
    assert torch.allclose(ffn(x), expected.transpose(1, 2), atol=1e-6)


def test_rope_scores_depend_only_on_position_differences():
    torch.manual_seed(0)
    rope = RotaryEmbedding(16)
    q, k = torch.randn(1, 2, 10, 16), torch.randn(1, 2, 10, 16)
    positions = torch.arange(10)
    scores = rope(q, positions) @ rope(k, positions).transpose(-1, -2)
    for shift in (1, 7, 1000):
        shifted = rope(q, positions + shift) @ rope(k, positions + shift).transpose(-1, -2)
        assert torch.allclose(scores, shifted, atol=1e-3), shift  # float32 angles: ~1e-4 at t = 1000
    # a rotation: position 0 is the identity and norms are kept; positions do change the scores
    assert torch.allclose(rope(q, torch.zeros(10, dtype=torch.long)), q)
    assert torch.allclose(rope(q).norm(dim=-1), q.norm(dim=-1), atol=1e-5)
    assert not torch.allclose(scores, q @ k.transpose(-1, -2), atol=1e-3)
    with pytest.raises(ValueError, match="even"):
        RotaryEmbedding(15)


def test_rope_frequencies_use_base_10000():
    rope = RotaryEmbedding(8)
    x = torch.zeros(1, 1, 1, 8)
    x[..., 1] = 1.0  # channel 1 pairs with channel 5 and turns at 10000 ** (-2 / 8)
    out = rope(x, torch.tensor([3]))
    angle = 3 * 10000.0 ** (-2 / 8)
    assert out[0, 0, 0, 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    assert out[0, 0, 0, 5].item() == pytest.approx(math.sin(angle), abs=1e-6)


# --------------------------------------------------------------------------------------- windowed SDPA
@pytest.mark.parametrize("window", [3, 5, 9])
@pytest.mark.parametrize("block", [None, 4, 7, 40])
@pytest.mark.parametrize("with_rel_bias", [False, True])
def test_windowed_sdpa_equals_dense_banded_reference(window, block, with_rel_bias):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 20, 4) for _ in range(3))
    mask = _lengths_to_mask([20, 11], 20)
    rel_bias = torch.randn(3, window) if with_rel_bias else None
    out = windowed_sdpa_attention(q, k, v, mask, window, rel_bias, block=block)
    assert out.shape == (2, 3, 20, 4)
    assert torch.allclose(out, _banded_reference(q, k, v, mask, window, rel_bias), atol=1e-5)
    assert torch.allclose(out, local_window_attention(q, k, v, mask, window, rel_bias), atol=1e-5)
    assert (out[1, :, 11:] == 0).all()  # padded queries are zeroed


@pytest.mark.parametrize("block", [None, 3])
def test_windowed_sdpa_grouped_query_heads(block):
    torch.manual_seed(0)
    q = torch.randn(2, 4, 12, 8)
    k, v = torch.randn(2, 2, 12, 8), torch.randn(2, 2, 12, 8)
    mask = _lengths_to_mask([12, 5], 12)
    out = windowed_sdpa_attention(q, k, v, mask, 5, block=block)
    assert torch.allclose(out, _banded_reference(q, k, v, mask, 5), atol=1e-5)  # query head h uses kv h // 2


@pytest.mark.parametrize(("window", "block"), [(7, 6), (3, 40)])  # (3, 40): 24 filler rows, window 3
def test_windowed_sdpa_gradients_match_reference(window, block):
    torch.manual_seed(0)
    inputs = [torch.randn(1, 2, 16, 4, requires_grad=True) for _ in range(3)]
    mask = _lengths_to_mask([13], 16)
    windowed_sdpa_attention(*inputs, mask, window, block=block).square().sum().backward()
    ours = [x.grad.clone() for x in inputs]
    assert all(torch.isfinite(g).all() for g in ours)
    for x in inputs:
        x.grad = None
    _banded_reference(*inputs, mask, window).square().sum().backward()
    for a, x in zip(ours, inputs):
        assert torch.allclose(a, x.grad, atol=1e-5)


# --------------------------------------------------------------------------------------- attention module
@pytest.mark.parametrize("window", [5, -1])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("use_sdpa", [False, True])
def test_v2_attention_with_full_kv_heads_equals_v1_attention(window, stride, use_sdpa):
    """n_kv_head = n_head, no RoPE: the v1 module with the same weights (SDPA on or off)."""
    torch.manual_seed(0)
    if window > 1:
        v1 = LocalMaskedMHCA(16, 4, window, stride, use_rel_pe=True).eval()
    else:
        v1 = MaskedMHCA(16, 4, stride).eval()
    v2 = MaskedMHCAv2(16, 4, 4, window, stride, use_rel_pe=True, use_sdpa=use_sdpa).eval()
    v2.load_state_dict(v1.state_dict())
    x = torch.randn(2, 16, 16)
    mask = _lengths_to_mask([16, 9], 16)[:, None]
    (out1, mask1), (out2, mask2) = v1(x, mask), v2(x, mask)
    assert torch.equal(mask1, mask2) and out2.shape == (2, 16, 16 // stride)
    assert torch.allclose(out1, out2, atol=1e-5)


@pytest.mark.parametrize("window", [5, -1])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("use_sdpa", [False, True])
@pytest.mark.parametrize("use_rope", [False, True])
def test_grouped_query_attention_equals_mha_with_shared_kv_weights(window, stride, use_sdpa, use_rope):
    """n_kv_head=2 of 4 heads equals full MHA whose k/v heads 2g and 2g+1 both copy kv head g."""
    torch.manual_seed(0)
    args = dict(window_size=window, stride=stride, use_rope=use_rope, use_sdpa=use_sdpa)
    gqa = MaskedMHCAv2(32, 4, n_kv_head=2, **args).eval()
    mha = MaskedMHCAv2(32, 4, n_kv_head=4, **args).eval()
    assert gqa.key.proj.weight.shape == (16, 32, 1)  # 2 kv heads x head dim 8
    state = gqa.state_dict()
    for name in ("key", "value"):
        for param in ("weight", "bias"):
            grouped = state[f"{name}.proj.{param}"]
            state[f"{name}.proj.{param}"] = (
                grouped.view(2, 8, *grouped.shape[1:]).repeat_interleave(2, 0).flatten(0, 1)
            )
    mha.load_state_dict(state)
    x = torch.randn(2, 32, 16)
    mask = _lengths_to_mask([16, 10], 16)[:, None]
    assert torch.allclose(gqa(x, mask)[0], mha(x, mask)[0], atol=1e-5)


def test_rope_attention_is_invariant_to_a_shift_of_the_whole_input():
    """With RoPE and no padding near the ends, attention depends on offsets only: the interior of a
    shifted sequence gives the shifted outputs (the 3-tap projections see the same neighbours)."""
    torch.manual_seed(0)
    attn = MaskedMHCAv2(16, 2, window_size=5, use_rope=True, use_sdpa=True).eval()
    x = torch.randn(1, 16, 40)
    shifted = torch.roll(x, 8, dims=2)
    ones = torch.ones(1, 1, 40, dtype=torch.bool)
    out, out_shifted = attn(x, ones)[0], attn(shifted, ones)[0]
    assert torch.allclose(out[..., 4:28], out_shifted[..., 12:36], atol=1e-5)
    plain = MaskedMHCAv2(16, 2, window_size=5).eval()
    plain.load_state_dict(attn.state_dict())
    assert not torch.allclose(out, plain(x, ones)[0], atol=1e-3)  # RoPE does change the result


# --------------------------------------------------------------------------------------- block
@pytest.mark.parametrize(("stride", "window"), [(1, 5), (2, 5), (1, -1), (2, -1)])
def test_v2_block_with_switches_off_equals_v1_block(stride, window):
    torch.manual_seed(0)
    v1 = TransformerBlock(16, 4, stride, window, path_pdrop=0.1, use_rel_pe=True).eval()
    v2 = TransformerBlockV2(16, 4, stride, window, path_pdrop=0.1, use_rel_pe=True).eval()
    _zero_biases_random_norms(v1)
    v2.load_state_dict(v1.state_dict())  # same parameter names
    x = torch.randn(2, 16, 16)
    mask = _lengths_to_mask([16, 7], 16)[:, None]
    (out1, mask1), (out2, mask2) = v1(x, mask), v2(x, mask)
    assert torch.equal(mask1, mask2)
    assert torch.equal(out1, out2)
    # the SDPA switch alone changes how, not what, is computed
    sdpa = TransformerBlockV2(16, 4, stride, window, path_pdrop=0.1, use_rel_pe=True, use_sdpa=True).eval()
    sdpa.load_state_dict(v1.state_dict())
    assert torch.allclose(sdpa(x, mask)[0], out1, atol=1e-5)


def test_v2_block_switches_swap_their_components():
    block = TransformerBlockV2(64, 4, 2, 5, n_kv_head=1, use_rms_norm=True, use_swiglu=True, use_rope=True)
    assert isinstance(block.ln1, RMSNorm) and isinstance(block.ln2, RMSNorm)
    assert isinstance(block.mlp, SwiGLU) and block.mlp.w1.out_channels == 192
    assert block.attn.rope is not None and block.attn.key.proj.out_channels == 16
    x = torch.randn(2, 64, 20)
    mask = _lengths_to_mask([20, 9], 20)[:, None]
    out, out_mask = block(x, mask)
    assert out.shape == (2, 64, 10) and torch.equal(out_mask, mask[..., ::2])
    assert (out[1, :, 5:] == 0).all()  # padded steps stay zero


# --------------------------------------------------------------------------------------- heads and neck
def _pyramid(channels: int = 8, lengths=(32, 16, 8, 4), valid=(21, 11, 6, 3)):
    feats = [torch.randn(2, channels, t) for t in lengths]
    masks = [_lengths_to_mask([t, v], t)[:, None] for t, v in zip(lengths, valid)]
    return feats, masks


def test_v2_head_trunk_residual_every_two_layers():
    torch.manual_seed(0)
    trunk = HeadTrunkV2(8, 12, num_layers=5, kernel_size=3, with_ln=False)
    assert len(trunk.convs) == 4 and trunk.out_dim == 12
    assert trunk.input_proj.conv.kernel_size == (1,)
    x = torch.randn(1, 8, 10)
    mask = torch.ones(1, 1, 10, dtype=torch.bool)
    projected = F.relu(trunk.input_proj(x, mask)[0])
    with torch.no_grad():  # a pair whose second conv outputs zero passes its input through the residual
        trunk.convs[1].conv.weight.zero_()
        trunk.convs[1].conv.bias.zero_()
    h = projected
    h = F.relu(trunk.convs[1](F.relu(trunk.convs[0](h, mask)[0]), mask)[0]) + h
    assert torch.allclose(h, projected)
    h = F.relu(trunk.convs[3](F.relu(trunk.convs[2](h, mask)[0]), mask)[0]) + h
    assert torch.allclose(trunk(x, mask), h, atol=1e-6)


def test_v2_heads_and_cs_fpn_shapes_and_masks_on_all_levels():
    torch.manual_seed(0)
    feats, masks = _pyramid()
    neck = CrossScaleFPN(8, 6, num_levels=4)
    outs, out_masks = neck(feats, masks)
    assert [x.shape for x in outs] == [(2, 6, t) for t in (32, 16, 8, 4)]
    assert all(torch.equal(a, b) for a, b in zip(out_masks, masks))
    head = ClsHead(6, 10, num_classes=3, num_layers=4, head_type="v2")
    logits = head(outs, out_masks)
    assert [x.shape for x in logits] == [(2, 3, t) for t in (32, 16, 8, 4)]
    for x, m in zip(logits, out_masks):
        assert (x * ~m == 0).all()  # padded steps are zeroed by the final masked conv
    # start level 1 drops the finest level
    outs, out_masks = CrossScaleFPN(8, 6, num_levels=4, start_level=1)(feats, masks)
    assert [x.shape[-1] for x in outs] == [16, 8, 4] and len(out_masks) == 3


def test_cs_fpn_is_the_fpn_plus_a_bottom_up_path():
    torch.manual_seed(0)
    feats, masks = _pyramid()
    cs_fpn = CrossScaleFPN(8, 6, num_levels=4)
    fpn = FPNNeck(8, 6, num_levels=4)
    fpn.load_state_dict(cs_fpn.state_dict(), strict=False)
    with torch.no_grad():
        for down in cs_fpn.downsamples:
            down.conv.weight.zero_()
    for a, b in zip(cs_fpn(feats, masks)[0], fpn(feats, masks)[0]):
        assert torch.allclose(a, b, atol=1e-6)
    # with the bottom-up convs on, the coarsest level sees the finest input; in the FPN it cannot
    cs_fpn = CrossScaleFPN(8, 6, num_levels=4)
    for neck, reaches in ((cs_fpn, True), (fpn, False)):
        fine = feats[0].clone().requires_grad_(True)
        coarse = neck([fine, *feats[1:]], masks)[0][-1]
        (grad,) = torch.autograd.grad(coarse.sum(), fine, allow_unused=True)
        assert (grad is not None and bool(grad.abs().sum() > 0)) == reaches


# --------------------------------------------------------------------------------------- full model
def test_v2_model_on_demo_shapes_forward_backward():
    torch.manual_seed(0)
    model = _demo_v2_model().train()
    assert isinstance(model.neck, CrossScaleFPN) and isinstance(model.backbone.stem[0], TransformerBlockV2)
    assert model.backbone.stem[0].attn.n_kv_head == 2 and model.backbone.stem[0].attn.use_sdpa
    assert model.max_div_factor == 32 * 8
    feats = torch.randn(2, 32, 256)
    masks = _lengths_to_mask([256, 97], 256)
    out = model(feats, masks)
    for level in range(6):
        length = 256 // 2**level
        assert out["cls_logits"][level].shape == (2, length, 5)
        assert out["offsets"][level].shape == (2, length, 2)
        assert torch.equal(out["masks"][level], _lengths_to_mask([256, math.ceil(97 / 2**level)], length))
        assert (out["cls_logits"][level][1, ~out["masks"][level][1]] == 0).all()
    loss = sum(x.square().mean() for x in out["cls_logits"] + out["offsets"])
    loss.backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    # RoPE needs no table: inference on a longer input works as is
    out = model.eval()(torch.randn(1, 32, 512), torch.ones(1, 512, dtype=torch.bool))
    assert out["offsets"][0].shape == (1, 512, 2)


def test_v2_model_valid_outputs_do_not_depend_on_padding_length():
    torch.manual_seed(0)
    model = ActionFormer(**{**SMALL, **V2_ALL, "max_seq_len": 64, "n_mha_win_size": 3}).eval()
    _zero_biases_random_norms(model)
    video = torch.randn(1, 16, 20)
    short = model(F.pad(video, (0, 44)), _lengths_to_mask([20], 64))
    long = model(F.pad(video, (0, 108)), _lengths_to_mask([20], 128))
    for level in range(6):
        valid = short["masks"][level][0]
        for key in ("cls_logits", "offsets"):
            a = short[key][level][0, valid]
            b = long[key][level][0, : valid.shape[0]][valid]
            assert torch.allclose(a, b, atol=1e-5), (key, level)


def test_v2_model_with_switches_off_equals_v1_model():
    torch.manual_seed(0)
    v1 = ActionFormer(**SMALL, use_rel_pe=True).eval()
    v2 = ActionFormer(**SMALL, use_rel_pe=True, backbone_type="convTransformerv2", n_kv_head=4).eval()
    v2.load_state_dict(v1.state_dict())
    feats, masks = torch.randn(2, 16, 128), _lengths_to_mask([128, 60], 128)
    out1, out2 = v1(feats, masks), v2(feats, masks)
    for key in ("cls_logits", "offsets"):  # v1 runs its windows through SDPA, v2 (use_sdpa off) by unfold
        for a, b in zip(out1[key], out2[key]):
            torch.testing.assert_close(a, b)


def test_v2_options_are_built_where_asked():
    model = ActionFormer(**{**SMALL, **V2_ALL})
    assert all(isinstance(b, TransformerBlockV2) for b in [*model.backbone.stem, *model.backbone.branch])
    assert isinstance(model.neck, CrossScaleFPN)
    assert isinstance(model.cls_head.trunk, HeadTrunkV2) and isinstance(model.reg_head.trunk, HeadTrunkV2)
    model.cls_head.mark_empty_classes([1])  # the task's EPIC hook works on v2 heads
    assert model.cls_head.cls.conv.bias[1].item() == pytest.approx(-math.log((1 - 1e-6) / 1e-6))
    # each switch alone
    only_rms = ActionFormer(**SMALL, backbone_type="convTransformerv2", use_rms_norm=True)
    block = only_rms.backbone.stem[0]
    assert isinstance(block.ln1, RMSNorm) and not isinstance(block.mlp, SwiGLU) and block.attn.rope is None
    assert all(isinstance(norm, RMSNorm) for norm in only_rms.backbone.embd_norm)  # as the fork
    assert isinstance(block.attn.query.norm, LayerNorm)
    only_heads = ActionFormer(**SMALL, head_type="v2")
    assert isinstance(only_heads.backbone.stem[0], TransformerBlock)
    assert isinstance(only_heads.reg_head.trunk, HeadTrunkV2)


def test_param_groups_of_v2_model():
    model = ActionFormer(**{**SMALL, **V2_ALL})
    decay, no_decay = param_groups(model, 0.05)
    decay_ids = {id(p) for p in decay["params"]}
    block = model.backbone.stem[0]
    assert {id(block.mlp.w1.weight), id(block.mlp.w2.weight), id(block.mlp.w3.weight)} <= decay_ids
    assert id(block.ln1.weight) not in decay_ids and id(block.mlp.w1.bias) not in decay_ids
    assert id(model.neck.downsamples[0].conv.weight) in decay_ids


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            {"backbone_type": "convTransformerv2", "n_kv_head": 3},
            r"n_head=4 must be divisible by n_kv_head=3",
        ),
        ({"backbone_type": "convTransformerv2", "n_kv_head": 0}, r"n_kv_head=0"),
        ({"use_rope": True}, r"use_rope: these options need backbone_type='convTransformerv2'"),
        ({"use_sdpa": True, "n_kv_head": 2}, r"use_sdpa, n_kv_head=2: these options need"),
        ({"backbone_type": "convTransformerv3"}, r"backbone_type must be one of"),
        ({"head_type": "v3"}, r"head_type must be one of"),
        ({"fpn_type": "bifpn"}, r"fpn_type must be one of \('identity', 'fpn', 'cs_fpn'\)"),
        (
            {"backbone_type": "convTransformerv2", "use_rope": True, "embd_dim": 20, "fpn_dim": 20},
            r"even head",
        ),
    ],
)
def test_invalid_v2_configurations_raise(override, message):
    with pytest.raises(ValueError, match=message):
        ActionFormer(**{**SMALL, **override})
