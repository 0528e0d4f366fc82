"""Backpack (EgoPack) metrics on Ego4D: AR, OSCC, LTA, PNR, and the run's ``predictions.npz``.

The numbers follow the released evaluators (``utils/meters/ego4d.py`` of EgoPack, torchmetrics 1.0.1):

* **AR**: micro top-1 / top-5 accuracy and mean-class accuracy, i.e. torchmetrics'
  ``MulticlassAccuracy(top_k=1, average="macro", ignore_index=-1)``: per-class recall of the argmax,
  averaged over the classes that occur in the labels *or* in the predictions (a class predicted but
  never labelled counts with recall 0; a class neither labelled nor predicted is left out). This rule
  is the same in torchmetrics 1.0.x and 1.9.
* **OSCC**: micro accuracy of the argmax of the two logits.
* **LTA**: ``mean_n min_k Levenshtein(sample_k, label) / Z`` (``editdistance``) over the Z future actions.
* **PNR**: the candidate with the highest float32 sigmoid is mapped to ``(end - start) / C * idx`` frames
  (C candidates, 16 in Ego4D); the error is ``|pred - (pnr - start)| / fps`` seconds, averaged over clips.

Ties: an argmax goes to the lowest class index (as ``torch.argmax``); at the k-th place of a top-k the
lower class index wins (``torch.topk`` does so on CPU when ``64 k <= C`` and on CUDA; for fewer classes its
CPU tie order is unspecified). Labels of -1 are ignored; a metric with nothing to score is NaN (the
released meters print 0 there). This module needs only numpy and editdistance, so that
``python -m egolab.metrics.backpack PREDICTIONS.npz`` starts fast.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import editdistance
import numpy as np

PREDICTIONS_VERSION = "egolab-backpack-1"
PREDICTIONS_FILE = "predictions.npz"
TASKS = ("ar", "lta", "oscc", "pnr")
# per task: the arrays of its section in the predictions file (each section also has `<task>_uid`)
SECTIONS = {
    "ar": ("ar_verb_logits", "ar_noun_logits", "ar_verb_label", "ar_noun_label"),
    "lta": ("lta_verb_samples", "lta_noun_samples", "lta_verb_label", "lta_noun_label"),
    "oscc": ("oscc_logits", "oscc_label"),
    "pnr": ("pnr_logits", "pnr_start_frame", "pnr_end_frame", "pnr_frame"),
}
# arrays that are not 1-d (N,)
NDIM = {
    "ar_verb_logits": 2,
    "ar_noun_logits": 2,
    "lta_verb_samples": 3,
    "lta_noun_samples": 3,
    "lta_verb_label": 2,
    "lta_noun_label": 2,
    "oscc_logits": 2,
    "pnr_logits": 2,
}


def topk_hits(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Boolean (N,): whether each label is among the k best scores (ties: lower class index first).

    The label's rank is the number of classes scoring strictly higher plus those scoring the same
    with a lower index; it is a hit when that rank is below k.
    """
    scores, labels = np.asarray(scores), np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return np.zeros(0, dtype=bool)
    own = scores[np.arange(len(labels)), labels][:, None]
    lower = np.arange(scores.shape[1])[None, :] < labels[:, None]
    rank = (scores > own).sum(axis=1) + ((scores == own) & lower).sum(axis=1)
    return rank < k


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Micro top-k accuracy over the rows with a label (>= 0)."""
    labels = np.asarray(labels, dtype=np.int64)
    keep = labels >= 0
    if not keep.any():
        return math.nan
    return float(topk_hits(np.asarray(scores)[keep], labels[keep], k).mean())


def mean_class_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """torchmetrics' macro top-1 accuracy: argmax recall averaged over labelled or predicted classes."""
    scores, labels = np.asarray(scores), np.asarray(labels, dtype=np.int64)
    keep = labels >= 0
    if not keep.any():
        return math.nan
    num_classes = scores.shape[1]
    preds, labels = scores[keep].argmax(axis=1), labels[keep]
    support = np.bincount(labels, minlength=num_classes)
    predicted = np.bincount(preds, minlength=num_classes)
    correct = np.bincount(labels[preds == labels], minlength=num_classes)
    counted = (support > 0) | (predicted > 0)
    recall = np.divide(correct, support, out=np.zeros(num_classes), where=support > 0)
    return float(recall[counted].mean())


