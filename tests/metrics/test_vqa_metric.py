"""EgoCross VQA metrics: the official letter extraction and match, hand-worked CloseQA accuracies, the
real testbed and submission template, the predictions and submission files and the CLI."""

import json
import math
import subprocess
import sys

import pytest
from shared_data import SHARED_DATA, require_shared

from egolab.metrics.vqa import (
    DOMAINS,
    PREDICTIONS_VERSION,
    closeqa_metrics,
    domain_of,
    first_letter,
    is_correct,
    join_answers,
    main,
    make_record,
    openqa_correct,
    parse_answer,
    parse_reply,
    read_answers,
    read_predictions,
    read_submission,
    read_testbed,
    score_predictions_file,
    write_predictions,
    write_submission,
)

EGOCROSS = SHARED_DATA / "egocross"


def reply(letter):
    return json.dumps({"prediction": letter, "reason": "because"})


def test_parse_answer_follows_the_official_extraction():
    assert parse_answer('{"prediction": "B", "reason": "the scalpel"}') == "B"
    # not json as a whole: the first {...} block
    assert parse_answer('Sure! {"prediction": "C", "reason": "x"} hope it helps') == "C"
    assert parse_answer('{"prediction": "A"} then {"prediction": "D"}') == "A"  # first block wins
    assert parse_answer('```json\n{\n  "prediction": "d"\n}\n```') == "d"  # kept as is
    # the non-greedy block stops at the first "}", here inside the reason: no prediction
    assert parse_answer('Answer: {"prediction": "B", "reason": "a {tool} is held"}') is None
    for garbage in ("B", "The answer is B.", "", "{not json}", None):
        assert parse_answer(garbage) is None
    # valid json that is not an object with a string prediction
    assert parse_answer('"B"') is None
    assert parse_answer('{"answer": "B"}') is None
    assert parse_answer('{"prediction": 2}') is None
    assert parse_answer('{"prediction": null}') is None
    assert parse_answer('[{"prediction": "C"}]') == "C"  # a list: falls back to its first block
    assert parse_answer('{"prediction": "B: 3"}') == "B: 3"


def test_letter_match_is_exact_and_case_insensitive():
    assert is_correct("B", "B") and is_correct("b", "B") and is_correct("B", "b")
    assert not is_correct(parse_answer('{"prediction": "B: 3"}'), "B")  # text after the letter: wrong
    assert not is_correct(" B", "B")  # not stripped, as the official comparison
    assert not is_correct(None, "A") and not is_correct("A", "B")


def test_openqa_substring_rule():
    assert openqa_correct("The surgeon uses a Grasper to hold tissue.", "grasper")
    assert not openqa_correct("The surgeon uses a hook.", "grasper")
    assert openqa_correct("I count 3 instruments", 3)
    assert not openqa_correct("I count three instruments", 3)  # digits only
    assert openqa_correct("10 times", 1)  # the official rule's containment, kept
    assert not openqa_correct(None, "grasper") and not openqa_correct("anything", "")


def test_domains():
    assert domain_of("CholecTrack20") == domain_of("EgoSurgery") == "Surgery"
    assert domain_of("ENIGMA") == "Industry" and domain_of("EgoPet") == "Animal"
    assert domain_of("ExtrameSportFPV") == domain_of("ExtremeSportFPV") == "XSports"
    assert set(DOMAINS.values()) == {"Surgery", "Industry", "XSports", "Animal"}
    with pytest.raises(ValueError, match="unknown EgoCross dataset 'Ego4D'"):
        domain_of("Ego4D")


# (dataset, primary_category, question_type, prediction, answer, option_probs)
HAND = [
    ("CholecTrack20", "Counting", "object counting", "B", "B", [0.1, 0.6, 0.2, 0.1]),  # right; B right
    (
        "EgoSurgery",
        "Identification",
        "interaction identification",
        "b",
        "B",
        [0.4, 0.4, 0.1, 0.1],
    ),  # right; tie->A
    ("ENIGMA", "Identification", "interaction identification", "B: 3", "B", [0.25] * 4),  # wrong; A wrong
    (
        "ENIGMA",
        "Localization",
        "action temporal localization",
        None,
        "A",
        [0.3, 0.3, 0.2, 0.2],
    ),  # wrong; A right
    (
        "ExtrameSportFPV",
        "Prediction",
        "next direction prediction",
        "C",
        "D",
        [0, 0, 0, 1.0],
    ),  # wrong; D right
    ("EgoPet", "Identification", "animal identification", "A", "A", [0.7, 0.1, 0.1, 0.1]),  # right; A right
]


