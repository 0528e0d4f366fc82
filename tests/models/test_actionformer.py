"""ActionFormer architecture: masking, local attention, shapes, configuration checks, parameter groups."""

import math

import pytest
import torch

from egolab.models.actionformer import (
    ActionFormer,
    AffineDropPath,
    LayerNorm,
    LocalMaskedMHCA,
    MaskedConv1D,
    MaskedMHCA,
    Scale,
    local_window_attention,
    param_groups,
    sinusoid_encoding,
    trimmed_forward,
    trimmed_lengths,
    windowed_sdpa_attention,
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


def _lengths_to_mask(lengths: list[int], total: int) -> torch.Tensor:
    return torch.arange(total)[None] < torch.tensor(lengths)[:, None]


# --------------------------------------------------------------------------------------- primitives
def test_masked_conv_zeroes_padded_steps_and_downsamples_mask():
    conv = MaskedConv1D(1, 1, 3)
    torch.nn.init.ones_(conv.conv.weight)
    x = torch.ones(1, 1, 8)
    mask = _lengths_to_mask([5], 8)[:, None]
    out, out_mask = conv(x, mask)
    assert out.flatten().tolist() == [2, 3, 3, 3, 3, 0, 0, 0]  # zero padding at t=0, masked from t=5
    assert torch.equal(out_mask, mask)

    strided = MaskedConv1D(1, 1, 3, stride=2)
    torch.nn.init.ones_(strided.conv.weight)
    out, out_mask = strided(x, mask)
    assert out_mask.flatten().tolist() == [True, True, True, False]  # steps 0, 2, 4, 6
    assert out.flatten().tolist() == [2, 3, 3, 0]
    with pytest.raises(ValueError, match="divisible"):
        strided(torch.ones(1, 1, 7), torch.ones(1, 1, 7, dtype=torch.bool))
    with pytest.raises(ValueError, match="odd"):
        MaskedConv1D(1, 1, 4)


def test_layer_norm_normalises_channels():
    x = torch.tensor([[[1.0, 10.0], [3.0, 10.0]]])  # (B=1, C=2, T=2)
    out = LayerNorm(2)(x)
    expected = torch.tensor([[[-1.0, 0.0], [1.0, 0.0]]]) / math.sqrt(1 + 1e-5)
    assert torch.allclose(out, expected, atol=1e-6)


def test_affine_drop_path_scales_then_drops_whole_samples():
    layer = AffineDropPath(3, drop_prob=0.5)
    x = torch.ones(64, 3, 4)
    assert torch.allclose(layer.eval()(x), torch.full_like(x, 1e-4))
    out = layer.train()(x)
    per_sample = out.flatten(1)
    dropped = (per_sample == 0).all(1)
    kept = torch.isclose(per_sample, torch.tensor(2e-4)).all(1)  # 1e-4 / keep_prob
    assert (dropped | kept).all() and dropped.any() and kept.any()


def test_sinusoid_encoding_values():
    table = sinusoid_encoding(5, 4)
    assert table.shape == (1, 4, 5)
    assert table[0, :, 0].tolist() == [0.0, 1.0, 0.0, 1.0]
    assert table[0, 0, 3].item() == pytest.approx(math.sin(3))
    assert table[0, 3, 2].item() == pytest.approx(math.cos(2 / 100))  # channel 3 -> 10000**(2/4)


# --------------------------------------------------------------------------------------- attention
def _dense_banded_attention(q, k, v, mask, window, rel_bias=None):
    """Reference: full (T, T) attention with keys beyond the band removed."""
    length, half = q.shape[2], window // 2
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    offset = torch.arange(length)[None, :] - torch.arange(length)[:, None]  # j - i
    if rel_bias is not None:
        scores = scores + rel_bias[:, offset.clamp(-half, half) + half][None]
    scores = scores + (~mask)[:, None, None, :] * -1e4
    scores = scores.masked_fill(offset.abs() > half, float("-inf"))
    attn = torch.softmax(scores, -1).masked_fill(~mask[:, None, :, None], 0.0)
    return attn @ v


@pytest.mark.parametrize("window", [3, 5, 9])
@pytest.mark.parametrize("with_rel_bias", [False, True])
def test_local_attention_equals_dense_banded_attention(window, with_rel_bias):
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 12, 4) for _ in range(3))
    mask = _lengths_to_mask([12, 7], 12)
    rel_bias = torch.randn(3, window) if with_rel_bias else None
    out = local_window_attention(q, k, v, mask, window, rel_bias)
    expected = _dense_banded_attention(q, k, v, mask, window, rel_bias)
    assert out.shape == (2, 3, 12, 4)
    assert torch.allclose(out, expected, atol=1e-5)
    assert (out[1, :, 7:] == 0).all()  # padded queries are zeroed


