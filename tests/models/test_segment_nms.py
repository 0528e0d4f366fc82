"""1D NMS family: hand-worked cases, a loop-by-loop reference, and a speed check."""

import math

import numpy as np
import pytest
import torch

from egolab.models.segment_nms import (
    batched_nms,
    diou_soft_nms,
    hard_nms,
    segment_diou,
    segment_iou,
    segment_voting,
    soft_nms,
    validate_nms_options,
)

G = math.exp(-(1 / 9) / 0.5)  # Gaussian soft-NMS weight for IoU 1/3 and sigma 0.5


def test_segment_iou_adds_length_epsilon():
    iou = segment_iou([[0.0, 10.0]], [[5.0, 15.0], [20.0, 30.0], [0.0, 10.0]])
    assert iou.shape == (1, 3)
    assert iou[0, 0].item() == pytest.approx(5 / (20 + 2e-6 - 5), rel=1e-6)
    assert iou[0, 1] == 0 and iou[0, 2].item() == pytest.approx(1.0)
    assert segment_iou([[0.0, 10.0]], [[5.0, 15.0]], eps=0.0).item() == pytest.approx(1 / 3)


def test_hard_nms_filters_then_suppresses():
    segs = [[0, 10], [1, 11], [20, 30], [0, 10]]
    scores = [0.9, 0.8, 0.7, 0.005]
    out = hard_nms(segs, scores, torch.tensor([3, 4, 5, 6]), iou_threshold=0.5, min_score=0.01)
    assert out.indices.tolist() == [0, 2]  # B has IoU 9/11 with A; D is below min_score
    assert out.labels.tolist() == [3, 5] and out.scores.tolist() == pytest.approx([0.9, 0.7])
    assert hard_nms(segs, scores, iou_threshold=0.9, min_score=0.01).indices.tolist() == [0, 1, 2]
    assert hard_nms(segs, scores, iou_threshold=0.9).indices.tolist() == [0, 1, 2]  # D suppressed by A
    assert hard_nms(segs, scores, iou_threshold=0.9, min_score=0.01, max_num=2).indices.tolist() == [0, 1]
    # with the length epsilon identical segments have IoU 1 / 1.000002, just below 1
    assert hard_nms([[0, 1], [0, 1]], [0.5, 0.4], iou_threshold=1.0).indices.tolist() == [0, 1]
    assert hard_nms([[0, 1], [0, 1]], [0.5, 0.4], iou_threshold=0.99999).indices.tolist() == [0]


def test_soft_nms_gaussian_hand_example():
    segs = [[0, 10], [5, 15], [20, 30]]
    out = soft_nms(segs, [0.9, 0.8, 0.7], sigma=0.5, min_score=0.001)
    # A first; B decays by exp(-(1/3)^2 / 0.5) = 0.80074; C (no overlap) keeps 0.7 and is picked next
    assert out.indices.tolist() == [0, 2, 1]
    assert out.scores.tolist() == pytest.approx([0.9, 0.7, 0.8 * G], rel=1e-5)
    torch.testing.assert_close(out.segments, torch.tensor([[0.0, 10], [20, 30], [5, 15]]))
    # B's decayed score 0.6406 is below min_score 0.65: discarded
    assert soft_nms(segs, [0.9, 0.8, 0.7], sigma=0.5, min_score=0.65).indices.tolist() == [0, 2]


def test_soft_nms_decays_sequentially():
    out = soft_nms([[0, 10], [5, 15], [10, 20]], [0.9, 0.85, 0.8], sigma=0.5, min_score=0.001)
    # B decays once by A (IoU 1/3), C is untouched by A and taken second, then B decays again by C
    assert out.indices.tolist() == [0, 2, 1]
    assert out.scores.tolist() == pytest.approx([0.9, 0.8, 0.85 * G * G], rel=1e-5)


