"""Late fusion of backpack (EgoPack) predictions (`predictions.npz`): the AR and OSCC sections.

Per section, each run's scores (AR verb and noun logits, OSCC logits) are optionally normalised per row
and summed with the run's weight over the union of uids; an id missing from a run gets nothing from it.
LTA samples and PNR localisations are not scores that add up, so they are left out of the fused file.
"""

from __future__ import annotations

import numpy as np

from egolab.fusion.scores import normalize_scores
from egolab.metrics.backpack import PREDICTIONS_VERSION, check_sections

FUSABLE = {
    "ar": (("ar_verb_logits", "ar_noun_logits"), ("ar_verb_label", "ar_noun_label")),
    "oscc": (("oscc_logits",), ("oscc_label",)),
}


def _fuse_section(task: str, runs: list[tuple[dict, float]], normalize: str | None) -> dict[str, np.ndarray]:
    """One task's fused arrays from the (content, weight) of each run that carries it."""
    score_keys, label_keys = FUSABLE[task]
    for key in score_keys:
        widths = {run[key].shape[1] for run, _ in runs}
        if len(widths) > 1:
            raise ValueError(f"runs disagree on the number of classes of {key}: {sorted(widths)}")
    uid_key = f"{task}_uid"
    for run, _ in runs:
        if len(np.unique(run[uid_key])) != len(run[uid_key]):
            raise ValueError(f"a run repeats uids in {uid_key}")
    uids = sorted({str(u) for run, _ in runs for u in run[uid_key]})
    position = {uid: i for i, uid in enumerate(uids)}
    first = runs[0][0]
    fused = {key: np.zeros((len(uids), first[key].shape[1]), np.float64) for key in score_keys}
    labels = {key: np.full(len(uids), -1, np.int64) for key in label_keys}
    seen = np.zeros(len(uids), bool)
    for run, weight in runs:
        rows = np.array([position[str(u)] for u in run[uid_key]], np.int64)
        for key in score_keys:
            fused[key][rows] += weight * normalize_scores(run[key], normalize)
        for key in label_keys:
            known = seen[rows]
            clash = labels[key][rows][known] != run[key][known]
            if clash.any():
                uid = uids[rows[known][np.argmax(clash)]]
                raise ValueError(f"runs disagree on {key} for {uid!r} (and maybe others)")
            labels[key][rows] = run[key]
        seen[rows] = True
    return {uid_key: np.array(uids), **fused, **labels}


def fuse_backpack(contents: list[dict], weights: list[float], normalize: str | None = None) -> dict:
    """The fused AR and OSCC sections of several runs' predictions, in the predictions.npz layout."""
    for content in contents:
        if str(content.get("version", "")) != PREDICTIONS_VERSION:
            raise ValueError(
                f"expected backpack predictions of version {PREDICTIONS_VERSION!r}, "
                f"got {content.get('version')!r}"
            )
    present = [check_sections(content) for content in contents]
    out: dict[str, np.ndarray] = {}
    tasks = []
    for task in FUSABLE:
        runs = [(c, w) for c, w, p in zip(contents, weights, present, strict=True) if task in p]
        if runs:
            out.update(_fuse_section(task, runs, normalize))
            tasks.append(task)
    if not tasks:
        carried = sorted({task for p in present for task in p})
        raise ValueError(
            f"late fusion covers the AR and OSCC sections only; these runs carry {carried} "
            f"(LTA samples and PNR localisations cannot be fused)"
        )
    out.update(task=np.array("backpack"), version=np.array(PREDICTIONS_VERSION), tasks=np.array(tasks))
    return out
