"""ActionFormer label assignment and losses, checked against hand-worked numbers; a tiny overfit run."""

import math

import pytest
import torch

from egolab.models.actionformer import ActionFormer
from egolab.models.actionformer_loss import ActionFormerLoss, ctr_diou_loss_1d, sigmoid_focal_loss
from egolab.models.actionformer_targets import assign_labels, assign_labels_batch


def _points(times, stride, r_min=0.0, r_max=1000.0):
    t = torch.as_tensor(times, dtype=torch.float32)
    return torch.stack(
        [t, torch.full_like(t, r_min), torch.full_like(t, r_max), torch.full_like(t, stride)], 1
    )


def _positives(cls_targets):
    return cls_targets.sum(-1).nonzero().flatten().tolist()


# --------------------------------------------------------------------------------------- assignment
def test_center_sampling_radius_region():
    segments, labels = torch.tensor([[2.0, 10.0]]), torch.tensor([1])
    # stride 1: centre 6, region (max(6 - 1.5, 2), min(6 + 1.5, 10)) = (4.5, 7.5)
    cls, reg = assign_labels(_points(range(12), 1), segments, labels, num_classes=3)
    assert _positives(cls) == [5, 6, 7]
    assert cls[5].tolist() == [0.0, 1.0, 0.0]
    assert reg[5].tolist() == [3.0, 5.0]
    # stride 2 (points 0, 2, ..., 10): region (3, 9); targets are divided by the stride
    cls, reg = assign_labels(_points(range(0, 12, 2), 2), segments, labels, num_classes=3)
    assert _positives(cls) == [2, 3, 4]  # t = 4, 6, 8
    assert reg[2].tolist() == [1.0, 3.0]  # (4 - 2, 10 - 4) / 2


def test_center_region_boundaries_are_exclusive():
    # GT [0, 10], stride 2, r = 1.5: region (2, 8); t = 2 and t = 8 are outside
    cls, _ = assign_labels(_points([2.0, 4.0, 8.0], 2), torch.tensor([[0.0, 10.0]]), torch.tensor([0]), 1)
    assert cls.flatten().tolist() == [0.0, 1.0, 0.0]


def test_center_sample_none_uses_strict_inside_rule():
    cls, reg = assign_labels(
        _points(range(12), 1), torch.tensor([[2.0, 10.0]]), torch.tensor([0]), 1, center_sample="none"
    )
    assert _positives(cls) == [3, 4, 5, 6, 7, 8, 9]
    assert reg[3].tolist() == [1.0, 7.0]


def test_regression_range_is_inclusive_at_both_ends():
    # GT [0, 8], point t = 4: max(l, r) = 4; radius 10 makes the centre region the whole GT
    points = torch.tensor([[4.0, 0, 4, 1], [4.0, 4, 8, 1], [4.0, 5, 8, 1], [4.0, 0, 3.5, 1]])
    cls, _ = assign_labels(
        points, torch.tensor([[0.0, 8.0]]), torch.tensor([0]), 1, center_sample_radius=10.0
    )
    assert cls.flatten().tolist() == [1.0, 1.0, 0.0, 0.0]


def test_overlapping_ground_truths_shorter_one_wins():
    segments, labels = torch.tensor([[0.0, 20.0], [8.0, 12.0]]), torch.tensor([0, 2])
    cls, reg = assign_labels(_points([10.0], 1), segments, labels, 3, center_sample="none")
    assert cls[0].tolist() == [0.0, 0.0, 1.0]
    assert reg[0].tolist() == [2.0, 2.0]
    # t = 3 lies only in the long GT
    cls, reg = assign_labels(_points([3.0], 1), segments, labels, 3, center_sample="none")
    assert cls[0].tolist() == [1.0, 0.0, 0.0]
    assert reg[0].tolist() == [3.0, 17.0]


def test_equal_length_ties_give_multi_hot_targets():
    points = _points([10.0], 1)
    tied = torch.tensor([[8.0, 12.0], [9.0, 13.0005]])  # lengths 4 and 4.0005 (within 1e-3)
    cls, reg = assign_labels(points, tied, torch.tensor([0, 2]), 3, center_sample="none")
    assert cls[0].tolist() == [1.0, 0.0, 1.0]
    assert reg[0].tolist() == [2.0, 2.0]  # regression from the first shortest GT
    not_tied = torch.tensor([[8.0, 12.0], [9.0, 13.01]])
    cls, _ = assign_labels(points, not_tied, torch.tensor([0, 2]), 3, center_sample="none")
    assert cls[0].tolist() == [1.0, 0.0, 0.0]
    same_class = torch.tensor([[8.0, 12.0], [9.0, 13.0]])
    cls, _ = assign_labels(points, same_class, torch.tensor([1, 1]), 3, center_sample="none")
    assert cls[0].tolist() == [0.0, 1.0, 0.0]  # clamped to 1


