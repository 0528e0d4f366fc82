"""ActionFormer post-processing on a hand-built two-level output."""

import math

import pytest
import torch
from omegaconf import OmegaConf

from egolab.models.actionformer_postprocess import ActionFormerPostProcessor

LOW = -20.0  # sigmoid ~ 2e-9, below pre_nms_thresh


def logit(p: float) -> float:
    return math.log(p / (1 - p))


def hand_outputs() -> tuple[dict, dict]:
    """Video 0 has four candidates (one masked, one too short); video 1 has none above threshold.

    Level 0 (stride 1, t = 0..3), level 1 (stride 2, t = 0, 2); 2 classes.
    * L0 t=2 class 1: p 0.5, offsets (1, 2)       -> [1, 4]
    * L1 t=2 class 0: p 0.8, offsets (0.5, 1.5)*2 -> [1, 5]
    * L1 t=0 class 1: p 0.3, offsets (3, 1)*2     -> [-6, 2]
    * L0 t=0 class 0: p 0.45, offsets (0.01, 0.02) -> length 0.03 <= 0.05, dropped
    * L0 t=3 class 0: logit 5 but masked out
    """
    cls0 = torch.full((2, 4, 2), LOW)
    cls1 = torch.full((2, 2, 2), LOW)
    off0 = torch.zeros(2, 4, 2)
    off1 = torch.zeros(2, 2, 2)
    cls0[0, 2, 1], off0[0, 2] = 0.0, torch.tensor([1.0, 2.0])
    cls1[0, 1, 0], off1[0, 1] = logit(0.8), torch.tensor([0.5, 1.5])
    cls1[0, 0, 1], off1[0, 0] = logit(0.3), torch.tensor([3.0, 1.0])
    cls0[0, 0, 0], off0[0, 0] = logit(0.45), torch.tensor([0.01, 0.02])
    cls0[0, 3, 0], off0[0, 3] = 5.0, torch.tensor([1.0, 1.0])
    mask0 = torch.tensor([[True, True, True, False], [True, True, True, True]])
    mask1 = torch.ones(2, 2, dtype=torch.bool)
    points = [
        torch.tensor([[float(t), 0, 4, 1] for t in range(4)]),
        torch.tensor([[0.0, 4, 1e4, 2], [2.0, 4, 1e4, 2]]),
    ]
    outputs = {"cls_logits": [cls0, cls1], "offsets": [off0, off1], "masks": [mask0, mask1], "points": points}
    batch = {
        "video_ids": ["a", "b"],
        "fps": torch.tensor([30.0, 30.0], dtype=torch.float64),
        "duration": torch.tensor([0.85, 10.0], dtype=torch.float64),
        "feat_stride": torch.tensor([4.0, 4.0], dtype=torch.float64),
        "feat_num_frames": torch.tensor([16.0, 16.0], dtype=torch.float64),
    }
    return outputs, batch


def sec(grid: float) -> float:
    return (grid * 4 + 0.5 * 16) / 30


def test_soft_multiclass_hand_example():
    outputs, batch = hand_outputs()
    res = ActionFormerPostProcessor(nms_method="soft", min_score=0.01, nms_sigma=0.5)(outputs, batch)
    assert [r["video_id"] for r in res] == ["a", "b"]
    a = res[0]
    assert a["labels"].tolist() == [0, 1, 1] and a["labels"].dtype == torch.int64
    # class 1: [-6, 2] vs [1, 4] has IoU 1 / 10 -> decayed by exp(-0.01 / 0.5)
    assert a["scores"].tolist() == pytest.approx([0.8, 0.5, 0.3 * math.exp(-0.02)], rel=1e-5)
    # grid -> seconds (g * 4 + 8) / 30, clipped to [0, 0.85]
    expected = [[sec(1), 0.85], [sec(1), sec(4)], [0.0, sec(2)]]
    assert a["segments"].tolist() == [pytest.approx(row, rel=1e-6) for row in expected]
    assert res[1]["segments"].shape == (0, 2) and res[1]["scores"].shape == (0,)


def test_topk_is_per_level_and_none_only_sorts():
    outputs, batch = hand_outputs()
    res = ActionFormerPostProcessor(pre_nms_topk=1, nms_method="none")(outputs, batch)[0]
    assert res["scores"].tolist() == pytest.approx([0.8, 0.5])  # best of level 1, best of level 0
    res = ActionFormerPostProcessor(nms_method="none")(outputs, batch)[0]
    assert res["scores"].tolist() == pytest.approx([0.8, 0.5, 0.3])


def test_duration_and_pre_nms_thresholds():
    outputs, batch = hand_outputs()
    res = ActionFormerPostProcessor(duration_thresh=0.01, nms_method="none")(outputs, batch)[0]
    assert len(res["scores"]) == 4  # the 0.03-long segment now passes
    res = ActionFormerPostProcessor(pre_nms_thresh=0.4, nms_method="none")(outputs, batch)[0]
    assert res["scores"].tolist() == pytest.approx([0.8, 0.5])


