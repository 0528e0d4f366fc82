"""The tiny Qwen3-VL of the vqa demo (conf/model/qwen_vl/demo.yaml) for in-process tests."""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from egolab.models.qwen_vl import QwenVL
from egolab.paths import CONF_DIR

TINY_CONFIG: dict[str, Any] = OmegaConf.to_container(
    OmegaConf.load(CONF_DIR / "model/qwen_vl/demo.yaml").config
)


def tiny_qwen(**kwargs: Any) -> QwenVL:
    """A built tiny Qwen3-VL (random weights from the demo config unless ``pretrained`` is a folder)."""
    options = {"pretrained": None, "config": TINY_CONFIG, "dtype": "float32", "gradient_checkpointing": False}
    model = QwenVL(**{**options, **kwargs})
    model.build()
    return model
