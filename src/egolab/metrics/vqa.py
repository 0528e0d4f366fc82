"""EgoCross VQA metrics: CloseQA letter extraction and accuracy, the run's ``predictions.json``, the
challenge submission file and a CLI.

The rules follow the released evaluators (``eval_os_closedset.py`` and ``eval_gpt_openset.py`` of
EgoCross):

* **Letter extraction**: ``json.loads(reply)["prediction"]``; if that fails, the first non-greedy
  ``\\{[\\s\\S]*?\\}`` block of the reply is parsed with json and its ``"prediction"`` taken. There is no
  fuzzy letter regex: a reply that is not json gives no prediction.
* **CloseQA**: a prediction is right when ``prediction.lower() == correct_option_letter.lower()``, an
  exact letter match, so ``"B: 3"`` is wrong. Accuracy is micro over the items, and the challenge
  leaderboard adds per-domain accuracies (Surgery, Industry, XSports, Animal).
* **OpenQA**: only the substring rule (score 5) is implemented; the LLM judge that scores the rest is not.

The module needs only the standard library and numpy, so ``python -m egolab.metrics.vqa`` starts fast.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

PREDICTIONS_VERSION = "egolab-vqa-1"
PREDICTIONS_FILE = "predictions.json"
LETTERS = ("A", "B", "C", "D")
# source dataset (as spelt in the testbed) -> domain of the leaderboard
DOMAINS = {
    "CholecTrack20": "Surgery",
    "EgoSurgery": "Surgery",
    "ENIGMA": "Industry",
    "ExtrameSportFPV": "XSports",  # the testbed's spelling
    "ExtremeSportFPV": "XSports",
    "EgoPet": "Animal",
}
DOMAIN_ORDER = ("Surgery", "Industry", "XSports", "Animal")
TESTBED_KEYS = (
    "id",
    "dataset",
    "primary_category",
    "question_type",
    "question_text",
    "options",
    "original_video_fps",
    "video_path",
)
ANSWER_KEYS = ("id", "correct_option_letter", "answer_text", "question_id")
RESULT_KEYS = ("dataset", "domain", "primary_category", "question_type", "reply", "prediction")
OPTIONAL_RESULT_KEYS = ("option_probs", "answer", "question_id")
SUBMISSION_KEYS = ("id", "question_id", "dataset", "answer")
_JSON_BLOCK = re.compile(r"\{[\s\S]*?\}")


def domain_of(dataset: str) -> str:
    """The domain (``Surgery``, ``Industry``, ``XSports``, ``Animal``) of a source dataset name."""
    try:
        return DOMAINS[dataset]
    except (KeyError, TypeError):
        raise ValueError(f"unknown EgoCross dataset {dataset!r}; expected one of {sorted(DOMAINS)}") from None


def _key(item_id: Any) -> str:
    """The join key of an item id: testbed ids are ints, json object keys are strings."""
    return str(item_id)


def id_from_key(key: str) -> int | str:
    """An id read back from a json object key: an int when it is a decimal integer, as in the testbed."""
    return int(key) if re.fullmatch(r"-?\d+", key) else key


def _prediction_of(text: str) -> tuple[bool, str | None]:
    """(parsed, prediction) of one json text: parsed is False when it is not a json object with the key."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return False, None
    if not isinstance(data, dict) or "prediction" not in data:
        return False, None
    prediction = data["prediction"]
    return True, prediction if isinstance(prediction, str) else None


def parse_answer(reply: str | None) -> str | None:
    """The official CloseQA extraction: the ``"prediction"`` of the reply as json, else of its first
    ``{...}`` block (non-greedy), else None.

    The string is returned as is (not stripped, not upper-cased) so that :func:`is_correct` applies the
    official exact comparison. A prediction that is not a string (a number, null, a list) gives None:
    it can never equal a letter.
    """
    if not isinstance(reply, str):
        return None
    parsed, prediction = _prediction_of(reply)
    if parsed:
        return prediction
    block = _JSON_BLOCK.search(reply)
    if block is None:
        return None
    return _prediction_of(block.group(0))[1]


