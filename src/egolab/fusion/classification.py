"""Late fusion of classification predictions (`predictions.json`: per-id class probabilities)."""

from __future__ import annotations

import numpy as np

from egolab.fusion.scores import normalize_scores


def fuse_classification(payloads: list[dict], weights: list[float], normalize: str | None = None) -> dict:
    """Weighted sum of each run's (optionally normalised) `probs` over the union of ids.

    An id missing from a run gets nothing from that run. Labels and metadata (scenario) must agree
    between runs. The fused `probs` are the summed scores rescaled to sum to 1 (argmax unchanged).
    """
    names = payloads[0].get("label_names")
    for payload in payloads[1:]:
        if payload.get("label_names") != names:
            raise ValueError("runs disagree on label_names; fuse runs of the same task and classes only")
    fused: dict[str, dict] = {}
    for payload, weight in zip(payloads, weights, strict=True):
        for uid, record in payload["results"].items():
            probs = normalize_scores(np.asarray(record["probs"], np.float64)[None], normalize)[0]
            entry = fused.setdefault(uid, {**record, "scores": np.zeros_like(probs)})
            if entry.get("label") != record.get("label"):
                raise ValueError(
                    f"runs disagree on the label of {uid!r}: {entry.get('label')} vs {record.get('label')}"
                )
            entry["scores"] = entry["scores"] + weight * probs
    results = {}
    for uid, entry in fused.items():
        scores = entry.pop("scores")
        total = scores.sum()
        probs = scores / total if total > 0 else scores
        entry.update(probs=probs.tolist(), pred=int(np.argmax(scores)))
        entry.pop("logits", None)
        results[uid] = entry
    return {**payloads[0], "results": results, "fused_from": len(payloads)}
