"""Late fusion of vqa predictions: hand-worked weighted sums of option probabilities, the fused letter and
accuracy, the checks, and `fuse_runs` / `python -m egolab.fusion` on vqa files."""

import json

import numpy as np
import pytest

from egolab.fusion.__main__ import main
from egolab.fusion.core import HEADLINE_METRIC, fuse_runs, load_predictions
from egolab.fusion.vqa import fuse_vqa
from egolab.metrics.vqa import PREDICTIONS_VERSION, read_predictions, write_predictions

# id -> (dataset, primary_category, question_type, answer, question_id)
ITEMS = {
    1: ("EgoPet", "Identification", "animal identification", "A", "EgoPet_q1"),
    2: ("ENIGMA", "Localization", "action temporal localization", "B", "ENIGMA_q2"),
    3: ("CholecTrack20", "Counting", "object counting", "C", "CholecTrack20_q3"),
}


def record(item_id, prediction, probs):
    """A predictions-file record of item ``item_id`` with a json reply and option probabilities."""
    dataset, category, qtype, answer, question_id = ITEMS[item_id]
    return {
        "id": item_id,
        "dataset": dataset,
        "primary_category": category,
        "question_type": qtype,
        "reply": json.dumps({"prediction": prediction}),
        "prediction": prediction,
        "option_probs": probs,
        "answer": answer,
        "question_id": question_id,
    }


def run_a():
    """Item 1 right (A), item 2 wrong (A for B): accuracy 1/2."""
    return [record(1, "A", [0.6, 0.2, 0.1, 0.1]), record(2, "A", [0.4, 0.3, 0.2, 0.1])]


def run_b():
    """Item 1 wrong (B for A), item 2 right (B), item 3 (only here) right (C): accuracy 2/3."""
    return [
        record(2, "B", [0.0, 0.8, 0.1, 0.1]),
        record(1, "B", [0.2, 0.5, 0.2, 0.1]),
        record(3, "C", [0.1, 0.1, 0.7, 0.1]),
    ]


def stored(tmp_path, name, records):
    """The json content of a written predictions file."""
    return load_predictions(write_predictions(tmp_path / name / "predictions.json", records))[1]


def by_id(records):
    return {r["id"]: r for r in records}


def test_weighted_sum_by_hand(tmp_path):
    """Equal weights: both items of run a and b come out right."""
    fused = fuse_vqa([stored(tmp_path, "a", run_a()), stored(tmp_path, "b", run_b())], [1.0, 1.0])
    assert [r["id"] for r in fused] == [1, 2, 3]  # union, in order of first appearance
    got = by_id(fused)
    # 1: [.6, .2, .1, .1] + [.2, .5, .2, .1] = [.8, .7, .3, .2] / 2 -> A (right)
    assert got[1]["option_probs"] == pytest.approx([0.4, 0.35, 0.15, 0.1])
    assert got[1]["prediction"] == "A"
    # 2: [.4, .3, .2, .1] + [0, .8, .1, .1] = [.4, 1.1, .3, .2] / 2 -> B (right)
    assert got[2]["option_probs"] == pytest.approx([0.2, 0.55, 0.15, 0.1])
    assert got[2]["prediction"] == "B"
    # 3: run b only, renormalised by its own total: b's probabilities
    assert got[3]["option_probs"] == pytest.approx([0.1, 0.1, 0.7, 0.1])
    assert got[3]["prediction"] == "C"
    for item_id, (dataset, category, qtype, answer, question_id) in ITEMS.items():
        assert got[item_id]["reply"] is None
        assert got[item_id]["dataset"] == dataset and got[item_id]["domain"] is not None
        assert got[item_id]["primary_category"] == category and got[item_id]["question_type"] == qtype
        assert got[item_id]["answer"] == answer and got[item_id]["question_id"] == question_id
    assert "scores" not in got[1]
    assert got[1]["domain"] == "Animal" and got[2]["domain"] == "Industry" and got[3]["domain"] == "Surgery"


def test_weights_change_the_winner(tmp_path):
    """Weights 1:3 let run b win item 1 (wrong); 3:1 keep run a's A."""
    contents = [stored(tmp_path, "a", run_a()), stored(tmp_path, "b", run_b())]
    got = by_id(fuse_vqa(contents, [1.0, 3.0]))
    # 1: [.6, .2, .1, .1] + 3 [.2, .5, .2, .1] = [1.2, 1.7, .7, .4] / 4 -> B (wrong)
    assert got[1]["option_probs"] == pytest.approx([0.3, 0.425, 0.175, 0.1])
    assert got[1]["prediction"] == "B"
    # 2: [.4, .3, .2, .1] + 3 [0, .8, .1, .1] = [.4, 2.7, .5, .4] / 4 -> B
    assert got[2]["option_probs"] == pytest.approx([0.1, 0.675, 0.125, 0.1])
    # 3: 3 [.1, .1, .7, .1] / 3
    assert got[3]["option_probs"] == pytest.approx([0.1, 0.1, 0.7, 0.1])
    got = by_id(fuse_vqa(contents, [3.0, 1.0]))
    # 1: 3 [.6, .2, .1, .1] + [.2, .5, .2, .1] = [2.0, 1.1, .5, .4] / 4 -> A
    assert got[1]["option_probs"] == pytest.approx([0.5, 0.275, 0.125, 0.1])
    assert got[1]["prediction"] == "A"
    # 2: 3 [.4, .3, .2, .1] + [0, .8, .1, .1] = [1.2, 1.7, .7, .4] / 4 -> B
    assert got[2]["option_probs"] == pytest.approx([0.3, 0.425, 0.175, 0.1])
    assert got[2]["prediction"] == "B"