def test_hard_class_agnostic_with_voting():
    outputs, batch = hand_outputs()
    batch["duration"][0] = 10.0
    post = ActionFormerPostProcessor(
        nms_method="hard", iou_threshold=0.5, multiclass_nms=False, voting_thresh=0.75
    )
    res = post(outputs, batch)[0]
    # [1, 4] has IoU 3/4 with [1, 5] and is suppressed; voting pulls [1, 5] towards it:
    # end = (0.8 * 5 + 0.5 * 0.75 * 4) / (0.8 + 0.375)
    assert res["scores"].tolist() == pytest.approx([0.8, 0.3])
    assert res["labels"].tolist() == [0, 1]
    end = (0.8 * 5 + 0.375 * 4) / 1.175
    expected = [[sec(1), sec(end)], [0.0, sec(2)]]
    assert res["segments"].tolist() == [pytest.approx(row, rel=1e-6) for row in expected]


def test_score_temperature_scales_logits_before_filtering():
    outputs, batch = hand_outputs()
    res = ActionFormerPostProcessor(score_temperature=2.0, nms_method="none")(outputs, batch)[0]
    # logit(0.8) = log 4 -> log 2 -> p = 2/3; logit 0 stays 0.5;
    # logit(0.3) = log(3/7) -> log(3/7) / 2 -> p = 1 / (1 + sqrt(7/3));
    # the 0.45 candidate is still too short and LOW / 2 = -10 (p 4.5e-5) still below pre_nms_thresh
    assert res["scores"].tolist() == pytest.approx([2 / 3, 0.5, 1 / (1 + math.sqrt(7 / 3))], rel=1e-5)
    # pre_nms_thresh compares the tempered probability: 0.8 -> 16/17 at T = 0.5, 0.3 -> 9/58 is dropped
    sharp = ActionFormerPostProcessor(score_temperature=0.5, pre_nms_thresh=0.2, nms_method="none")
    assert sharp(outputs, batch)[0]["scores"].tolist() == pytest.approx([16 / 17, 0.5], rel=1e-5)
    default = ActionFormerPostProcessor(nms_method="none")(outputs, batch)[0]
    unit = ActionFormerPostProcessor(nms_method="none", score_temperature=1.0)(outputs, batch)[0]
    assert torch.equal(default["scores"], unit["scores"])


def test_diou_nms_and_class_sigma_in_the_post_processor():
    outputs, batch = hand_outputs()
    # class 1: [-6, 2] vs [1, 4]: IoU 1/10, centres -2 and 2.5, enclosing 10:
    # DIoU = 0.1 - 0.45^2 < 0 -> clamped to 0, no decay (IoU soft-NMS: 0.3 * exp(-0.02))
    res = ActionFormerPostProcessor(use_diou_nms=True)(outputs, batch)[0]
    assert res["scores"].tolist() == pytest.approx([0.8, 0.5, 0.3], rel=1e-5)
    # class_sigma {1: 0.01}: IoU soft-NMS decays class 1 by exp(-0.01 / 0.01) instead of exp(-0.01 / 0.5)
    for class_sigma in ({1: 0.01}, OmegaConf.create({1: 0.01}), OmegaConf.create({"1": 0.01})):
        res = ActionFormerPostProcessor(class_sigma=class_sigma)(outputs, batch)[0]
        assert res["scores"].tolist() == pytest.approx([0.8, 0.5, 0.3 * math.exp(-1)], rel=1e-4)
    res = ActionFormerPostProcessor(class_sigma={0: 0.01})(outputs, batch)[0]  # class 0 has nothing to decay
    assert res["scores"].tolist() == pytest.approx([0.8, 0.5, 0.3 * math.exp(-0.02)], rel=1e-5)


def test_invalid_settings():
    with pytest.raises(ValueError, match="nms_method"):
        ActionFormerPostProcessor(nms_method="greedy")
    with pytest.raises(ValueError, match="pre_nms_topk"):
        ActionFormerPostProcessor(pre_nms_topk=0)
    with pytest.raises(ValueError, match="score_temperature"):
        ActionFormerPostProcessor(score_temperature=0.0)
    with pytest.raises(ValueError, match="DIoU-NMS"):
        ActionFormerPostProcessor(nms_method="hard", use_diou_nms=True)
    with pytest.raises(ValueError, match="class_sigma"):
        ActionFormerPostProcessor(multiclass_nms=False, class_sigma={0: 0.3})
    with pytest.raises(ValueError, match="class_sigma"):
        ActionFormerPostProcessor(nms_method="none", class_sigma={0: 0.3})
