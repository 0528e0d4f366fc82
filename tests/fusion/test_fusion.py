"""Late fusion: hand-worked weighted sums (classification, anticipation) and pooled NMS (localization)."""

import json

import numpy as np
import pytest

from egolab.fusion.anticipation import fuse_anticipation
from egolab.fusion.classification import fuse_classification
from egolab.fusion.core import find_predictions, fuse_runs, load_predictions
from egolab.fusion.localization import fuse_localization
from egolab.fusion.scores import check_weights, normalize_scores
from egolab.metrics.localization import score_predictions_file as score_file

NAMES = ["Novice", "Early Expert", "Intermediate Expert", "Late Expert"]


def skill_payload(results):
    return {"version": "egolab-skill-1", "task": "skill", "label_names": NAMES, "results": results}


def take(probs, label, scenario="Cooking"):
    return {
        "probs": probs,
        "logits": [0.0] * 4,
        "pred": int(np.argmax(probs)),
        "label": label,
        "scenario": scenario,
    }


def test_normalisations_by_hand():
    x = np.array([[3.0, 4.0, 0.0]])
    assert normalize_scores(x, "l2") == pytest.approx(np.array([[0.6, 0.8, 0.0]]))
    assert normalize_scores(x, "l1") == pytest.approx(np.array([[3 / 7, 4 / 7, 0.0]]))
    e = np.exp([3.0, 4.0, 0.0])
    assert normalize_scores(x, "softmax") == pytest.approx(e[None] / e.sum())
    assert (normalize_scores(x, None) == x).all() and (normalize_scores(x, "none") == x).all()
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalize_scores(x, "l3")
    assert check_weights(None, 3) == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="2 weights for 3 runs"):
        check_weights([1, 2], 3)


def test_classification_weighted_sum_over_the_union_of_ids():
    a = skill_payload({"t1": take([0.7, 0.1, 0.1, 0.1], 0), "t2": take([0.4, 0.6, 0.0, 0.0], 2)})
    b = skill_payload({"t1": take([0.1, 0.1, 0.2, 0.6], 0), "t3": take([0.0, 0.0, 0.0, 1.0], 3)})
    fused = fuse_classification([a, b], [2.0, 1.0])["results"]
    # t1: 2*[.7,.1,.1,.1] + [.1,.1,.2,.6] = [1.5,.3,.4,.8] (sum 3.0) -> class 0
    assert fused["t1"]["probs"] == pytest.approx([0.5, 0.1, 0.4 / 3, 0.8 / 3])
    assert fused["t1"]["pred"] == 0 and fused["t1"]["label"] == 0 and fused["t1"]["scenario"] == "Cooking"
    assert fused["t2"]["probs"] == pytest.approx([0.4, 0.6, 0, 0]) and fused["t2"]["pred"] == 1
    assert fused["t3"]["pred"] == 3
    with pytest.raises(ValueError, match="disagree on the label of 't1'"):
        fuse_classification([a, skill_payload({"t1": take([1, 0, 0, 0], 1)})], [1, 1])


def anticipation_run(uids, logits, verb, noun, action, unseen):
    return {
        "uid": np.array(uids),
        "action_logits": np.array(logits, np.float32),
        "verb_scores": np.array([[0.5, 0.5]] * len(uids), np.float32),
        "noun_scores": np.array([[1.0, 0.0]] * len(uids), np.float32),
        "verb_label": np.array(verb),
        "noun_label": np.array(noun),
        "action_label": np.array(action),
        "unseen": np.array(unseen),
        "action_to_verb": np.array([0, 1, 1]),
        "action_to_noun": np.array([0, 0, 1]),
        "tail_verbs": np.array([1]),
        "tail_nouns": np.array([1]),
        "tail_actions": np.array([2]),
        "task": np.array("anticipation"),
        "version": np.array("egolab-anticipation-1"),
    }


def test_anticipation_fuses_each_space_over_the_union_of_uids():
    a = anticipation_run(["s1", "s2"], [[1, 2, 3], [0, 0, 1]], [0, 1], [0, 1], [0, 2], [False, True])
    b = anticipation_run(["s2", "s3"], [[3, 0, 0], [1, 1, 1]], [1, 0], [1, 0], [2, 0], [True, False])
    fused = fuse_anticipation([a, b], [2.5, 0.5])
    assert fused["uid"].tolist() == ["s1", "s2", "s3"]
    expected = np.array([[2.5, 5.0, 7.5], [1.5, 0.0, 2.5], [0.5, 0.5, 0.5]])
    assert fused["action_logits"] == pytest.approx(expected)
    assert fused["verb_scores"] == pytest.approx(np.array([[1.25, 1.25], [1.5, 1.5], [0.25, 0.25]]))
    assert fused["action_label"].tolist() == [0, 2, 0] and fused["unseen"].tolist() == [False, True, False]
    assert fused["action_to_noun"].tolist() == [0, 0, 1] and str(fused["task"]) == "anticipation"
    clash = anticipation_run(["s1"], [[0, 0, 0]], [1], [0], [1], [False])
    with pytest.raises(ValueError, match="disagree on verb_label"):
        fuse_anticipation([a, clash], [1, 1])
    other_vocab = dict(b, action_to_verb=np.array([0, 0, 1]))
    with pytest.raises(ValueError, match="action_to_verb"):
        fuse_anticipation([a, other_vocab], [1, 1])