def test_zero_ground_truths_give_all_negative_targets():
    cls, reg = assign_labels(_points(range(6), 1), torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), 4)
    assert cls.shape == (6, 4) and reg.shape == (6, 2)
    assert not cls.any()


def test_batch_assignment_concatenates_levels():
    points = [_points(range(8), 1, 0, 4), _points(range(0, 8, 2), 2, 4, 1000)]
    segments = [torch.tensor([[1.0, 7.0]]), torch.zeros(0, 2)]
    labels = [torch.tensor([1]), torch.zeros(0, dtype=torch.long)]
    cls, reg = assign_labels_batch(points, segments, labels, 2)
    assert cls.shape == (2, 12, 2) and reg.shape == (2, 12, 2)
    # level 0 (stride 1, range [0, 4]): region (2.5, 5.5) -> t = 3, 4, 5 with max(l, r) = 4, 3, 4
    # level 1 (stride 2, range [4, 1000]): region (1, 7) -> t = 2, 4, 6 with max(l, r) = 5, 3, 5
    assert _positives(cls[0]) == [3, 4, 5, 9, 11]
    assert reg[0, 9].tolist() == [0.5, 2.5]
    assert not cls[1].any()


# --------------------------------------------------------------------------------------- losses
def _focal_by_hand(x, y, alpha=0.25, gamma=2.0):
    p = 1 / (1 + math.exp(-x))
    ce = -(y * math.log(p) + (1 - y) * math.log(1 - p))
    p_t = p * y + (1 - p) * (1 - y)
    alpha_t = alpha * y + (1 - alpha) * (1 - y)
    return alpha_t * ce * (1 - p_t) ** gamma


def test_sigmoid_focal_loss_matches_hand_computation():
    logits, targets = torch.tensor([0.0, 2.0, -1.0]), torch.tensor([1.0, 0.0, 0.0])
    expected = [_focal_by_hand(0.0, 1.0), _focal_by_hand(2.0, 0.0), _focal_by_hand(-1.0, 0.0)]
    # x = 0, y = 1: 0.25 * log 2 * 0.5**2
    assert expected[0] == pytest.approx(0.25 * math.log(2) * 0.25)
    per_item = sigmoid_focal_loss(logits, targets, reduction="none")
    assert per_item.tolist() == pytest.approx(expected, rel=1e-5)
    assert sigmoid_focal_loss(logits, targets).item() == pytest.approx(sum(expected), rel=1e-5)
    assert sigmoid_focal_loss(logits, targets, reduction="mean").item() == pytest.approx(
        sum(expected) / 3, rel=1e-5
    )
    soft = sigmoid_focal_loss(torch.tensor([1.0]), torch.tensor([0.9]), reduction="sum").item()
    assert soft == pytest.approx(_focal_by_hand(1.0, 0.9), rel=1e-5)


def test_diou_loss_matches_hand_numbers():
    pred = torch.tensor([[1.0, 1.0], [2.0, 0.0], [3.0, 2.0]])
    target = torch.tensor([[1.0, 3.0], [1.0, 1.0], [3.0, 2.0]])
    # (1,1) vs (1,3): inter 2, union 4, IoU 0.5, enclosing 4, rho = 0.5 * (1 - 1 - 3 + 1) = -1
    # (2,0) vs (1,1): inter 1, union 3, IoU 1/3, enclosing 3, rho = 0.5 * (0 - 2 - 1 + 1) = -1
    expected = [1 - 0.5 + 1 / 16, 1 - 1 / 3 + 1 / 9, 0.0]
    assert ctr_diou_loss_1d(pred, target, reduction="none").tolist() == pytest.approx(expected, abs=1e-6)
    assert ctr_diou_loss_1d(pred, target).item() == pytest.approx(sum(expected), abs=1e-6)


def _synthetic_outputs(logits, offsets, valid_length):
    """One level of stride 1, T = 8, regression range [0, 100], batch of two videos."""
    return {
        "cls_logits": [logits],
        "offsets": [offsets],
        "masks": [(torch.arange(8) < valid_length)[None].expand(2, 8)],
        "points": [_points(range(8), 1, 0, 100)],
    }


