"""SkillFormer: time-embedding interpolation, the exact CrossViewFusion computation, LoRA placement and
freezing, LoRA gradients (ours) vs none (the release's effective model), the paper's trainable-parameter
counts, view handling and pretrained-weight loading."""

import math

import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from egolab.models.skillformer import (
    LORA_TARGET_MODULES,
    CrossViewFusion,
    MeanViewFusion,
    SkillFormer,
    TimesformerBackbone,
    interpolate_time_embeddings,
    trainable_parameters,
)
from egolab.paths import CONF_DIR

TINY = dict(
    image_size=16,
    patch_size=8,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
)


def tiny_model(lora=None, fusion=None, frames=4) -> SkillFormer:
    backbone = TimesformerBackbone(frames, TINY, lora=lora)
    return SkillFormer(backbone, fusion or CrossViewFusion(32, 40, num_heads=4))


def test_time_embeddings_interpolate_linearly_like_the_release():
    table = torch.arange(8, dtype=torch.float32).view(1, 8, 1) * torch.tensor([1.0, -2.0])
    out = interpolate_time_embeddings(table, 16)
    expected = [0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4, 4.5, 5, 5.5, 6, 6.5, 7, 7]  # min(t / 2, 7), lerp
    assert out.shape == (1, 16, 2)
    assert out[0, :, 0].tolist() == pytest.approx(expected)
    assert out[0, :, 1].tolist() == pytest.approx([-2 * e for e in expected])
    # 8 -> 24 frames: position t / 3; frame 4 sits at 4/3 = e1 + (e2 - e1) / 3
    assert interpolate_time_embeddings(table, 24)[0, 4, 0].item() == pytest.approx(4 / 3)
    assert interpolate_time_embeddings(table, 24)[0, -3:, 0].tolist() == pytest.approx([7, 7, 7])
    # 8 -> 4 frames: positions 0, 2, 4, 6
    assert interpolate_time_embeddings(table, 4)[0, :, 0].tolist() == pytest.approx([0, 2, 4, 6])
    assert torch.equal(interpolate_time_embeddings(table, 8), table)


def test_cross_view_fusion_matches_a_manual_computation():
    torch.manual_seed(0)
    dim, hidden, heads, batch, views = 8, 12, 2, 3, 4
    fusion = CrossViewFusion(dim, hidden, num_heads=heads, init_mean=0.0007, init_std=0.1168).eval()
    x = torch.randn(batch, views, dim)
    with torch.no_grad():
        got = fusion(x)
        # 1. LayerNorm per view token
        ln = fusion.view_norm
        f = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + ln.eps)
        f = f * ln.weight + ln.bias
        # 2. multi-head self-attention across views, no residual
        w_q, w_k, w_v = fusion.attention.in_proj_weight.chunk(3)
        b_q, b_k, b_v = fusion.attention.in_proj_bias.chunk(3)
        d = dim // heads
        q, k, v = (f @ w.T + b for w, b in ((w_q, b_q), (w_k, b_k), (w_v, b_v)))
        out = torch.zeros_like(f)
        for h in range(heads):
            s = slice(h * d, (h + 1) * d)
            attn = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(d), dim=-1)
            out[..., s] = attn @ v[..., s]
        a = out @ fusion.attention.out_proj.weight.T + fusion.attention.out_proj.bias
        # 3. mean over views
        z = a.mean(dim=1)
        # 4. Linear -> GELU -> LayerNorm (-> Dropout, off in eval)
        lin1, _, ln_h, _ = fusion.project
        h1 = F.gelu(z @ lin1.weight.T + lin1.bias)
        h1 = F.layer_norm(h1, (hidden,), ln_h.weight, ln_h.bias, ln_h.eps)
        # 5. sigmoid gate
        h2 = h1 * torch.sigmoid(h1 @ fusion.gate.weight.T + fusion.gate.bias)
        # 6. Linear -> LayerNorm
        lin2, ln_o = fusion.out
        o = F.layer_norm(h2 @ lin2.weight.T + lin2.bias, (dim,), ln_o.weight, ln_o.bias, ln_o.eps)
        # 7. self-calibration: standardise per sample (unbiased std), then * sigma + mu
        expected = (o - o.mean(-1, keepdim=True)) / (
            o.std(-1, unbiased=True, keepdim=True) + 1e-6
        ) * 0.1168 + 0.0007
    assert got.shape == (batch, dim)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert fusion.mean.item() == pytest.approx(0.0007) and fusion.std.item() == pytest.approx(0.1168)
    assert fusion.mean.requires_grad and fusion.std.requires_grad


