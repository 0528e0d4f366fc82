"""Learning-rate schedules shared by the tasks: linear warmup, then cosine decay to a floor.

Each released recipe differs only in the warmup slope and in the floor (``eta_min``). The slope is
``(step + a) / (W + b)`` for ``warmup_slope=(a, b)``: ``WARMUP_HF`` (0, 0) is ``step / W``;
``WARMUP_AVT`` (1, 1) is ``(step + 1) / (W + 1)``; ``WARMUP_ACTIONFORMER`` (0, -1) is ``step / (W - 1)``,
the release's ``LinearWarmupCosineAnnealingLR``, which reaches the base rate at step W - 1.
"""

from __future__ import annotations

import math

import torch

WARMUP_HF = (0, 0)
WARMUP_AVT = (1, 1)
WARMUP_ACTIONFORMER = (0, -1)


def warmup_cosine(
    step: int, total: int, warmup: int, floor: float = 0.0, warmup_slope: tuple[int, int] = WARMUP_HF
) -> float:
    """LR factor: linear warmup over ``warmup`` steps, then cosine from 1 to ``floor`` at ``total``."""
    if step < warmup:
        shift_step, shift_span = warmup_slope
        return min((step + shift_step) / max(warmup + shift_span, 1), 1.0)
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer,
    total: int,
    warmup: int = 0,
    eta_min: float = 0.0,
    warmup_slope: tuple[int, int] = WARMUP_HF,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR applying :func:`warmup_cosine` to every group, each decaying to ``eta_min`` absolute.

    With ``warmup=0`` and one step per epoch it equals ``CosineAnnealingLR(T_max=total, eta_min)``.
    """
    floors = [eta_min / g["lr"] if g["lr"] > 0 else 0.0 for g in optimizer.param_groups]
    lambdas = [
        lambda step, f=f: warmup_cosine(step, total, warmup, floor=f, warmup_slope=warmup_slope)
        for f in floors
    ]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
