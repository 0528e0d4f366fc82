"""AVT-h causal decoder, the anticipation model wiring, and the ViT frame backbone (tiny random ViT)."""

import pytest
import torch

from egolab.models.avt import AnticipationModel, CausalDecoder, FeatureInput, LinearHead
from egolab.models.vit_frames import TemporalContextBlock, ViTFrames


def test_decoder_is_causal():
    """Changing inputs after step t leaves the outputs up to t unchanged; earlier changes propagate."""
    torch.manual_seed(0)
    decoder = CausalDecoder(in_dim=8, inter_dim=16, n_layer=2, n_head=4, dropout=0.0).eval()
    x = torch.randn(2, 6, 8)
    y = x.clone()
    y[:, 4:] = torch.randn(2, 2, 8)
    out_x, out_y = decoder(x), decoder(y)
    assert out_x.shape == (2, 6, 8)
    torch.testing.assert_close(out_x[:, :4], out_y[:, :4])
    assert not torch.allclose(out_x[:, 4:], out_y[:, 4:])
    z = x.clone()
    z[:, 0] += 1.0
    assert not torch.allclose(decoder(z)[:, 1], out_x[:, 1])
    with pytest.raises(ValueError, match="max_len"):
        CausalDecoder(8, 16, 1, 4, max_len=4)(x)


def test_decoder_parameter_count_matches_gpt2_layout():
    """AVT-h released size: D=2048, 6 layers, 4D MLP; no token embedding, bias-free in/out maps."""
    decoder = CausalDecoder(in_dim=1024, inter_dim=2048, n_layer=6, n_head=4, max_len=64)
    d = 2048
    per_block = 2 * (2 * d) + (3 * d * d + 3 * d) + (d * d + d) + (4 * d * d + 4 * d) + (4 * d * d + d)
    expected = 1024 * d * 2 + 64 * d + 6 * per_block + 2 * d
    assert sum(p.numel() for p in decoder.parameters()) == expected


def test_model_outputs_and_past_alignment():
    torch.manual_seed(0)
    model = AnticipationModel(
        FeatureInput(12),
        CausalDecoder(8, 16, 1, 2, dropout=0.0),
        LinearHead(8, 5),
        feat_dim=8,
        num_actions=5,
    ).eval()
    out = model(torch.randn(3, 4, 12))
    assert out["logits"].shape == (3, 5) and out["past_logits"].shape == (3, 4, 5)
    assert out["features"].shape == out["decoded"].shape == (3, 4, 8)
    torch.testing.assert_close(out["future"], out["decoded"][:, -1])
    # the updated past is [x_0, y_0 .. y_{T-2}]: step t is classified from the prediction of step t
    torch.testing.assert_close(out["past_logits"][:, 0], model.head.fc(out["features"][:, 0]))
    torch.testing.assert_close(out["past_logits"][:, 2], model.head.fc(out["decoded"][:, 1]))
    with pytest.raises(ValueError, match="12"):
        model(torch.randn(1, 4, 10))
    with pytest.raises(ValueError, match="num_actions"):
        AnticipationModel(FeatureInput(8), CausalDecoder(8, 16, 1, 2), LinearHead(8, 5), 8, num_actions=6)


def test_temporal_context_block_is_causal_in_time():
    torch.manual_seed(0)
    block = TemporalContextBlock(dim=8, num_heads=2)
    x = torch.randn(1, 3, 5, 8)
    y = x.clone()
    y[:, 2] = torch.randn(5, 8)
    torch.testing.assert_close(block(x)[:, :2], block(y)[:, :2])
    z = x.clone()
    z[:, 0] = torch.randn(5, 8)
    assert not torch.allclose(block(z)[:, 1], block(x)[:, 1])


