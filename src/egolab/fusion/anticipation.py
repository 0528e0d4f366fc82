"""Late fusion of anticipation predictions (`predictions.npz`), as the AVT / S-GEAR notebooks do it.

Each run contributes its marginalised verb and noun probabilities and its raw action logits; each space
is fused separately by a weighted sum over the union of segment uids (optionally normalised first).
"""

from __future__ import annotations

import numpy as np

from egolab.fusion.scores import normalize_scores

SPACES = ("verb_scores", "noun_scores", "action_logits")
PER_SEGMENT = ("verb_label", "noun_label", "action_label", "unseen")
SHARED = ("action_to_verb", "action_to_noun", "tail_verbs", "tail_nouns", "tail_actions")


def fuse_anticipation(runs: list[dict], weights: list[float], normalize: str | None = None) -> dict:
    """The fused arrays, in the predictions.npz layout."""
    first = runs[0]
    for run in runs[1:]:
        for key in SHARED:
            if not np.array_equal(run[key], first[key]):
                raise ValueError(f"runs disagree on {key}; fuse runs over the same action vocabulary only")
    uids = sorted({str(u) for run in runs for u in run["uid"]})
    position = {uid: i for i, uid in enumerate(uids)}
    fused = {key: np.zeros((len(uids), first[key].shape[1]), np.float64) for key in SPACES}
    per_segment = {key: np.full(len(uids), -1, first[key].dtype) for key in PER_SEGMENT}
    seen = np.zeros(len(uids), bool)
    for run, weight in zip(runs, weights, strict=True):
        rows = np.array([position[str(u)] for u in run["uid"]], np.int64)
        for key in SPACES:
            fused[key][rows] += weight * normalize_scores(run[key], normalize)
        for key in PER_SEGMENT:
            known = seen[rows]
            if (per_segment[key][rows][known] != run[key][known]).any():
                raise ValueError(f"runs disagree on {key} for some segments")
            per_segment[key][rows] = run[key]
        seen[rows] = True
    out = {key: first[key] for key in SHARED}
    out.update({key: value.astype(np.float32) for key, value in fused.items()})
    out.update(per_segment)
    out["uid"] = np.array(uids)
    out["task"], out["version"] = np.array("anticipation"), first["version"]
    return out
