"""ActionFormer label assignment and losses, checked against hand-worked numbers; a tiny overfit run."""

import math
from pathlib import Path

import pytest
import torch

from egolab.models.actionformer import ActionFormer
from egolab.models.actionformer_loss import (
    ActionFormerLoss,
    ctr_diou_loss_1d,
    ctr_eiou_loss_1d,
    ctr_giou_loss_1d,
    ctr_iou_loss_1d,
    offset_iou_1d,
    quality_focal_loss,
    regression_loss_1d,
    sigmoid_focal_loss,
)
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


# Hand-worked pair for every IoU-family loss: pred (l, r) = (1, 3), gt (l, r) = (2, 1), offsets of one point.
#   pred segment [-1, 3], gt segment [-2, 1] (relative to the point)
#   inter = min(1, 2) + min(3, 1) = 2; len_p = 4, len_g = 3; union = 4 + 3 - 2 = 5; IoU = 0.4
#   enclosing c = max(1, 2) + max(3, 1) = 5 (= union: both contain the point, so the GIoU term is 0)
#   rho = 0.5 * (r_p - l_p - r_g + l_g) = 0.5 * (3 - 1 - 1 + 2) = 1.5 (centres 1 and -0.5)
#   IoU loss  = 1 - 0.4                          = 0.6
#   GIoU loss = 1 - 0.4 + (5 - 5) / 5            = 0.6
#   DIoU loss = 1 - 0.4 + (1.5 / 5)^2            = 0.69
#   EIoU loss = 0.69 + ((4 - 3) / 5)^2           = 0.73
# Second pair: pred (2, 2), gt (1, 3): inter 1 + 2 = 3, union 4 + 4 - 3 = 5, IoU 0.6, c = 5, rho = -1:
#   IoU/GIoU 0.4, DIoU 0.4 + 0.04 = 0.44, EIoU = DIoU = 0.44 (equal lengths). Third pair: identical, all 0.
PRED = torch.tensor([[1.0, 3.0], [2.0, 2.0], [3.0, 2.0]])
GT = torch.tensor([[2.0, 1.0], [1.0, 3.0], [3.0, 2.0]])
HAND = {"iou": [0.6, 0.4, 0.0], "giou": [0.6, 0.4, 0.0], "diou": [0.69, 0.44, 0.0], "eiou": [0.73, 0.44, 0.0]}


@pytest.mark.parametrize(
    "name, fn",
    [
        ("iou", ctr_iou_loss_1d),
        ("giou", ctr_giou_loss_1d),
        ("diou", ctr_diou_loss_1d),
        ("eiou", ctr_eiou_loss_1d),
    ],
)
def test_iou_family_losses_match_hand_numbers(name, fn):
    assert offset_iou_1d(PRED, GT).tolist() == pytest.approx([0.4, 0.6, 1.0])
    assert fn(PRED, GT, reduction="none").tolist() == pytest.approx(HAND[name], abs=1e-6)
    assert fn(PRED, GT).item() == pytest.approx(sum(HAND[name]), abs=1e-6)
    assert regression_loss_1d(PRED, GT, name, reduction="none").tolist() == pytest.approx(
        HAND[name], abs=1e-6
    )


def test_giou_equals_iou_for_offsets_from_one_point():
    torch.manual_seed(0)
    pred, target = torch.rand(100, 2) * 5, torch.rand(100, 2) * 5
    torch.testing.assert_close(ctr_giou_loss_1d(pred, target, "none"), ctr_iou_loss_1d(pred, target, "none"))


def test_regression_loss_variants_match_hand_numbers():
    # focal (gamma 2): (1 - IoU)^2 * base with 1 - IoU = 0.6, 0.4, 0
    focal = regression_loss_1d(PRED, GT, "diou", "focal", gamma=2.0, reduction="none")
    assert focal.tolist() == pytest.approx([0.36 * 0.69, 0.16 * 0.44, 0.0], abs=1e-6)
    # on the IoU base it is the spec's (1 - IoU)^gamma * (1 - IoU) = (1 - IoU)^3
    focal_iou = regression_loss_1d(PRED, GT, "iou", "focal", gamma=2.0, reduction="none")
    assert focal_iou.tolist() == pytest.approx([0.216, 0.064, 0.0], abs=1e-6)
    focal_g1 = regression_loss_1d(PRED, GT, "eiou", "focal", gamma=1.0, reduction="none")
    assert focal_g1.tolist() == pytest.approx([0.6 * 0.73, 0.4 * 0.44, 0.0], abs=1e-6)
    # iou_weighted: (2 - IoU) * base with 2 - IoU = 1.6, 1.4, 1
    weighted = regression_loss_1d(PRED, GT, "eiou", "iou_weighted", reduction="none")
    assert weighted.tolist() == pytest.approx([1.6 * 0.73, 1.4 * 0.44, 0.0], abs=1e-6)
    assert regression_loss_1d(PRED, GT, "eiou", "iou_weighted").item() == pytest.approx(
        1.6 * 0.73 + 1.4 * 0.44, abs=1e-6
    )
    with pytest.raises(ValueError, match="variant"):
        regression_loss_1d(PRED, GT, "diou", "cubic")
    with pytest.raises(ValueError, match="type"):
        regression_loss_1d(PRED, GT, "ciou")
    with pytest.raises(ValueError, match="gamma"):
        regression_loss_1d(PRED, GT, "diou", "focal", gamma=0.5)
    # gamma >= 1 keeps the gradient of a perfect prediction finite (here: zero)
    perfect = PRED[2:].clone().requires_grad_(True)
    regression_loss_1d(perfect, GT[2:], "diou", "focal", gamma=1.0).backward()
    assert perfect.grad.tolist() == [[0.0, 0.0]]


