"""SnapFormer: Gaussian targets, CornerNet loss and peak decoding against hand-worked values; the point
metric; the model's outputs; the point-event demo."""

import json
import math

import numpy as np
import pytest
import torch

from egolab.data.demo_localization_events import make_demo_point_events
from egolab.models.snapformer import (
    GaussianFocalLoss,
    PointEventMetric,
    SnapFormer,
    SnapPostProcessor,
    gaussian_focal_loss,
    gaussian_heatmap,
    heatmap_peaks,
    match_points,
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


def _points(times, stride):
    t = torch.as_tensor(times, dtype=torch.float32)
    return torch.stack([t, torch.zeros_like(t), torch.full_like(t, 1e4), torch.full_like(t, stride)], 1)


def logit(p: float) -> float:
    return math.log(p / (1 - p))


# --------------------------------------------------------------------------------------- targets
def test_gaussian_targets_by_hand():
    # event [2, 5] of class 1: centre 3.5, length 3 -> sigma = max(3 / 6, 1) = 1; peak at floor(4.0) = 4
    heat = gaussian_heatmap(_points(range(8), 1), torch.tensor([[2.0, 5.0]]), torch.tensor([1]), 2)
    assert heat[:, 0].tolist() == [0.0] * 8
    expected = [math.exp(-((t - 3.5) ** 2) / 2) for t in range(8)]
    expected[4] = 1.0
    assert heat[:, 1].tolist() == pytest.approx(expected)
    assert heat[3, 1].item() == pytest.approx(math.exp(-0.125))  # half a step from the centre
    assert heat[2, 1].item() == pytest.approx(math.exp(-1.125))


def test_gaussian_targets_on_a_coarser_level():
    # stride 2 (points 0, 2, ..., 8): centre 3.5 is 1.75 steps; sigma = max(3 / 12, 1) = 1; peak at step 2
    heat = gaussian_heatmap(_points(range(0, 10, 2), 2), torch.tensor([[2.0, 5.0]]), torch.tensor([0]), 1)
    assert heat[:, 0].tolist() == pytest.approx(
        [
            math.exp(-(1.75**2) / 2),
            math.exp(-(0.75**2) / 2),
            1.0,
            math.exp(-(1.25**2) / 2),
            math.exp(-(2.25**2) / 2),
        ]
    )


def test_long_events_widen_the_gaussian_and_classes_take_the_maximum():
    # [0, 24]: sigma = 24 / 6 = 4, so 4 steps from the centre the target is exp(-1/2)
    segs = torch.tensor([[0.0, 24.0], [15.0, 17.0]])
    heat = gaussian_heatmap(_points(range(30), 1), segs, torch.tensor([0, 0]), 1)
    assert heat[8, 0].item() == pytest.approx(math.exp(-0.5))
    assert heat[12, 0].item() == 1.0 and heat[16, 0].item() == 1.0  # both peaks
    assert heat[15, 0].item() == pytest.approx(max(math.exp(-9 / 32), math.exp(-0.5)))


def test_peak_outside_the_level_is_not_forced():
    heat = gaussian_heatmap(_points(range(4), 1), torch.tensor([[4.0, 6.0]]), torch.tensor([0]), 1)
    assert (heat < 1).all()
    assert heat[3, 0].item() == pytest.approx(math.exp(-(2**2) / 2))  # centre 5, sigma 1
    empty = gaussian_heatmap(_points(range(4), 1), torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), 2)
    assert empty.shape == (4, 2) and not empty.any()


# --------------------------------------------------------------------------------------- loss
def test_cornernet_focal_loss_by_hand():
    # p = 0.5 (target 1), 0.75 (target 0.5), 0.25 (target 0)
    logits = torch.tensor([0.0, math.log(3.0), -math.log(3.0)])
    targets = torch.tensor([1.0, 0.5, 0.0])
    loss, num_pos = gaussian_focal_loss(logits, targets)
    positive = 0.5**2 * math.log(2.0)
    near = 0.5**4 * 0.75**2 * math.log(4.0)
    far = 1.0 * 0.25**2 * math.log(4.0 / 3.0)
    assert num_pos.item() == 1
    assert loss.item() == pytest.approx(positive + near + far, rel=1e-6)


def test_cornernet_loss_stays_finite_when_saturated():
    loss, _ = gaussian_focal_loss(torch.tensor([-200.0, 200.0]), torch.tensor([1.0, 0.0]))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(200.0 + 200.0)


