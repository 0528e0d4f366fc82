"""Temporal constraints after NMS: hand-worked duration, gap, overlap and merge cases; Hydra composition."""

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from egolab.launch.txtfile import read_experiment
from egolab.models.actionformer_postprocess import ActionFormerPostProcessor
from egolab.models.temporal_constraints import ConstrainedPostProcessor, TemporalConstraints
from egolab.paths import CONF_DIR, REPO_ROOT


def preds(rows: list[tuple[float, float, float, int]], video_id: str = "v") -> dict:
    """A post-processor-style prediction from (start, end, score, label) rows."""
    return {
        "video_id": video_id,
        "segments": torch.tensor([[s, e] for s, e, _, _ in rows], dtype=torch.float64).reshape(-1, 2),
        "scores": torch.tensor([p for _, _, p, _ in rows], dtype=torch.float32),
        "labels": torch.tensor([c for _, _, _, c in rows], dtype=torch.int64),
    }


def rows(pred: dict) -> list[tuple[float, float, float, int]]:
    return [
        (round(s, 6), round(e, 6), round(p, 6), c)
        for (s, e), p, c in zip(pred["segments"].tolist(), pred["scores"].tolist(), pred["labels"].tolist())
    ]


def test_duration_range_per_class_and_for_all():
    pred = preds([(0, 1, 0.9, 0), (2, 5, 0.8, 0), (6, 6.25, 0.75, 1)])
    # class 0 must last 0.5 - 2 s: [2, 5] (3 s) goes; class 1 is unconstrained
    assert rows(TemporalConstraints(duration_range={0: [0.5, 2.0]})(pred)) == [
        (0, 1, 0.9, 0),
        (6, 6.25, 0.75, 1),
    ]
    # one range for every class: [6, 6.25] (0.25 s) goes too; bounds are inclusive
    assert rows(TemporalConstraints(duration_range=[0.25, 1.0])(pred)) == [(0, 1, 0.9, 0), (6, 6.25, 0.75, 1)]
    assert rows(TemporalConstraints(duration_range=[0.5, 1.0])(pred)) == [(0, 1, 0.9, 0)]


def test_min_gap_against_kept_higher_scoring_same_class():
    pred = preds(
        [
            (0, 2, 0.9, 0),  # A: kept
            (2.5, 4, 0.8, 0),  # B: 0.5 s after A < 1 s -> dropped
            (4.8, 6, 0.7, 0),  # C: 2.8 s after A; 0.8 s after B, but B was dropped -> kept
            (1, 3, 0.6, 1),  # D: overlaps A, other class -> kept
            (1.5, 2.5, 0.5, 0),  # E: overlaps A (gap 0) -> dropped
        ]
    )
    out = TemporalConstraints(min_gap={0: 1.0})(pred)
    assert rows(out) == [(0, 2, 0.9, 0), (4.8, 6, 0.7, 0), (1, 3, 0.6, 1)]
    # one gap for every class; exactly min_gap apart is allowed
    two = preds([(0, 2, 0.9, 0), (3, 4, 0.8, 0), (4.5, 5, 0.7, 1), (5.5, 6, 0.6, 1)])
    assert rows(TemporalConstraints(min_gap=1.0)(two)) == [(0, 2, 0.9, 0), (3, 4, 0.8, 0), (4.5, 5, 0.7, 1)]


def test_max_overlap_same_class_greedy():
    pred = preds(
        [
            (0, 10, 0.9, 0),  # A
            (1, 9, 0.8, 0),  # B: IoU with A 8 / 10 = 0.8
            (5, 15, 0.7, 0),  # C: IoU with A 5 / 15 = 1/3
            (0, 10, 0.6, 1),  # D: identical to A, other class
        ]
    )
    assert rows(TemporalConstraints(max_overlap=0.5)(pred)) == [
        (0, 10, 0.9, 0),
        (5, 15, 0.7, 0),
        (0, 10, 0.6, 1),
    ]
    assert rows(TemporalConstraints(max_overlap=0.3)(pred)) == [(0, 10, 0.9, 0), (0, 10, 0.6, 1)]
    assert len(TemporalConstraints(max_overlap=0.8)(pred)["labels"]) == 4  # IoU 0.8 is not > 0.8


def test_merge_gap_unions_same_class_with_max_score():
    pred = preds(
        [
            (0, 2, 0.5, 0),  # A
            (2.3, 4, 0.9, 0),  # B: 0.3 s after A -> merged
            (3, 3.5, 0.4, 0),  # C: inside B -> merged
            (4.6, 5, 0.3, 0),  # D: 0.6 s after the group's end 4 -> new group
            (10, 11, 0.8, 0),  # E
            (2.1, 3, 0.6, 1),  # F: other class, between A and B -> untouched
        ]
    )
    out = TemporalConstraints(merge_gap=0.5)(pred)
    assert rows(out) == [(0, 4, 0.9, 0), (10, 11, 0.8, 0), (2.1, 3, 0.6, 1), (4.6, 5, 0.3, 0)]