def test_single_view_attention_is_the_value_projection():
    fusion = CrossViewFusion(8, 12, num_heads=2).eval()
    x = torch.randn(2, 1, 8)
    with torch.no_grad():
        f = fusion.view_norm(x)
        w_v, b_v = fusion.attention.in_proj_weight.chunk(3)[2], fusion.attention.in_proj_bias.chunk(3)[2]
        value = (f @ w_v.T + b_v) @ fusion.attention.out_proj.weight.T + fusion.attention.out_proj.bias
        attended, _ = fusion.attention(f, f, f)
    torch.testing.assert_close(attended, value, rtol=1e-5, atol=1e-6)


def test_mean_view_fusion_averages_views():
    x = torch.arange(12.0).view(1, 3, 4)
    assert MeanViewFusion()(x).tolist() == [[4.0, 5.0, 6.0, 7.0]]


def test_lora_targets_and_freezing():
    model = tiny_model(lora={"r": 2, "alpha": 4, "dropout": 0.0})
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    backbone_trainable = {n for n in trainable if n.startswith("backbone.")}
    assert backbone_trainable and all("lora_" in n for n in backbone_trainable)
    assert not model.backbone.encoder.get_base_model().embeddings.time_embeddings.requires_grad
    adapted = {
        n.rsplit(".lora_A", 1)[0].split("encoder.layer.")[1] for n in backbone_trainable if ".lora_A." in n
    }
    per_layer = {a.split(".", 1)[1] for a in adapted}
    assert per_layer == {
        "attention.attention.qkv",
        "attention.output.dense",
        "temporal_attention.attention.qkv",
        "temporal_attention.output.dense",
        "intermediate.dense",
        "output.dense",
        "temporal_dense",
    }
    assert len(adapted) == 7 * TINY["num_hidden_layers"]
    assert set(LORA_TARGET_MODULES) == per_layer
    assert all(n.startswith(("backbone.", "fusion.", "classifier.")) for n in trainable)
    assert any(n.startswith("fusion.") for n in trainable) and "classifier.weight" in trainable


def configured_model(*overrides: str) -> SkillFormer:
    """conf/model/skillformer/ego.yaml (LoRA r32, gradient checkpointing on) shrunk to a tiny random model."""
    tiny = [
        "model.backbone.pretrained=null",
        "model.backbone.num_frames=4",
        *(f"model.backbone.config.{k}={v}" for k, v in TINY.items()),
        "model.fusion.hidden_dim=40",
        "model.fusion.num_heads=4",
    ]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config", overrides=["task=skill", "model=skillformer/ego", "data=skill/demo", *tiny, *overrides]
        )
    assert cfg.model.backbone.gradient_checkpointing and cfg.model.backbone.lora.r == 32
    torch.manual_seed(0)
    return instantiate(cfg.model)


def lora_gradients(model: SkillFormer) -> dict[str, torch.Tensor | None]:
    """Gradients of every LoRA tensor after one training-mode backward pass on 2 takes x 2 views."""
    model.train()
    model(torch.randn(2, 2, 4, 3, 16, 16)).logsumexp(-1).sum().backward()
    return {n: p.grad for n, p in model.named_parameters() if "lora_" in n}


def test_lora_gets_gradients_ours_and_none_in_the_release_frozen_variant():
    ours = configured_model()
    grads = lora_gradients(ours)
    assert len(grads) == 2 * 7 * TINY["num_hidden_layers"]  # A and B of 7 targets per layer
    assert all(g is not None for g in grads.values())
    # B starts at 0, so A's first gradient is 0 too; every B gets a non-zero one
    assert all(g.abs().sum() > 0 for n, g in grads.items() if ".lora_B." in n)

    frozen = configured_model("model.backbone.freeze=true")
    assert frozen.backbone.freeze
    assert not any(p.requires_grad for p in frozen.backbone.parameters())
    assert all(g is None for g in lora_gradients(frozen).values())
    assert frozen.classifier.weight.grad is not None and frozen.fusion.mean.grad is not None
    head = sum(p.numel() for m in (frozen.fusion, frozen.classifier) for p in m.parameters())
    assert trainable_parameters(frozen) == head
    frozen.load_state_dict(ours.state_dict())  # the same tensors: only what trains differs

    # what the release did: reentrant checkpointing (transformers 4.x default) on inputs that come from
    # frozen embeddings passes no gradient into the layers, so no LoRA tensor gets one
    release = configured_model()
    release.backbone.encoder.get_base_model().activation_checkpointing_enable(
        activation_checkpointing_kwargs={"use_reentrant": True}
    )
    with pytest.warns(UserWarning, match="requires_grad"):
        assert all(g is None for g in lora_gradients(release).values())
    assert release.classifier.weight.grad is not None


