"""Demonstrator proficiency estimation (SkillFormer): cross-entropy over 4 levels, accuracy per scenario.

The module receives the built model (:class:`egolab.models.skillformer.SkillFormer`) and an optimizer
factory. Batches come from :mod:`egolab.data.skill`: training ``pixel_values`` ``(B, V, T, C, H, W)``,
evaluation ``(B, clips, V, T, C, H, W)`` whose clip probabilities are averaged per take.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from egolab.data.skill import LABEL_NAMES
from egolab.metrics.skill import PREDICTIONS_VERSION, confusion_matrix, plot_confusion_matrix, skill_metrics
from egolab.schedules import warmup_cosine_scheduler

PREDICTIONS_FILE = "predictions.json"
CONFUSION_FILE = "confusion_matrix.png"


class SkillTask(L.LightningModule):
    """SkillFormer recipe: AdamW on the trainable parameters, cosine schedule with warmup per step.

    Weight decay applies to matrices only (not to biases, norms or the calibration scalars), like the
    HF Trainer. With ``load_pretrained`` the backbone's checkpoint is loaded when fitting starts (a
    resumed run then restores its own weights over it).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        load_pretrained: bool = True,
        label_names: Sequence[str] = LABEL_NAMES,
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.weight_decay = weight_decay
        self.warmup_ratio = warmup_ratio
        self.load_pretrained = load_pretrained
        self.label_names = list(label_names)
        self._eval_records: list[dict] = []
        self.test_records: list[dict] = []

    # ----------------------------------------------------------------------------- wiring
    def setup(self, stage: str) -> None:
        if stage == "fit" and self.load_pretrained:
            self.model.load_pretrained()

    def configure_optimizers(self) -> dict:
        trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        groups = [
            {"params": [p for _, p in trainable if p.ndim >= 2], "weight_decay": self.weight_decay},
            {"params": [p for _, p in trainable if p.ndim < 2], "weight_decay": 0.0},
        ]
        optimizer = self.optimizer_factory([g for g in groups if g["params"]])
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = math.ceil(total * self.warmup_ratio)
        scheduler = warmup_cosine_scheduler(optimizer, total, warmup)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ----------------------------------------------------------------------------- training
    def training_step(self, batch: dict | None, batch_idx: int) -> torch.Tensor | None:
        if batch is None:  # every take of the batch was skipped (bad_videos=skip)
            return None
        labels = batch["labels"]
        if (labels < 0).any():
            bad = [u for u, v in zip(batch["take_uids"], labels.tolist()) if v < 0]
            raise ValueError(f"training takes without a proficiency label: {bad}")
        logits = self.model(batch["pixel_values"])
        loss = F.cross_entropy(logits.float(), labels)
        size = len(labels)
        self.log("train/loss", loss, batch_size=size, prog_bar=True)
        self.log("train/accuracy", (logits.argmax(1) == labels).float().mean(), batch_size=size)
        return loss

    # ----------------------------------------------------------------------------- evaluation
    def _eval_step(self, batch: dict | None) -> None:
        if batch is None:
            return
        pixels = batch["pixel_values"]
        b, clips = pixels.shape[:2]
        logits = self.model(pixels.flatten(0, 1)).float().reshape(b, clips, -1)
        probs = logits.softmax(dim=-1).mean(dim=1).cpu()
        logits = logits.mean(dim=1).cpu()
        for i, uid in enumerate(batch["take_uids"]):
            label = int(batch["labels"][i])
            self._eval_records.append(
                {
                    "take_uid": uid,
                    "scenario": batch["scenarios"][i],
                    "label": label if label >= 0 else None,
                    "probs": probs[i].tolist(),
                    "logits": logits[i].tolist(),
                }
            )

    def validation_step(self, batch: dict | None, batch_idx: int) -> None:
        self._eval_step(batch)

    def test_step(self, batch: dict | None, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_start(self) -> None:
        self._eval_records = []

    def on_test_epoch_start(self) -> None:
        self._eval_records = []

    def on_validation_epoch_end(self) -> None:
        self._evaluate("val")

    def on_test_epoch_end(self) -> None:
        self.test_records = self._evaluate("test")

    def _evaluate(self, prefix: str) -> list[dict]:
        """Gather every rank's takes, drop the sampler's duplicates, log accuracy overall and per scenario."""
        records = self._eval_records
        if self.trainer.world_size > 1:
            gathered: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, records)
            records = [r for rank_records in gathered for r in rank_records]
        unique = {r["take_uid"]: r for r in records}
        records = [unique[k] for k in sorted(unique)]
        self._eval_records = []
        if not records:
            return records
        metrics = skill_metrics(
            [r["probs"] for r in records], [r["label"] for r in records], [r["scenario"] for r in records]
        )
        for name, value in metrics.items():
            self.log(f"{prefix}/{name}", value, batch_size=len(records), prog_bar=name == "accuracy")
        return records

    def write_predictions(self, run_dir: str | Path) -> Path:
        """Write ``predictions.json`` (clip-averaged per-take probabilities, for late fusion) and the PNG."""
        results = {
            r["take_uid"]: {
                "probs": r["probs"],
                "logits": r["logits"],
                "pred": int(max(range(len(r["probs"])), key=r["probs"].__getitem__)),
                "label": r["label"],
                "scenario": r["scenario"],
            }
            for r in self.test_records
        }
        payload = {
            "version": PREDICTIONS_VERSION,
            "task": "skill",
            "label_names": self.label_names,
            "results": results,
        }
        run_dir = Path(run_dir)
        path = run_dir / PREDICTIONS_FILE
        path.write_text(json.dumps(payload))
        probs = [r["probs"] for r in self.test_records]
        labels = [r["label"] for r in self.test_records]
        if any(label is not None for label in labels):
            matrix = confusion_matrix(probs, labels)
            accuracy = skill_metrics(probs, labels, [r["scenario"] for r in self.test_records])["accuracy"]
            title = f"test: {int(matrix.sum())} takes, accuracy {accuracy:.3f}"
            plot_confusion_matrix(matrix, self.label_names, run_dir / CONFUSION_FILE, title)
        return path