def test_loss_values_and_normaliser_update():
    torch.manual_seed(0)
    logits, offsets = torch.randn(2, 8, 2), torch.rand(2, 8, 2) * 3
    outputs = _synthetic_outputs(logits, offsets, valid_length=6)
    segments = [torch.tensor([[2.0, 6.0]]), torch.zeros(0, 2)]
    labels = [torch.tensor([0]), torch.zeros(0, dtype=torch.long)]
    criterion = ActionFormerLoss(num_classes=2, center_sample="none", init_loss_norm=100.0).train()
    losses = criterion(outputs, segments, labels)
    # positives: t = 3, 4, 5 of video 0 -> N = 0.9 * 100 + 0.1 * 3
    normaliser = 0.9 * 100 + 0.1 * 3
    assert criterion.loss_normalizer.item() == pytest.approx(normaliser)
    targets = torch.zeros(2, 8, 2)
    targets[0, 3:6, 0] = 1
    valid = torch.arange(8) < 6
    expected_cls = sigmoid_focal_loss(logits[:, valid], targets[:, valid]).item() / normaliser
    expected_reg = ctr_diou_loss_1d(
        offsets[0, 3:6], torch.tensor([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    ).item()
    expected_reg /= normaliser
    assert losses["cls_loss"].item() == pytest.approx(expected_cls, rel=1e-5)
    assert losses["reg_loss"].item() == pytest.approx(expected_reg, rel=1e-5)
    assert losses["final_loss"].item() == pytest.approx(expected_cls + expected_reg, rel=1e-5)

    criterion.eval()(outputs, segments, labels)  # evaluation leaves N alone
    assert criterion.loss_normalizer.item() == pytest.approx(normaliser)
    no_pos = criterion.train()(outputs, [torch.zeros(0, 2)] * 2, [torch.zeros(0, dtype=torch.long)] * 2)
    assert criterion.loss_normalizer.item() == pytest.approx(0.9 * normaliser + 0.1)  # max(num_pos, 1)
    assert no_pos["reg_loss"].item() == 0.0
    assert no_pos["final_loss"].item() == pytest.approx(no_pos["cls_loss"].item())
    assert "loss_normalizer" in criterion.state_dict()  # persistent: resumes exactly


def test_auto_loss_weight_and_label_smoothing():
    torch.manual_seed(0)
    outputs = _synthetic_outputs(torch.randn(2, 8, 2), torch.rand(2, 8, 2) * 3, valid_length=8)
    segments = [torch.tensor([[2.0, 6.0]])] * 2
    labels = [torch.tensor([1])] * 2
    auto = ActionFormerLoss(2, center_sample="none", loss_weight=-1, init_loss_norm=1.0).eval()(
        outputs, segments, labels
    )
    assert auto["reg_loss"].item() > 0.01
    assert auto["final_loss"].item() == pytest.approx(2 * auto["cls_loss"].item(), rel=1e-5)

    smoothed = ActionFormerLoss(
        num_classes=2, center_sample="none", label_smoothing=0.3, init_loss_norm=1.0
    ).eval()
    targets = torch.zeros(2, 8, 2)
    targets[:, 3:6, 1] = 1
    expected = sigmoid_focal_loss(torch.cat(outputs["cls_logits"]), targets * 0.7 + 0.1).item()
    assert smoothed(outputs, segments, labels)["cls_loss"].item() == pytest.approx(expected, rel=1e-5)


def test_invalid_loss_settings_raise():
    with pytest.raises(ValueError, match="center_sample"):
        ActionFormerLoss(2, center_sample="box")
    with pytest.raises(ValueError, match="label_smoothing"):
        ActionFormerLoss(2, label_smoothing=1.0)


# --------------------------------------------------------------------------------------- learning
def test_model_and_loss_overfit_a_single_video():
    torch.manual_seed(0)
    model = ActionFormer(
        input_dim=8,
        num_classes=2,
        max_seq_len=32,
        backbone_arch=(2, 1, 2),
        regression_range=[[0, 4], [4, 8], [8, 1000]],
        n_mha_win_size=3,
        embd_dim=16,
        fpn_dim=16,
        head_dim=16,
        n_head=2,
        droppath=0.0,
    )
    feats, masks = torch.randn(1, 8, 32), torch.ones(1, 32, dtype=torch.bool)
    segments, labels = [torch.tensor([[4.0, 10.0], [16.0, 28.0]])], [torch.tensor([0, 1])]
    with torch.no_grad():
        cls_targets, _ = assign_labels_batch(model(feats, masks)["points"], segments, labels, 2)
    criterion = ActionFormerLoss(num_classes=2, init_loss_norm=float((cls_targets.sum(-1) > 0).sum()))
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    history = []
    for _ in range(100):
        losses = criterion(model(feats, masks), segments, labels)
        optimizer.zero_grad()
        losses["final_loss"].backward()
        optimizer.step()
        history.append(losses["final_loss"].item())
    assert history[-1] < 0.05 * history[0], history[::10]

    model.eval()
    with torch.no_grad():
        out = model(feats, masks)
    scores = torch.cat(out["cls_logits"], 1)[0].sigmoid()
    offsets = torch.cat(out["offsets"], 1)[0]
    points = torch.cat(out["points"])
    for (start, end), label in zip(segments[0].tolist(), labels[0].tolist()):
        best = scores[:, label].argmax()
        t, stride = points[best, 0].item(), points[best, 3].item()
        pred_start, pred_end = t - offsets[best, 0].item() * stride, t + offsets[best, 1].item() * stride
        inter = max(min(end, pred_end) - max(start, pred_start), 0.0)
        iou = inter / (max(end, pred_end) - min(start, pred_start))
        assert scores[best, label] > 0.5 and iou > 0.7, (label, pred_start, pred_end, iou)