def test_ties_and_string_ids(tmp_path):
    """A tie goes to the first letter; an id that is not an integer stays a string."""
    a = [{**record(1, "A", [1.0, 0.0, 0.0, 0.0]), "id": "q7"}]
    b = [{**record(1, "B", [0.0, 1.0, 0.0, 0.0]), "id": "q7"}]
    (fused,) = fuse_vqa([stored(tmp_path, "a", a), stored(tmp_path, "b", b)], [1.0, 1.0])
    assert fused["id"] == "q7"
    assert fused["option_probs"] == pytest.approx([0.5, 0.5, 0.0, 0.0])
    assert fused["prediction"] == "A"


def test_normalisations_by_hand(tmp_path):
    """Raw scores: none sums them (A), l1 / l2 / softmax normalise each run first (B)."""
    a = stored(tmp_path, "a", [record(1, "A", [3.0, 1.0, 0.0, 0.0])])
    b = stored(tmp_path, "b", [record(1, "B", [0.0, 1.0, 0.0, 0.0])])
    # none: [3, 2, 0, 0] / 5
    (plain,) = fuse_vqa([a, b], [1.0, 1.0])
    assert plain["option_probs"] == pytest.approx([0.6, 0.4, 0.0, 0.0]) and plain["prediction"] == "A"
    (none,) = fuse_vqa([a, b], [1.0, 1.0], "none")
    assert none["option_probs"] == pytest.approx([0.6, 0.4, 0.0, 0.0])
    # l1: [.75, .25, 0, 0] + [0, 1, 0, 0] = [.75, 1.25, 0, 0] / 2
    (l1,) = fuse_vqa([a, b], [1.0, 1.0], "l1")
    assert l1["option_probs"] == pytest.approx([0.375, 0.625, 0.0, 0.0]) and l1["prediction"] == "B"
    # l2: [3, 1, 0, 0] / sqrt(10) + [0, 1, 0, 0]
    s = np.array([3.0, 1.0, 0.0, 0.0]) / np.sqrt(10) + np.array([0.0, 1.0, 0.0, 0.0])
    (l2,) = fuse_vqa([a, b], [1.0, 1.0], "l2")
    assert l2["option_probs"] == pytest.approx(s / s.sum()) and l2["prediction"] == "B"
    # softmax: each row sums to 1, so the weighted sum 1:1 is divided by 2
    ea, eb = np.exp([3.0, 1.0, 0.0, 0.0]), np.exp([0.0, 1.0, 0.0, 0.0])
    (soft,) = fuse_vqa([a, b], [1.0, 1.0], "softmax")
    expected = (ea / ea.sum() + eb / eb.sum()) / 2
    assert soft["option_probs"] == pytest.approx(expected, rel=1e-9)
    # A: (e^3 / (e^3 + e + 2) + 1 / (e + 3)) / 2 ~ .50; B: (e / (e^3 + e + 2) + e / (e + 3)) / 2 ~ .42
    assert soft["prediction"] == "A"
    assert soft["option_probs"][0] == pytest.approx(
        (np.e**3 / (np.e**3 + np.e + 2) + 1 / (np.e + 3)) / 2, rel=1e-9
    )


