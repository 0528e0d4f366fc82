"""Temporal action localization (ActionFormer): training with EMA weights, evaluation by tIoU mAP.

The module receives built objects (model, criterion, post-processor, metric, optimizer factory);
see docs/localization_contract.md for the batch and output formats they exchange.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from egolab.recipe import scale_learning_rates
from egolab.schedules import WARMUP_ACTIONFORMER, warmup_cosine_scheduler

PREDICTIONS_FILE = "predictions.json"


class LocalizationTask(L.LightningModule):
    """ActionFormer recipe: AdamW with linear warmup + cosine per iteration, EMA weights for evaluation.

    The warmup rises as the release's (``step / (W - 1)``). ``lr_scale`` (set at start-up by
    :mod:`egolab.recipe` from the ``recipe`` config block, e.g. the linear rule on another world size)
    multiplies the configured learning rate. The EMA is updated once per optimizer step, so gradient
    accumulation does not make it decay faster.
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: nn.Module,
        postprocess: Callable[[dict, dict], list[dict]],
        metric: Any,
        optimizer: Callable[..., torch.optim.Optimizer],
        weight_decay: float = 0.05,
        warmup_epochs: int = 5,
        eta_min: float = 1e-8,
        ema_decay: float = 0.999,
    ) -> None:
        super().__init__()
        self.model = model
        self.ema_model = copy.deepcopy(model).requires_grad_(False).eval()
        self.criterion = criterion
        self.postprocess = postprocess
        self.metric = metric
        self.optimizer_factory = optimizer
        self.weight_decay = weight_decay
        self.warmup_epochs = warmup_epochs
        self.eta_min = eta_min
        self.ema_decay = ema_decay
        self.lr_scale = 1.0  # set at start-up by egolab.recipe (linear rule on another world size)
        self._eval_preds: list[dict] = []
        self.test_predictions: list[dict] = []
        self.eval_targets: list[dict] = []
        self.label_names: list[str] | None = None

    # ----------------------------------------------------------------------------- wiring
    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        datamodule.max_div_factor = self.model.max_div_factor
        datamodule.max_seq_len = self.model.max_seq_len
        train = datamodule.train_dataset if stage == "fit" else None
        empty = list(getattr(train, "empty_label_ids", None) or [])
        if empty:  # EPIC: class ids with no training annotation (a checkpoint restored later wins)
            self.model.cls_head.mark_empty_classes(empty)
            self.ema_model.cls_head.mark_empty_classes(empty)
        dataset = datamodule.test_dataset if stage == "test" else datamodule.val_dataset
        if dataset is not None:
            self.label_names = ["proposal"] if self._scored_agnostic(dataset) else list(dataset.label_names)

    def _scored_agnostic(self, dataset: Any) -> bool:
        """Class-agnostic proposals, unless the post-processor labels them (ActivityNet classifier fusion)."""
        return dataset.class_agnostic and not getattr(self.postprocess, "assigns_labels", False)

    def configure_optimizers(self) -> dict:
        from egolab.models.actionformer import param_groups

        optimizer = self.optimizer_factory(param_groups(self.model, self.weight_decay))
        scale_learning_rates(optimizer, self.lr_scale)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(round(total * self.warmup_epochs / max(self.trainer.max_epochs, 1)))
        scheduler = warmup_cosine_scheduler(
            optimizer, total, warmup, eta_min=self.eta_min, warmup_slope=WARMUP_ACTIONFORMER
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ----------------------------------------------------------------------------- training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        outputs = self.model(batch["feats"], batch["masks"])
        losses = self.criterion(outputs, batch["segments"], batch["labels"])
        size = len(batch["video_ids"])
        for name, value in losses.items():
            key = "train/loss" if name == "final_loss" else f"train/{name}"
            self.log(key, value, batch_size=size, prog_bar=name == "final_loss")
        return losses["final_loss"]

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """Step, then update the EMA weights: once per optimizer step (not per accumulation micro-batch),
        and before the batch-end hooks, where a preemption checkpoint may be taken."""
        super().optimizer_step(*args, **kwargs)
        self._update_ema()

    @torch.no_grad()
    def _update_ema(self) -> None:
        """EMA over every floating-point entry of the state dict (weights and buffers)."""
        ema_state = self.ema_model.state_dict()
        for name, value in self.model.state_dict().items():
            if value.dtype.is_floating_point:
                ema_state[name].mul_(self.ema_decay).add_(value.detach(), alpha=1 - self.ema_decay)
            else:
                ema_state[name].copy_(value)

    # ----------------------------------------------------------------------------- evaluation
    def _predict(self, batch: dict) -> list[dict]:
        outputs = self.ema_model(batch["feats"], batch["masks"])
        return self.postprocess(outputs, batch)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_preds.extend(self._predict(batch))

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_preds.extend(self._predict(batch))

    def on_validation_epoch_start(self) -> None:
        self._eval_preds = []

    def on_test_epoch_start(self) -> None:
        self._eval_preds = []

    def on_validation_epoch_end(self) -> None:
        self._evaluate("val", self.trainer.datamodule.val_dataset)

    def on_test_epoch_end(self) -> None:
        self.test_predictions = self._evaluate("test", self.trainer.datamodule.test_dataset)

    def _evaluate(self, prefix: str, dataset: Any) -> list[dict]:
        """Gather predictions from every rank, drop the sampler's duplicates, score against the GT."""
        preds = self._eval_preds
        if self.trainer.world_size > 1:
            gathered = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, preds)
            preds = [p for rank_preds in gathered for p in rank_preds]
        unique = {p["video_id"]: p for p in preds}
        preds = [unique[k] for k in sorted(unique)]
        truth = dataset.ground_truth()
        if self._scored_agnostic(dataset):
            # The ActivityNet recipe trains class-agnostic proposals (num_classes=1): scored as proposals
            # unless the post-processor fuses external video-level classes (assigns_labels).
            truth = [dict(g, labels=np.zeros(len(g["labels"]), np.int64)) for g in truth]
        ground_truth = {g["video_id"]: g for g in truth}
        targets = [ground_truth[p["video_id"]] for p in preds]
        self.metric.reset()
        self.metric.update(preds, targets)
        results = self.metric.compute()
        size = max(len(preds), 1)
        for name, value in results.items():
            self.log(f"{prefix}/{name}", float(value), batch_size=size, prog_bar=name == "average_mAP")
        self._eval_preds = []
        self.eval_targets = targets
        return preds

    def write_predictions(self, run_dir: str | Path) -> Path:
        """ActivityNet submission json (labels by name) plus label ids, and the ground truth and tIoU
        thresholds the test scored them against, so late fusion can re-score without the dataset.
        Point-event runs also store the metric's ``point_tolerance_s``."""
        names = self.label_names
        results = {}
        for pred in self.test_predictions:
            results[pred["video_id"]] = [
                {
                    "segment": [float(s), float(e)],
                    "score": float(score),
                    "label": names[int(label)] if names else str(int(label)),
                    "label_id": int(label),
                }
                for (s, e), score, label in zip(pred["segments"].tolist(), pred["scores"], pred["labels"])
            ]
        ground_truth = {
            g["video_id"]: {
                "segments": np.asarray(g["segments"], np.float64).reshape(-1, 2).tolist(),
                "label_ids": [int(x) for x in g["labels"]],
            }
            for g in self.eval_targets
        }
        payload = {
            "version": "egolab-localization-1",
            "task": "localization",
            "results": results,
            "external_data": {"used": bool(getattr(self.postprocess, "assigns_labels", False))},
            "label_names": list(names) if names else None,
            "tiou_thresholds": list(self.metric.tiou_thresholds),
            "top_k": list(self.metric.top_k),
            "ground_truth": ground_truth,
        }
        tolerance = getattr(self.metric, "tolerance_s", None)
        if tolerance is not None:  # point events (SnapFormer): scored and fused as centre +/- tolerance
            payload["point_tolerance_s"] = float(tolerance)
        path = Path(run_dir) / PREDICTIONS_FILE
        path.write_text(json.dumps(payload))
        return path
