"""Action anticipation metrics (EPIC-Kitchens-100): class-mean top-k recall, top-k accuracy, marginals.

The scores follow RULSTM's EK100 evaluation (``RULSTM/utils.py`` + ``main.py --ek100``), also used by the
AVT and S-GEAR notebooks:

* ranking is ``scores.argsort()[:, ::-1]`` (NumPy's default sort reversed, so ties break exactly as the
  reference code breaks them on the same arrays);
* **class-mean top-k recall** is the top-k accuracy of each class present in the ground truth (optionally
  intersected with a class subset), averaged uniformly over those classes; classes absent from the
  ground truth do not count, whatever is predicted for them;
* verb and noun scores are **marginals** of the softmaxed action scores: ``p(v) = sum_{a: verb(a)=v}
  p(a)`` (AVT's 0/1 mapping matrix: a verb without any action scores 0, where RULSTM's helper falls back
  to action 0); the action metrics use the raw action scores (top-k is invariant to softmax);
* **unseen** metrics use the segments of unseen participants, **tail** metrics the tail classes (for
  actions: those whose verb or noun is a tail class, which reproduces RULSTM's
  ``validation_tail_actions_ids.csv`` exactly on EK100 validation).

Values are fractions in [0, 1] (the papers print them x100). A metric with no ground-truth class to
average over is NaN. Samples labelled -1 (unknown) are left out of the metrics of that label space.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

PREDICTIONS_VERSION = "egolab-anticipation-1"
SPACES = ("verb", "noun", "action")


def softmax(scores: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float64."""
    scores = np.asarray(scores, dtype=np.float64)
    shifted = scores - scores.max(axis=axis, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def marginal_matrix(action_to_class: np.ndarray, num_classes: int | None = None) -> np.ndarray:
    """(A, K) 0/1 matrix with a 1 where action a belongs to class k (verb or noun)."""
    action_to_class = np.asarray(action_to_class, dtype=np.int64)
    if action_to_class.ndim != 1 or (action_to_class < 0).any():
        raise ValueError("action_to_class must be a 1-d array of non-negative class ids")
    size = int(action_to_class.max()) + 1 if num_classes is None else int(num_classes)
    if len(action_to_class) and action_to_class.max() >= size:
        raise ValueError(f"class id {action_to_class.max()} >= num_classes={size}")
    matrix = np.zeros((len(action_to_class), size), dtype=np.float64)
    matrix[np.arange(len(action_to_class)), action_to_class] = 1.0
    return matrix


def marginalize(
    action_scores: np.ndarray, action_to_class: np.ndarray, num_classes: int | None = None
) -> np.ndarray:
    """Verb (or noun) probabilities (N, K) from action scores (N, A): softmax, then sum per class."""
    action_scores = np.asarray(action_scores)
    if action_scores.ndim != 2 or action_scores.shape[1] != len(action_to_class):
        raise ValueError(
            f"action scores of shape {action_scores.shape} do not match {len(action_to_class)} actions"
        )
    return softmax(action_scores) @ marginal_matrix(action_to_class, num_classes)


def topk_hits(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Boolean (N,) whether each label is among the k highest scores (RULSTM ranking)."""
    scores, labels = np.asarray(scores), np.asarray(labels, dtype=np.int64)
    if scores.ndim != 2 or scores.shape[0] != labels.shape[0]:
        raise ValueError(f"scores {scores.shape} and labels {labels.shape} disagree")
    if len(labels) == 0:
        return np.zeros(0, dtype=bool)
    rankings = scores.argsort()[:, ::-1]
    return (rankings[:, :k] == labels[:, None]).any(axis=1)


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of samples with a known label (>= 0) whose label is in the top k."""
    labels = np.asarray(labels, dtype=np.int64)
    keep = labels >= 0
    if not keep.any():
        return math.nan
    return float(topk_hits(np.asarray(scores)[keep], labels[keep], k).mean())


def class_mean_recall(
    scores: np.ndarray, labels: np.ndarray, k: int = 5, classes: Sequence[int] | np.ndarray | None = None
) -> float:
    """Class-mean top-k recall over the ground-truth classes (intersected with ``classes`` if given)."""
    labels = np.asarray(labels, dtype=np.int64)
    keep = labels >= 0
    scores, labels = np.asarray(scores)[keep], labels[keep]
    present = np.unique(labels)
    if classes is not None:
        present = np.intersect1d(np.asarray(classes, dtype=np.int64), present)
    if len(present) == 0:
        return math.nan
    hits = topk_hits(scores, labels, k)
    return float(np.mean([hits[labels == c].mean() for c in present]))


def tail_action_ids(
    action_to_verb: np.ndarray, action_to_noun: np.ndarray, tail_verbs: np.ndarray, tail_nouns: np.ndarray
) -> np.ndarray:
    """Action ids whose verb or noun is a tail class (EK100's tail action definition)."""
    is_tail = np.isin(action_to_verb, tail_verbs) | np.isin(action_to_noun, tail_nouns)
    return np.flatnonzero(is_tail).astype(np.int64)


def anticipation_metrics(
    action_logits: np.ndarray,
    action_label: np.ndarray,
    action_to_verb: np.ndarray,
    action_to_noun: np.ndarray,
    verb_label: np.ndarray | None = None,
    noun_label: np.ndarray | None = None,
    unseen: np.ndarray | None = None,
    tail_verbs: Sequence[int] | np.ndarray | None = None,
    tail_nouns: Sequence[int] | np.ndarray | None = None,
    tail_actions: Sequence[int] | np.ndarray | None = None,
    verb_scores: np.ndarray | None = None,
    noun_scores: np.ndarray | None = None,
    k: int = 5,
) -> dict[str, float]:
    """All anticipation metrics of one evaluation set, keyed ``<space>_<metric>``.

    For each space (verb, noun, action): ``top1``, ``top5`` (accuracy), ``recall1`` (class-mean top-1),
    ``recall5`` (class-mean top-k, k=5 by default), ``recall5_unseen`` (when ``unseen`` is given) and
    ``recall5_tail`` (when tail verbs and nouns are given; tail actions default to those with a tail verb
    or noun). Verb/noun labels default to the action's; verb/noun scores default to the marginals of the
    action scores.
    """
    action_logits = np.asarray(action_logits)
    action_label = np.asarray(action_label, dtype=np.int64)
    a2v, a2n = np.asarray(action_to_verb, np.int64), np.asarray(action_to_noun, np.int64)
    known = action_label >= 0
    if verb_label is None:
        verb_label = np.where(known, a2v[np.maximum(action_label, 0)], -1)
    if noun_label is None:
        noun_label = np.where(known, a2n[np.maximum(action_label, 0)], -1)
    if verb_scores is None:
        verb_scores = marginalize(action_logits, a2v)
    if noun_scores is None:
        noun_scores = marginalize(action_logits, a2n)
    tails: dict[str, np.ndarray | None] = {"verb": None, "noun": None, "action": None}
    if tail_verbs is not None and tail_nouns is not None:
        tails = {
            "verb": np.asarray(tail_verbs, np.int64),
            "noun": np.asarray(tail_nouns, np.int64),
            "action": (
                tail_action_ids(a2v, a2n, np.asarray(tail_verbs), np.asarray(tail_nouns))
                if tail_actions is None
                else np.asarray(tail_actions, np.int64)
            ),
        }
    spaces = {
        "verb": (np.asarray(verb_scores), np.asarray(verb_label, np.int64)),
        "noun": (np.asarray(noun_scores), np.asarray(noun_label, np.int64)),
        "action": (action_logits, action_label),
    }
    out: dict[str, float] = {}
    for name, (scores, labels) in spaces.items():
        out[f"{name}_top1"] = topk_accuracy(scores, labels, 1)
        out[f"{name}_top5"] = topk_accuracy(scores, labels, 5)
        out[f"{name}_recall1"] = class_mean_recall(scores, labels, 1)
        out[f"{name}_recall{k}"] = class_mean_recall(scores, labels, k)
        if unseen is not None:
            mask = np.asarray(unseen, dtype=bool)
            out[f"{name}_recall{k}_unseen"] = class_mean_recall(scores[mask], labels[mask], k)
        if tails[name] is not None:
            out[f"{name}_recall{k}_tail"] = class_mean_recall(scores, labels, k, classes=tails[name])
    return out


def metrics_from_arrays(arrays: dict[str, np.ndarray]) -> dict[str, float]:
    """Metrics of a predictions mapping holding the arrays of the predictions file format."""
    return anticipation_metrics(
        arrays["action_logits"],
        arrays["action_label"],
        arrays["action_to_verb"],
        arrays["action_to_noun"],
        verb_label=arrays["verb_label"],
        noun_label=arrays["noun_label"],
        unseen=arrays["unseen"],
        tail_verbs=arrays["tail_verbs"],
        tail_nouns=arrays["tail_nouns"],
        tail_actions=arrays["tail_actions"],
        verb_scores=arrays["verb_scores"],
        noun_scores=arrays["noun_scores"],
    )


def score_predictions_file(path: str | Path) -> dict[str, float]:
    """Recompute the metrics of a run (keys without the ``test/`` prefix) from its ``predictions.npz``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"predictions file not found: {path}")
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    if str(arrays.get("task", "")) != "anticipation":
        raise ValueError(f"{path}: not an anticipation predictions file (task={arrays.get('task')!r})")
    missing = {"action_logits", "action_label", "verb_scores", "noun_scores", "unseen"} - set(arrays)
    if missing:
        raise ValueError(f"{path}: missing arrays {sorted(missing)}")
    return metrics_from_arrays(arrays)