def localization_payload(detections):
    return {
        "version": "egolab-localization-1",
        "task": "localization",
        "label_names": ["x"],
        "tiou_thresholds": [0.5],
        "top_k": [],
        "ground_truth": {"v": {"segments": [[0.0, 10.0]], "label_ids": [0]}},
        "results": {"v": [{"segment": s, "score": p, "label": "x", "label_id": 0} for s, p in detections]},
    }


def test_localization_pools_weighted_detections_then_nms(tmp_path):
    a = localization_payload([([0, 10], 0.9)])
    b = localization_payload([([20, 30], 0.8), ([0, 10], 0.5)])
    fused = fuse_localization([a, b], [1.0, 1.0])["results"]["v"]
    # weights rescaled to 0.5 each: [0,10] 0.45 and 0.25, [20,30] 0.4; soft-NMS decays the duplicate
    # [0,10] by exp(-1/0.5); at most 2 kept (the most any run kept for this video)
    assert [d["segment"] for d in fused] == [[0.0, 10.0], [20.0, 30.0]]
    assert [d["score"] for d in fused] == pytest.approx([0.45, 0.4])
    paths = []
    for name, payload in (("a", a), ("b", b)):
        (tmp_path / name).mkdir()
        paths.append(tmp_path / name / "predictions.json")
        paths[-1].write_text(json.dumps(payload))
    result = fuse_runs([tmp_path / "a", tmp_path / "b"], [1, 1], out=tmp_path / "fused.json")
    # run b ranks a false positive first: AP 0.5; fused ranks the true segment first: AP 1
    assert result.inputs[str(paths[1])]["average_mAP"] == pytest.approx(0.5)
    assert result.metrics["average_mAP"] == pytest.approx(1.0)
    assert load_predictions(result.path)[0] == "localization"
    other = localization_payload([([0, 10], 0.9)])
    other["ground_truth"] = {"w": other["ground_truth"]["v"]}
    with pytest.raises(ValueError, match="different ground truth"):
        fuse_localization([a, other], [1, 1])


def point_payload(detections, tolerance=0.5):
    """A SnapFormer predictions file: two GT events of class x at 5.0 s and 9.0 s, detections as points."""
    payload = localization_payload([([t, t], p) for t, p in detections])
    payload["ground_truth"] = {"v": {"segments": [[5.0, 5.0], [9.0, 9.0]], "label_ids": [0, 0]}}
    payload["point_tolerance_s"] = tolerance
    return payload


def test_point_events_fuse_as_windows_and_rescore_with_their_tolerance(tmp_path):
    a = point_payload([(5.1, 0.9), (12.0, 0.6)])
    b = point_payload([(5.3, 0.8), (9.2, 0.7)])
    fused = fuse_localization([a, b], [1.0, 1.0], soft=False, iou_threshold=0.5)
    # windows +/- 0.5 s: 5.1 and 5.3 overlap by tIoU 0.8 / 1.2 > 0.5, so hard NMS drops the 0.4 at 5.3;
    # the best two (the most any run kept) come back as points, scores halved by the weights
    points = [(d["segment"], d["score"]) for d in fused["results"]["v"]]
    assert all(s == e for (s, e), _ in points)  # points: start == end
    assert [s for (s, _), _ in points] == pytest.approx([5.1, 9.2])  # (the NMS works in float32)
    assert [p for _, p in points] == pytest.approx([0.45, 0.35])
    assert fused["point_tolerance_s"] == 0.5
    for name, payload in (("a", a), ("fused", fused)):
        (tmp_path / f"{name}.json").write_text(json.dumps(payload))
    # run a: its top-2 are 5.1 (hit, error 0.1) and 12.0 (miss): recall 1/2; fused: 5.1 and 9.2 both hit
    run_a = score_file(tmp_path / "a.json")
    assert run_a["point_recall"] == pytest.approx(0.5) and run_a["point_mae_s"] == pytest.approx(0.1)
    both = score_file(tmp_path / "fused.json")
    assert both["point_recall"] == 1.0 and both["point_mae_s"] == pytest.approx(0.15)
    # mAP on the +/- 0.5 s windows at tIoU 0.5 (hits within 1/3 s): ranks 5.1 hit, 9.2 hit: AP 1
    assert both["mAP@0.5"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="point tolerances"):
        fuse_localization([a, point_payload([], tolerance=1.0)], [1, 1])


def test_inputs_are_checked(tmp_path):
    with pytest.raises(FileNotFoundError, match="no predictions file"):
        find_predictions(tmp_path)
    (tmp_path / "predictions.json").write_text("{bad")
    with pytest.raises(ValueError, match="predictions.json: not valid json"):
        load_predictions(tmp_path / "predictions.json")
    (tmp_path / "predictions.json").write_text("{}")
    with pytest.raises(ValueError, match="not an egolab predictions file"):
        load_predictions(tmp_path / "predictions.json")
    with pytest.raises(ValueError, match="at least two runs"):
        fuse_runs([tmp_path])