def test_soft_nms_linear_and_hard_methods():
    segs, scores = [[0, 10], [5, 15], [20, 30]], [0.9, 0.8, 0.7]
    lin = soft_nms(segs, scores, iou_threshold=0.3, min_score=0.001, method="linear")
    assert lin.scores.tolist() == pytest.approx([0.9, 0.7, 0.8 * (1 - 5 / 15.000002)], rel=1e-5)
    assert soft_nms(segs, scores, iou_threshold=0.4, method="linear").scores.tolist() == pytest.approx(
        [0.9, 0.8, 0.7]
    )
    assert soft_nms(segs, scores, iou_threshold=0.3, method="hard").indices.tolist() == [0, 2]
    with pytest.raises(ValueError, match="unknown soft-NMS method"):
        soft_nms(segs, scores, method="cubic")


def test_soft_nms_keeps_the_best_even_below_min_score():
    # as in the released extension: only *decayed* scores are compared with min_score
    out = soft_nms([[0, 1], [5, 6]], [0.005, 0.004], min_score=0.01)
    assert out.indices.tolist() == [0]


def test_segment_voting_hand_example():
    all_segs = torch.tensor([[0.0, 10], [2, 10], [20, 30]])
    all_scores = torch.tensor([0.9, 0.6, 0.5])
    refined = segment_voting(all_segs, all_segs, all_scores, iou_threshold=0.75)
    # A: (0.9 * [0, 10] + 0.6 * 0.8 * [2, 10]) / (0.9 + 0.48); B: (0.9 * 0.8 * [0, 10] + 0.6 * [2, 10]) / 1.32
    expected = torch.tensor([[0.96 / 1.38, 10], [1.2 / 1.32, 10], [20, 30]])
    torch.testing.assert_close(refined, expected)


def test_batched_nms_multiclass_vs_class_agnostic():
    segs = [[0, 10], [0, 10], [20, 30], [40, 50]]
    scores = [0.9, 0.8, 0.7, 0.6]
    labels = [0, 1, 1, 2]
    s, p, lab = batched_nms(segs, scores, labels, 0.5, 0.01, 100, use_soft_nms=False, multiclass=True)
    assert lab.tolist() == [0, 1, 1, 2] and p.tolist() == pytest.approx(scores)
    s, p, lab = batched_nms(
        segs, scores, labels, 0.5, 0.01, 100, use_soft_nms=False, multiclass=False, voting_thresh=0
    )
    assert lab.tolist() == [0, 1, 2] and p.tolist() == pytest.approx([0.9, 0.7, 0.6])
    s, p, lab = batched_nms(segs, scores, labels, 0.5, 0.01, 2, use_soft_nms=False, multiclass=True)
    assert lab.tolist() == [0, 1] and s.tolist() == [[0, 10], [0, 10]]
    s, p, lab = batched_nms(
        segs, scores, labels, 0.1, 0.01, 100, use_soft_nms=True, multiclass=False, sigma=0.5, voting_thresh=0
    )
    # class-agnostic Gaussian: the duplicate decays by exp(-1 / 0.5)
    assert p.tolist() == pytest.approx([0.9, 0.7, 0.6, 0.8 * math.exp(-2)], rel=1e-5)
    assert lab.dtype == torch.int64 and s.dtype == torch.float32
    empty = batched_nms(torch.zeros(0, 2), torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.1, 0.01, 10)
    assert [t.shape[0] for t in empty] == [0, 0, 0]


def test_batched_nms_voting_uses_all_pre_nms_segments():
    segs = [[0.0, 10], [2, 10], [20, 30]]
    s, p, lab = batched_nms(
        segs, [0.9, 0.6, 0.5], [0, 0, 0], 0.1, 0.01, 100, multiclass=False, sigma=0.5, voting_thresh=0.75
    )
    # soft-NMS keeps A 0.9, C 0.5, B 0.6 * exp(-0.64 / 0.5); then each is refined by voting
    assert p.tolist() == pytest.approx([0.9, 0.5, 0.6 * math.exp(-1.28)], rel=1e-5)
    torch.testing.assert_close(s, torch.tensor([[0.96 / 1.38, 10], [20, 30], [1.2 / 1.32, 10]]))


