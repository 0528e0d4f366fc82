"""Demonstrator proficiency estimation (SkillFormer): cross-entropy over 4 levels, accuracy per scenario.

The module receives the built model (:class:`egolab.models.skillformer.SkillFormer`) and an optimizer
factory. Batches come from :mod:`egolab.data.skill`: training ``pixel_values`` ``(B, V, T, C, H, W)``,
evaluation ``(B, clips, V, T, C, H, W)`` whose clip probabilities are averaged per take. Evaluation
scores each take of the split once; ``paper_population`` adds the SkillFormer paper's way of scoring
to the test metrics (:func:`egolab.metrics.skill.paper_population_metrics`). Checkpoints hold the trained
parameters and their optimizer state, with a sha256 of the frozen rest (:mod:`egolab.checkpoints`): resume
and ``-t`` rebuild the frozen backbone from its source (hub name, or config and seed) and refuse a
checkpoint trained on another one. A full fine-tuning has nothing frozen: its checkpoints hold everything.
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

from egolab.checkpoints import check_fits, frozen_fingerprint, keep_trained
from egolab.data.skill_annotations import LABEL_NAMES, ReleaseRow, read_release_jsonl
from egolab.metrics.skill import (
    PREDICTIONS_VERSION,
    by_take_name,
    confusion_matrix,
    paper_population_metrics,
    plot_confusion_matrix,
    skill_metrics,
)
from egolab.recipe import scale_learning_rates
from egolab.schedules import warmup_cosine_scheduler

PREDICTIONS_FILE = "predictions.json"
CONFUSION_FILE = "confusion_matrix.png"


class SkillTask(L.LightningModule):
    """SkillFormer recipe: AdamW on the trainable parameters, cosine schedule with warmup per step.

    Weight decay applies as the HF Trainer applies it (:func:`decay_parameter_names`): to every trainable
    parameter except biases and LayerNorm weights, so to CrossViewFusion's calibration scalars too. With
    ``load_pretrained`` the backbone's checkpoint is loaded at the first setup (fit, or test for ``-t``),
    and the frozen part is fingerprinted then (``frozen_sha256``); a checkpoint then restores the trained
    weights over it. ``paper_population`` (a jsonl in the release's format, e.g. the
    paper's 590-row evaluation file) is read at setup; the test stage then also logs
    ``test/paper_accuracy[_<bucket>]`` over its rows, on top of the default per-take metrics.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        weight_decay: float = 0.01,
        warmup_ratio: float = 0.1,
        load_pretrained: bool = True,
        label_names: Sequence[str] = LABEL_NAMES,
        paper_population: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.weight_decay = weight_decay
        self.warmup_ratio = warmup_ratio
        self.load_pretrained = load_pretrained
        self.label_names = list(label_names)
        self.paper_population = paper_population
        self.lr_scale = 1.0  # set at start-up by egolab.recipe (linear rule on another world size)
        self.strict_loading = False  # checkpoints hold only the trained state (checked on load)
        self.frozen_sha256: str | None = None  # set at the first setup, once the frozen part is final
        self._paper_rows: list[ReleaseRow] = []
        self._eval_records: list[dict] = []
        self.test_records: list[dict] = []

    # ----------------------------------------------------------------------------- wiring
    def setup(self, stage: str) -> None:
        if self.paper_population is not None and not self._paper_rows:  # before training: fail fast
            self._paper_rows = read_release_jsonl(self.paper_population)
        if self.frozen_sha256 is None:  # once: a later stage must not reload over trained weights
            if self.load_pretrained:
                self.model.load_pretrained()
            self.frozen_sha256 = frozen_fingerprint(self)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep_trained(checkpoint, self, self.frozen_sha256)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_fits(checkpoint, self, str(self.trainer.ckpt_path), self.frozen_sha256)

    def configure_optimizers(self) -> dict:
        trainable = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        decay = decay_parameter_names(self.model)
        groups = [
            {"params": [p for n, p in trainable if n in decay], "weight_decay": self.weight_decay},
            {"params": [p for n, p in trainable if n not in decay], "weight_decay": 0.0},
        ]
        optimizer = self.optimizer_factory([g for g in groups if g["params"]])
        scale_learning_rates(optimizer, self.lr_scale)
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
                    "take_name": batch["take_names"][i],
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
        if prefix == "test" and self._paper_rows:
            predictions = by_take_name(records, "test predictions")
            metrics.update(
                paper_population_metrics(predictions, self._paper_rows, str(self.paper_population))
            )
        for name, value in metrics.items():
            self.log(f"{prefix}/{name}", value, batch_size=len(records), prog_bar=name == "accuracy")
        return records

    def write_predictions(self, run_dir: str | Path) -> Path:
        """Write ``predictions.json`` (clip-averaged per-take probabilities, for late fusion) and the PNG."""
        results = {
            r["take_uid"]: {
                "take_name": r["take_name"],
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


def decay_parameter_names(model: nn.Module) -> set[str]:
    """Names of the parameters the HF Trainer decays: all but biases (names containing ``bias``) and the
    weights of ``nn.LayerNorm`` modules."""
    norms = {
        f"{prefix}.{name}" if prefix else name
        for prefix, module in model.named_modules()
        if isinstance(module, nn.LayerNorm)
        for name, _ in module.named_parameters(recurse=False)
    }
    return {n for n, _ in model.named_parameters() if n not in norms and "bias" not in n.lower()}
