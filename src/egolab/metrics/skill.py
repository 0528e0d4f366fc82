"""Proficiency estimation metrics: top-1 accuracy overall and per scenario, confusion matrix.

:func:`skill_metrics` scores per-take class probabilities (micro top-1 accuracy, float32 quotients as
torchmetrics computes them; NumPy only, so that the command line loads no torch);
:func:`score_predictions_file` recomputes the same numbers from a run's ``predictions.json``
(format ``egolab-skill-1``, written by :class:`egolab.tasks.skill.SkillTask`). Takes without a label
(the hidden test split) are not scored. By default each take of the evaluated split counts once, under
its official ``scenario_name``.

:func:`paper_population_metrics` scores the way the SkillFormer paper's numbers were computed: over the
rows of the release's evaluation jsonl as listed (the paper's file lists most takes twice), each row in
the bucket of :func:`release_scenario` (a case-sensitive match on the video path). Command line::

    python -m egolab.metrics.skill RUN_DIR/predictions.json [--paper-population FILE.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from egolab.data.skill_annotations import ReleaseRow, read_release_jsonl

if TYPE_CHECKING:
    import torch

PREDICTIONS_VERSION = "egolab-skill-1"

RELEASE_SCENARIOS = ("basketball", "cooking", "dance", "bouldering", "soccer")
"""Substrings the release's inference looks for, in this order, in each part of a take's first video
path; a path with none of them is counted as ``music``."""


def scenario_key(name: str) -> str:
    """Metric-name form of a scenario: ``"Rock Climbing"`` -> ``"rock_climbing"``."""
    return re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_") or "unknown"


def _labelled(
    probs: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray | Sequence[int | None]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Probabilities (N, C), labels (N,) and the mask of takes with a label (label >= 0)."""
    probs_a = np.asarray(probs, dtype=np.float64)
    labels_a = np.array(
        [-1 if v is None else int(v) for v in np.asarray(labels, dtype=object).tolist()], dtype=np.int64
    )
    if probs_a.ndim != 2 or probs_a.shape[0] != labels_a.shape[0]:
        raise ValueError(f"expected probs (N, C) and labels (N,), got {probs_a.shape}, {labels_a.shape}")
    mask = labels_a >= 0
    if (labels_a[mask] >= probs_a.shape[1]).any():
        raise ValueError(f"labels must be below the {probs_a.shape[1]} classes, got {labels_a[mask].max()}")
    return probs_a, labels_a, mask


def skill_metrics(
    probs: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray | Sequence[int | None],
    scenarios: Sequence[str],
) -> dict[str, float]:
    """``accuracy`` and ``accuracy_<scenario>`` (micro top-1 of argmax) over takes with a label.

    Empty when no take is labelled. Ties in the probabilities go to the lowest class index. Each value is
    a float32 quotient (as torchmetrics computed it), so logged and re-scored numbers are equal.
    """
    probs_a, labels_a, mask = _labelled(probs, labels)
    if len(scenarios) != len(labels_a):
        raise ValueError(f"{len(scenarios)} scenarios for {len(labels_a)} takes")
    if not mask.any():
        return {}
    correct = probs_a.argmax(axis=1) == labels_a

    def accuracy(keep: np.ndarray) -> float:
        return float(np.float32(np.count_nonzero(correct & keep)) / np.float32(np.count_nonzero(keep)))

    results = {"accuracy": accuracy(mask)}
    names = np.asarray([scenario_key(s) for s in scenarios])
    for name in sorted(set(names[mask].tolist())):
        results[f"accuracy_{name}"] = accuracy(mask & (names == name))
    return results


def confusion_matrix(
    probs: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray | Sequence[int | None]
) -> np.ndarray:
    """(C, C) int64 counts, rows = true level, columns = predicted level, over labelled takes."""
    probs_a, labels_a, mask = _labelled(probs, labels)
    num_classes = probs_a.shape[1]
    cells = labels_a[mask] * num_classes + probs_a[mask].argmax(axis=1)
    return np.bincount(cells, minlength=num_classes**2).astype(np.int64).reshape(num_classes, num_classes)