def test_criterion_sums_levels_and_divides_by_positives():
    # one class, level 0 (t = 0..3, one step masked), level 1 (t = 0, 2); event [1, 2] -> peaks t=2 (both)
    points = [_points(range(4), 1), _points([0, 2], 2)]
    masks = [torch.tensor([[True, True, True, False]]), torch.ones(1, 2, dtype=torch.bool)]
    logits = [torch.zeros(1, 4, 1), torch.zeros(1, 2, 1)]  # p = 0.5 everywhere
    out = GaussianFocalLoss(1)(
        {"heatmap_logits": logits, "masks": masks, "points": points},
        [torch.tensor([[1.0, 2.0]])],
        [torch.tensor([0])],
    )
    target0 = [math.exp(-(1.5**2) / 2), math.exp(-(0.5**2) / 2), 1.0]  # t = 0, 1, 2 (t = 3 masked)
    target1 = [math.exp(-(0.75**2) / 2), 1.0]  # centre 1.5 = 0.75 steps of 2
    neg = sum((1 - y) ** 4 * 0.25 * math.log(2) for y in target0[:2] + target1[:1])
    pos = 2 * 0.25 * math.log(2)
    assert out["final_loss"].item() == pytest.approx((pos + neg) / 2, rel=1e-6)
    assert out["heatmap_loss"] is out["final_loss"]


# --------------------------------------------------------------------------------------- decoding
def test_peaks_plateau_mask_and_threshold():
    heat = torch.tensor([[0.2, 0.0], [0.6, 0.0], [0.6, 0.05], [0.1, 0.3], [0.5, 0.3], [0.4, 0.0]])
    steps, classes = heatmap_peaks(heat, min_score=0.1)
    # class 0: plateau 0.6 at steps 1-2 -> step 1; 0.5 at step 4. class 1: plateau 0.3 at 3-4 -> step 3
    assert sorted(zip(steps.tolist(), classes.tolist())) == [(1, 0), (3, 1), (4, 0)]


def test_post_processor_returns_seconds_and_labels():
    # level 0 (stride 1) and level 1 (stride 2); fps 30, 4 frames per step, 16-frame clips
    logits0 = torch.full((2, 6, 2), -10.0)
    logits0[0, 1, 0] = logit(0.9)
    logits0[0, 4, 1] = logit(0.7)
    logits0[0, 5, 0] = logit(0.95)  # padded step: ignored
    logits0[1, 2, 1] = logit(0.005)  # below min_score
    outputs = {
        "heatmap_logits": [logits0, torch.zeros(2, 3, 2)],
        "masks": [torch.tensor([[True] * 5 + [False], [True] * 6]), torch.ones(2, 3, dtype=torch.bool)],
        "points": [_points(range(6), 1), _points([0, 2, 4], 2)],
    }
    batch = {
        "video_ids": ["a", "b"],
        "fps": torch.tensor([30.0, 30.0], dtype=torch.float64),
        "duration": torch.tensor([10.0, 10.0], dtype=torch.float64),
        "feat_stride": torch.tensor([4.0, 4.0], dtype=torch.float64),
        "feat_num_frames": torch.tensor([16.0, 16.0], dtype=torch.float64),
    }
    res = SnapPostProcessor(level=0, min_score=0.01)(outputs, batch)
    assert [r["video_id"] for r in res] == ["a", "b"]
    a = res[0]
    sec = [(1 * 4 + 8) / 30, (4 * 4 + 8) / 30]  # (grid * feat_stride + num_frames / 2) / fps
    assert a["segments"].flatten().tolist() == pytest.approx([sec[0], sec[0], sec[1], sec[1]])
    assert a["scores"].tolist() == pytest.approx([0.9, 0.7])
    assert a["labels"].tolist() == [0, 1]
    assert res[1]["segments"].shape == (0, 2) and res[1]["labels"].dtype == torch.int64
    # level 1: every step has p = 0.5; the plateau's first step (t = 0) of each class
    coarse = SnapPostProcessor(level=1)(outputs, batch)[0]
    assert coarse["segments"][:, 0].tolist() == pytest.approx([8 / 30, 8 / 30])
    assert sorted(coarse["labels"].tolist()) == [0, 1]
    assert len(SnapPostProcessor(max_seg_num=1)(outputs, batch)[0]["scores"]) == 1


# --------------------------------------------------------------------------------------- metric
def test_point_matching_uses_the_top_n_predictions_in_score_order():
    gt = np.array([10.0, 20.0])
    # the two best predictions: 20.3 (0.9) takes GT 20; 10.8 (0.8) is 0.8 away: a miss at tolerance 0.5
    errors = match_points(np.array([20.3, 10.8, 10.0]), np.array([0.9, 0.8, 0.1]), gt, tolerance=0.5)
    assert errors.tolist() == pytest.approx([0.3])
    # fewer predictions than GTs: the one there takes its nearest GT
    assert match_points(
        np.array([11.0]), np.array([1.0]), np.array([10.0, 11.2]), 0.5
    ).tolist() == pytest.approx([0.2])
    assert match_points(np.zeros(0), np.zeros(0), gt, 0.5).size == 0