def test_vit_frames_tiny_random():
    torch.manual_seed(0)
    kwargs = {"img_size": 32, "patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2}
    backbone = ViTFrames("vit_base_patch16_384", temporal_blocks=1, model_kwargs=kwargs)
    assert backbone.out_dim == 32
    frames = torch.randn(2, 3, 3, 32, 32)
    feats = backbone(frames)
    assert feats.shape == (2, 3, 32)
    changed = frames.clone()
    changed[:, 2] = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(backbone(changed)[:, :2], feats[:, :2])
    model = AnticipationModel(
        backbone, CausalDecoder(32, 32, 1, 2), LinearHead(32, 7), feat_dim=32, num_actions=7
    )
    assert model(frames)["logits"].shape == (2, 7)


def test_vit_frames_loads_a_local_checkpoint_only(tmp_path):
    kwargs = {"img_size": 32, "patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2}
    source = ViTFrames("vit_base_patch16_384", temporal_blocks=0, model_kwargs=kwargs)
    torch.save(source.vit.state_dict(), tmp_path / "vit.pth")
    target = ViTFrames(
        "vit_base_patch16_384", str(tmp_path / "vit.pth"), temporal_blocks=0, model_kwargs=kwargs
    )
    target.load_pretrained()
    torch.testing.assert_close(target.vit.patch_embed.proj.weight, source.vit.patch_embed.proj.weight)
    from safetensors.torch import save_file  # timm's hub format reads too

    save_file({k: v.contiguous() for k, v in source.vit.state_dict().items()}, tmp_path / "vit.safetensors")
    hub = ViTFrames(
        "vit_base_patch16_384", str(tmp_path / "vit.safetensors"), temporal_blocks=0, model_kwargs=kwargs
    )
    hub.load_pretrained()
    torch.testing.assert_close(hub.vit.blocks[0].attn.qkv.weight, source.vit.blocks[0].attn.qkv.weight)
    missing = ViTFrames(
        "vit_base_patch16_384", str(tmp_path / "none.pth"), temporal_blocks=0, model_kwargs=kwargs
    )
    with pytest.raises(FileNotFoundError, match="none.pth"):
        missing.load_pretrained()


def avt_in21k_state_dict(dim: int = 32, classes: int = 5) -> dict[str, torch.Tensor]:
    """A depth-1 ViT in the key layout of AVT's jx_vit_base_patch16_224_in21k checkpoint (32 px, patch 16)."""
    torch.manual_seed(1)
    shapes = {
        "cls_token": (1, 1, dim), "pos_embed": (1, 5, dim),
        "patch_embed.proj.weight": (dim, 3, 16, 16), "patch_embed.proj.bias": (dim,),
        "blocks.0.norm1.weight": (dim,), "blocks.0.norm1.bias": (dim,),
        "blocks.0.attn.qkv.weight": (3 * dim, dim), "blocks.0.attn.qkv.bias": (3 * dim,),
        "blocks.0.attn.proj.weight": (dim, dim), "blocks.0.attn.proj.bias": (dim,),
        "blocks.0.norm2.weight": (dim,), "blocks.0.norm2.bias": (dim,),
        "blocks.0.mlp.fc1.weight": (4 * dim, dim), "blocks.0.mlp.fc1.bias": (4 * dim,),
        "blocks.0.mlp.fc2.weight": (dim, 4 * dim), "blocks.0.mlp.fc2.bias": (dim,),
        "norm.weight": (dim,), "norm.bias": (dim,),
        "pre_logits.fc.weight": (dim, dim), "pre_logits.fc.bias": (dim,),
        "head.weight": (classes, dim), "head.bias": (classes,),
    }  # fmt: skip
    return {key: torch.randn(shape) for key, shape in shapes.items()}


def test_vit_pre_logits_load_every_checkpoint_weight(tmp_path, caplog):
    """The pre-logits layer is loaded and applied (tanh(fc(cls))); nothing but the named head is dropped."""
    kwargs = {"img_size": 32, "patch_size": 16, "embed_dim": 32, "depth": 1, "num_heads": 2}
    state = avt_in21k_state_dict()
    torch.save({"model": state}, tmp_path / "in21k.pth")

    def backbone(**options):
        return ViTFrames(
            "vit_base_patch16_224", str(tmp_path / "in21k.pth"), 0, model_kwargs=kwargs, **options
        )

    vit = backbone(pre_logits=True)
    with caplog.at_level("INFO", logger="egolab.models.vit_frames"):
        vit.load_pretrained()
    assert "ignored ['head.bias', 'head.weight']" in caplog.text and "no weights" not in caplog.text
    torch.testing.assert_close(vit.pre_logits.fc.weight, state["pre_logits.fc.weight"])
    torch.testing.assert_close(vit.vit.blocks[0].mlp.fc2.bias, state["blocks.0.mlp.fc2.bias"])
    frames = torch.randn(2, 3, 3, 32, 32)
    cls = vit.vit.forward_features(frames.flatten(0, 1))[:, 0]
    expected = torch.tanh(cls @ state["pre_logits.fc.weight"].T + state["pre_logits.fc.bias"])
    torch.testing.assert_close(vit(frames), expected.view(2, 3, 32))

    # without the layer, its weights are refused unless named: the release drops them (timm 0.4.12)
    with pytest.raises(ValueError, match=r"pre_logits.fc.bias', 'pre_logits.fc.weight'\].*pre_logits=true"):
        backbone().load_pretrained()
    release = backbone(ignore_keys=["head.", "pre_logits."])
    release.load_pretrained()
    torch.testing.assert_close(release.vit.norm.weight, state["norm.weight"])
    torch.save({**state, "blocks.0.ls1.gamma": torch.ones(32)}, tmp_path / "in21k.pth")
    with pytest.raises(ValueError, match=r"does not have: \['blocks.0.ls1.gamma'\]"):
        backbone(pre_logits=True).load_pretrained()
    del state["norm.bias"]
    torch.save(state, tmp_path / "in21k.pth")
    caplog.clear()
    backbone(pre_logits=True).load_pretrained()
    assert "no weights for ['norm.bias']" in caplog.text
