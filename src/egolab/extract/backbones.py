"""Frozen backbones that turn clips into one feature vector each, through maintained libraries.

Both take ``(N, window, 3, H, W)`` float clips, already resized and normalised as the backbone's
``mean``, ``std`` and ``size`` say, and return ``(N, C)``:

- :class:`FrameBackbone`: a timm image model (CLIP, DINOv2, ViT, ...) applied to every frame, its pooled
  features averaged over the window;
- :class:`VideoBackbone`: a transformers video model (VideoMAE, TimeSformer, V-JEPA 2), its last hidden
  states averaged over the tokens.

Real weights load by name (timm name, or hub name); ``pretrained=False`` with a small config (timm
keyword arguments, or a transformers config dict) builds the same classes with random weights, as tests do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn


class FrameBackbone(nn.Module):
    """A timm image model per frame (``num_classes=0``: its pooled features), averaged over the window."""

    def __init__(
        self,
        name: str,
        pretrained: bool = True,
        size: int | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        import timm

        self.model = timm.create_model(name, pretrained=pretrained, num_classes=0, **(model_kwargs or {}))
        data = timm.data.resolve_data_config({}, model=self.model)
        self.size = int(size or (model_kwargs or {}).get("img_size") or data["input_size"][-1])
        self.mean: Sequence[float] = tuple(data["mean"])
        self.std: Sequence[float] = tuple(data["std"])
        self.dim = int(self.model.num_features)

    per_frame = True  # clips that share frames can share their features (egolab.extract.run)

    def frames(self, frames: torch.Tensor) -> torch.Tensor:
        """``(U, 3, H, W)`` frames -> ``(U, C)`` features."""
        return self.model(frames)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        n, t = clips.shape[:2]
        return self.frames(clips.flatten(0, 1)).view(n, t, -1).mean(dim=1)


class VideoBackbone(nn.Module):
    """A transformers video model; the clip's feature is its last hidden state averaged over the tokens
    (VideoMAE's own pooling when it has no CLS token)."""

    def __init__(
        self,
        name: str | None = None,
        pretrained: bool = True,
        config: dict[str, Any] | None = None,
        mean: Sequence[float] = (0.485, 0.456, 0.406),
        std: Sequence[float] = (0.229, 0.224, 0.225),
    ) -> None:
        super().__init__()
        from transformers import AutoConfig, AutoModel

        if config is not None:
            settings = dict(config)
            model_type = settings.pop("model_type")
            self.model = AutoModel.from_config(AutoConfig.for_model(model_type, **settings))
        elif name is not None:
            load = AutoModel.from_pretrained if pretrained else AutoModel.from_config
            self.model = load(name) if pretrained else load(AutoConfig.from_pretrained(name))
        else:
            raise ValueError("VideoBackbone needs a hub name or a config")
        settings = self.model.config
        self.size = int(getattr(settings, "image_size", None) or settings.crop_size)  # V-JEPA 2: crop_size
        self.window = (
            int(getattr(settings, "num_frames", None) or getattr(settings, "frames_per_clip", 0)) or None
        )
        self.mean, self.std = tuple(mean), tuple(std)
        self.dim = int(settings.hidden_size)
        self._input = "pixel_values_videos" if settings.model_type == "vjepa2" else "pixel_values"

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        return self.model(**{self._input: clips}).last_hidden_state.mean(dim=1)