def _check_labels(scores: np.ndarray, labels: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    scores, labels = np.asarray(scores), np.asarray(labels, dtype=np.int64)
    if scores.ndim != 2 or labels.shape != (scores.shape[0],):
        raise ValueError(
            f"{name}: expected scores (N, C) and labels (N,), got {scores.shape}, {labels.shape}"
        )
    if (labels >= scores.shape[1]).any() or (labels < -1).any():
        raise ValueError(f"{name}: labels must lie in [-1, {scores.shape[1] - 1}]")
    return scores, labels


def ar_metrics(
    verb_logits: np.ndarray, noun_logits: np.ndarray, verb_labels: np.ndarray, noun_labels: np.ndarray
) -> dict[str, float]:
    """``ar_{verb,noun}_{top1,top5,mean_class}`` over the labelled rows."""
    out: dict[str, float] = {}
    for space, logits, labels in (("verb", verb_logits, verb_labels), ("noun", noun_logits, noun_labels)):
        scores, labels = _check_labels(logits, labels, f"ar {space}")
        out[f"ar_{space}_top1"] = topk_accuracy(scores, labels, 1)
        out[f"ar_{space}_top5"] = topk_accuracy(scores, labels, 5)
        out[f"ar_{space}_mean_class"] = mean_class_accuracy(scores, labels)
    return out


def oscc_metrics(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """``oscc_accuracy``: micro accuracy of the state-change argmax over the labelled clips."""
    scores, labels = _check_labels(logits, labels, "oscc")
    if scores.shape[1] != 2:
        raise ValueError(f"oscc: expected logits (N, 2), got {scores.shape}")
    return {"oscc_accuracy": topk_accuracy(scores, labels, 1)}


def sigmoid_float32(logits: np.ndarray) -> np.ndarray:
    """Sigmoid in float32, as the released meter applies it: large logits saturate to exactly 1."""
    x = np.asarray(logits, dtype=np.float32)
    with np.errstate(over="ignore"):
        return np.float32(1) / (np.float32(1) + np.exp(-x))


def pnr_metrics(
    logits: np.ndarray,
    start_frame: np.ndarray,
    end_frame: np.ndarray,
    pnr_frame: np.ndarray,
    fps: float = 30.0,
) -> dict[str, float]:
    """``pnr_error_s``: mean absolute keyframe localisation error in seconds.

    The argmax is taken over the float32 sigmoids (as released), so candidates whose sigmoids round to
    the same float32 value (e.g. logits above ~16.6) tie and the first one wins.
    """
    logits = np.asarray(logits)
    start, end, pnr = (np.asarray(a, dtype=np.float64) for a in (start_frame, end_frame, pnr_frame))
    if logits.ndim != 2 or not start.shape == end.shape == pnr.shape == (logits.shape[0],):
        raise ValueError(
            f"pnr: expected logits (N, C) and frames (N,), got {logits.shape}, {start.shape}, "
            f"{end.shape}, {pnr.shape}"
        )
    if logits.shape[0] == 0:
        return {"pnr_error_s": math.nan}
    index = sigmoid_float32(logits).argmax(axis=1)
    predicted = (end - start) / logits.shape[1] * index
    return {"pnr_error_s": float(np.mean(np.abs(predicted - (pnr - start)) / fps))}


def edit_distance(samples: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) ``min_k Levenshtein(samples[n, k], labels[n]) / Z`` for samples (N, K, Z), labels (N, Z)."""
    samples, labels = np.asarray(samples, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    if samples.ndim != 3 or labels.shape != (samples.shape[0], samples.shape[2]):
        raise ValueError(
            f"lta: expected samples (N, K, Z) and labels (N, Z), got {samples.shape}, {labels.shape}"
        )
    horizon = samples.shape[2]
    return np.array(
        [
            min(editdistance.eval(seq.tolist(), label.tolist()) for seq in rows) / horizon
            for rows, label in zip(samples, labels, strict=True)
        ],
        dtype=np.float64,
    )


def lta_metrics(
    verb_samples: np.ndarray, noun_samples: np.ndarray, verb_labels: np.ndarray, noun_labels: np.ndarray
) -> dict[str, float]:
    """``lta_{verb,noun}_ed``: edit distance of the best of K sampled sequences, averaged over clips.

    A clip counts only when all its Z future labels are known (>= 0); the released data never has
    partially labelled clips.
    """
    out: dict[str, float] = {}
    for space, samples, labels in (("verb", verb_samples, verb_labels), ("noun", noun_samples, noun_labels)):
        distances = edit_distance(samples, labels)
        keep = (np.asarray(labels) >= 0).all(axis=1)
        out[f"lta_{space}_ed"] = float(distances[keep].mean()) if keep.any() else math.nan
    return out


def present_tasks(arrays: dict[str, np.ndarray]) -> list[str]:
    """The tasks with a section in ``arrays`` (any of its arrays present), in ``TASKS`` order."""
    return [task for task in TASKS if any(key in arrays for key in (f"{task}_uid", *SECTIONS[task]))]


def check_sections(arrays: dict[str, np.ndarray]) -> list[str]:
    """The present tasks, after checking each section is complete and its arrays' shapes agree."""
    tasks = present_tasks(arrays)
    for task in tasks:
        missing = [key for key in SECTIONS[task] if key not in arrays]
        if missing:
            raise ValueError(f"{task} section is missing {missing}")
        keys = [key for key in (f"{task}_uid", *SECTIONS[task]) if key in arrays]
        shapes = {key: np.shape(arrays[key]) for key in keys}
        wrong = {key: shape for key, shape in shapes.items() if len(shape) != NDIM.get(key, 1)}
        if wrong:
            raise ValueError(f"{task} arrays have the wrong number of dimensions: {wrong}")
        if len({shape[0] for shape in shapes.values()}) != 1:
            raise ValueError(f"{task} arrays disagree on the number of rows: {shapes}")
        if task == "oscc" and shapes["oscc_logits"][1] != 2:
            raise ValueError(f"oscc_logits must be (N, 2), got {shapes['oscc_logits']}")
        if task == "lta":
            for space in ("verb", "noun"):
                samples, labels = shapes[f"lta_{space}_samples"], shapes[f"lta_{space}_label"]
                if samples[2] != labels[1]:
                    raise ValueError(
                        f"lta_{space}_samples {samples} and lta_{space}_label {labels} disagree on Z"
                    )
    return tasks


METRICS = {"ar": ar_metrics, "lta": lta_metrics, "oscc": oscc_metrics, "pnr": pnr_metrics}


def metrics_from_arrays(arrays: dict[str, np.ndarray]) -> dict[str, float]:
    """Every present task's metrics, merged (keys as logged, without the ``val/`` or ``test/`` prefix)."""
    out: dict[str, float] = {}
    for task in check_sections(arrays):
        out.update(METRICS[task](*(arrays[key] for key in SECTIONS[task])))
    return out


def _stored(key: str, value: np.ndarray) -> np.ndarray:
    """An array in the dtype the file format gives it."""
    if key.endswith("_uid"):
        return np.asarray(value).astype(str)
    if key.endswith("_logits"):
        return np.asarray(value, dtype=np.float32)
    if key.endswith(("_label", "_samples")):
        return np.asarray(value, dtype=np.int64)
    return np.asarray(value, dtype=np.float64)


def write_predictions(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> Path:
    """Write the present task sections (each with its ``<task>_uid``) as a backpack ``predictions.npz``."""
    path = Path(path)
    tasks = check_sections(arrays)
    if not tasks:
        raise ValueError(f"{path}: no task section to write (expected arrays prefixed {', '.join(TASKS)})")
    keys = [key for task in tasks for key in (f"{task}_uid", *SECTIONS[task])]
    missing = [key for key in keys if key not in arrays]
    if missing:
        raise ValueError(f"{path}: missing {missing}")
    payload = {key: _stored(key, arrays[key]) for key in keys}
    payload.update(task=np.array("backpack"), version=np.array(PREDICTIONS_VERSION), tasks=np.array(tasks))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as handle:
        np.savez_compressed(handle, **payload)
    return path


def read_predictions(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The arrays of a backpack ``predictions.npz``, checked for task, version and section shapes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    if str(arrays.get("task", "")) != "backpack":
        raise ValueError(f"{path}: not a backpack predictions file (task={arrays.get('task')!r})")
    if str(arrays.get("version", "")) != PREDICTIONS_VERSION:
        raise ValueError(f"{path}: expected version {PREDICTIONS_VERSION!r}, got {arrays.get('version')!r}")
    try:
        tasks = check_sections(arrays)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    missing = [f"{task}_uid" for task in tasks if f"{task}_uid" not in arrays]
    if missing:
        raise ValueError(f"{path}: missing {missing}")
    return arrays


def score_predictions_file(path: str | os.PathLike) -> dict[str, float]:
    """Metrics of a run's ``predictions.npz`` (the same dict as :func:`metrics_from_arrays`)."""
    return metrics_from_arrays(read_predictions(path))


def main(argv: list[str] | None = None) -> int:
    """Print the metrics of a predictions file as a plain table or as json."""
    parser = argparse.ArgumentParser(
        prog="python -m egolab.metrics.backpack", description="Score a backpack predictions.npz."
    )
    parser.add_argument("predictions", help="a backpack predictions.npz")
    parser.add_argument("--json", action="store_true", help="print the metrics as a json object")
    args = parser.parse_args(argv)
    try:
        arrays = read_predictions(args.predictions)
        metrics = metrics_from_arrays(arrays)
    except (OSError, ValueError) as err:
        parser.error(str(err))
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    print(f"{args.predictions}")
    for task in present_tasks(arrays):
        print(f"  {task}: {len(arrays[SECTIONS[task][0]])} samples")
    width = max(len(name) for name in metrics)
    for name, value in metrics.items():
        print(f"{name:<{width}}  {value:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