def first_letter(reply: str | None) -> str | None:
    """The challenge baseline's rule: the first character of the stripped reply when it is a letter A-D
    (any case), else None ("B) 3" gives "B", "The answer is B" gives None)."""
    if not isinstance(reply, str):
        return None
    head = reply.strip()[:1].upper()
    return head if head in LETTERS else None


PARSE_RULES = {"official": parse_answer, "first_letter": first_letter}
"""How a reply becomes a prediction: the official json extraction, or the baseline's first letter."""


def parse_reply(reply: str | None, rule: str = "official") -> str | None:
    """The prediction of a reply under ``rule`` (a key of :data:`PARSE_RULES`)."""
    if rule not in PARSE_RULES:
        raise ValueError(f"unknown parse rule {rule!r}; expected one of {sorted(PARSE_RULES)}")
    return PARSE_RULES[rule](reply)


def is_correct(prediction: str | None, letter: str) -> bool:
    """Official CloseQA success: ``prediction.lower() == letter.lower()``; no prediction is wrong."""
    return isinstance(prediction, str) and prediction.lower() == str(letter).lower()


def openqa_correct(prediction: str | None, answer_text: Any) -> bool:
    """The official OpenQA substring rule: the answer text (or the integer answer's digits),
    case-insensitive, occurs in the prediction.

    Only this rule is implemented; in the official script a miss goes to an LLM judge
    (``qwen-max-latest``, 0-5, correct at >= 4), which is out of scope here, so False means "not
    matched by the rule", not "wrong". As in the official rule, the integer 1 is contained in "10". An
    empty answer text matches nothing.
    """
    if not isinstance(prediction, str) or answer_text is None:
        return False
    needle = str(answer_text).strip().lower()
    return bool(needle) and needle in prediction.lower()


def _slug(name: str) -> str:
    """A metric key part: lower-case, runs of whitespace as one underscore."""
    return re.sub(r"\s+", "_", str(name).strip().lower())


def letter_of_probs(option_probs: Sequence[float]) -> str:
    """The letter of the largest of the 4 option probabilities (ties: the first letter)."""
    probs = np.asarray(option_probs, dtype=np.float64)
    if probs.shape != (len(LETTERS),):
        raise ValueError(f"option_probs must hold {len(LETTERS)} values, got shape {probs.shape}")
    return LETTERS[int(np.argmax(probs))]


def _mean(values: Iterable[bool]) -> float:
    values = list(values)
    return float(np.mean(values)) if values else math.nan


