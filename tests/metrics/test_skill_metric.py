"""Skill metrics: accuracy overall and per scenario on hand-computed cases, confusion matrix and its PNG,
and re-scoring a predictions.json."""

import json

import pytest
import torch

from egolab.metrics.skill import (
    confusion_matrix,
    plot_confusion_matrix,
    scenario_key,
    score_predictions_file,
    skill_metrics,
)

# 6 takes: argmax 0, 1, 2, 3, 3, 1; labels 0, 1, 1, 3, None (hidden), 2
PROBS = [
    [0.7, 0.1, 0.1, 0.1],
    [0.1, 0.6, 0.2, 0.1],
    [0.1, 0.2, 0.6, 0.1],
    [0.1, 0.1, 0.2, 0.6],
    [0.0, 0.0, 0.0, 1.0],
    [0.2, 0.5, 0.2, 0.1],
]
LABELS = [0, 1, 1, 3, None, 2]
SCENARIOS = ["Basketball", "Basketball", "Rock Climbing", "Rock Climbing", "Rock Climbing", "Cooking"]


def test_accuracy_overall_and_per_scenario():
    got = skill_metrics(PROBS, LABELS, SCENARIOS)
    # labelled: 5 takes, correct: takes 0, 1, 3 -> 3/5; basketball 2/2; cooking 0/1;
    # rock climbing 1/2 (take 4 has no label)
    assert got == pytest.approx(
        {"accuracy": 0.6, "accuracy_basketball": 1.0, "accuracy_rock_climbing": 0.5, "accuracy_cooking": 0.0}
    )
    assert skill_metrics(PROBS, [None] * 6, SCENARIOS) == {}
    assert skill_metrics(torch.tensor(PROBS), torch.tensor([0, 1, 1, 3, -1, 2]), SCENARIOS) == pytest.approx(
        got
    )


def test_ties_go_to_the_lowest_level_and_keys_are_normalised():
    assert skill_metrics([[0.4, 0.4, 0.1, 0.1]], [0], ["Music"]) == {"accuracy": 1.0, "accuracy_music": 1.0}
    assert scenario_key("Rock Climbing") == "rock_climbing"
    assert scenario_key(" Bike Repair/Covid-19 ") == "bike_repair_covid_19"


def test_confusion_matrix_and_png(tmp_path):
    matrix = confusion_matrix(PROBS, LABELS)
    expected = torch.zeros(4, 4, dtype=torch.int64)
    for true, pred in [(0, 0), (1, 1), (1, 2), (3, 3), (2, 1)]:
        expected[true, pred] += 1
    assert torch.equal(matrix, expected)
    path = plot_confusion_matrix(
        matrix, ["Novice", "Early Expert", "Intermediate Expert", "Late Expert"], tmp_path / "cm.png"
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_score_predictions_file(tmp_path):
    results = {
        f"take{i}": {
            "probs": p,
            "logits": p,
            "pred": max(range(4), key=p.__getitem__),
            "label": lab,
            "scenario": s,
        }
        for i, (p, lab, s) in enumerate(zip(PROBS, LABELS, SCENARIOS))
    }
    path = tmp_path / "predictions.json"
    payload = {
        "version": "egolab-skill-1",
        "task": "skill",
        "label_names": ["a", "b", "c", "d"],
        "results": results,
    }
    path.write_text(json.dumps(payload))
    assert score_predictions_file(path) == pytest.approx(skill_metrics(PROBS, LABELS, SCENARIOS))
    path.write_text(json.dumps({**payload, "version": "other"}))
    with pytest.raises(ValueError, match="egolab-skill-1"):
        score_predictions_file(path)