def test_fuse_runs_writes_and_scores_the_fused_file(tmp_path):
    """Each run alone scores 1/2 and 2/3; fused with equal weights every item is right."""
    write_predictions(tmp_path / "a" / "predictions.json", run_a())
    write_predictions(tmp_path / "b" / "predictions.json", run_b())
    result = fuse_runs([tmp_path / "a", tmp_path / "b"])
    assert HEADLINE_METRIC["vqa"] == "accuracy"
    assert result.task == "vqa" and result.path == tmp_path / "a" / "fused_predictions.json"
    inputs = result.inputs
    assert list(inputs) == [
        str(tmp_path / "a" / "predictions.json"),
        str(tmp_path / "b" / "predictions.json"),
    ]
    a, b = inputs.values()
    assert a["accuracy"] == pytest.approx(0.5) and b["accuracy"] == pytest.approx(2 / 3)
    assert a["accuracy_animal"] == pytest.approx(1.0) and a["accuracy_industry"] == pytest.approx(0.0)
    assert "accuracy_surgery" not in a and b["accuracy_surgery"] == pytest.approx(1.0)
    # run a: argmax A, A -> 1/2; run b: B, B, C -> 2/3 (as the parsed letters)
    assert a["letter_accuracy"] == pytest.approx(0.5) and b["letter_accuracy"] == pytest.approx(2 / 3)
    assert result.metrics == pytest.approx(
        {
            "accuracy": 1.0,
            "accuracy_surgery": 1.0,
            "accuracy_industry": 1.0,
            "accuracy_animal": 1.0,
            "accuracy_category_counting": 1.0,
            "accuracy_category_identification": 1.0,
            "accuracy_category_localization": 1.0,
            "accuracy_type_action_temporal_localization": 1.0,
            "accuracy_type_animal_identification": 1.0,
            "accuracy_type_object_counting": 1.0,
            "invalid_rate": 0.0,
            "letter_accuracy": 1.0,
        }
    )
    fused = by_id(read_predictions(result.path))
    assert list(fused) == [1, 2, 3]
    assert [fused[i]["prediction"] for i in (1, 2, 3)] == ["A", "B", "C"]
    assert fused[2]["option_probs"] == pytest.approx([0.2, 0.55, 0.15, 0.1])
    assert fused[1]["reply"] is None and fused[3]["question_id"] == "CholecTrack20_q3"
    data = json.loads(result.path.read_text())
    assert data["version"] == PREDICTIONS_VERSION and data["task"] == "vqa"


def test_fuse_runs_with_weights_and_out(tmp_path):
    """Weights 1:3: item 1 flips to B (wrong), accuracy 2/3; the file goes to ``out``."""
    a = write_predictions(tmp_path / "a.json", run_a())
    b = write_predictions(tmp_path / "b.json", run_b())
    out = tmp_path / "fused" / "vqa.json"
    result = fuse_runs([a, b], [1.0, 3.0], out=out)
    assert result.path == out and out.is_file()
    assert result.metrics["accuracy"] == pytest.approx(2 / 3)
    assert result.metrics["accuracy_animal"] == pytest.approx(0.0)
    assert result.metrics["accuracy_industry"] == pytest.approx(1.0)
    assert result.metrics["letter_accuracy"] == pytest.approx(2 / 3)
    assert [r["prediction"] for r in read_predictions(out)] == ["B", "B", "C"]
    # l1 on probabilities that already sum to 1 changes nothing
    assert fuse_runs([a, b], [1.0, 3.0], "l1", out=tmp_path / "l1.json").metrics["accuracy"] == pytest.approx(
        2 / 3
    )


def test_fusion_cli_on_vqa_files(tmp_path, capsys):
    """`python -m egolab.fusion` prints the fused accuracy and writes ``--out``."""
    a = write_predictions(tmp_path / "a.json", run_a())
    b = write_predictions(tmp_path / "b.json", run_b())
    out = tmp_path / "fused.json"
    assert main([str(a), str(b), "--weights", "1", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and "0.6667" in printed and "0.5000" in printed
    assert [r["prediction"] for r in read_predictions(out)] == ["B", "B", "C"]


def test_disagreements_and_unfusable_runs_are_errors(tmp_path):
    """Different answers or datasets, missing option_probs and another version are refused."""
    a = stored(tmp_path, "a", run_a())
    clash = run_b()
    clash[1]["answer"] = "B"  # item 1 is A in run a
    with pytest.raises(ValueError, match="runs disagree on the answer of item '1': A vs B"):
        fuse_vqa([a, stored(tmp_path, "clash", clash)], [1.0, 1.0])
    other = run_b()
    other[0]["dataset"] = "EgoSurgery"  # item 2 is ENIGMA in run a
    with pytest.raises(ValueError, match="runs disagree on the dataset of item '2': ENIGMA vs EgoSurgery"):
        fuse_vqa([a, stored(tmp_path, "other", other)], [1.0, 1.0])
    bare = run_b()
    bare[2]["option_probs"] = None
    with pytest.raises(ValueError, match="item '3' has no option_probs"):
        fuse_vqa([a, stored(tmp_path, "bare", bare)], [1.0, 1.0])
    write_predictions(tmp_path / "c" / "predictions.json", [{**r, "option_probs": None} for r in run_b()])
    write_predictions(tmp_path / "d" / "predictions.json", run_a())
    with pytest.raises(ValueError, match="has no option_probs"):
        fuse_runs([tmp_path / "d", tmp_path / "c"])
    with pytest.raises(
        ValueError, match="expected vqa predictions of version 'egolab-vqa-1', got 'egolab-vqa-0'"
    ):
        fuse_vqa([a, {**a, "version": "egolab-vqa-0"}], [1.0, 1.0])
    with pytest.raises(ValueError, match="got None"):
        fuse_vqa([{k: v for k, v in a.items() if k != "version"}, a], [1.0, 1.0])
    with pytest.raises(ValueError, match="got 1 weights for 2 runs"):
        fuse_runs([tmp_path / "d", tmp_path / "a"], [1.0])
