"""Anticipation metrics on hand-worked cases, and EK100's tail definition on the real RULSTM files."""

import math

import numpy as np
import pytest
from shared_data import SHARED_DATA, require_shared

from egolab.metrics.anticipation import (
    anticipation_metrics,
    class_mean_recall,
    marginalize,
    metrics_from_arrays,
    score_predictions_file,
    tail_action_ids,
    topk_accuracy,
)

EK100 = SHARED_DATA / "epic_kitchens_100"

# 4 samples, 4 classes; rankings (best first): s0 [0,1,2,3], s1 [3,2,1,0], s2 [1,0,2,3], s3 [2,3,0,1]
SCORES = np.array(
    [
        [0.9, 0.5, 0.3, 0.1],
        [0.1, 0.3, 0.5, 0.9],
        [0.5, 0.9, 0.3, 0.1],
        [0.3, 0.1, 0.9, 0.5],
    ]
)
LABELS = np.array([0, 0, 1, 3])  # class 2 is absent from the ground truth


def test_class_mean_recall_by_hand():
    # top-1: class 0 hits s0 only (1/2), class 1 hits s2 (1/1), class 3 misses s3 (0/1) -> (0.5 + 1 + 0) / 3
    assert class_mean_recall(SCORES, LABELS, k=1) == pytest.approx(0.5)
    # top-2: class 0: s0 yes, s1 no (1/2); class 1: yes; class 3: [2,3] yes -> (0.5 + 1 + 1) / 3
    assert class_mean_recall(SCORES, LABELS, k=2) == pytest.approx(2.5 / 3)
    # class 2 is predicted first for s3 but is absent from the GT: it never enters the mean
    assert class_mean_recall(SCORES, LABELS, k=1, classes=[2, 3]) == pytest.approx(0.0)
    assert class_mean_recall(SCORES, LABELS, k=1, classes=[0, 1]) == pytest.approx(0.75)
    assert math.isnan(class_mean_recall(SCORES, LABELS, k=1, classes=[2]))
    # unknown labels (-1) are left out
    assert class_mean_recall(np.vstack([SCORES, SCORES[:1]]), np.append(LABELS, -1), k=1) == pytest.approx(
        0.5
    )


def test_topk_accuracy_by_hand():
    assert topk_accuracy(SCORES, LABELS, 1) == pytest.approx(0.5)  # s0, s2
    assert topk_accuracy(SCORES, LABELS, 2) == pytest.approx(0.75)  # + s3
    assert topk_accuracy(SCORES, np.array([0, -1, 1, -1]), 1) == pytest.approx(1.0)


def test_marginalisation_by_hand():
    # actions: a0 = (v0, n0), a1 = (v0, n1), a2 = (v1, n1); verb v2 has no action -> probability 0
    logits = np.log(np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]))
    verbs = marginalize(logits, np.array([0, 0, 1]), num_classes=3)
    nouns = marginalize(logits, np.array([0, 1, 1]))
    np.testing.assert_allclose(verbs, [[0.8, 0.2, 0.0], [0.2, 0.8, 0.0]], atol=1e-12)
    np.testing.assert_allclose(nouns, [[0.5, 0.5], [0.1, 0.9]], atol=1e-12)
    with pytest.raises(ValueError, match="do not match"):
        marginalize(logits, np.array([0, 1]))