def hand_records(probs=True):
    return [
        {
            "id": i + 1,
            "dataset": dataset,
            "primary_category": category,
            "question_type": qtype,
            "prediction": prediction,
            "answer": answer,
            "option_probs": option_probs if probs else None,
        }
        for i, (dataset, category, qtype, prediction, answer, option_probs) in enumerate(HAND)
    ]


HAND_METRICS = {
    "accuracy": 3 / 6,  # records 1, 2, 6
    "accuracy_surgery": 2 / 2,
    "accuracy_industry": 0 / 2,
    "accuracy_xsports": 0 / 1,
    "accuracy_animal": 1 / 1,
    "accuracy_category_counting": 1 / 1,
    "accuracy_category_identification": 2 / 3,  # 2 and 6 of 2, 3, 6
    "accuracy_category_localization": 0 / 1,
    "accuracy_category_prediction": 0 / 1,
    "accuracy_type_action_temporal_localization": 0 / 1,
    "accuracy_type_animal_identification": 1 / 1,
    "accuracy_type_interaction_identification": 1 / 2,
    "accuracy_type_next_direction_prediction": 0 / 1,
    "accuracy_type_object_counting": 1 / 1,
    "invalid_rate": 2 / 6,  # "B: 3" and None
    "letter_accuracy": 4 / 6,  # argmax B, A (tie), A (tie), A (tie), D, A: records 1, 4, 5, 6
}


def test_closeqa_metrics_by_hand():
    assert closeqa_metrics(hand_records()) == pytest.approx(HAND_METRICS)
    without_probs = closeqa_metrics(hand_records(probs=False))
    assert "letter_accuracy" not in without_probs
    assert without_probs == pytest.approx({k: v for k, v in HAND_METRICS.items() if k != "letter_accuracy"})
    # no category or type on some record: those groups are left out
    records = hand_records()
    records[0]["primary_category"] = None
    assert not any(k.startswith("accuracy_category_") for k in closeqa_metrics(records))
    assert "accuracy_type_object_counting" in closeqa_metrics(records)
    # a domain without records is left out
    assert "accuracy_animal" not in closeqa_metrics(hand_records()[:5])
    assert math.isnan(closeqa_metrics([])["accuracy"])


def test_closeqa_metrics_errors():
    records = hand_records()
    records[2]["answer"] = None
    with pytest.raises(ValueError, match=r"1 records have no answer, e.g. ids \[3\]"):
        closeqa_metrics(records)
    records = hand_records()
    records[1]["option_probs"] = None
    with pytest.raises(ValueError, match="every record or for none"):
        closeqa_metrics(records)
    records = hand_records()
    records[0]["option_probs"] = [0.5, 0.5]
    with pytest.raises(ValueError, match="option_probs must hold 4 values"):
        closeqa_metrics(records)
    records = hand_records()
    records[0]["dataset"] = "Ego4D"
    with pytest.raises(ValueError, match="unknown EgoCross dataset"):
        closeqa_metrics(records)


def hand_items():
    """Testbed items of the hand-made set."""
    return [
        {
            "id": i + 1,
            "dataset": dataset,
            "primary_category": category,
            "question_type": qtype,
            "question_text": f"question {i + 1}?",
            "options": ["A: one", "B: two", "C: three", "D: four"],
            "original_video_fps": 30.0,
            "video_path": [f"/egocross_testbed/{dataset}/{i + 1}/frame_00000.jpg"],
        }
        for i, (dataset, category, qtype, *_rest) in enumerate(HAND)
    ]


def write_answers(path, items):
    """An answers file in the official schema: the testbed items plus the answer fields."""
    answers = [
        {
            **item,
            "correct_option_letter": answer,
            "answer_text": item["options"]["ABCD".index(answer)][3:],
            "detailed_answer": "a longer answer",
            "question_id": f"{item['dataset']}_q{item['id']}_kind",
        }
        for item, (*_rest, answer, _probs) in zip(items, HAND, strict=True)
    ]
    path.write_text(json.dumps(answers))
    return path


def hand_run(probs=True):
    """Predictions-file records of the hand-made set, without answers, as a run on the testbed makes them."""
    return [
        make_record(
            item, reply(prediction) if prediction else "I cannot tell.", option_probs if probs else None
        )
        for item, (*_rest, prediction, _answer, option_probs) in zip(hand_items(), HAND, strict=True)
    ]


