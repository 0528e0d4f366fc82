"""Skill metrics: accuracy overall and per scenario on hand-computed cases, confusion matrix and its PNG,
re-scoring a predictions.json, and the SkillFormer paper's population scored the paper's way."""

import json
import os
from collections import Counter

import numpy as np
import pytest
import torch
from shared_data import SHARED_DATA, require_shared

from egolab.data.skill_annotations import read_release_jsonl
from egolab.metrics.skill import (
    confusion_matrix,
    main,
    paper_population_metrics,
    plot_confusion_matrix,
    release_scenario,
    scenario_key,
    score_predictions_file,
    skill_metrics,
)

EGOEXO4D = SHARED_DATA / "egoexo4d"
PAPER_POPULATION = EGOEXO4D / "skillformer_release" / "paper_eval_population_test.jsonl"

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
    expected = np.zeros((4, 4), dtype=np.int64)
    for true, pred in [(0, 0), (1, 1), (1, 2), (3, 3), (2, 1)]:
        expected[true, pred] += 1
    assert matrix.dtype == np.int64 and np.array_equal(matrix, expected)
    assert np.array_equal(confusion_matrix(PROBS, [None] * 6), np.zeros((4, 4)))
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


def test_accuracy_equals_torchmetrics_bit_for_bit():
    from torchmetrics.functional.classification import multiclass_accuracy, multiclass_confusion_matrix

    rng = np.random.default_rng(0)
    for n in (1, 3, 7, 49, 466, 1001):
        probs = rng.random((n, 4))
        labels = rng.integers(0, 4, n)
        preds = torch.from_numpy(probs).argmax(dim=1)
        expected = float(multiclass_accuracy(preds, torch.from_numpy(labels), 4, average="micro"))
        assert skill_metrics(probs, labels, ["x"] * n)["accuracy"] == expected
        matrix = multiclass_confusion_matrix(preds, torch.from_numpy(labels), 4).numpy()
        assert np.array_equal(confusion_matrix(probs, labels), matrix)


def test_command_line_loads_no_torch(tmp_path, modules_after):
    path = tmp_path / "predictions.json"
    results = {"t0": {"probs": [0.9, 0.1], "label": 0, "scenario": "Cooking", "take_name": "x_cooking_1"}}
    path.write_text(json.dumps({"version": "egolab-skill-1", "results": results}))
    population = tmp_path / "population.jsonl"
    population.write_text(release_row("x_cooking_1", "Novice") + "\n")
    code = f"from egolab.metrics.skill import main; assert main([{str(path)!r}]) == 0"
    assert not modules_after(code, dict(os.environ)) & {"torch", "torchmetrics", "transformers"}
    argv = [str(path), "--paper-population", str(population)]
    code = f"from egolab.metrics.skill import main; assert main({argv!r}) == 0"
    assert not modules_after(code, dict(os.environ)) & {"torch", "torchmetrics", "transformers"}


def test_release_scenario_buckets_case_sensitively_in_list_order():
    frames = "frame_aligned_videos/aria01_214-1.mp4"
    assert release_scenario(f"takes/uniandes_dance_016_42/{frames}") == "dance"
    assert release_scenario(f"takes/upenn_0713_Dance_2_3/{frames}") == "music"  # capital D: no match
    assert release_scenario(f"takes/uniandes_bouldering_028_7/{frames}") == "bouldering"
    assert release_scenario(f"takes/indiana_music_01_2/{frames}") == "music"
    assert release_scenario(f"takes/upenn_0721_Piano_1_2/{frames}") == "music"
    assert release_scenario(f"takes/iiith_cooking_29_3/{frames}") == "cooking"
    assert release_scenario(f"takes/unc_basketball_03-31-23_02_12/{frames}") == "basketball"
    assert release_scenario(f"takes/fair_soccer_1/{frames}") == "soccer"
    assert release_scenario("takes/x_dance_cooking/a.mp4") == "cooking"  # list order within a part
    assert release_scenario("dance_root/takes/x_basketball/a.mp4") == "dance"  # parts left to right


def release_row(take: str, level: str) -> str:
    paths = [f"takes/{take}/frame_aligned_videos/{cam}.mp4" for cam in ("aria01_214-1", "cam01", "cam02")]
    return json.dumps({"video_paths": paths, "analysis": "", "proficiency_level": level})