def test_all_metrics_unseen_and_tail_by_hand():
    a2v, a2n = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
    metrics = anticipation_metrics(
        SCORES, LABELS, a2v, a2n, unseen=np.array([False, False, True, True]), tail_verbs=[1], tail_nouns=[]
    )
    assert metrics["action_recall1"] == pytest.approx(0.5)
    assert metrics["action_top1"] == pytest.approx(0.5)
    # unseen: s2 (class 1, top-1 hit at k=5) and s3 (class 3) -> both hit at k=5
    assert metrics["action_recall5_unseen"] == pytest.approx(1.0)
    # tail actions: verb 1 -> actions 2, 3; only class 3 is in the GT
    np.testing.assert_array_equal(tail_action_ids(a2v, a2n, np.array([1]), np.array([], int)), [2, 3])
    assert metrics["action_recall5_tail"] == pytest.approx(1.0)
    # verbs: labels [0, 0, 0, 1]; marginal of s1 = softmax mass of a0+a1 vs a2+a3 -> verb 1 first
    verb_scores = marginalize(SCORES, a2v)
    assert (verb_scores[1].argmax(), verb_scores[0].argmax()) == (1, 0)
    assert metrics["verb_top1"] == pytest.approx(np.mean(verb_scores.argmax(1) == [0, 0, 0, 1]))
    assert set(metrics) >= {
        f"{s}_{m}" for s in ("verb", "noun", "action") for m in ("top1", "top5", "recall5")
    }


def test_score_predictions_file_round_trip(tmp_path):
    arrays = {
        "uid": np.array(["a", "b", "c", "d"]),
        "action_logits": SCORES.astype(np.float32),
        "verb_scores": marginalize(SCORES, np.array([0, 0, 1, 1])).astype(np.float32),
        "noun_scores": marginalize(SCORES, np.array([0, 1, 0, 1])).astype(np.float32),
        "verb_label": np.array([0, 0, 0, 1]),
        "noun_label": np.array([0, 0, 1, 1]),
        "action_label": LABELS,
        "unseen": np.array([False, True, False, True]),
        "action_to_verb": np.array([0, 0, 1, 1]),
        "action_to_noun": np.array([0, 1, 0, 1]),
        "tail_verbs": np.array([1]),
        "tail_nouns": np.array([], dtype=np.int64),
        "tail_actions": np.array([2, 3]),
        "task": np.array("anticipation"),
        "version": np.array("egolab-anticipation-1"),
    }
    np.savez_compressed(tmp_path / "predictions.npz", **arrays)
    assert score_predictions_file(tmp_path / "predictions.npz") == metrics_from_arrays(arrays)
    np.savez_compressed(tmp_path / "other.npz", **{**arrays, "task": np.array("localization")})
    with pytest.raises(ValueError, match="not an anticipation predictions file"):
        score_predictions_file(tmp_path / "other.npz")


def test_tail_and_unseen_definitions_reproduce_rulstm_id_lists():
    """EK100 val: tail actions = verb or noun in the EPIC tail lists; unseen = EPIC unseen participants."""
    require_shared(EK100)
    val = np.genfromtxt(EK100 / "rulstm_ek100" / "validation.csv", delimiter=",", dtype=str)
    uid, video = val[:, 0], val[:, 1]
    verb, noun, action = (val[:, i].astype(int) for i in (4, 5, 6))
    actions = np.genfromtxt(EK100 / "rulstm_ek100" / "actions.csv", delimiter=",", dtype=str, skip_header=1)
    a2v, a2n = actions[:, 1].astype(int), actions[:, 2].astype(int)
    tail_v = np.loadtxt(EK100 / "EPIC_100_tail_verbs.csv", skiprows=1, dtype=int)
    tail_n = np.loadtxt(EK100 / "EPIC_100_tail_nouns.csv", skiprows=1, dtype=int)

    def ids(name):
        return set((EK100 / "rulstm_ek100" / name).read_text().split())

    assert set(uid[np.isin(verb, tail_v)]) == ids("validation_tail_verbs_ids.csv")
    assert set(uid[np.isin(noun, tail_n)]) == ids("validation_tail_nouns_ids.csv")
    assert set(uid[np.isin(action, tail_action_ids(a2v, a2n, tail_v, tail_n))]) == ids(
        "validation_tail_actions_ids.csv"
    )
    unseen = (EK100 / "EPIC_100_unseen_participant_ids_validation.csv").read_text().split()[1:]
    participants = np.array([v.split("_")[0] for v in video])
    assert set(uid[np.isin(participants, unseen)]) == ids("validation_unseen_participants_ids.csv")