def test_full_fine_tuning_trains_every_backbone_weight():
    model = tiny_model(fusion=MeanViewFusion())
    assert trainable_parameters(model) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("frames", "rank", "alpha", "hidden", "expected"),
    [(32, 32, 64, 1536, 14_171_910), (24, 48, 96, 2048, 20_334_342), (16, 64, 128, 2560, 27_021_062)],
    ids=["ego", "exos", "egoexos"],
)
def test_paper_trainable_parameter_counts(frames, rank, alpha, hidden, expected):
    """TimeSformer-Base + LoRA + CrossViewFusion (16 heads) + head, built on the meta device (no memory)."""
    with torch.device("meta"):
        backbone = TimesformerBackbone(
            frames, {}, pretrained=None, lora={"r": rank, "alpha": alpha, "dropout": 0.1}
        )
        model = SkillFormer(backbone, CrossViewFusion(768, hidden, num_heads=16))
    assert backbone.config.hidden_size == 768 and backbone.config.num_hidden_layers == 12
    assert trainable_parameters(model) == expected
    assert round(expected / 1e6) == {32: 14, 24: 20, 16: 27}[frames]


def test_forward_shapes_views_share_the_backbone():
    torch.manual_seed(0)
    model = tiny_model(lora={"r": 2, "alpha": 4}).eval()
    x = torch.randn(2, 3, 4, 3, 16, 16)
    with torch.no_grad():
        logits = model(x)
        single = model.backbone(x[1, 2:3])
        feats = model.backbone(x.flatten(0, 1)).view(2, 3, -1)
    assert logits.shape == (2, 4)
    torch.testing.assert_close(feats[1, 2:3], single)  # the same shared backbone for every view
    with pytest.raises(ValueError, match="expected clips of 4 x 3 x 16 x 16"):
        model(torch.randn(1, 1, 5, 3, 16, 16))
    with pytest.raises(ValueError, match=r"\(B, V, T, C, H, W\)"):
        model(torch.randn(1, 4, 3, 16, 16))


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = tiny_model(lora={"r": 2, "alpha": 4})
    torch.manual_seed(0)
    ckpt = SkillFormer(
        TimesformerBackbone(4, TINY, lora={"r": 2, "alpha": 4}, gradient_checkpointing=True),
        CrossViewFusion(32, 40, num_heads=4),
    )
    ckpt.load_state_dict(plain.state_dict())
    plain.eval(), ckpt.eval()
    ckpt.backbone.encoder.train()  # checkpointing is active in training mode only
    plain.backbone.encoder.train()
    x = torch.randn(2, 2, 4, 3, 16, 16)
    for m in (plain, ckpt):
        m.classifier.weight.grad = None
        m(x).sum().backward()
    torch.testing.assert_close(ckpt.classifier.weight.grad, plain.classifier.weight.grad)


def test_load_pretrained_copies_weights_into_lora_model(tmp_path):
    """A saved 8-frame TimesformerModel loads into a 16-frame LoRA backbone, time embeddings interpolated."""
    from transformers import TimesformerConfig, TimesformerModel

    torch.manual_seed(0)
    source = TimesformerModel(TimesformerConfig(**TINY, num_frames=8))
    with torch.no_grad():
        source.embeddings.time_embeddings.normal_()
    source.save_pretrained(tmp_path / "ckpt")
    backbone = TimesformerBackbone(16, TINY, pretrained=str(tmp_path / "ckpt"), lora={"r": 2, "alpha": 4})
    model = SkillFormer(backbone, MeanViewFusion())
    assert model.load_pretrained()
    base = backbone.encoder.get_base_model()
    torch.testing.assert_close(
        base.embeddings.time_embeddings, interpolate_time_embeddings(source.embeddings.time_embeddings, 16)
    )
    qkv = base.encoder.layer[1].temporal_attention.attention.qkv
    torch.testing.assert_close(
        qkv.base_layer.weight, source.encoder.layer[1].temporal_attention.attention.qkv.weight
    )
    assert torch.count_nonzero(qkv.lora_B["default"].weight) == 0  # adapters keep their initial values
    torch.testing.assert_close(base.layernorm.weight, source.layernorm.weight)

    wrong = TimesformerBackbone(8, {**TINY, "intermediate_size": 64}, pretrained=str(tmp_path / "ckpt"))
    with pytest.raises(ValueError, match="intermediate_size"):
        wrong.load_pretrained()
    assert not tiny_model().load_pretrained()  # no checkpoint configured: nothing to load