def test_paper_population_counts_rows_as_listed(tmp_path, capsys):
    """Takes A (Dance, Novice), B (Dance filed under music by its path, Late) and C (Cooking, Early) predicted
    0, 1 and 1; the population lists A, B, A, C, B. Per take once: A and C right, 2/3. As listed: 3/5."""
    population = tmp_path / "population.jsonl"
    rows = [
        release_row("uniandes_dance_001_1", "Novice"),
        release_row("upenn_0713_Dance_2_3", "Late Expert"),
        release_row("uniandes_dance_001_1", "Novice"),
        release_row("iiith_cooking_1_2", "Early Expert"),
        "",
        release_row("upenn_0713_Dance_2_3", "Late Expert"),
    ]
    population.write_text("\n".join(rows) + "\n")
    takes = [
        ("uid-a", "uniandes_dance_001_1", [0.7, 0.1, 0.1, 0.1], 0, "Dance"),
        ("uid-b", "upenn_0713_Dance_2_3", [0.1, 0.6, 0.2, 0.1], 3, "Dance"),
        ("uid-c", "iiith_cooking_1_2", [0.2, 0.5, 0.2, 0.1], 1, "Cooking"),
    ]
    results = {
        uid: {
            "take_name": name,
            "probs": p,
            "logits": p,
            "pred": p.index(max(p)),
            "label": lab,
            "scenario": sc,
        }
        for uid, name, p, lab, sc in takes
    }
    path = tmp_path / "predictions.json"
    payload = {"version": "egolab-skill-1", "task": "skill", "label_names": list("abcd"), "results": results}
    path.write_text(json.dumps(payload))
    expected = {
        "accuracy": 2 / 3,
        "accuracy_dance": 0.5,
        "accuracy_cooking": 1.0,
        "paper_accuracy": 3 / 5,
        "paper_accuracy_dance": 1.0,  # A twice
        "paper_accuracy_music": 0.0,  # B twice
        "paper_accuracy_cooking": 1.0,
    }
    assert score_predictions_file(path, population) == pytest.approx(expected)
    assert score_predictions_file(path) == pytest.approx(
        {k: v for k, v in expected.items() if "paper" not in k}
    )
    assert main([str(path), "--paper-population", str(population)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert "paper_accuracy: 0.6000" in printed and "accuracy: 0.6667" in printed

    by_name = {name: results[uid] for uid, name, *_ in takes}
    rows_read = read_release_jsonl(population)
    with pytest.raises(ValueError, match=rf"{population}:4: take iiith_cooking_1_2 has no prediction"):
        paper_population_metrics(
            {k: v for k, v in by_name.items() if "cooking" not in k}, rows_read, str(population)
        )
    wrong = {**by_name, "iiith_cooking_1_2": {**by_name["iiith_cooking_1_2"], "label": 2}}
    with pytest.raises(
        ValueError, match=r":4: take iiith_cooking_1_2: label 1 here, 2 in the evaluated split"
    ):
        paper_population_metrics(wrong, rows_read, str(population))
    results["uid-c"]["take_name"] = "uniandes_dance_001_1"
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="take_name 'uniandes_dance_001_1' appears twice"):
        score_predictions_file(path, population)
    del results["uid-a"]["take_name"]
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="a prediction has no take_name"):
        score_predictions_file(path, population)


def test_the_paper_population_scored_the_papers_way():
    """The real 590-row file: rows per release bucket are the denominators of the paper's per-scenario
    table (e.g. basketball 78/113 = 69.03, cooking 12/38 = 31.58), with 50 Dance rows under music.
    Predicting Late Expert for every official val take scores 125/466 per take but 220/590 as listed."""
    rows = read_release_jsonl(require_shared(PAPER_POPULATION))
    buckets = Counter(release_scenario(r.first_path) for r in rows)
    assert buckets == {
        "bouldering": 182,
        "dance": 117,
        "music": 116,
        "basketball": 113,
        "cooking": 38,
        "soccer": 24,
    }
    official = json.loads(require_shared(EGOEXO4D / "proficiency_demonstrator_val.json").read_text())
    scenario = {r["video_paths"]["ego"].split("/")[1]: r["scenario_name"] for r in official["annotations"]}
    music = Counter(scenario[r.take_name] for r in rows if release_scenario(r.first_path) == "music")
    assert music == {"Dance": 50, "Music": 66}
    late = [0.0, 0.0, 0.0, 1.0]
    levels = ["Novice", "Early Expert", "Intermediate Expert", "Late Expert"]
    predictions = {
        r["video_paths"]["ego"].split("/")[1]: {"probs": late, "label": levels.index(r["proficiency_score"])}
        for r in official["annotations"]
    }
    per_take = skill_metrics([late] * 466, [p["label"] for p in predictions.values()], ["x"] * 466)
    assert per_take["accuracy"] == pytest.approx(125 / 466)
    got = paper_population_metrics(predictions, rows, str(PAPER_POPULATION))
    assert got["paper_accuracy"] == pytest.approx(220 / 590)
    assert set(got) == {"paper_accuracy"} | {f"paper_accuracy_{b}" for b in buckets}