def test_answers_join_and_errors(tmp_path):
    answers = read_answers(write_answers(tmp_path / "answers.json", hand_items()))
    assert answers[3] == {
        "correct_option_letter": "B",
        "answer_text": "two",
        "question_id": "ENIGMA_q3_kind",
        "dataset": "ENIGMA",
        "primary_category": "Identification",
        "question_type": "interaction identification",
    }
    joined = join_answers(hand_items(), answers)
    assert [r["answer"] for r in joined] == [row[4] for row in HAND]
    assert joined[0]["question_id"] == "CholecTrack20_q1_kind" and joined[0]["options"][0] == "A: one"
    # ids join across int and str
    assert join_answers([{"id": "2"}], answers)[0]["answer"] == "B"
    with pytest.raises(ValueError, match=r"2 items have no answer, e.g. ids \[7, 8\]"):
        join_answers([*hand_items(), {"id": 7}, {"id": 8}], answers)
    bad = json.loads((tmp_path / "answers.json").read_text())
    bad[4]["correct_option_letter"] = "E"
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"bad\.json: item 5: correct_option_letter 'E' is not one of A-D"):
        read_answers(tmp_path / "bad.json")
    del bad[4]["question_id"]
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"item 5: missing \['question_id'\]"):
        read_answers(tmp_path / "bad.json")


def test_predictions_round_trip_and_errors(tmp_path):
    answers = read_answers(write_answers(tmp_path / "answers.json", hand_items()))
    records = join_answers(hand_run(), answers)
    assert records[2]["prediction"] == "B: 3" and records[3]["prediction"] is None
    path = write_predictions(tmp_path / "run" / "predictions.json", records)
    data = json.loads(path.read_text())
    assert data["version"] == PREDICTIONS_VERSION and data["task"] == "vqa"
    assert data["results"]["5"]["domain"] == "XSports" and data["results"]["5"]["answer"] == "D"
    assert set(data["results"]["1"]) == {
        "dataset",
        "domain",
        "primary_category",
        "question_type",
        "reply",
        "prediction",
        "option_probs",
        "answer",
        "question_id",
    }
    stored = read_predictions(path)
    assert [r["id"] for r in stored] == [1, 2, 3, 4, 5, 6]
    assert stored[0]["reply"] == reply("B") and stored[0]["question_id"] == "CholecTrack20_q1_kind"
    assert score_predictions_file(path) == pytest.approx(closeqa_metrics(records))
    assert score_predictions_file(path) == pytest.approx(HAND_METRICS)
    # a run without answers: scored with the answers file, an error without it
    bare = write_predictions(tmp_path / "bare.json", hand_run())
    assert read_predictions(bare)[0]["answer"] is None
    assert score_predictions_file(bare, tmp_path / "answers.json") == pytest.approx(HAND_METRICS)
    with pytest.raises(ValueError, match=r"bare\.json: some items have no stored answer"):
        score_predictions_file(bare)
    old = tmp_path / "old.json"
    old.write_text(json.dumps({**data, "version": "egolab-vqa-0"}))
    with pytest.raises(ValueError, match=r"old\.json: expected version 'egolab-vqa-1'"):
        read_predictions(old)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**data, "task": "skill"}))
    with pytest.raises(ValueError, match=r"other\.json: not a vqa predictions file \(task='skill'\)"):
        read_predictions(other)
    broken = json.loads(json.dumps(data))
    broken["results"]["4"]["domain"] = "Surgery"
    other.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=r"other\.json: result '4': domain 'Surgery' but dataset 'ENIGMA'"):
        read_predictions(other)
    with pytest.raises(ValueError, match="duplicate id 1"):
        write_predictions(tmp_path / "x.json", [records[0], records[0]])
    with pytest.raises(FileNotFoundError, match="not found"):
        read_predictions(tmp_path / "missing.json")


def hand_template():
    return [
        {"id": i, "question_id": f"template_q{i}", "dataset": HAND[i - 1][0], "answer": ""}
        for i in (6, 5, 4, 3, 2, 1)
    ]


