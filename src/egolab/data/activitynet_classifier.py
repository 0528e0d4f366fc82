"""ActivityNet 1.3 as released: class-agnostic proposals fused with external video-level class scores.

ActionFormer trains ActivityNet as one "proposal" class and labels the proposals afterwards with a video
classifier's scores (``test_cfg.ext_score_file: cuhk_val_simp_share.json``; ``postprocess_results`` in
the release's ``libs/utils/postprocessing.py``): keep the 200 best proposals of a video, take the video's
2 best classes, repeat every proposal once per class and score it ``sqrt(class_score * proposal_score)``.
OpenTAD's ``CUHKANETClassifier`` does the same with the plain product; as sqrt is monotonic, both rank
(and so score in mAP) identically.

Score file (CUHK's ActivityNet 2017 classifier on the validation videos; OpenTAD's cuhk_val_simp_7.json
has the same layout)::

    {"results": {"<video_id>": [one score per class]}, "class": ["<class name>", ...], ...}

Video ids are the annotation json's keys (no ``v_`` prefix). The release uses the column index as the
label id, which is right only if the file's class order is the json's label_id order; here each column is
mapped by its class name to the dataset's label id (the json's ``label -> label_id``, or the index in an
explicit ``label_names`` list). A file without ``"class"`` falls back to the release's column = label id.

:class:`ClassifierFusionPostProcessor` applies it after the post-processor, so that an experiment only
changes ``task.postprocess`` (see expts/localization/anet_tsp_classifier.txt and
:func:`fused_postprocessor`). The score file and the json are read on first use, so building the task
needs no data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

FUSIONS = ("sqrt", "product")
"""``sqrt(class * proposal)`` (ActionFormer release) or ``class * proposal`` (OpenTAD); same ranking."""


@dataclass
class VideoClassScores:
    """External video-level class scores: per video id a (C,) array, and the label id of each column."""

    source: Path
    scores: dict[str, np.ndarray]
    label_ids: np.ndarray  # (C,) int64 dataset label id of each column


def label_ids_from_json(json_file: str | os.PathLike) -> dict[str, int]:
    """``label -> label_id`` over every annotation of an ActivityNet-style json (the dataset's ids)."""
    path = Path(json_file)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the annotation json ({err})") from err
    database = data.get("database") if isinstance(data, dict) else None
    if not isinstance(database, dict):
        raise ValueError(f"{path}: expected an object with a 'database' mapping")
    ids: dict[str, int] = {}
    for vid, entry in database.items():
        for k, ann in enumerate(entry.get("annotations", [])):
            label, lid = ann.get("label"), ann.get("label_id")
            valid = isinstance(label, str) and isinstance(lid, int | float) and lid == int(lid) >= 0
            if not valid or ids.setdefault(label, int(lid)) != lid:
                raise ValueError(
                    f"{path}: video {vid!r}, annotation {k}: label {label!r} / label_id {lid!r} "
                    f"is missing or disagrees with an earlier one ({ids.get(label)!r})"
                )
    return ids


def load_class_scores(path: str | os.PathLike, label_ids: Mapping[str, int]) -> VideoClassScores:
    """Read a score file and map its columns to label ids (by ``"class"`` names when the file has them)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot read the classifier score json ({err})") from err
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, dict) or not results:
        raise ValueError(f"{path}: expected {{'results': {{video_id: [class scores]}}, 'class': [names]}}")
    names = data.get("class")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise ValueError(f"{path}: 'class' must be a list of class names")
    if names is None:
        columns = np.arange(len(next(iter(results.values()))), dtype=np.int64)
    else:
        unknown = [n for n in names if n not in label_ids]
        if unknown:
            raise ValueError(
                f"{path}: {len(unknown)} class name(s) are not labels of the dataset, e.g. {unknown[:5]}"
            )
        columns = np.asarray([label_ids[n] for n in names], dtype=np.int64)
    scores = {}
    for vid, row in results.items():
        array = np.asarray(row, dtype=np.float64)
        if array.shape != columns.shape:
            raise ValueError(f"{path}: video {vid!r}: {array.size} class scores, expected {len(columns)}")
        if not (np.isfinite(array) & (array >= 0)).all():
            raise ValueError(f"{path}: video {vid!r}: class scores must be finite and >= 0")
        scores[str(vid)] = array
    return VideoClassScores(path, scores, columns)


def fuse_video(
    prediction: Mapping[str, Any],
    class_scores: np.ndarray,
    label_ids: np.ndarray,
    topk: int = 2,
    num_proposals: int = 200,
    fusion: str = "sqrt",
) -> dict:
    """Label one video's class-agnostic proposals with its ``topk`` classes (input labels are ignored).

    The ``num_proposals`` best proposals are repeated for each of the video's ``topk`` best classes,
    scored by :data:`FUSIONS` ``fusion`` of class and proposal score, labelled with the class's label id,
    and sorted by score (descending, ties in class order then proposal order).
    """
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    seg_t = torch.as_tensor(prediction["segments"])
    score_t = torch.as_tensor(prediction["scores"])
    segs = seg_t.detach().cpu().double().numpy().reshape(-1, 2)
    scores = score_t.detach().cpu().double().numpy().reshape(-1)
    best = np.argsort(-scores, kind="stable")[:num_proposals]
    classes = np.argsort(-class_scores, kind="stable")[:topk]
    fused = class_scores[classes][:, None] * scores[best][None, :]
    fused = np.sqrt(fused) if fusion == "sqrt" else fused
    fused = fused.reshape(-1)
    order = np.argsort(-fused, kind="stable")
    return {
        **prediction,
        "segments": torch.from_numpy(np.tile(segs[best], (len(classes), 1))[order]).to(seg_t.dtype),
        "scores": torch.from_numpy(fused[order]).to(score_t.dtype),
        "labels": torch.from_numpy(np.repeat(label_ids[classes], len(best))[order]),
    }


class ClassifierFusion:
    """Per-video fusion with the scores of ``ext_score_file`` (module doc); read on first use.

    Label ids come from ``label_names`` (id = index) or else from ``json_file`` (its ``label_id`` values).
    """

    def __init__(
        self,
        ext_score_file: str | os.PathLike,
        json_file: str | os.PathLike | None = None,
        label_names: Sequence[str] | None = None,
        topk: int = 2,
        num_proposals: int = 200,
        fusion: str = "sqrt",
    ) -> None:
        if (json_file is None) == (label_names is None):
            raise ValueError("give exactly one of json_file (the annotation json) and label_names")
        if fusion not in FUSIONS:
            raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
        if topk < 1 or num_proposals < 1:
            raise ValueError(f"topk and num_proposals must be >= 1, got {topk} and {num_proposals}")
        self.ext_score_file = Path(ext_score_file)
        self.json_file = None if json_file is None else Path(json_file)
        self.label_names = None if label_names is None else [str(n) for n in label_names]
        self.topk = topk
        self.num_proposals = num_proposals
        self.fusion = fusion
        self._scores: VideoClassScores | None = None

    @property
    def scores(self) -> VideoClassScores:
        """The score file, mapped to label ids (read once)."""
        if self._scores is None:
            if self.label_names is not None:
                ids = {name: i for i, name in enumerate(self.label_names)}
            else:
                ids = label_ids_from_json(self.json_file)
            self._scores = load_class_scores(self.ext_score_file, ids)
        return self._scores

    def __call__(self, prediction: Mapping[str, Any]) -> dict:
        """Labelled detections of one video; raises if the file has no scores for it."""
        table = self.scores
        video_id = str(prediction["video_id"])
        if video_id not in table.scores:
            raise ValueError(f"{table.source}: no class scores for video {video_id!r}")
        return fuse_video(
            prediction, table.scores[video_id], table.label_ids, self.topk, self.num_proposals, self.fusion
        )

    def apply(self, predictions: Sequence[Mapping[str, Any]]) -> list[dict]:
        """Fuse every video of a post-processor's output."""
        return [self(p) for p in predictions]


class ClassifierFusionPostProcessor:
    """A class-agnostic post-processor followed by :class:`ClassifierFusion` on each video.

    ``assigns_labels`` tells the task that the detections carry real class ids although the dataset is
    class-agnostic, so they must be scored per class.
    """

    assigns_labels = True

    def __init__(
        self,
        postprocess: Callable[[Mapping[str, Any], Mapping[str, Any]], list[dict]],
        fusion: ClassifierFusion,
    ) -> None:
        self.postprocess = postprocess
        self.fusion = fusion

    def __call__(self, outputs: Mapping[str, Any], batch: Mapping[str, Any]) -> list[dict]:
        return self.fusion.apply(self.postprocess(outputs, batch))


def fused_postprocessor(
    ext_score_file: str | os.PathLike,
    json_file: str | os.PathLike | None = None,
    label_names: Sequence[str] | None = None,
    topk: int = 2,
    num_proposals: int = 200,
    fusion: str = "sqrt",
    **postprocess_kwargs: Any,
) -> ClassifierFusionPostProcessor:
    """Hydra target: ``ActionFormerPostProcessor(**postprocess_kwargs)`` followed by classifier fusion.

    Taking the post-processor's own keyword arguments lets an experiment switch ``task.postprocess`` to
    this target with one line while the other ``task.postprocess.*`` keys keep their meaning.
    """
    from egolab.models.actionformer_postprocess import ActionFormerPostProcessor

    fuse = ClassifierFusion(ext_score_file, json_file, label_names, topk, num_proposals, fusion)
    return ClassifierFusionPostProcessor(ActionFormerPostProcessor(**postprocess_kwargs), fuse)