def test_segment_diou_hand_example():
    # [0, 10] vs [5, 15]: IoU 5 / 15, centres 5 and 10, enclosing 15: DIoU = 1/3 - (5/15)^2 = 2/9
    # [0, 10] vs [2, 8]: IoU 0.6, same centre: DIoU = IoU = 0.6
    # [0, 10] vs [9, 30]: IoU 1/30, centres 5 and 19.5, enclosing 30: 1/30 - (14.5/30)^2 < 0
    diou = segment_diou([[0.0, 10.0]], [[5.0, 15.0], [2.0, 8.0], [9.0, 30.0]], eps=0.0)
    assert diou[0].tolist() == pytest.approx([2 / 9, 0.6, 1 / 30 - (14.5 / 30) ** 2], rel=1e-6)
    # with the NMS length epsilon the IoU part matches segment_iou
    assert segment_diou([[0.0, 10.0]], [[2.0, 8.0]]).item() == pytest.approx(
        segment_iou([[0.0, 10.0]], [[2.0, 8.0]]).item(), rel=1e-6
    )


def test_diou_soft_nms_hand_example():
    # A [0, 10] 0.9, B [1, 9] 0.8, C [6, 14] 0.5, sigma 0.5.
    # step 1, A: DIoU(A, B) = 0.8 (same centre)            -> B = 0.8 * exp(-0.64 / 0.5)      = 0.222430
    #            DIoU(A, C) = 4/14 - (5/14)^2 = 31/196     -> C = 0.5 * exp(-(31/196)^2 / 0.5) = 0.475600
    # step 2: C now has the highest *current* score and is taken before B (the fork keeps the initial
    #         order and would take B here). DIoU(C, B) = 3/13 - (5/13)^2 = 14/169
    #         -> B = 0.222430 * exp(-(14/169)^2 / 0.5) = 0.219398
    segs = [[0.0, 10.0], [1.0, 9.0], [6.0, 14.0]]
    out = diou_soft_nms(segs, [0.9, 0.8, 0.5], torch.tensor([7, 8, 9]), sigma=0.5, min_score=0.001)
    w_ab, w_ac, w_cb = math.exp(-1.28), math.exp(-((31 / 196) ** 2) / 0.5), math.exp(-((14 / 169) ** 2) / 0.5)
    assert out.indices.tolist() == [0, 2, 1] and out.labels.tolist() == [7, 9, 8]
    assert out.scores.tolist() == pytest.approx([0.9, 0.5 * w_ac, 0.8 * w_ab * w_cb], rel=1e-5)
    assert out.scores.tolist() == pytest.approx([0.9, 0.475600, 0.219398], rel=1e-5)
    torch.testing.assert_close(out.segments, torch.tensor([[0.0, 10], [6, 14], [1, 9]]))
    # IoU soft-NMS on the same input decays C much more: exp(-(4/14)^2 / 0.5) = 0.849
    assert soft_nms(segs, [0.9, 0.8, 0.5], sigma=0.5).scores[1].item() == pytest.approx(
        0.5 * math.exp(-((4 / 14) ** 2) / 0.5), rel=1e-5
    )
    # a negative DIoU is clamped to 0: no decay at all; min_score and max_num as in soft_nms
    far = diou_soft_nms([[0.0, 10.0], [9.0, 30.0]], [0.9, 0.8], sigma=0.5)
    assert far.scores.tolist() == pytest.approx([0.9, 0.8])
    assert diou_soft_nms(segs, [0.9, 0.8, 0.5], min_score=0.3).indices.tolist() == [0, 2]
    assert diou_soft_nms(segs, [0.9, 0.8, 0.5], max_num=2).indices.tolist() == [0, 2]
    assert diou_soft_nms(torch.zeros(0, 2), torch.zeros(0)).indices.tolist() == []
    with pytest.raises(ValueError, match="sigma"):
        diou_soft_nms(segs, [0.9, 0.8, 0.5], sigma=0.0)