def test_submission_writer(tmp_path):
    records = hand_run()
    path = write_submission(tmp_path / "sub.json", records, hand_template())
    rows = read_submission(path)
    # template order and question ids; "b" upper-cased, "B: 3" and no prediction as ""
    assert [r["id"] for r in rows] == [6, 5, 4, 3, 2, 1]
    assert [r["question_id"] for r in rows] == [f"template_q{i}" for i in (6, 5, 4, 3, 2, 1)]
    assert [r["answer"] for r in rows] == ["A", "C", "", "", "B", "B"]
    with pytest.raises(ValueError, match=r"1 template ids have no record, e.g. ids \[1\]"):
        write_submission(tmp_path / "x.json", records[1:], hand_template())
    with pytest.raises(ValueError, match=r"1 records are not in the template, e.g. ids \[6\]"):
        write_submission(tmp_path / "x.json", records, hand_template()[1:])
    # without a template the records must carry question ids
    with pytest.raises(ValueError, match="no question_id"):
        write_submission(tmp_path / "x.json", records)
    joined = join_answers(records, read_answers(write_answers(tmp_path / "answers.json", hand_items())))
    rows = read_submission(write_submission(tmp_path / "own.json", joined))
    assert [r["id"] for r in rows] == [1, 2, 3, 4, 5, 6] and rows[4][
        "question_id"
    ] == "ExtrameSportFPV_q5_kind"


def test_cli_on_predictions_and_submission(tmp_path, capsys):
    answers = write_answers(tmp_path / "answers.json", hand_items())
    testbed = tmp_path / "testbed.json"
    testbed.write_text(json.dumps(hand_items()))
    bare = write_predictions(tmp_path / "predictions.json", hand_run())
    assert main([str(bare), "--answers", str(answers), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(HAND_METRICS)
    assert main([str(bare), "--answers", str(answers)]) == 0
    printed = capsys.readouterr().out
    assert "(predictions, 6 items)" in printed and "accuracy_xsports" in printed and "0.5000" in printed
    with pytest.raises(SystemExit):  # no stored answers and no answers file
        main([str(bare)])

    template = tmp_path / "template.json"
    template.write_text(json.dumps(hand_template()))
    submission = tmp_path / "submission.json"
    assert main([str(bare), "--write-submission", str(submission), "--template", str(template)]) == 0
    assert "wrote 6 rows" in capsys.readouterr().out
    assert [r["answer"] for r in read_submission(submission)] == ["A", "C", "", "", "B", "B"]
    # a submission: overall and per domain from the answers alone, categories and types with the testbed
    assert main([str(submission), "--answers", str(answers), "--json"]) == 0
    domain_keys = {"accuracy", "accuracy_surgery", "accuracy_industry", "accuracy_xsports", "accuracy_animal"}
    expected = {k: v for k, v in HAND_METRICS.items() if k in domain_keys or k == "invalid_rate"}
    assert json.loads(capsys.readouterr().out) == pytest.approx(expected)
    assert main([str(submission), "--answers", str(answers), "--testbed", str(testbed), "--json"]) == 0
    without_probs = {k: v for k, v in HAND_METRICS.items() if k != "letter_accuracy"}
    assert json.loads(capsys.readouterr().out) == pytest.approx(without_probs)
    for argv in (
        [str(submission)],  # a submission needs answers
        [str(submission), "--write-submission", str(tmp_path / "x.json")],
        [str(bare), "--template", str(template)],
        [str(tmp_path / "missing.json"), "--answers", str(answers)],
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
    assert "needs --answers" in capsys.readouterr().err


def real_file(name):
    return require_shared(EGOCROSS / name)


def test_real_testbed_counts():
    items = read_testbed(real_file("egocross_testbed_imgs.json"))
    assert len(items) == 957
    domains, categories = {}, {}
    for item in items:
        domains[domain_of(item["dataset"])] = domains.get(domain_of(item["dataset"]), 0) + 1
        categories[item["primary_category"]] = categories.get(item["primary_category"], 0) + 1
    assert domains == {"Surgery": 283, "Industry": 245, "XSports": 246, "Animal": 183}
    assert categories == {"Identification": 398, "Localization": 284, "Prediction": 161, "Counting": 114}
    template = read_submission(real_file("submission_template.json"))
    assert {r["id"] for r in template} <= {item["id"] for item in items}


def test_real_template_submission(tmp_path):
    items = read_testbed(real_file("egocross_testbed_imgs.json"))
    template = read_submission(real_file("submission_template.json"))
    records = [make_record(item, reply("ABCD"[i % 4])) for i, item in enumerate(reversed(items))]
    rows = read_submission(
        write_submission(tmp_path / "sub.json", records, real_file("submission_template.json"))
    )
    assert len(rows) == 957
    assert [r["id"] for r in rows] == [r["id"] for r in template]
    assert [r["question_id"] for r in rows] == [r["question_id"] for r in template]
    letters = {r["id"]: r["prediction"] for r in records}
    assert [r["answer"] for r in rows] == [letters[r["id"]] for r in template]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda item: item["options"].pop(), r"item 1: expected 4 options"),
        (lambda item: item["options"].reverse(), r"item 1: option 'D: 2' does not start with 'A:'"),
        (lambda item: item["video_path"].clear(), r"item 1: video_path must be a non-empty list"),
        (lambda item: item.pop("question_type"), r"item 1: missing \['question_type'\]"),
    ],
)
def test_malformed_real_item(tmp_path, change, message):
    items = json.loads(real_file("egocross_testbed_imgs.json").read_text())
    change(items[0])
    path = tmp_path / "testbed.json"
    path.write_text(json.dumps(items))
    with pytest.raises(ValueError, match=rf"testbed\.json: {message}"):
        read_testbed(path)


