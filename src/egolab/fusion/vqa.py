"""Late fusion of vqa (EgoCross) predictions: a weighted sum of each run's option-letter probabilities.

Each run's ``option_probs`` (optionally normalised per item) are summed with its weight over the union of
item ids; the fused prediction is the letter of the largest sum, so the fused file's ``accuracy`` is a
letter-scoring accuracy (its ``reply`` is null). Items must agree on dataset and answer between runs.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from egolab.fusion.scores import normalize_scores
from egolab.metrics.vqa import LETTERS, PREDICTIONS_VERSION, id_from_key, letter_of_probs


def fuse_vqa(
    contents: list[dict], weights: list[float], normalize: str | None = None
) -> list[dict[str, Any]]:
    """Records (for :func:`egolab.metrics.vqa.write_predictions`) fusing several runs' predictions."""
    fused: dict[str, dict[str, Any]] = {}
    for content, weight in zip(contents, weights, strict=True):
        if content.get("version") != PREDICTIONS_VERSION:
            raise ValueError(
                f"expected vqa predictions of version {PREDICTIONS_VERSION!r}, got {content.get('version')!r}"
            )
        for key, result in content["results"].items():
            probs = result.get("option_probs")
            if probs is None:
                raise ValueError(f"item {key!r} has no option_probs: this run cannot be fused by probability")
            scores = normalize_scores(np.asarray(probs, np.float64)[None], normalize)[0]
            entry = fused.setdefault(
                key, {**result, "id": id_from_key(key), "scores": np.zeros(len(LETTERS))}
            )
            for field in ("dataset", "answer"):
                if str(entry.get(field)).upper() != str(result.get(field)).upper():
                    raise ValueError(
                        f"runs disagree on the {field} of item {key!r}: "
                        f"{entry.get(field)} vs {result.get(field)}"
                    )
            entry["scores"] = entry["scores"] + weight * scores
    records = []
    for entry in fused.values():
        scores = entry.pop("scores")
        total = scores.sum()
        probs = scores / total if total > 0 else scores
        records.append({**entry, "reply": None, "prediction": letter_of_probs(scores), "option_probs": probs})
    return records