def test_batched_nms_diou_and_class_sigma():
    # each class has [0, 10] 0.9 and [5, 15] 0.8: IoU 1/3, DIoU 2/9
    segs = [[0, 10], [5, 15], [0, 10], [5, 15]]
    scores, labels = [0.9, 0.8, 0.9, 0.8], [0, 0, 1, 1]

    def decayed(**kwargs):
        """Score of the suppressed segment ([5, 15]) of each class."""
        _, p, lab = batched_nms(segs, scores, labels, 0.1, 0.001, 100, **kwargs)
        return [p[lab == c].min().item() for c in (0, 1)]

    # sigma 0.5 for both classes, unless class_sigma gives class 1 sigma 0.1: only its decay changes
    assert decayed() == pytest.approx([0.8 * G, 0.8 * G], rel=1e-5)
    assert decayed(class_sigma={1: 0.1}) == pytest.approx([0.8 * G, 0.8 * math.exp(-(1 / 9) / 0.1)], rel=1e-5)
    w_diou, w_diou_01 = math.exp(-((2 / 9) ** 2) / 0.5), math.exp(-((2 / 9) ** 2) / 0.1)
    assert decayed(use_diou_nms=True) == pytest.approx([0.8 * w_diou, 0.8 * w_diou], rel=1e-5)
    assert decayed(use_diou_nms=True, class_sigma={"1": 0.1}) == pytest.approx(
        [0.8 * w_diou, 0.8 * w_diou_01], rel=1e-5
    )
    # class-agnostic DIoU soft-NMS: a duplicate decays by exp(-1 / 0.5), the other pair by w_diou.
    # A0 taken; B0 -> 0.8 w, A1 -> 0.9 e^-2, B1 -> 0.8 w; B0 taken: A1 -> 0.9 e^-2 w, B1 -> 0.8 w e^-2;
    # A1 taken: B1 -> 0.8 w^2 e^-2
    _, p, _ = batched_nms(segs, scores, labels, 0.1, 0.001, 100, multiclass=False, use_diou_nms=True)
    expected = [0.9, 0.8 * w_diou, 0.9 * math.exp(-2) * w_diou, 0.8 * w_diou**2 * math.exp(-2)]
    assert p.tolist() == pytest.approx(sorted(expected, reverse=True), rel=1e-5)


def test_nms_options_that_would_be_ignored_raise():
    with pytest.raises(ValueError, match="DIoU-NMS"):
        batched_nms([[0, 1]], [0.5], [0], 0.1, 0.01, 10, use_soft_nms=False, use_diou_nms=True)
    with pytest.raises(ValueError, match="class_sigma"):
        batched_nms([[0, 1]], [0.5], [0], 0.1, 0.01, 10, multiclass=False, class_sigma={0: 0.3})
    with pytest.raises(ValueError, match="class_sigma"):
        validate_nms_options(use_soft_nms=False, multiclass=True, class_sigma={0: 0.3})
    with pytest.raises(ValueError, match="> 0"):
        validate_nms_options(use_soft_nms=True, multiclass=True, class_sigma={0: 0.0})
    assert validate_nms_options(True, True, True, {"2": 1}) == {2: 1.0}
    assert validate_nms_options(True, True) is None


# ---------------------------------------------------------------------------------------------- reference