def test_import_loads_neither_torch_nor_transformers():
    code = (
        "import egolab.metrics.vqa, sys; "
        "loaded = [m for m in ('torch', 'transformers') if m in sys.modules]; assert not loaded, loaded"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_first_letter_is_the_baseline_rule():
    """The first character of the stripped reply when it is A-D in any case, upper-cased; else None."""
    assert first_letter("B") == "B"
    assert first_letter(" c) three") == "C"
    assert first_letter("B: 3") == "B"
    assert first_letter("b") == "B" and first_letter("\n\t d") == "D" and first_letter("A.") == "A"
    assert first_letter('{"prediction": "B"}') is None  # a json reply starts with "{"
    for garbage in ("The answer is B", "", "   ", None, "E", "e) five", "1", 3):
        assert first_letter(garbage) is None


def test_parse_reply_rules():
    """ "official" is the json extraction, "first_letter" the baseline's rule; other rules are errors."""
    replies = ['{"prediction": "b"}', 'Sure: {"prediction": "C"}', "B: 3", "d", "The answer is B", "", None]
    assert [parse_reply(r, "official") for r in replies] == ["b", "C", None, None, None, None, None]
    assert [parse_reply(r) for r in replies] == [parse_answer(r) for r in replies]
    assert [parse_reply(r, "first_letter") for r in replies] == [None, None, "B", "D", None, None, None]
    with pytest.raises(
        ValueError, match=r"unknown parse rule 'regex'; expected one of \['first_letter', 'official'\]"
    ):
        parse_reply("B", "regex")


def test_make_record_with_the_first_letter_rule():
    """``parse="first_letter"`` stores the reply's first letter; the default keeps the json extraction."""
    item = {**hand_items()[2], "answer": "B", "question_id": "ENIGMA_q3_kind"}
    record = make_record(item, " b) two", [0.1, 0.6, 0.2, 0.1], parse="first_letter")
    assert record == {
        "id": 3,
        "dataset": "ENIGMA",
        "domain": "Industry",
        "primary_category": "Identification",
        "question_type": "interaction identification",
        "reply": " b) two",
        "prediction": "B",
        "option_probs": [0.1, 0.6, 0.2, 0.1],
        "answer": "B",
        "question_id": "ENIGMA_q3_kind",
    }
    assert is_correct(record["prediction"], record["answer"])
    assert make_record(item, " b) two")["prediction"] is None  # official: not json
    assert make_record(item, reply("B: 3"), parse="first_letter")["prediction"] is None  # starts with "{"
    assert make_record(item, reply("B: 3"))["prediction"] == "B: 3"
    assert make_record(item, "The answer is B", parse="first_letter")["prediction"] is None
    with pytest.raises(ValueError, match="unknown parse rule 'json'"):
        make_record(item, "B", parse="json")
    # a first-letter run scores by its letters: "B" right, "C" for B wrong, none wrong -> 1/3
    items = hand_items()[:3]
    records = [
        make_record(item, text, answer="B", parse="first_letter")
        for item, text in zip(items, ["B) two", "c", "I think B"], strict=True)
    ]
    assert [r["prediction"] for r in records] == ["B", "C", None]
    metrics = closeqa_metrics(records)
    assert metrics["accuracy"] == pytest.approx(1 / 3)
    assert metrics["invalid_rate"] == pytest.approx(1 / 3)
