"""The shared warmup + cosine schedule: hand-computed factors for each released warmup rule, and the
equivalence with torch's CosineAnnealingLR when there is no warmup (EgoPack's per-epoch schedule)."""

import math

import pytest
import torch

from egolab.schedules import WARMUP_ACTIONFORMER, WARMUP_AVT, warmup_cosine, warmup_cosine_scheduler


def test_warmup_then_cosine_hand_computed():
    assert [warmup_cosine(s, 100, 10) for s in (0, 5, 10)] == [0.0, 0.5, 1.0]
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)  # half-way through the decay
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.0)
    assert warmup_cosine(32, 100, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 22 / 90)))


def test_avt_warmup_slope_and_floor():
    assert [warmup_cosine(s, 100, 3, warmup_slope=WARMUP_AVT) for s in (0, 1, 2)] == [0.25, 0.5, 0.75]
    assert warmup_cosine(100, 100, 0, floor=0.1) == pytest.approx(0.1)
    assert warmup_cosine(50, 100, 0, floor=0.1) == pytest.approx(0.1 + 0.9 * 0.5)


def test_no_warmup_equals_cosine_annealing_per_epoch():
    params = [torch.nn.Parameter(torch.zeros(1))]
    ours = torch.optim.Adam(params, lr=1e-3)
    ref = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    scheduler = warmup_cosine_scheduler(ours, total=7, eta_min=1e-5)
    reference = torch.optim.lr_scheduler.CosineAnnealingLR(ref, T_max=7, eta_min=1e-5)
    for _ in range(7):
        assert ours.param_groups[0]["lr"] == pytest.approx(ref.param_groups[0]["lr"], rel=1e-9)
        ours.step()
        ref.step()
        scheduler.step()
        reference.step()


def released_actionformer_lrs(base: float, warmup: int, total: int, eta_min: float) -> list[float]:
    """The ActionFormer release's LinearWarmupCosineAnnealingLR, re-stated in its chained form: from 0,
    add base / (W - 1) per step during warmup, base at step W, then each step rescales the distance to
    eta_min by the ratio of consecutive cosine factors."""
    lrs = [0.0]
    for step in range(1, total):
        if step < warmup:
            lrs.append(lrs[-1] + base / (warmup - 1))
        elif step == warmup:
            lrs.append(base)
        else:
            ratio = (1 + math.cos(math.pi * (step - warmup) / (total - warmup))) / (
                1 + math.cos(math.pi * (step - warmup - 1) / (total - warmup))
            )
            lrs.append((lrs[-1] - eta_min) * ratio + eta_min)
    return lrs


def test_actionformer_warmup_reaches_the_base_rate_one_step_early():
    assert [warmup_cosine(s, 20, 5, warmup_slope=WARMUP_ACTIONFORMER) for s in range(6)] == [
        0.0,
        0.25,
        0.5,
        0.75,
        1.0,
        1.0,
    ]
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    scheduler = warmup_cosine_scheduler(optimizer, 20, 5, eta_min=1e-8, warmup_slope=WARMUP_ACTIONFORMER)
    ours = []
    for _ in range(20):
        ours.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert ours == pytest.approx(released_actionformer_lrs(1e-4, 5, 20, 1e-8), rel=1e-9, abs=1e-15)