def test_quality_focal_loss_matches_hand_numbers():
    logits = torch.tensor([[0.0], [2.0], [-1.0]])
    targets = torch.tensor([[1.0], [1.0], [0.0]])
    quality = torch.tensor([0.5, 0.9, 0.7])  # the third row is negative: its target stays 0
    # x = 0, q = 0.5: p = 0.5 = q, so |q - p|^2 = 0 and the loss is 0 although BCE = log 2
    # x = 2, q = 0.9: p = 0.880797, BCE = 0.9 * 0.126928 + 0.1 * 2.126928 = 0.326928,
    #                 |q - p|^2 = 0.019203^2 = 3.6876e-4, alpha_t = 0.25 -> 3.01389e-5
    # x = -1, q = 0:  p = 0.268941, BCE = log(1 + e^-1) = 0.313262, p^2 = 0.072329,
    #                 alpha_t = 0.75 -> 0.0169935
    expected = [0.0, 3.01389e-5, 0.0169935]
    per_item = quality_focal_loss(logits, targets, quality, reduction="none")
    assert per_item.flatten().tolist() == pytest.approx(expected, rel=1e-4, abs=1e-9)
    assert quality_focal_loss(logits, targets, quality).item() == pytest.approx(sum(expected), rel=1e-4)
    # quality is clamped to [0, 1]; without alpha the weighting is 1
    clamped = quality_focal_loss(logits[:1], targets[:1], torch.tensor([1.5]), reduction="none")
    assert clamped.item() == pytest.approx(0.25 * math.log(2) * 0.25, rel=1e-5)  # q = 1: BCE log 2, |1-.5|^2
    no_alpha = quality_focal_loss(logits[2:], targets[2:], quality[2:], alpha=-1)
    assert no_alpha.item() == pytest.approx(0.0169935 / 0.75, rel=1e-4)
    # with IoU 1 the QFL equals the focal loss on the same hard target
    ones = torch.ones(3)
    torch.testing.assert_close(
        quality_focal_loss(logits, targets, ones, reduction="none"),
        sigmoid_focal_loss(logits, targets, reduction="none"),
    )


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


