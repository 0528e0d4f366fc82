"""TBTFormer: BDR expectation and DFL by hand, consistent per-level outputs, the composed loss with
ActionFormer's EMA normaliser, decoding by the ActionFormer post-processor; the noisy-boundary demo."""

import json
import math

import pytest
import torch

from egolab.data.demo_localization_events import jitter_boundaries, make_demo_noisy_boundaries
from egolab.models.actionformer import HeadTrunk
from egolab.models.actionformer_loss import ActionFormerLoss
from egolab.models.actionformer_postprocess import ActionFormerPostProcessor
from egolab.models.actionformer_targets import assign_labels_batch
from egolab.models.tbtformer import (
    BDRHead,
    TBTFormer,
    TBTFormerLoss,
    distribution_expectation,
    distribution_focal_loss,
)

TINY = dict(
    input_dim=8,
    num_classes=3,
    max_seq_len=64,
    backbone_arch=(2, 1, 2),
    regression_range=[[0, 4], [4, 8], [8, 10000]],
    n_mha_win_size=5,
    embd_dim=16,
    fpn_dim=16,
    head_dim=16,
    droppath=0.0,
)


# --------------------------------------------------------------------------------------- by hand
def test_expectation_over_bins_by_hand():
    # probabilities (1, 1, 2) / 4 over bins 0, 1, 2 -> 0.25 * 1 + 0.5 * 2 = 1.25
    logits = torch.log(torch.tensor([[1.0, 1.0, 2.0], [1.0, 2.0, 1.0]]))
    assert distribution_expectation(logits).tolist() == pytest.approx([1.25, 1.0])
    assert distribution_expectation(torch.zeros(17)).item() == pytest.approx(8.0)  # uniform: reg_max / 2


def test_dfl_between_two_bins_by_hand():
    # y = 2.3 over bins 0..4: left 2 (weight 0.7), right 3 (weight 0.3)
    probs = torch.tensor([0.1, 0.1, 0.4, 0.3, 0.1])
    loss = distribution_focal_loss(torch.log(probs)[None], torch.tensor([2.3]))
    assert loss.item() == pytest.approx(-0.7 * math.log(0.4) - 0.3 * math.log(0.3), rel=1e-6)
    # uniform logits: CE = log 5 for every bin whatever the split
    assert distribution_focal_loss(torch.zeros(1, 5), torch.tensor([1.6])).item() == pytest.approx(
        math.log(5)
    )


def test_dfl_clamps_targets_below_the_last_bin():
    # y = 7 with reg_max = 4 -> 3.99: left 3 (weight 0.01), right 4 (weight 0.99); y < 0 -> 0: all on bin 0
    probs = torch.tensor([0.1, 0.1, 0.1, 0.2, 0.5])
    loss = distribution_focal_loss(torch.log(probs).expand(2, 5), torch.tensor([7.0, -1.0]))
    assert loss.tolist() == pytest.approx(
        [-0.01 * math.log(0.2) - 0.99 * math.log(0.5), -math.log(0.1)], rel=1e-5
    )


def test_dfl_is_smallest_when_the_expectation_hits_the_target():
    logits = torch.zeros(1, 5, requires_grad=True)
    opt = torch.optim.SGD([logits], lr=1.0)
    for _ in range(300):
        opt.zero_grad()
        distribution_focal_loss(logits, torch.tensor([2.3])).sum().backward()
        opt.step()
    assert distribution_expectation(logits.detach()).item() == pytest.approx(2.3, abs=0.02)


# --------------------------------------------------------------------------------------- head / model
def test_bdr_head_expectation_scale_and_mask():
    head = BDRHead(HeadTrunk(4, 4, 2, 3, True), num_levels=2, reg_max=4)
    torch.nn.init.zeros_(head.dist.conv.weight)  # uniform bins -> expectation 2
    head.scales[1].scale.data.fill_(1.5)
    feats = [torch.randn(2, 4, 6), torch.randn(2, 4, 3)]
    masks = [torch.ones(2, 1, 6, dtype=torch.bool), torch.tensor([[[True, True, False]]] * 2)]
    offsets, logits = head(feats, masks)
    assert [o.shape for o in offsets] == [(2, 2, 6), (2, 2, 3)]
    assert [x.shape for x in logits] == [(2, 6, 2, 5), (2, 3, 2, 5)]
    assert torch.allclose(offsets[0], torch.full_like(offsets[0], 2.0))
    assert offsets[1][:, :, :2].flatten().tolist() == pytest.approx([3.0] * 8)  # 1.5 * 2
    assert offsets[1][:, :, 2].abs().sum().item() == 0.0  # padded step


