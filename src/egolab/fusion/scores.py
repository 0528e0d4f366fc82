"""Score normalisation before a weighted sum (AVT's `normalize_before_combine`)."""

from __future__ import annotations

import numpy as np

from egolab.metrics.anticipation import softmax

NORMALIZATIONS = ("none", "l1", "l2", "softmax")


def normalize_scores(scores: np.ndarray, how: str | None) -> np.ndarray:
    """Normalise each row: `l1` / `l2` divide by the row's L_p norm, `softmax` exponentiates first."""
    scores = np.asarray(scores, np.float64)
    if how in (None, "none"):
        return scores
    if how == "softmax":
        return softmax(scores)
    if how in ("l1", "l2"):
        norm = np.linalg.norm(scores, ord=int(how[1]), axis=-1, keepdims=True)
        return scores / np.where(norm > 0, norm, 1.0)
    raise ValueError(f"unknown normalisation {how!r}; choose one of {NORMALIZATIONS}")


def check_weights(weights: list[float] | None, n: int) -> list[float]:
    """One weight per run (default: equal weights)."""
    if weights is None:
        return [1.0] * n
    if len(weights) != n:
        raise ValueError(f"got {len(weights)} weights for {n} runs")
    return [float(w) for w in weights]