def _normaliser_worker(rank: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(rank)
    outputs = _synthetic_outputs(torch.randn(2, 8, 2), torch.rand(2, 8, 2) * 3, valid_length=8)
    # rank 0: one GT -> 3 positives (t = 3, 4, 5); rank 1: also [0, 3] -> t = 1, 2: 5 positives
    second = torch.zeros(0, 2) if rank == 0 else torch.tensor([[0.0, 3.0]])
    segments = [torch.tensor([[2.0, 6.0]]), second]
    labels = [torch.zeros(len(s), dtype=torch.long) for s in segments]
    criterion = ActionFormerLoss(num_classes=2, center_sample="none", init_loss_norm=100.0).train()
    criterion(outputs, segments, labels)
    Path(out_dir, f"{rank}.txt").write_text(repr(criterion.loss_normalizer.item()))
    dist.destroy_process_group()


def test_normaliser_averages_the_positive_count_over_processes(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_normaliser_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    values = [float((tmp_path / f"{rank}.txt").read_text()) for rank in range(2)]
    # mean positives (3 + 5) / 2 = 4 on both ranks: N = 0.9 * 100 + 0.1 * 4
    assert values == [pytest.approx(0.9 * 100 + 0.1 * 4)] * 2


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


def _qfl_case():
    """Video 0 has GT [2, 6] (class 0), positives t = 3, 4, 5 with targets (1, 3), (2, 2), (3, 1)."""
    torch.manual_seed(0)
    logits = torch.randn(2, 8, 2)
    offsets = torch.rand(2, 8, 2) * 3
    # predicted (1, 1) vs (1, 3): IoU 2 / 4 = 0.5; (2, 2) vs (2, 2): IoU 1;
    # (1.5, 1) vs (3, 1): inter 2.5, union 2.5 + 4 - 2.5 = 4, IoU 0.625
    offsets[0, 3:6] = torch.tensor([[1.0, 1.0], [2.0, 2.0], [1.5, 1.0]])
    segments = [torch.tensor([[2.0, 6.0]]), torch.zeros(0, 2)]
    labels = [torch.tensor([0]), torch.zeros(0, dtype=torch.long)]
    return logits, offsets, segments, labels


def test_qfl_is_wired_into_training_with_detached_iou_targets():
    logits, offsets, segments, labels = _qfl_case()
    logits.requires_grad_(True)
    offsets.requires_grad_(True)
    outputs = _synthetic_outputs(logits, offsets, valid_length=6)
    criterion = ActionFormerLoss(2, center_sample="none", init_loss_norm=100.0, cls_loss_type="qfl").train()
    losses = criterion(outputs, segments, labels)
    normaliser = 0.9 * 100 + 0.1 * 3
    valid = torch.arange(8) < 6
    targets = torch.zeros(2, 8, 2)
    targets[0, 3:6, 0] = 1
    quality = torch.zeros(2, 8)
    quality[0, 3:6] = torch.tensor([0.5, 1.0, 0.625])
    expected = quality_focal_loss(logits[:, valid], targets[:, valid], quality[:, valid]).item() / normaliser
    assert losses["cls_loss"].item() == pytest.approx(expected, rel=1e-5)
    # the regression loss is still DIoU; the IoU target carries no gradient into the offsets
    expected_reg = ctr_diou_loss_1d(offsets[0, 3:6], torch.tensor([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]]))
    assert losses["reg_loss"].item() == pytest.approx(expected_reg.item() / normaliser, rel=1e-5)
    assert torch.autograd.grad(losses["cls_loss"], offsets, allow_unused=True) == (None,)
    focal = ActionFormerLoss(2, center_sample="none", init_loss_norm=100.0).eval()(outputs, segments, labels)
    assert focal["cls_loss"].item() != pytest.approx(losses["cls_loss"].item(), rel=1e-3)


@pytest.mark.parametrize("loss_type", ["diou", "eiou", "giou", "iou"])
@pytest.mark.parametrize("variant", ["none", "focal", "iou_weighted"])
def test_criterion_uses_the_selected_regression_loss(loss_type, variant):
    logits, offsets, segments, labels = _qfl_case()
    outputs = _synthetic_outputs(logits, offsets, valid_length=6)
    criterion = ActionFormerLoss(
        2, center_sample="none", init_loss_norm=1.0, reg_loss_type=loss_type, reg_loss_variant=variant
    ).eval()
    gt = torch.tensor([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0]])
    expected = regression_loss_1d(offsets[0, 3:6], gt, loss_type, variant).item()
    assert criterion(outputs, segments, labels)["reg_loss"].item() == pytest.approx(expected, rel=1e-6)


def test_default_criterion_is_the_released_one():
    logits, offsets, segments, labels = _qfl_case()
    outputs = _synthetic_outputs(logits, offsets, valid_length=6)
    default = ActionFormerLoss(2, init_loss_norm=10.0).eval()(outputs, segments, labels)
    explicit = ActionFormerLoss(
        2,
        init_loss_norm=10.0,
        cls_loss_type="focal",
        cls_loss_alpha=0.25,
        cls_loss_gamma=2.0,
        reg_loss_type="diou",
        reg_loss_variant="none",
    ).eval()(outputs, segments, labels)
    for key, value in default.items():
        assert torch.equal(value, explicit[key]), key


def test_invalid_loss_settings_raise():
    with pytest.raises(ValueError, match="center_sample"):
        ActionFormerLoss(2, center_sample="box")
    with pytest.raises(ValueError, match="label_smoothing"):
        ActionFormerLoss(2, label_smoothing=1.0)
    with pytest.raises(ValueError, match="cls_loss_type"):
        ActionFormerLoss(2, cls_loss_type="bce")
    with pytest.raises(ValueError, match="label_smoothing is not defined"):
        ActionFormerLoss(2, cls_loss_type="qfl", label_smoothing=0.1)
    with pytest.raises(ValueError, match="reg_loss_type"):
        ActionFormerLoss(2, reg_loss_type="ciou")
    with pytest.raises(ValueError, match="reg_loss_variant"):
        ActionFormerLoss(2, reg_loss_variant="squared")
    with pytest.raises(ValueError, match="reg_loss_gamma"):
        ActionFormerLoss(2, reg_loss_gamma=0.5)
    with pytest.raises(ValueError, match="cls_loss_gamma"):
        ActionFormerLoss(2, cls_loss_gamma=-1.0)


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
