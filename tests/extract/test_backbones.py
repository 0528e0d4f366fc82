"""The extraction backbones, built from small configs with random weights: one (N, C) feature per clip,
the same for the same clip whatever else is in the batch, and the input size the preprocessing needs."""

import pytest
import torch

from egolab.extract.backbones import FrameBackbone, VideoBackbone

SMALL = dict(image_size=32, patch_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
VIDEO_CONFIGS = {
    "videomae": dict(model_type="videomae", num_frames=4, tubelet_size=2, intermediate_size=64, **SMALL),
    "timesformer": dict(model_type="timesformer", num_frames=4, intermediate_size=64, **SMALL),
    "vjepa2": dict(
        model_type="vjepa2",
        crop_size=32,
        patch_size=16,
        frames_per_clip=4,
        tubelet_size=2,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2.0,
        pred_hidden_size=32,
        pred_num_hidden_layers=1,
        pred_num_attention_heads=2,
    ),
}


def check(backbone: torch.nn.Module) -> None:
    torch.manual_seed(0)
    clips = torch.randn(3, 4, 3, backbone.size, backbone.size)
    with torch.no_grad():
        features = backbone.eval()(clips)
        alone = backbone(clips[1:2])
    assert features.shape == (3, backbone.dim)
    torch.testing.assert_close(alone[0], features[1], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(features[0], features[1]), "different clips, different features"


def test_frame_backbone_is_a_timm_model_per_frame_averaged_over_the_clip():
    backbone = FrameBackbone(
        "vit_tiny_patch16_224", pretrained=False, model_kwargs={"img_size": 32, "depth": 2}
    )
    assert (backbone.size, backbone.dim) == (32, 192) and len(backbone.mean) == 3
    check(backbone)
    clips = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        per_frame = backbone.model(clips.flatten(0, 1)).view(2, 4, -1).mean(1)
        torch.testing.assert_close(backbone(clips), per_frame)


@pytest.mark.parametrize("kind", sorted(VIDEO_CONFIGS))
def test_video_backbones_from_transformers_configs(kind):
    backbone = VideoBackbone(config=VIDEO_CONFIGS[kind])
    assert (backbone.size, backbone.window, backbone.dim) == (32, 4, 32)
    check(backbone)


def test_a_video_backbone_needs_a_name_or_a_config():
    with pytest.raises(ValueError, match="needs a hub name or a config"):
        VideoBackbone()
