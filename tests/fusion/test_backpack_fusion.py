"""Late fusion of backpack predictions: hand-worked weighted sums of the AR and OSCC sections, the checks,
and `python -m egolab.fusion` on backpack files."""

import numpy as np
import pytest

from egolab.fusion.__main__ import main
from egolab.fusion.backpack import fuse_backpack
from egolab.fusion.core import HEADLINE_METRIC, fuse_runs
from egolab.metrics.backpack import PREDICTIONS_VERSION, read_predictions, write_predictions


def run_a():
    """Verb top-1: x wrong (class 0), y right -> 1/2."""
    return {
        "ar_uid": np.array(["x", "y"]),
        "ar_verb_logits": np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0]]),
        "ar_noun_logits": np.array([[1.0, 0.0], [0.0, 1.0]]),
        "ar_verb_label": np.array([1, 1]),
        "ar_noun_label": np.array([0, 0]),
        "oscc_uid": np.array(["o1"]),
        "oscc_logits": np.array([[0.2, 0.8]]),
        "oscc_label": np.array([0]),
        "lta_uid": np.array(["l1"]),
        "lta_verb_samples": np.zeros((1, 5, 20), np.int64),
        "lta_noun_samples": np.zeros((1, 5, 20), np.int64),
        "lta_verb_label": np.zeros((1, 20), np.int64),
        "lta_noun_label": np.ones((1, 20), np.int64),
    }


def run_b():
    """Verb top-1: y wrong (class 2), x and z right -> 2/3."""
    return {
        "ar_uid": np.array(["y", "x", "z"]),
        "ar_verb_logits": np.array([[0.0, 0.0, 0.5], [0.0, 3.0, 0.0], [1.0, 0.0, 0.0]]),
        "ar_noun_logits": np.array([[0.0, 1.0], [0.0, 2.0], [1.0, 0.0]]),
        "ar_verb_label": np.array([1, 1, 0]),
        "ar_noun_label": np.array([0, 0, 1]),
        "oscc_uid": np.array(["o1"]),
        "oscc_logits": np.array([[1.0, 0.0]]),
        "oscc_label": np.array([0]),
    }


def as_stored(tmp_path, name, arrays):
    """The arrays as read back from a written predictions file."""
    return read_predictions(write_predictions(tmp_path / name / "predictions.npz", arrays))


def test_weighted_sum_by_hand(tmp_path):
    fused = fuse_backpack([as_stored(tmp_path, "a", run_a()), as_stored(tmp_path, "b", run_b())], [0.7, 0.3])
    assert fused["ar_uid"].tolist() == ["x", "y", "z"]
    # x: .7 [.9, .1, 0] + .3 [0, 3, 0] = [.63, .97, 0] -> 1 (right); y: .7 [.2, .8, 0] + .3 [0, 0, .5]
    # = [.14, .56, .15] -> 1 (right); z: b only, .3 [1, 0, 0] -> 0 (right): fused verb top-1 = 1
    expected = np.array([[0.63, 0.97, 0.0], [0.14, 0.56, 0.15], [0.3, 0.0, 0.0]])
    assert fused["ar_verb_logits"] == pytest.approx(expected)
    assert fused["ar_noun_logits"] == pytest.approx(np.array([[0.7, 0.6], [0.0, 1.0], [0.3, 0.0]]))
    assert fused["ar_verb_label"].tolist() == [1, 1, 0] and fused["ar_noun_label"].tolist() == [0, 0, 1]
    # o1: .7 [.2, .8] + .3 [1, 0] = [.44, .56]
    assert fused["oscc_logits"] == pytest.approx(np.array([[0.44, 0.56]]))
    assert fused["tasks"].tolist() == ["ar", "oscc"] and "lta_uid" not in fused
    assert str(fused["task"]) == "backpack" and str(fused["version"]) == PREDICTIONS_VERSION
    soft = fuse_backpack(
        [as_stored(tmp_path, "a", run_a()), as_stored(tmp_path, "b", run_b())], [1, 1], "softmax"
    )
    e = np.exp([0.2, 0.8]) / np.exp([0.2, 0.8]).sum() + np.exp([1.0, 0.0]) / np.exp([1.0, 0.0]).sum()
    assert soft["oscc_logits"][0] == pytest.approx(e, rel=1e-6)


def test_fuse_runs_writes_and_scores_the_fused_file(tmp_path):
    write_predictions(tmp_path / "a" / "predictions.npz", run_a())
    write_predictions(tmp_path / "b" / "predictions.npz", run_b())
    result = fuse_runs([tmp_path / "a", tmp_path / "b"], [0.7, 0.3])
    assert result.task == "backpack" and result.path == tmp_path / "a" / "fused_predictions.npz"
    inputs = list(result.inputs.values())
    headline = HEADLINE_METRIC["backpack"]
    assert inputs[0][headline] == pytest.approx(0.5) and inputs[1][headline] == pytest.approx(2 / 3)
    assert "lta_verb_ed" in inputs[0] and "lta_verb_ed" not in result.metrics
    assert result.metrics[headline] == pytest.approx(1.0)
    # o1 is labelled 0: run a says 1, run b says 0, the fused [.44, .56] says 1
    assert result.metrics["oscc_accuracy"] == pytest.approx(0.0)
    assert read_predictions(result.path)["tasks"].tolist() == ["ar", "oscc"]


def test_fusion_cli_on_backpack_files(tmp_path, capsys):
    a = write_predictions(tmp_path / "a.npz", run_a())
    b = write_predictions(tmp_path / "b.npz", run_b())
    out = tmp_path / "fused.npz"
    assert main([str(a), str(b), "--weights", "0.7", "0.3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "ar_verb_top1" in printed and "1.0000" in printed
    assert out.is_file()


def test_disagreements_and_unfusable_runs_are_errors(tmp_path):
    a = as_stored(tmp_path, "a", run_a())
    clash = run_b()
    clash["ar_verb_label"] = np.array([2, 1, 0])  # y is labelled 1 in run a
    with pytest.raises(ValueError, match="disagree on ar_verb_label for 'y'"):
        fuse_backpack([a, as_stored(tmp_path, "clash", clash)], [1, 1])
    wider = run_b()
    wider["ar_noun_logits"] = np.zeros((3, 5))
    with pytest.raises(ValueError, match="number of classes of ar_noun_logits"):
        fuse_backpack([a, as_stored(tmp_path, "wider", wider)], [1, 1])
    lta_only = {k: v for k, v in run_a().items() if k.startswith("lta_")}
    write_predictions(tmp_path / "l1" / "predictions.npz", lta_only)
    write_predictions(tmp_path / "l2" / "predictions.npz", lta_only)
    with pytest.raises(ValueError, match=r"late fusion covers the AR and OSCC sections only.*\['lta'\]"):
        fuse_runs([tmp_path / "l1", tmp_path / "l2"])
    with pytest.raises(ValueError, match="expected backpack predictions of version"):
        fuse_backpack([a, {**a, "version": np.array("egolab-backpack-0")}], [1, 1])