def test_point_metric_by_hand():
    metric = PointEventMetric(tolerance_s=0.5, tiou_thresholds=[0.5])
    preds = [
        {
            "video_id": "v",
            "segments": torch.tensor([[5.1, 5.1], [9.0, 9.0], [5.0, 5.0]]),
            "scores": torch.tensor([0.9, 0.8, 0.3]),
            "labels": torch.tensor([0, 1, 1]),
        }
    ]
    targets = [{"video_id": "v", "segments": np.array([[4.9, 5.1], [8.0, 8.4]]), "labels": np.array([0, 1])}]
    metric.update(preds, targets)
    out = metric.compute()
    # class 0: 5.1 vs centre 5.0 -> hit, error 0.1; class 1: top-1 prediction 9.0 vs 8.2 -> miss
    assert out["point_mae_s"].item() == pytest.approx(0.1)
    assert out["point_recall"].item() == pytest.approx(0.5)
    # windows +/- 0.5: class 0 is 0.1 off, tIoU 0.9 / 1.1 >= 0.5, AP 1; class 1: 9.0 is 0.8 off (tIoU
    # 0.2 / 1.8) and 5.0 further, AP 0; mAP = (1 + 0) / 2
    assert out["mAP@0.5"].item() == pytest.approx(0.5)
    assert metric.tiou_thresholds == (0.5,) and metric.top_k == ()
    metric.reset()
    metric.update(
        preds, [dict(targets[0], segments=np.array([[9.0, 9.0], [5.0, 5.4]]), labels=np.array([1, 0]))]
    )
    assert metric.compute()["point_recall"].item() == 1.0


# --------------------------------------------------------------------------------------- model
def test_snapformer_outputs_and_heatmap_head():
    model = SnapFormer(**TINY).eval()
    feats, masks = torch.randn(2, 8, 64), torch.arange(64)[None] < torch.tensor([[64], [40]])
    out = model(feats, masks)
    assert [x.shape for x in out["heatmap_logits"]] == [(2, 64, 3), (2, 32, 3), (2, 16, 3)]
    assert [p.shape for p in out["points"]] == [(64, 4), (32, 4), (16, 4)]
    assert out["masks"][1][1].sum().item() == 20
    bias = model.cls_head.cls.conv.bias
    assert torch.sigmoid(bias).tolist() == pytest.approx([0.01] * 3)
    assert not any("reg_head" in name for name, _ in model.named_parameters())
    with pytest.raises(ValueError, match="max_div_factor"):
        model(torch.randn(1, 8, 30), torch.ones(1, 30, dtype=torch.bool))


def test_snapformer_learns_a_tiny_point_problem():
    """A few steps on one video make the heatmap peak at the planted event of the right class."""
    torch.manual_seed(0)
    model = SnapFormer(**TINY)
    feats = torch.randn(1, 8, 64) * 0.1
    feats[0, 2, 30:32] += 3.0  # the event: channel 2 at steps 30-31
    segments, labels = [torch.tensor([[30.0, 32.0]])], [torch.tensor([2])]
    masks = torch.ones(1, 64, dtype=torch.bool)
    criterion = GaussianFocalLoss(3)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        loss = criterion(model(feats, masks), segments, labels)["final_loss"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.3 * first
    model.eval()
    heat = torch.sigmoid(model(feats, masks)["heatmap_logits"][0][0])
    assert heat.argmax().item() == 31 * 3 + 2  # step 31 (centre 31), class 2


# --------------------------------------------------------------------------------------- demo
def test_point_event_demo_is_deterministic_with_short_events(tmp_path):
    path = make_demo_point_events(tmp_path / "a", num_videos={"training": 4, "testing": 2})
    again = make_demo_point_events(tmp_path / "b", num_videos={"training": 4, "testing": 2})
    assert path.read_text() == again.read_text()
    database = json.loads(path.read_text())["database"]
    step = 4 / 30
    lengths = [a["segment"][1] - a["segment"][0] for v in database.values() for a in v["annotations"]]
    assert min(lengths) >= 0.9 * step - 0.01 and max(lengths) <= 3 * step + 0.01
    assert max(len(v["annotations"]) for v in database.values()) <= 8