def plot_confusion_matrix(
    matrix: torch.Tensor | np.ndarray, label_names: Sequence[str], path: str | os.PathLike, title: str = ""
) -> Path:
    """Save a confusion matrix (counts, row-normalised colours) as a PNG; no global matplotlib backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = np.asarray(matrix, dtype=np.int64)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=np.float64), where=rows > 0)
    fig = Figure(figsize=(1.6 + 1.1 * len(label_names), 1.2 + 1.0 * len(label_names)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of true level")
    ticks = range(len(label_names))
    ax.set_xticks(ticks, label_names, rotation=30, ha="right")
    ax.set_yticks(ticks, label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in ticks:
        for j in ticks:
            colour = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", color=colour)
    ax.set_title(title or f"{int(counts.sum())} takes")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def read_predictions(path: str | os.PathLike) -> dict:
    """A ``predictions.json`` of the skill task, checked for its version."""
    data = json.loads(Path(path).read_text())
    if data.get("version") != PREDICTIONS_VERSION:
        raise ValueError(f"{path}: expected version {PREDICTIONS_VERSION!r}, got {data.get('version')!r}")
    return data


def release_scenario(video_path: str) -> str:
    """The release's scenario bucket of a video path: the first of :data:`RELEASE_SCENARIOS` found,
    case-sensitively, in its ``/``-separated parts (left to right), else ``"music"``.

    So ``takes/upenn_0713_Dance_2_3/...`` (capital D) counts as music, and ``takes/uniandes_bouldering_...``
    as bouldering.
    """
    for part in video_path.split("/"):
        for name in RELEASE_SCENARIOS:
            if name in part:
                return name
    return "music"


def paper_population_metrics(
    predictions: Mapping[str, Mapping], rows: Sequence[ReleaseRow], source: str = ""
) -> dict[str, float]:
    """``paper_accuracy`` and ``paper_accuracy_<bucket>`` over ``rows`` as listed (a take listed twice
    counts twice), each row scored against its own label and bucketed by :func:`release_scenario`.

    ``predictions`` maps a take name to its ``probs`` (and ``label``, which must agree with the row's
    when known); a row whose take has no prediction is an error naming ``source``, the line and the take.
    """
    probs, labels, buckets = [], [], []
    for row in rows:
        where = f"{source}:{row.line}: take {row.take_name}"
        prediction = predictions.get(row.take_name)
        if prediction is None:
            raise ValueError(f"{where} has no prediction (was it in the evaluated split, or skipped?)")
        known = prediction.get("label")
        if known is not None and known != row.label:
            raise ValueError(f"{where}: label {row.label} here, {known} in the evaluated split")
        probs.append(prediction["probs"])
        labels.append(row.label)
        buckets.append(release_scenario(row.first_path))
    return {f"paper_{name}": value for name, value in skill_metrics(probs, labels, buckets).items()}


def by_take_name(entries: Sequence[Mapping], source: str = "") -> dict[str, Mapping]:
    """Prediction entries keyed by their ``take_name`` (each name once)."""
    named: dict[str, Mapping] = {}
    for entry in entries:
        name = entry.get("take_name")
        if not name:
            raise ValueError(f"{source}: a prediction has no take_name")
        if name in named:
            raise ValueError(f"{source}: take_name {name!r} appears twice")
        named[name] = entry
    return named


def score_predictions_file(
    path: str | os.PathLike, paper_population: str | os.PathLike | None = None
) -> dict[str, float]:
    """Metrics of a ``predictions.json`` (keys as logged, without the ``test/`` prefix); with
    ``paper_population`` (the release's evaluation jsonl) also :func:`paper_population_metrics`."""
    results = read_predictions(path)["results"]
    uids = sorted(results)
    probs = np.asarray([results[u]["probs"] for u in uids], dtype=np.float64)
    labels = [results[u]["label"] for u in uids]
    metrics = skill_metrics(probs, labels, [results[u]["scenario"] for u in uids])
    if paper_population is not None:
        predictions = by_take_name([results[u] for u in uids], str(path))
        rows = read_release_jsonl(paper_population)
        metrics.update(paper_population_metrics(predictions, rows, str(paper_population)))
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m egolab.metrics.skill PREDICTIONS [--paper-population JSONL]``: print the metrics."""
    parser = argparse.ArgumentParser(
        prog="python -m egolab.metrics.skill", description=__doc__.split("\n")[0]
    )
    parser.add_argument("predictions", help="a skill run's predictions.json")
    parser.add_argument(
        "--paper-population",
        help="the SkillFormer paper's evaluation jsonl: also score its rows as listed (paper_* metrics)",
    )
    args = parser.parse_args(argv)
    for name, value in score_predictions_file(args.predictions, args.paper_population).items():
        print(f"{name}: {value:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