def test_merge_compares_with_the_group_end_not_the_last_member():
    # [5, 6] lies inside [0, 10]; chaining on the last member's end (2, the fork's rule) would leave it apart
    out = TemporalConstraints(merge_gap=0.5)(preds([(0, 10, 0.2, 0), (1, 2, 0.7, 0), (5, 6, 0.4, 0)]))
    assert rows(out) == [(0, 10, 0.7, 0)]


def test_steps_in_order_types_and_empty():
    pred = preds([(0, 0.2, 0.95, 0), (0, 2, 0.9, 0), (2.2, 4, 0.8, 0), (0.1, 1.9, 0.7, 0)])
    constraints = TemporalConstraints(duration_range=[0.5, 60], max_overlap=0.5, merge_gap=0.5)
    out = constraints(pred)
    # [0, 0.2] fails the duration (so suppresses nothing); [0.1, 1.9] overlaps [0, 2] (IoU 0.9);
    # then [0, 2] and [2.2, 4] merge
    assert rows(out) == [(0, 4, 0.9, 0)]
    assert out["video_id"] == "v" and out["segments"].dtype == torch.float64
    assert out["scores"].dtype == torch.float32 and out["labels"].dtype == torch.int64
    empty = constraints(preds([]))
    assert empty["segments"].shape == (0, 2) and empty["labels"].shape == (0,)
    assert rows(TemporalConstraints()(pred)) == rows(pred)  # all off: unchanged (already sorted)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"duration_range": {0: [2, 1]}}, "duration_range of class 0"),
        ({"duration_range": 3.0}, r"duration_range of class \(all\)"),
        ({"min_gap": {1: -1}}, "min_gap of class 1"),
        ({"min_gap": {"walk": 1.0}}, "class keys must be integer class ids"),
        ({"max_overlap": 1.5}, "max_overlap"),
        ({"merge_gap": -0.1}, "merge_gap"),
    ],
)
def test_invalid_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TemporalConstraints(**kwargs)


def test_wrapper_applies_constraints_after_the_inner_post_processor():
    calls = []

    def inner(outputs, batch):
        calls.append((outputs, batch))
        return [preds([(0, 0.2, 0.9, 0), (1, 3, 0.5, 0)], "a"), preds([(0, 1, 0.4, 2)], "b")]

    wrapped = ConstrainedPostProcessor(inner, {"duration_range": {0: [1, 5]}})
    out = wrapped("outputs", "batch")
    assert calls == [("outputs", "batch")] and [p["video_id"] for p in out] == ["a", "b"]
    assert rows(out[0]) == [(1, 3, 0.5, 0)] and rows(out[1]) == [(0, 1, 0.4, 2)]
    assert wrapped.assigns_labels is False


def model_outputs() -> tuple[dict, dict]:
    """One video, one level (stride 1), one class; fps = feat_stride and no clip offset: seconds = grid.

    t=1: p 0.99, offsets (1, 1) -> [0, 2]; t=3: p 0.88, offsets (0.1, 0.1) -> [2.9, 3.1] (0.2 s).
    """
    logits = torch.full((1, 4, 1), -20.0)
    logits[0, 1, 0], logits[0, 3, 0] = 4.6, 2.0
    offsets = torch.zeros(1, 4, 2)
    offsets[0, 1], offsets[0, 3] = torch.tensor([1.0, 1.0]), torch.tensor([0.1, 0.1])
    outputs = {
        "cls_logits": [logits],
        "offsets": [offsets],
        "masks": [torch.ones(1, 4, dtype=torch.bool)],
        "points": [torch.tensor([[float(t), 0, 1e4, 1] for t in range(4)])],
    }
    batch = {
        "video_ids": ["v"],
        "fps": torch.tensor([4.0], dtype=torch.float64),
        "duration": torch.tensor([100.0], dtype=torch.float64),
        "feat_stride": torch.tensor([4.0], dtype=torch.float64),
        "feat_num_frames": torch.tensor([0.0], dtype=torch.float64),
    }
    return outputs, batch


def test_hydra_composes_the_wrapper_over_an_experiment():
    experiment = [
        line.text for line in read_experiment(REPO_ROOT / "expts" / "localization" / "thumos_i3d.txt")
    ]
    overrides = [
        *experiment,
        "paths.root=/nonexistent",
        "task.postprocess._target_=egolab.models.temporal_constraints.constrained_postprocessor",
        "+task.postprocess.constraints={duration_range:{0:[0.5,60]},min_gap:1.0,max_overlap:0.7}",
    ]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    post = instantiate(cfg.task.postprocess)
    assert isinstance(post, ConstrainedPostProcessor)
    assert isinstance(post.postprocess, ActionFormerPostProcessor)
    # the experiment's other task.postprocess lines still reach the inner post-processor
    assert (post.postprocess.voting_thresh, post.postprocess.max_seg_num) == (0.7, 200)
    assert post.constraints.max_overlap == 0.7
    outputs, batch = model_outputs()
    unconstrained = post.postprocess(outputs, batch)[0]
    assert len(unconstrained["labels"]) == 2
    (out,) = post(outputs, batch)
    torch.testing.assert_close(out["segments"], torch.tensor([[0.0, 2.0]], dtype=torch.float64))
    assert instantiate(cfg.task).postprocess.constraints.max_overlap == 0.7  # the task builds with it