def test_tbtformer_outputs_have_actionformer_keys_and_per_level_shapes():
    model = TBTFormer(reg_max=16, **TINY).eval()
    out = model(torch.randn(2, 8, 64), torch.ones(2, 64, dtype=torch.bool))
    lengths = [64, 32, 16]
    assert [x.shape for x in out["cls_logits"]] == [(2, t, 3) for t in lengths]
    assert [x.shape for x in out["offsets"]] == [(2, t, 2) for t in lengths]
    assert [x.shape for x in out["offset_logits"]] == [(2, t, 2, 17) for t in lengths]
    assert [x.shape for x in out["points"]] == [(t, 4) for t in lengths]
    expected = distribution_expectation(out["offset_logits"][2]) * model.reg_head.scales[2].scale
    assert torch.allclose(out["offsets"][2], torch.relu(expected), atol=1e-6)
    assert model.max_div_factor == 16 and model.max_seq_len == 64
    assert not any(name.startswith("reg_head.offset") for name, _ in model.named_parameters())
    results = ActionFormerPostProcessor(min_score=0.0)(
        out,
        {
            "video_ids": ["a", "b"],
            "fps": torch.tensor([30.0, 30.0], dtype=torch.float64),
            "duration": torch.tensor([9.0, 9.0], dtype=torch.float64),
            "feat_stride": torch.tensor([4.0, 4.0], dtype=torch.float64),
            "feat_num_frames": torch.tensor([16.0, 16.0], dtype=torch.float64),
        },
    )
    assert len(results) == 2 and results[0]["segments"].shape[1] == 2 and len(results[0]["scores"]) > 0


def test_loss_adds_weighted_dfl_to_actionformer_loss_with_one_ema_normaliser():
    torch.manual_seed(0)
    model = TBTFormer(reg_max=16, **TINY)
    out = model(torch.randn(2, 8, 64), torch.ones(2, 64, dtype=torch.bool))
    segments = [torch.tensor([[10.0, 20.0], [30.0, 33.0]]), torch.tensor([[5.0, 45.0]])]
    labels = [torch.tensor([0, 2]), torch.tensor([1])]
    criterion = TBTFormerLoss(3, dfl_weight=0.25, init_loss_norm=100.0)
    reference = ActionFormerLoss(3, init_loss_norm=100.0)
    losses = criterion(out, segments, labels)
    base = reference(out, segments, labels)
    assert criterion.base.loss_normalizer.item() == pytest.approx(reference.loss_normalizer.item())
    assert criterion.base.loss_normalizer.item() != 100.0  # updated once, in training mode
    assert losses["cls_loss"].item() == pytest.approx(base["cls_loss"].item())
    assert losses["reg_loss"].item() == pytest.approx(base["reg_loss"].item())
    assert losses["final_loss"].item() == pytest.approx(
        base["final_loss"].item() + 0.25 * losses["dfl_loss"].item()
    )

    # the DFL by its definition: mean over the two boundaries of each positive point, divided by N
    cls_t, reg_t = assign_labels_batch(out["points"], segments, labels, 3)
    positive = cls_t.sum(-1) > 0
    logits = torch.cat(out["offset_logits"], dim=1)[positive]
    y = reg_t[positive].clamp(0, 15.99)
    left = y.floor()
    log_p = torch.log_softmax(logits, dim=-1)
    ce_left = -log_p.gather(-1, left.long()[..., None])[..., 0]
    ce_right = -log_p.gather(-1, left.long()[..., None] + 1)[..., 0]
    dfl = (ce_left * (left + 1 - y) + ce_right * (y - left)).mean(-1).sum() / criterion.base.loss_normalizer
    assert losses["dfl_loss"].item() == pytest.approx(dfl.item(), rel=1e-5)
    losses["final_loss"].backward()
    assert model.reg_head.dist.conv.weight.grad.abs().sum() > 0


def test_loss_without_positives_is_finite():
    model = TBTFormer(**TINY)
    out = model(torch.randn(1, 8, 64), torch.ones(1, 64, dtype=torch.bool))
    losses = TBTFormerLoss(3)(out, [torch.zeros(0, 2)], [torch.zeros(0, dtype=torch.long)])
    assert losses["dfl_loss"].item() == 0.0 and torch.isfinite(losses["final_loss"])


# --------------------------------------------------------------------------------------- demo
def test_jitter_moves_only_the_chosen_subsets():
    database = {
        "t": {"subset": "training", "duration": 20.0, "fps": 30.0, "annotations": [{"segment": [4.0, 14.0]}]},
        "v": {
            "subset": "validation",
            "duration": 20.0,
            "fps": 30.0,
            "annotations": [{"segment": [4.0, 14.0]}],
        },
    }
    noisy = jitter_boundaries(database, boundary_noise=0.1, seed=3)
    start, end = noisy["t"]["annotations"][0]["segment"]
    assert (start, end) != (4.0, 14.0)
    assert abs(start - 4.0) <= 2.5 + 1e-9 and abs(end - 14.0) <= 2.5 + 1e-9  # clipped at 2.5 sigma = 2.5 s
    assert noisy["v"]["annotations"][0]["segment"] == [4.0, 14.0]
    assert database["t"]["annotations"][0]["segment"] == [4.0, 14.0], "the input is not modified"
    assert jitter_boundaries(database, 0.1, seed=3) == noisy


def test_noisy_demo_jitters_training_annotations_only(tmp_path):
    videos = {"training": 6, "validation": 2, "testing": 2}
    path = make_demo_noisy_boundaries(tmp_path, boundary_noise=0.1, num_videos=videos)
    noisy = json.loads(path.read_text())["database"]
    clean = json.loads(path.with_name("demo.json").read_text())["database"]
    moved = dict.fromkeys(videos, False)
    for vid, entry in noisy.items():
        pairs = zip(entry["annotations"], clean[vid]["annotations"], strict=True)
        moved[entry["subset"]] |= any(a["segment"] != b["segment"] for a, b in pairs)
    assert moved == {"training": True, "validation": False, "testing": False}
    text = path.read_text()
    assert make_demo_noisy_boundaries(tmp_path, boundary_noise=0.1, num_videos=videos).read_text() == text
