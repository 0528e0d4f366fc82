"""Find, load, fuse, write and score the predictions files of several runs of one task."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from egolab.fusion.scores import check_weights

PREDICTION_FILES = ("predictions.json", "predictions.npz")
HEADLINE_METRIC = {
    "localization": "average_mAP",
    "skill": "accuracy",
    "anticipation": "action_recall5",
    "backpack": "ar_verb_top1",
    "vqa": "accuracy",
}


@dataclass
class FusionResult:
    """The fused predictions file, its metrics, and each input run's metrics (same metric names)."""

    task: str
    path: Path
    metrics: dict[str, float]
    inputs: dict[str, dict[str, float]]


def find_predictions(run: str | Path) -> Path:
    """A predictions file, or the one inside a run dir."""
    path = Path(run)
    if path.is_file():
        return path
    for name in PREDICTION_FILES:
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f"no predictions file ({' or '.join(PREDICTION_FILES)}) in {path}")


def load_predictions(path: str | Path) -> tuple[str, dict]:
    """(task, content) of a predictions file: a json payload, or the arrays of an npz."""
    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            content = {key: data[key] for key in data.files}
        task = str(content.get("task", ""))
    else:
        try:
            content = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not valid json ({err})") from None
        task = content.get("task", "") if isinstance(content, dict) else ""
    if not task:
        raise ValueError(f"{path}: not an egolab predictions file (no 'task')")
    return task, content


def score_file(task: str, path: Path) -> dict[str, float]:
    """The task's own metric on a predictions file."""
    if task == "localization":
        from egolab.metrics.localization import score_predictions_file
    elif task == "skill":
        from egolab.metrics.skill import score_predictions_file
    elif task == "anticipation":
        from egolab.metrics.anticipation import score_predictions_file
    elif task == "backpack":
        from egolab.metrics.backpack import score_predictions_file
    elif task == "vqa":
        from egolab.metrics.vqa import score_predictions_file
    else:
        raise ValueError(f"{path}: no late fusion for task {task!r}")
    return score_predictions_file(path)


def fuse_runs(
    runs: list[str | Path],
    weights: list[float] | None = None,
    normalize: str | None = None,
    out: str | Path | None = None,
    **localization_options,
) -> FusionResult:
    """Fuse the predictions of ``runs`` (run dirs or files) with ``weights``; write and score the result.

    ``normalize`` (none / l1 / l2 / softmax) applies to classification, anticipation, vqa and backpack (AR,
    OSCC) scores before the weighted sum; ``localization_options`` go to the NMS of pooled detections.
    The fused file goes to ``out`` (default: `fused_predictions.<ext>` beside the first run's file).
    """
    if len(runs) < 2:
        raise ValueError("late fusion needs at least two runs")
    weights = check_weights(weights, len(runs))
    paths = [find_predictions(r) for r in runs]
    loaded = [load_predictions(p) for p in paths]
    tasks = {task for task, _ in loaded}
    if len(tasks) > 1:
        raise ValueError(f"cannot fuse predictions of different tasks: {sorted(tasks)}")
    task = tasks.pop()
    contents = [content for _, content in loaded]
    target = Path(out) if out else paths[0].with_name("fused_" + paths[0].name)
    target.parent.mkdir(parents=True, exist_ok=True)
    if task == "anticipation":
        from egolab.fusion.anticipation import fuse_anticipation

        fused = fuse_anticipation(contents, weights, normalize)
        with target.open("wb") as handle:
            np.savez_compressed(handle, **fused)
    elif task == "backpack":
        from egolab.fusion.backpack import fuse_backpack
        from egolab.metrics.backpack import write_predictions

        write_predictions(target, fuse_backpack(contents, weights, normalize))
    elif task == "vqa":
        from egolab.fusion.vqa import fuse_vqa
        from egolab.metrics.vqa import write_predictions as write_vqa

        write_vqa(target, fuse_vqa(contents, weights, normalize))
    elif task == "localization":
        from egolab.fusion.localization import fuse_localization

        target.write_text(json.dumps(fuse_localization(contents, weights, **localization_options)))
    else:
        from egolab.fusion.classification import fuse_classification

        target.write_text(json.dumps(fuse_classification(contents, weights, normalize)))
    inputs = {str(path): score_file(task, path) for path in paths}
    return FusionResult(task, target, score_file(task, target), inputs)
