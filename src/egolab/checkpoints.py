"""Checkpoints that hold what trains, not the frozen base.

A checkpoint keeps the trained parameters and the persistent buffers (:func:`trained_keys`); Lightning adds
the optimizer state, which only ever sees the trained parameters. Before a checkpoint loads (resume, ``-t``),
the task rebuilds the frozen rest from its source (hub name, or config and seed). A task that fingerprints
that frozen part (:func:`frozen_fingerprint`) stores the fingerprint, and a checkpoint trained on other
frozen weights is refused. A task calls :func:`keep_trained` in ``on_save_checkpoint`` and
:func:`check_fits` in ``on_load_checkpoint``, and sets ``strict_loading = False`` so that Lightning loads
the partial state dict.
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch
from torch import nn

TRAINED_KEYS = "egolab_trained_keys"
FROZEN_SHA256 = "egolab_frozen_sha256"


def clean_name(name: str) -> str:
    """A state-dict key without the wrappers that FSDP and activation checkpointing insert."""
    return name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "")


def trained_keys(module: nn.Module) -> list[str]:
    """Sorted state-dict keys a checkpoint keeps: the parameters that train and the persistent buffers
    (running statistics can change in training; SkillFormer and Qwen-VL have no such buffers)."""
    keys = {n for n, p in module.named_parameters() if p.requires_grad}
    for prefix, sub in module.named_modules():
        keys.update(
            f"{prefix}.{name}" if prefix else name
            for name, _ in sub.named_buffers(recurse=False)
            if name not in sub._non_persistent_buffers_set
        )
    return sorted({clean_name(k) for k in keys})


def frozen_fingerprint(module: nn.Module) -> str:
    """sha256 over the frozen parameters' names, shapes, dtypes and bytes, in name order.

    About 0.4 s for TimeSformer-Base's 485 MB on one CPU core (``benchmarks/skill_checkpoint_size.py``).
    """
    frozen = sorted(
        ((clean_name(n), p) for n, p in module.named_parameters() if not p.requires_grad),
        key=lambda item: item[0],
    )
    digest = hashlib.sha256()
    for name, param in frozen:
        digest.update(f"{name}:{tuple(param.shape)}:{param.dtype};".encode())
        digest.update(param.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def keep_trained(checkpoint: dict[str, Any], module: nn.Module, fingerprint: str | None = None) -> None:
    """Reduce a Lightning checkpoint's ``state_dict`` to ``module``'s :func:`trained_keys` and list them
    there, with the fingerprint of the frozen part when one is given."""
    keys = trained_keys(module)
    kept = set(keys)
    checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if clean_name(k) in kept}
    checkpoint[TRAINED_KEYS] = keys
    if fingerprint is not None:
        checkpoint[FROZEN_SHA256] = fingerprint


def check_fits(
    checkpoint: dict[str, Any], module: nn.Module, path: str, fingerprint: str | None = None
) -> None:
    """Refuse (``ValueError`` naming ``path``) a checkpoint whose trained keys are not ``module``'s, whose
    state dict lacks one of them, or whose frozen part differs from the one ``fingerprint`` describes."""
    listed = checkpoint.get(TRAINED_KEYS)
    if listed is None:
        raise ValueError(f"checkpoint {path} does not list its trained parameters (not written by this task)")
    expected = trained_keys(module)
    stored = {clean_name(k) for k in checkpoint["state_dict"]}
    differences = {
        "trained in the checkpoint, not here": sorted(set(listed) - set(expected)),
        "trained here, not in the checkpoint": sorted(set(expected) - set(listed)),
        "listed but missing from its state dict": sorted(set(listed) - stored),
    }
    found = [f"{len(keys)} {what} (e.g. {keys[:3]})" for what, keys in differences.items() if keys]
    if found:
        raise ValueError(
            f"checkpoint {path} does not fit this model (different LoRA, freezing or model settings?): "
            + "; ".join(found)
        )
    if fingerprint is not None and checkpoint.get(FROZEN_SHA256) != fingerprint:
        raise ValueError(
            f"checkpoint {path} was trained on other frozen weights than this model's (sha256 "
            f"{checkpoint.get(FROZEN_SHA256)} in the checkpoint, {fingerprint} rebuilt here): is the base "
            "built from the same hub name, config and seed?"
        )
