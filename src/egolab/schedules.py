"""Learning-rate schedules shared by the tasks: linear warmup, then cosine decay to a floor.

Each released recipe differs only in the warmup slope (``warmup_offset``: 0 gives ``step / W``, the
ActionFormer and HF rule; 1 gives ``(step + 1) / (W + 1)``, AVT's) and in the floor (``eta_min``).
"""

from __future__ import annotations

import math

import torch


def warmup_cosine(step: int, total: int, warmup: int, floor: float = 0.0, warmup_offset: int = 0) -> float:
    """LR factor: linear warmup over ``warmup`` steps, then cosine from 1 to ``floor`` at ``total``."""
    if step < warmup:
        return (step + warmup_offset) / max(warmup + warmup_offset, 1)
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer,
    total: int,
    warmup: int = 0,
    eta_min: float = 0.0,
    warmup_offset: int = 0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR applying :func:`warmup_cosine` to every group, each decaying to ``eta_min`` absolute.

    With ``warmup=0`` and one step per epoch it equals ``CosineAnnealingLR(T_max=total, eta_min)``.
    """
    floors = [eta_min / g["lr"] if g["lr"] > 0 else 0.0 for g in optimizer.param_groups]
    lambdas = [
        lambda step, f=f: warmup_cosine(step, total, warmup, floor=f, warmup_offset=warmup_offset)
        for f in floors
    ]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
