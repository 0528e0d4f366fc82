"""The shared warmup + cosine schedule: hand-computed factors for each released warmup rule, and the
equivalence with torch's CosineAnnealingLR when there is no warmup (EgoPack's per-epoch schedule)."""

import math

import pytest
import torch

from egolab.schedules import warmup_cosine, warmup_cosine_scheduler


def test_warmup_then_cosine_hand_computed():
    assert [warmup_cosine(s, 100, 10) for s in (0, 5, 10)] == [0.0, 0.5, 1.0]
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)  # half-way through the decay
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.0)
    assert warmup_cosine(32, 100, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 22 / 90)))


def test_avt_warmup_offset_and_floor():
    assert [warmup_cosine(s, 100, 3, warmup_offset=1) for s in (0, 1, 2)] == [0.25, 0.5, 0.75]
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