def closeqa_metrics(records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """CloseQA accuracies of records with ``id``, ``dataset``, ``prediction`` and ``answer`` (letter).

    Keys: ``accuracy`` (micro over all records), ``accuracy_<domain>`` for each domain present
    (``accuracy_surgery``, ``accuracy_industry``, ``accuracy_xsports``, ``accuracy_animal``),
    ``accuracy_category_<primary category>`` and ``accuracy_type_<question type>`` (lower-case, spaces
    as underscores; each group only when every record has that field), ``invalid_rate`` (share of
    predictions that are not one of A-D in any case, un-parseable replies included) and ``letter_accuracy``
    (argmax of ``option_probs``, ties to the first letter) when every record carries ``option_probs``.
    No records give ``{"accuracy": nan}``.
    """
    if not records:
        return {"accuracy": math.nan}
    missing = [r.get("id") for r in records if r.get("answer") is None]
    if missing:
        raise ValueError(_missing_message("records have no answer", missing))
    correct = [is_correct(r.get("prediction"), r["answer"]) for r in records]
    out = {"accuracy": _mean(correct)}
    domains = [domain_of(r["dataset"]) for r in records]
    for domain in DOMAIN_ORDER:
        if domain in domains:
            out[f"accuracy_{domain.lower()}"] = _mean(
                c for c, d in zip(correct, domains, strict=True) if d == domain
            )
    for field, prefix in (("primary_category", "category"), ("question_type", "type")):
        values = [r.get(field) for r in records]
        if any(v is None for v in values):
            continue
        for value in sorted({_slug(v) for v in values}):
            group = (c for c, v in zip(correct, values, strict=True) if _slug(v) == value)
            out[f"accuracy_{prefix}_{value}"] = _mean(group)
    out["invalid_rate"] = _mean(
        not (isinstance(r.get("prediction"), str) and r["prediction"].upper() in LETTERS) for r in records
    )
    probs = [r.get("option_probs") for r in records]
    if all(p is not None for p in probs):
        out["letter_accuracy"] = _mean(
            letter_of_probs(p) == str(r["answer"]).upper() for p, r in zip(probs, records, strict=True)
        )
    elif any(p is not None for p in probs):
        raise ValueError("option_probs must be given for every record or for none")
    return out


def _load_json(path: str | os.PathLike, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path}: not valid json ({err})") from None


def _read_objects(path: Path, what: str, noun: str, keys: Sequence[str]) -> list[dict[str, Any]]:
    """A json list of objects that all have ``keys``; errors name the file and the object's id."""
    objects = _load_json(path, what)
    if not isinstance(objects, list):
        raise ValueError(f"{path}: expected a list of {noun}s, got {type(objects).__name__}")
    for obj in objects:
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: {noun} is not an object: {obj!r:.80}")
        missing = [key for key in keys if key not in obj]
        if missing:
            raise ValueError(f"{path}: {noun} {obj.get('id')!r}: missing {missing}")
    return objects


def _check_unique(ids: list[Any], path: Path) -> None:
    seen: set[str] = set()
    duplicates = []
    for item_id in ids:
        if _key(item_id) in seen:
            duplicates.append(item_id)
        seen.add(_key(item_id))
    if duplicates:
        raise ValueError(f"{path}: duplicate ids {duplicates[:5]}")


def _check_testbed_item(item: Mapping[str, Any]) -> None:
    """Raise ValueError when a testbed item (with every field) has an unknown dataset, a bad option
    list or no frames."""
    where = f"item {item['id']!r}"
    try:
        domain_of(item["dataset"])
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    options = item["options"]
    if not isinstance(options, list) or len(options) != len(LETTERS):
        raise ValueError(f"{where}: expected {len(LETTERS)} options, got {options!r}")
    for letter, option in zip(LETTERS, options, strict=True):
        if not isinstance(option, str) or not option.startswith(f"{letter}:"):
            raise ValueError(f"{where}: option {option!r} does not start with {letter + ':'!r}")
    paths = item["video_path"]
    if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p for p in paths):
        raise ValueError(f"{where}: video_path must be a non-empty list of paths")