@pytest.mark.parametrize("window", [3, 19])
def test_fast_local_attention_is_the_same_function_in_float64(window):
    """The SDPA kernel the model uses equals the explicit unfold kernel to rounding (float64)."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 64, 8, dtype=torch.float64) for _ in range(3))
    mask = _lengths_to_mask([64, 29], 64)
    rel_bias = torch.randn(4, window, dtype=torch.float64)
    fast = windowed_sdpa_attention(q, k, v, mask, window, rel_bias)
    assert torch.allclose(fast, local_window_attention(q, k, v, mask, window, rel_bias), rtol=0, atol=1e-13)


def test_local_attention_with_wide_window_matches_global_attention_module():
    """A window covering the whole sequence reproduces the global (SDPA-based) module, strided too."""
    torch.manual_seed(0)
    for stride in (1, 2):
        local = LocalMaskedMHCA(16, 4, window_size=33, stride=stride).eval()
        dense = MaskedMHCA(16, 4, stride=stride).eval()
        dense.load_state_dict(local.state_dict())
        x = torch.randn(2, 16, 16)
        mask = _lengths_to_mask([16, 9], 16)[:, None]
        out_local, mask_local = local(x, mask)
        out_dense, mask_dense = dense(x, mask)
        assert torch.equal(mask_local, mask_dense)
        assert out_local.shape == (2, 16, 16 // stride)
        assert torch.allclose(out_local, out_dense, atol=1e-5)
        assert (out_local * ~mask_local == 0).all()


# --------------------------------------------------------------------------------------- full model
def test_forward_shapes_points_and_masks():
    torch.manual_seed(0)
    model = ActionFormer(**SMALL).eval()
    assert model.max_div_factor == 32 * 4
    feats = torch.randn(2, 16, 128)
    masks = _lengths_to_mask([128, 50], 128)
    out = model(feats, masks)
    assert set(out) == {"cls_logits", "offsets", "masks", "points"}
    ranges = [[0, 4], [4, 8], [8, 16], [16, 32], [32, 64], [64, 10000]]
    for level in range(6):
        stride, length = 2**level, 128 // 2**level
        assert out["cls_logits"][level].shape == (2, length, 3)
        assert out["offsets"][level].shape == (2, length, 2)
        assert (out["offsets"][level] >= 0).all()
        level_mask = out["masks"][level]
        assert level_mask.dtype == torch.bool
        assert torch.equal(level_mask, _lengths_to_mask([128, math.ceil(50 / stride)], length))
        assert (out["cls_logits"][level][1, ~level_mask[1]] == 0).all()
        points = out["points"][level]
        assert points.shape == (length, 4)
        assert torch.equal(points[:, 0], torch.arange(length, dtype=torch.float32) * stride)
        assert (points[:, 1:] == torch.tensor([*ranges[level], stride], dtype=torch.float32)).all()


def test_initial_classifier_bias_matches_prior_and_empty_classes():
    model = ActionFormer(**SMALL, head_empty_cls=[2]).eval()
    out = model(torch.randn(1, 16, 128), torch.ones(1, 128, dtype=torch.bool))
    bias = model.cls_head.cls.conv.bias
    assert bias[0].item() == pytest.approx(-math.log(0.99 / 0.01))
    assert bias[2].item() == pytest.approx(-math.log((1 - 1e-6) / 1e-6))
    assert torch.sigmoid(out["cls_logits"][0][..., 2]).max() < 1e-3


def test_list_input_fpn_neck_abs_and_rel_pe_per_level_windows():
    torch.manual_seed(0)
    model = ActionFormer(
        input_dim=[10, 6],
        proj_dims=[8, 8],
        num_classes=2,
        max_seq_len=64,
        n_mha_win_size=[5, 5, 5, 5, -1, -1],
        embd_dim=32,
        fpn_type="fpn",
        fpn_dim=24,
        head_dim=16,
        n_head=4,
        use_abs_pe=True,
        use_rel_pe=True,
    )
    assert model.max_div_factor == 32  # levels need 4, 8, 16, 32, 16, 32
    assert model.backbone.proj[0].conv.weight.shape == (8, 10, 1)
    assert model.backbone.proj[1].conv.weight.shape == (8, 6, 1)
    masks = _lengths_to_mask([64, 40], 64)
    out = model.train()(torch.randn(2, 16, 64), masks)
    assert [x.shape for x in out["cls_logits"]] == [(2, 64 // 2**level, 2) for level in range(6)]
    sum(x.sum() for x in out["cls_logits"] + out["offsets"]).backward()
    assert model.backbone.stem[0].attn.rel_pe.grad is not None
    # inference on a longer input stretches the position encoding
    out = model.eval()(torch.randn(1, 16, 256), torch.ones(1, 256, dtype=torch.bool))
    assert out["offsets"][0].shape == (1, 256, 2)
    with pytest.raises(ValueError, match="max_seq_len"):
        model.train()(torch.randn(1, 16, 128), torch.ones(1, 128, dtype=torch.bool))


def test_fpn_start_level_drops_fine_levels():
    model = ActionFormer(**{**SMALL, "fpn_start_level": 1}, regression_range=[[0, 8]] * 5).eval()
    out = model(torch.randn(1, 16, 128), torch.ones(1, 128, dtype=torch.bool))
    assert [p.shape[0] for p in out["points"]] == [64, 32, 16, 8, 4]
    assert out["points"][0][1, 3].item() == 2.0


def test_valid_outputs_do_not_depend_on_padding_length():
    """Masking is complete: the same video padded to 64 or to 128 steps gives the same predictions."""
    torch.manual_seed(0)
    model = ActionFormer(**{**SMALL, "max_seq_len": 64, "n_mha_win_size": 3}).eval()
    with torch.no_grad():  # non-trivial norm biases make padded steps non-zero after LayerNorm
        for module in model.modules():
            if isinstance(module, LayerNorm):
                module.bias.normal_()
    video = torch.randn(1, 16, 20)
    short = model(torch.nn.functional.pad(video, (0, 44)), _lengths_to_mask([20], 64))
    long = model(torch.nn.functional.pad(video, (0, 108)), _lengths_to_mask([20], 128))
    for level in range(6):
        valid = short["masks"][level][0]
        for key in ("cls_logits", "offsets"):
            a = short[key][level][0, valid]
            b = long[key][level][0, : valid.shape[0]][valid]
            assert torch.allclose(a, b, atol=1e-5), (key, level)


TRIM_CASES = {
    "v1": {},
    "fpn_abs_pe": {"fpn_type": "fpn", "use_abs_pe": True},
    "v2": {
        "backbone_type": "convTransformerv2",
        "use_rope": True,
        "use_sdpa": True,
        "use_swiglu": True,
        "head_type": "v2",
        "fpn_type": "cs_fpn",
    },
}


def _perturbed_float64_model(override: dict) -> ActionFormer:
    """A small model in float64 whose every parameter (norm biases included) is far from its init."""
    torch.manual_seed(0)
    model = ActionFormer(
        **{**SMALL, "max_seq_len": 160, "backbone_arch": (2, 2, 3), "droppath": 0.0, **override},
        regression_range=[[0, 4], [4, 8], [8, 16], [16, 10000]],
    ).double()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.3 * torch.randn_like(param))
    return model


def _forward_backward(model: ActionFormer, feats: torch.Tensor, masks: torch.Tensor):
    feats = feats.clone().requires_grad_(True)
    model.zero_grad()
    out = model(feats, masks)
    loss = sum((x * m[..., None]).sum() for x, m in zip(out["cls_logits"], out["masks"]))
    loss = loss + sum((x * m[..., None]).square().sum() for x, m in zip(out["offsets"], out["masks"]))
    loss.backward()
    return out, feats.grad, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("case", list(TRIM_CASES))
@pytest.mark.parametrize(("training", "lengths"), [(True, [160, 40, 64]), (False, [70, 40, 64])])
@pytest.mark.parametrize("mode", ["sample", "batch"])
def test_trimmed_padding_gives_the_untrimmed_outputs_and_gradients(case, training, lengths, mode):
    """Cutting the padding (lengths multiples of the coarsest stride 8 included) changes no valid output,
    no input gradient and no parameter gradient, in float64; at inference (320 steps > max_seq_len) the
    stretched absolute PE of the padded length is kept."""
    model = _perturbed_float64_model(TRIM_CASES[case]).train(training)
    total = 160 if training else 320
    masks = _lengths_to_mask(lengths, total)
    feats = torch.randn(3, 16, total, dtype=torch.float64) * masks[:, None]
    model.trim_padding = "none"
    ref_out, ref_grad, ref_param_grads = _forward_backward(model, feats, masks)
    model.trim_padding = mode
    out, grad, param_grads = _forward_backward(model, feats, masks)
    for level, ref_mask in enumerate(ref_out["masks"]):
        assert torch.equal(out["masks"][level], ref_mask)
        for key in ("cls_logits", "offsets"):
            assert out[key][level].shape == ref_out[key][level].shape
            torch.testing.assert_close(out[key][level][ref_mask], ref_out[key][level][ref_mask])
    torch.testing.assert_close(grad, ref_grad)
    for mine, ref in zip(param_grads, ref_param_grads):
        torch.testing.assert_close(mine, ref)


@pytest.mark.parametrize(("channels", "cuts"), [(16, [256]), (4096, [96, 256])])
def test_auto_trimming_runs_a_pass_per_video_only_for_large_inputs(channels, cuts):
    """Small inputs: one pass cut to the longest video; large ones (C x T >= 2^20): a pass per video."""
    calls = []

    def levels(feats, masks, padded_length):
        calls.append(feats.shape)
        return {"masks": [masks[:, None]]}

    masks = _lengths_to_mask([256, 40], 256)
    out = trimmed_forward(levels, torch.zeros(2, channels, 256), masks, 32, "auto")
    assert sorted(shape[-1] for shape in calls) == cuts  # 40 valid steps + one coarsest stride -> 96
    assert out["masks"][0].shape == (2, 1, 256)


def test_trimmed_lengths_keep_a_padded_step_on_every_level():
    masks = _lengths_to_mask([128, 96, 95, 1, 0], 128)
    assert trimmed_lengths(masks, 32) == [128, 128, 128, 64, 32]
    with pytest.raises(ValueError, match="trim_padding must be one of"):
        ActionFormer(**SMALL, trim_padding="some")


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"max_seq_len": 100}, r"max_seq_len=100 must be divisible by 8 at pyramid level 1"),
        ({"regression_range": [[0, 4]] * 5}, r"regression_range has 5 entries but the model has 6"),
        ({"regression_range": [[0, 4]] * 5 + [[8, 8]]}, r"regression_range\[5\]"),
        ({"n_mha_win_size": 4}, r"odd"),
        ({"n_mha_win_size": [5, 5]}, r"n_mha_win_size lists 2"),
        ({"fpn_dim": 64}, r"identity neck needs embd_dim == fpn_dim"),
        ({"fpn_type": "bifpn"}, r"fpn_type"),
        ({"proj_dims": [8, 8]}, r"proj_dims"),
        ({"input_dim": [8, 8], "proj_dims": [8]}, r"proj_dims"),
        ({"n_head": 5}, r"divisible by n_head"),
        ({"head_empty_cls": [3]}, r"head_empty_cls"),
    ],
)
def test_invalid_configurations_raise(override, message):
    with pytest.raises(ValueError, match=message):
        ActionFormer(**{**SMALL, **override})


def test_max_div_factor_of_released_configs():
    assert (
        ActionFormer(2048, 20, 2304, n_mha_win_size=19, embd_dim=32, fpn_dim=32, head_dim=32).max_div_factor
        == 576
    )
    anet = ActionFormer(512, 1, 192, n_mha_win_size=[7, 7, 7, 7, 7, -1], embd_dim=32, fpn_dim=32, head_dim=32)
    assert anet.max_div_factor == 96


def test_forward_rejects_wrong_channels_and_length():
    model = ActionFormer(**SMALL).eval()
    with pytest.raises(ValueError, match="features have 15 channels but the model expects 16"):
        model(torch.randn(1, 15, 128), torch.ones(1, 128, dtype=torch.bool))
    with pytest.raises(ValueError, match="not a multiple of max_div_factor=128"):
        model(torch.randn(1, 16, 96), torch.ones(1, 96, dtype=torch.bool))
    with pytest.raises(ValueError, match="point buffer"):
        model(torch.randn(1, 16, 896), torch.ones(1, 896, dtype=torch.bool))


def test_param_groups_decay_only_conv_and_linear_weights():
    model = ActionFormer(**SMALL, use_rel_pe=True, droppath=0.1)
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    decay_ids = {id(p) for p in decay["params"]}
    no_decay_ids = {id(p) for p in no_decay["params"]}
    assert not decay_ids & no_decay_ids
    assert decay_ids | no_decay_ids == {id(p) for p in model.parameters()}
    for name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            conv_weight = pname == "weight" and isinstance(module, torch.nn.Conv1d)
            assert (id(param) in decay_ids) == conv_weight, f"{name}.{pname}"
    no_decay_types = {
        type(m) for m in model.modules() if any(id(p) in no_decay_ids for p in m.parameters(False))
    }
    assert {LayerNorm, Scale, AffineDropPath, LocalMaskedMHCA} <= no_decay_types