def reference_soft_nms(segs, scores, sigma, min_score):
    """Straightforward loop of the released algorithm, one pair at a time (no ties in the test data)."""
    items = [[float(a), float(b), float(c), i] for i, ((a, b), c) in enumerate(zip(segs, scores))]
    out = []
    while items:
        best = max(range(len(items)), key=lambda k: items[k][2])
        x1, x2, score, idx = items.pop(best)
        out.append((idx, score))
        survivors = []
        for item in items:
            inter = max(0.0, min(x2, item[1]) - max(x1, item[0]))
            iou = inter / ((x2 - x1 + 1e-6) + (item[1] - item[0] + 1e-6) - inter)
            item[2] *= math.exp(-iou * iou / sigma)
            if item[2] >= min_score:
                survivors.append(item)
        items = survivors
    return out


def reference_diou_soft_nms(segs, scores, sigma, min_score, max_num=-1):
    """Straightforward DIoU soft-NMS, one pair at a time, with the same length epsilon in the IoU."""
    items = [[float(a), float(b), float(c), i] for i, ((a, b), c) in enumerate(zip(segs, scores))]
    out = []
    while items and (max_num <= 0 or len(out) < max_num):
        best = max(range(len(items)), key=lambda k: items[k][2])
        x1, x2, score, idx = items.pop(best)
        out.append((idx, score))
        survivors = []
        for item in items:
            inter = max(0.0, min(x2, item[1]) - max(x1, item[0]))
            iou = inter / ((x2 - x1 + 1e-6) + (item[1] - item[0] + 1e-6) - inter)
            centre_dist = 0.5 * (x1 + x2) - 0.5 * (item[0] + item[1])
            enclosing = max(x2, item[1]) - min(x1, item[0])
            diou = max(iou - (centre_dist / enclosing) ** 2, 0.0)
            item[2] *= math.exp(-diou * diou / sigma)
            if item[2] >= min_score:
                survivors.append(item)
        items = survivors
    return out


def reference_hard_nms(segs, scores, thr):
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    kept = []
    for i in order:
        ok = True
        for j in kept:
            inter = max(0.0, min(segs[i][1], segs[j][1]) - max(segs[i][0], segs[j][0]))
            union = (segs[i][1] - segs[i][0] + 1e-6) + (segs[j][1] - segs[j][0] + 1e-6) - inter
            ok &= inter / union < thr
        if ok:
            kept.append(i)
    return kept


def random_segments(n, seed):
    rng = np.random.default_rng(seed)
    start = rng.uniform(0, 200, n)
    segs = np.stack([start, start + rng.uniform(0.5, 30, n)], 1).astype(np.float32)
    return segs, rng.permutation(n).astype(np.float32) / n + 0.001


def test_matches_reference_loops():
    segs, scores = random_segments(300, 0)
    out = soft_nms(segs, scores, sigma=0.5, min_score=0.01)
    ref = reference_soft_nms(segs, scores, 0.5, 0.01)
    assert out.indices.tolist() == [i for i, _ in ref]
    np.testing.assert_allclose(out.scores.numpy(), [s for _, s in ref], rtol=1e-4)
    assert hard_nms(segs, scores, iou_threshold=0.3).indices.tolist() == reference_hard_nms(
        segs.tolist(), scores.tolist(), 0.3
    )


@pytest.mark.parametrize(
    "seed, sigma, min_score, max_num", [(0, 0.5, 0.01, -1), (1, 0.2, 0.001, 50), (2, 0.9, 0.1, -1)]
)
def test_diou_soft_nms_matches_reference_loop(seed, sigma, min_score, max_num):
    segs, scores = random_segments(300, seed)
    out = diou_soft_nms(segs, scores, sigma=sigma, min_score=min_score, max_num=max_num)
    ref = reference_diou_soft_nms(segs, scores, sigma, min_score, max_num)
    assert out.indices.tolist() == [i for i, _ in ref]
    np.testing.assert_allclose(out.scores.numpy(), [s for _, s in ref], rtol=1e-4)
    torch.testing.assert_close(out.segments, torch.from_numpy(segs)[out.indices])
