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
    missing = ViTFrames(
        "vit_base_patch16_384", str(tmp_path / "none.pth"), temporal_blocks=0, model_kwargs=kwargs
    )
    with pytest.raises(FileNotFoundError, match="none.pth"):
        missing.load_pretrained()
