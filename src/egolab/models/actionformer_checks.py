"""Start-up check of a localization configuration: every problem at once, before anything is built.

The model, loss and post-processor also refuse bad values when they are built, but one at a time; this
check reads the composed config (no torch import) so that ``launch.py`` can list all problems of an
experiment before it starts or submits any run. It covers the regression ranges (one ``[r_min, r_max]``
per pyramid level, increasing), the window sizes and the divisibility of ``max_seq_len`` per level, head
and attention sizes, loss and NMS names, and the value ranges of their numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

BACKBONES = ("convTransformer", "convTransformerv2")
HEADS = ("v1", "v2")
NECKS = ("identity", "fpn", "cs_fpn")
REG_LOSSES = ("diou", "eiou", "giou", "iou")
REG_VARIANTS = ("none", "focal", "iou_weighted")
CLS_LOSSES = ("focal", "qfl")
NMS_METHODS = ("soft", "hard", "none")


def _get(node: Mapping[str, Any] | None, key: str, default: Any = None) -> Any:
    return default if node is None else node.get(key, default)


def _model_problems(model: Mapping[str, Any]) -> list[str]:
    problems = []
    arch = list(_get(model, "backbone_arch", [2, 2, 5]))
    levels = int(arch[2]) + 1 if len(arch) == 3 else 0
    if len(arch) != 3:
        problems.append(f"model.backbone_arch must have 3 entries, got {arch}")
    start = int(_get(model, "fpn_start_level", 0))
    outputs = levels - start
    ranges = list(_get(model, "regression_range", []))
    if outputs and len(ranges) != outputs:
        problems.append(
            f"model.regression_range has {len(ranges)} entries for {outputs} pyramid levels "
            "(backbone_arch[2] + 1 - fpn_start_level)"
        )
    for level, r in enumerate(ranges):
        r = list(r)
        if len(r) != 2 or not float(r[0]) < float(r[1]):
            problems.append(f"model.regression_range[{level}]={r} must be [r_min, r_max] with r_min < r_max")
        elif level and float(r[0]) < float(list(ranges[level - 1])[0]):
            problems.append(f"model.regression_range[{level}] starts below level {level - 1}'s range")
    windows = _get(model, "n_mha_win_size", -1)
    windows = [int(windows)] * levels if isinstance(windows, int) else [int(w) for w in windows]
    if levels and len(windows) != levels:
        problems.append(f"model.n_mha_win_size lists {len(windows)} sizes for {levels} backbone levels")
    scale = int(_get(model, "scale_factor", 2))
    max_seq_len = int(_get(model, "max_seq_len", 2304))
    for level, window in enumerate(windows[:levels]):
        if window > 1 and window % 2 != 1:
            problems.append(f"model.n_mha_win_size at level {level} is {window}: windows must be odd or <= 1")
        stride = scale**level
        divisor = stride * (window // 2) * 2 if window > 1 else stride
        if max_seq_len % divisor:
            problems.append(
                f"model.max_seq_len={max_seq_len} is not divisible by {divisor} at level {level} "
                f"(stride {stride}, window {window})"
            )
    n_head, embd_dim = int(_get(model, "n_head", 4)), int(_get(model, "embd_dim", 512))
    if n_head < 1 or embd_dim % n_head:
        problems.append(f"model.embd_dim={embd_dim} must be divisible by model.n_head={n_head}")
    n_kv_head = _get(model, "n_kv_head")
    if n_kv_head is not None and (int(n_kv_head) < 1 or n_head % int(n_kv_head)):
        problems.append(f"model.n_head={n_head} must be a multiple of model.n_kv_head={n_kv_head}")
    for key, names in (("backbone_type", BACKBONES), ("head_type", HEADS), ("fpn_type", NECKS)):
        value = _get(model, key)
        if value is not None and value not in names:
            problems.append(f"model.{key} must be one of {list(names)}, got {value!r}")
    if int(_get(model, "head_num_layers", 3)) < 1:
        problems.append("model.head_num_layers must be >= 1")
    prior = float(_get(model, "cls_prior_prob", 0.01))
    if not 0.0 < prior < 1.0:
        problems.append(f"model.cls_prior_prob must lie in (0, 1), got {prior}")
    for key in ("dropout", "droppath"):
        value = float(_get(model, key, 0.0))
        if not 0.0 <= value < 1.0:
            problems.append(f"model.{key} must lie in [0, 1), got {value}")
    return problems


def _criterion_problems(criterion: Mapping[str, Any] | None) -> list[str]:
    problems = []
    for key, names in (
        ("reg_loss_type", REG_LOSSES),
        ("reg_loss_variant", REG_VARIANTS),
        ("cls_loss_type", CLS_LOSSES),
    ):
        value = _get(criterion, key)
        if value is not None and value not in names:
            problems.append(f"task.criterion.{key} must be one of {list(names)}, got {value!r}")
    smoothing = float(_get(criterion, "label_smoothing", 0.0))
    if not 0.0 <= smoothing < 1.0:
        problems.append(f"task.criterion.label_smoothing must lie in [0, 1), got {smoothing}")
    radius = float(_get(criterion, "center_sample_radius", 1.5))
    if radius <= 0:
        problems.append(f"task.criterion.center_sample_radius must be > 0, got {radius}")
    if float(_get(criterion, "init_loss_norm", 1.0)) <= 0:
        problems.append("task.criterion.init_loss_norm must be > 0")
    if float(_get(criterion, "reg_loss_gamma", 2.0)) < 1:
        problems.append(
            "task.criterion.reg_loss_gamma must be >= 1 (below, a perfect box has a NaN gradient)"
        )
    if _get(criterion, "cls_loss_type") == "qfl" and smoothing > 0:
        problems.append("task.criterion.cls_loss_type=qfl does not combine with label_smoothing > 0")
    return problems


def _postprocess_problems(post: Mapping[str, Any] | None) -> list[str]:
    problems = []
    method = _get(post, "nms_method", "soft")
    if method not in NMS_METHODS:
        problems.append(f"task.postprocess.nms_method must be one of {list(NMS_METHODS)}, got {method!r}")
    iou = float(_get(post, "iou_threshold", 0.1))
    if not 0.0 < iou <= 1.0:
        problems.append(f"task.postprocess.iou_threshold must lie in (0, 1], got {iou}")
    for key in ("nms_sigma", "score_temperature"):
        value = float(_get(post, key, 1.0))
        if not value > 0 or not math.isfinite(value):
            problems.append(f"task.postprocess.{key} must be a positive number, got {value}")
    for key in ("min_score", "pre_nms_thresh", "voting_thresh"):
        value = float(_get(post, key, 0.0))
        if not 0.0 <= value <= 1.0:
            problems.append(f"task.postprocess.{key} must lie in [0, 1], got {value}")
    for key in ("pre_nms_topk", "max_seg_num"):
        if int(_get(post, key, 1)) < 1:
            problems.append(f"task.postprocess.{key} must be >= 1")
    if _get(post, "use_diou_nms", False) and method != "soft":
        problems.append("task.postprocess.use_diou_nms needs nms_method=soft")
    class_sigma = _get(post, "class_sigma") or {}
    if class_sigma and (method != "soft" or not _get(post, "multiclass_nms", True)):
        problems.append("task.postprocess.class_sigma needs nms_method=soft and multiclass_nms=true")
    bad = {k: v for k, v in dict(class_sigma).items() if not float(v) > 0}
    if bad:
        problems.append(f"task.postprocess.class_sigma values must be > 0, got {bad}")
    return problems


def config_problems(cfg: Mapping[str, Any]) -> list[str]:
    """Every problem of a composed localization config (model, task.criterion, task.postprocess)."""
    task = cfg.get("task") or {}
    return [
        *_model_problems(cfg.get("model") or {}),
        *_criterion_problems(task.get("criterion")),
        *_postprocess_problems(task.get("postprocess")),
    ]