def read_testbed(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The items of ``egocross_testbed_imgs.json`` (or the answers file), each checked; errors name the
    file and the item id."""
    path = Path(path)
    items = _read_objects(path, "testbed file", "item", TESTBED_KEYS)
    for item in items:
        try:
            _check_testbed_item(item)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
    _check_unique([item["id"] for item in items], path)
    return items


def read_answers(path: str | os.PathLike) -> dict[int | str, dict[str, Any]]:
    """id -> ``{correct_option_letter, answer_text, question_id}`` (plus ``dataset``,
    ``primary_category`` and ``question_type`` when the file has them) from the official answers file.

    The letter is stored upper-case and must be one of A-D.
    """
    path = Path(path)
    answers: dict[int | str, dict[str, Any]] = {}
    for item in _read_objects(path, "answers file", "item", ANSWER_KEYS):
        letter = item["correct_option_letter"]
        if not isinstance(letter, str) or letter.strip().upper() not in LETTERS:
            raise ValueError(
                f"{path}: item {item['id']!r}: correct_option_letter {letter!r} is not one of A-D"
            )
        if item["id"] in answers:
            raise ValueError(f"{path}: duplicate id {item['id']!r}")
        entry = {"correct_option_letter": letter.strip().upper()}
        entry.update((key, item[key]) for key in ("answer_text", "question_id"))
        entry.update(
            (key, item[key]) for key in ("dataset", "primary_category", "question_type") if key in item
        )
        answers[item["id"]] = entry
    return answers


def join_answers(
    items: Sequence[Mapping[str, Any]], answers: Mapping[Any, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Copies of the items (testbed items or prediction records) with ``answer`` (the letter),
    ``answer_text`` and ``question_id`` from the answers, joined by id; answers without an item are
    ignored, an item without an answer is an error."""
    by_key = {_key(i): a for i, a in answers.items()}
    missing = [item["id"] for item in items if _key(item["id"]) not in by_key]
    if missing:
        raise ValueError(_missing_message("items have no answer", missing))
    out = []
    for item in items:
        answer = by_key[_key(item["id"])]
        out.append(
            {
                **item,
                "answer": answer["correct_option_letter"],
                "answer_text": answer.get("answer_text"),
                "question_id": answer.get("question_id"),
            }
        )
    return out


def make_record(
    item: Mapping[str, Any],
    reply: str | None,
    option_probs: Sequence[float] | None = None,
    answer: str | None = None,
    question_id: str | None = None,
    parse: str = "official",
) -> dict[str, Any]:
    """A predictions-file record for a testbed item and the model's raw reply (parsed by ``parse``)."""
    return {
        "id": item["id"],
        "dataset": item["dataset"],
        "domain": domain_of(item["dataset"]),
        "primary_category": item.get("primary_category"),
        "question_type": item.get("question_type"),
        "reply": reply,
        "prediction": parse_reply(reply, parse),
        "option_probs": None if option_probs is None else [float(p) for p in option_probs],
        "answer": answer if answer is not None else item.get("answer", item.get("correct_option_letter")),
        "question_id": question_id if question_id is not None else item.get("question_id"),
    }


def _check_result(key: str, result: Any) -> None:
    if not isinstance(result, dict):
        raise ValueError(f"result {key!r} is not an object")
    missing = [k for k in RESULT_KEYS if k not in result]
    if missing:
        raise ValueError(f"result {key!r}: missing {missing}")
    domain = domain_of(result["dataset"])
    if result["domain"] != domain:
        raise ValueError(
            f"result {key!r}: domain {result['domain']!r} but dataset {result['dataset']!r} is {domain}"
        )
    probs = result.get("option_probs")
    if probs is not None and (not isinstance(probs, list) or len(probs) != len(LETTERS)):
        raise ValueError(f"result {key!r}: option_probs must be null or a list of {len(LETTERS)} numbers")
    answer = result.get("answer")
    if answer is not None and (not isinstance(answer, str) or answer.upper() not in LETTERS):
        raise ValueError(f"result {key!r}: answer {answer!r} is not one of A-D")


def write_predictions(path: str | os.PathLike, records: Sequence[Mapping[str, Any]]) -> Path:
    """Write records (as from :func:`make_record`) as a vqa ``predictions.json``; ``domain`` is derived
    from ``dataset`` when absent and the optional fields default to null."""
    path = Path(path)
    results: dict[str, dict[str, Any]] = {}
    for record in records:
        key = _key(record["id"])
        if key in results:
            raise ValueError(f"{path}: duplicate id {record['id']!r}")
        result = {k: record.get(k) for k in (*RESULT_KEYS, *OPTIONAL_RESULT_KEYS)}
        if result["domain"] is None:
            result["domain"] = domain_of(record["dataset"])
        if result["option_probs"] is not None:
            result["option_probs"] = [float(p) for p in result["option_probs"]]
        try:
            _check_result(key, result)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        results[key] = result
    payload = {"version": PREDICTIONS_VERSION, "task": "vqa", "results": results}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return path


def read_predictions(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a vqa ``predictions.json`` (each with its ``id``), checked for task, version and
    fields; errors name the file."""
    path = Path(path)
    data = _load_json(path, "predictions file")
    if not isinstance(data, dict) or data.get("task") != "vqa":
        task = data.get("task") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: not a vqa predictions file (task={task!r})")
    if data.get("version") != PREDICTIONS_VERSION:
        raise ValueError(f"{path}: expected version {PREDICTIONS_VERSION!r}, got {data.get('version')!r}")
    results = data.get("results")
    if not isinstance(results, dict):
        raise ValueError(f"{path}: 'results' must be an object keyed by item id")
    records = []
    for key, result in results.items():
        try:
            _check_result(key, result)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        records.append(
            {"id": id_from_key(key), **{k: result.get(k) for k in (*RESULT_KEYS, *OPTIONAL_RESULT_KEYS)}}
        )
    return records


def score_predictions_file(
    path: str | os.PathLike, answers: str | os.PathLike | Mapping[Any, Mapping[str, Any]] | None = None
) -> dict[str, float]:
    """:func:`closeqa_metrics` of a ``predictions.json``, with its stored answers or, when given, those of
    an answers file (a path or the mapping of :func:`read_answers`)."""
    records = read_predictions(path)
    if answers is not None:
        table = read_answers(answers) if isinstance(answers, (str, os.PathLike)) else answers
        records = join_answers(records, table)
    elif any(r["answer"] is None for r in records):
        raise ValueError(f"{path}: some items have no stored answer; pass an answers file")
    return closeqa_metrics(records)


def submission_answer(prediction: str | None) -> str:
    """The submission's answer for a parsed prediction: the upper-case letter, or "" when it is not
    a letter (no reply, un-parseable, or text such as "B: 3", all wrong under the official rule)."""
    if isinstance(prediction, str) and prediction.upper() in LETTERS:
        return prediction.upper()
    return ""


def _missing_message(what: str, ids: list[Any]) -> str:
    return f"{len(ids)} {what}, e.g. ids {ids[:5]}"


def write_submission(
    path: str | os.PathLike,
    records: Sequence[Mapping[str, Any]],
    template: str | os.PathLike | Sequence[Mapping[str, Any]] | None = None,
) -> Path:
    """Write the challenge submission ``[{id, question_id, dataset, answer}]``.

    With a template (``submission_template.json`` or its rows) the rows follow its order and take
    its ``question_id`` and ``dataset``; every template id needs a record and every record a template
    row. Without one the rows follow the records, which must carry ``question_id``. The answer is
    :func:`submission_answer` of the record's ``prediction``: the letter, "" when there is none.
    """
    path = Path(path)
    by_key = {_key(r["id"]): r for r in records}
    if len(by_key) != len(records):
        raise ValueError(f"{path}: duplicate record ids")
    if template is None:
        missing = [r["id"] for r in records if r.get("question_id") is None]
        if missing:
            raise ValueError(
                f"{path}: {_missing_message('records have no question_id (pass the template)', missing)}"
            )
        rows = [
            {
                "id": r["id"],
                "question_id": r["question_id"],
                "dataset": r["dataset"],
                "answer": submission_answer(r.get("prediction")),
            }
            for r in records
        ]
    else:
        base = read_submission(template) if isinstance(template, (str, os.PathLike)) else list(template)
        missing = [row["id"] for row in base if _key(row["id"]) not in by_key]
        if missing:
            raise ValueError(f"{path}: {_missing_message('template ids have no record', missing)}")
        known = {_key(row["id"]) for row in base}
        extra = [r["id"] for r in records if _key(r["id"]) not in known]
        if extra:
            raise ValueError(f"{path}: {_missing_message('records are not in the template', extra)}")
        rows = [
            {
                "id": row["id"],
                "question_id": row["question_id"],
                "dataset": row["dataset"],
                "answer": submission_answer(by_key[_key(row["id"])].get("prediction")),
            }
            for row in base
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    return path


def read_submission(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a challenge submission (or its template), each with ``id``, ``question_id``,
    ``dataset`` and a string ``answer``."""
    path = Path(path)
    rows = _read_objects(path, "submission file", "row", SUBMISSION_KEYS)
    for row in rows:
        if not isinstance(row["answer"], str):
            raise ValueError(f"{path}: row {row['id']!r}: answer {row['answer']!r} is not a string")
    _check_unique([row["id"] for row in rows], path)
    return rows


def submission_records(
    rows: Sequence[Mapping[str, Any]],
    answers: Mapping[Any, Mapping[str, Any]],
    testbed: Sequence[Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Scoring records of submission rows joined by id with the answers (letter, and dataset when the
    answers file has it) and, when given, the testbed (dataset, category and question type; without it
    these are None, so only overall and per-domain accuracies are scored)."""
    by_key = {_key(i): a for i, a in answers.items()}
    items = {_key(item["id"]): item for item in testbed or ()}
    missing = [row["id"] for row in rows if _key(row["id"]) not in by_key]
    if missing:
        raise ValueError(_missing_message("submission ids have no answer", missing))
    if testbed is not None:
        missing = [row["id"] for row in rows if _key(row["id"]) not in items]
        if missing:
            raise ValueError(_missing_message("submission ids are not in the testbed", missing))
    records = []
    for row in rows:
        answer, item = by_key[_key(row["id"])], items.get(_key(row["id"]), {})
        records.append(
            {
                "id": row["id"],
                "dataset": item.get("dataset", answer.get("dataset", row["dataset"])),
                "primary_category": item.get("primary_category"),
                "question_type": item.get("question_type"),
                "prediction": row["answer"] or None,
                "answer": answer["correct_option_letter"],
                "question_id": answer.get("question_id", row["question_id"]),
            }
        )
    return records


def _is_submission(path: str | os.PathLike) -> bool:
    """Whether a json file holds a submission (a list of rows) rather than a predictions object."""
    return isinstance(_load_json(path, "predictions file"), list)


def _print_table(title: str, metrics: Mapping[str, float]) -> None:
    print(title)
    width = max(len(name) for name in metrics)
    for name, value in metrics.items():
        print(f"{name:<{width}}  {value:.4f}")


def main(argv: list[str] | None = None) -> int:
    """Score a predictions.json or a challenge submission, or turn a predictions.json into a submission."""
    parser = argparse.ArgumentParser(
        prog="python -m egolab.metrics.vqa",
        description="Score an EgoCross vqa predictions.json or challenge submission (CloseQA accuracy).",
    )
    parser.add_argument("predictions", help="a vqa predictions.json, or a submission json (a list of rows)")
    parser.add_argument("--answers", help="the official answers json (required to score a submission)")
    parser.add_argument(
        "--testbed", help="egocross_testbed_imgs.json: per-category/type scores of a submission"
    )
    parser.add_argument("--json", action="store_true", help="print the metrics as a json object")
    parser.add_argument("--write-submission", metavar="OUT", help="write a predictions.json as a submission")
    parser.add_argument("--template", help="submission_template.json: row order, question_id and dataset")
    args = parser.parse_args(argv)
    try:
        submission = _is_submission(args.predictions)
        if args.write_submission:
            if submission:
                raise ValueError(
                    f"{args.predictions}: already a submission; --write-submission needs a predictions.json"
                )
            records = read_predictions(args.predictions)
            out = write_submission(args.write_submission, records, args.template)
            print(f"wrote {len(records)} rows to {out}")
            return 0
        if args.template:
            raise ValueError("--template only goes with --write-submission")
        if submission:
            if not args.answers:
                raise ValueError("scoring a submission needs --answers")
            testbed = read_testbed(args.testbed) if args.testbed else None
            records = submission_records(
                read_submission(args.predictions), read_answers(args.answers), testbed
            )
            metrics = closeqa_metrics(records)
        else:
            records = read_predictions(args.predictions)
            metrics = score_predictions_file(args.predictions, args.answers)
    except (OSError, ValueError) as err:
        parser.error(str(err))
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        kind = "submission" if submission else "predictions"
        _print_table(f"{args.predictions} ({kind}, {len(records)} items)", metrics)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
