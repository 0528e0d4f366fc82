"""Cross-domain egocentric video QA (EgoCross): Qwen-VL fine-tuning (LoRA or full) and CloseQA evaluation.

The module receives the (lazily built) :class:`egolab.models.qwen_vl.QwenVL` and an optimizer factory.
Training batches (:class:`egolab.data.vqa.QwenVLCollator`) carry labels on the assistant tokens only.
Evaluation decodes greedily (left-padded batches), parses each reply with ``parse`` (the official json
rule, or the challenge baseline's first letter) and reads the four option letters' probabilities at the
answer position in one forward pass, so that runs fuse by probability and ``letter_accuracy`` sits next
to the generation accuracy. Checkpoints hold only the trained parameters (LoRA adapters, or the unfrozen
weights of a full fine-tuning; :mod:`egolab.checkpoints`); loading one rebuilds the base from
``model.pretrained`` first. The base is not fingerprinted: hashing a 4B model (about 9 GB) on every rank at
each start costs more than a fixed hub release risks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch

from egolab.checkpoints import check_fits, keep_trained, trained_keys
from egolab.metrics.vqa import (
    PARSE_RULES,
    PREDICTIONS_FILE,
    closeqa_metrics,
    make_record,
    write_predictions,
    write_submission,
)
from egolab.models.qwen_vl import QwenVL
from egolab.recipe import scale_learning_rates
from egolab.schedules import warmup_cosine_scheduler

SUBMISSION_FILE = "submission.json"


class VQATask(L.LightningModule):
    """LLaMA-Factory's SFT recipe: AdamW, linear warmup then cosine per optimizer step, loss on answers.

    ``processor`` (hub name or folder, usually ``${data.processor}``) gives the tokenizer that decodes
    replies. ``weight_decay`` applies to matrices only. ``max_new_tokens`` bounds each generated reply.
    """

    def __init__(
        self,
        model: QwenVL,
        optimizer: Callable[..., torch.optim.Optimizer],
        processor: str,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.1,
        max_new_tokens: int = 64,
        parse: str = "official",
    ) -> None:
        super().__init__()
        if parse not in PARSE_RULES:
            raise ValueError(f"task.parse must be one of {sorted(PARSE_RULES)}, got {parse!r}")
        self.model = model
        self.optimizer_factory = optimizer
        self.processor_name = processor
        self.weight_decay = weight_decay
        self.warmup_ratio = warmup_ratio
        self.lr_scale = 1.0  # set at start-up by egolab.recipe (linear rule on another world size)
        self.max_new_tokens = max_new_tokens
        self.parse = parse
        self.strict_loading = False  # checkpoints hold only the trained parameters (checked on load)
        self.tokenizer: Any = None
        self._eval_records: list[dict] = []
        self.test_records: list[dict] = []

    # ----------------------------------------------------------------------------- wiring
    def configure_model(self) -> None:
        """Build the network (download or load the base, add LoRA) and the tokenizer; once."""
        if self.tokenizer is None:
            from transformers import AutoProcessor

            self.tokenizer = AutoProcessor.from_pretrained(self.processor_name).tokenizer
        self.model.build()

    def configure_optimizers(self) -> dict:
        trainable = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        if not trainable:
            raise ValueError("nothing to train: every parameter is frozen")
        groups = [
            {"params": [p for _, p in trainable if p.ndim >= 2], "weight_decay": self.weight_decay},
            {"params": [p for _, p in trainable if p.ndim < 2], "weight_decay": 0.0},
        ]
        optimizer = self.optimizer_factory([g for g in groups if g["params"]])
        scale_learning_rates(optimizer, self.lr_scale)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        scheduler = warmup_cosine_scheduler(optimizer, total, math.ceil(total * self.warmup_ratio))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def trained_keys(self) -> list[str]:
        """State-dict keys a checkpoint keeps: :func:`egolab.checkpoints.trained_keys`."""
        return trained_keys(self)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep_trained(checkpoint, self)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_fits(checkpoint, self, str(self.trainer.ckpt_path))

    # ----------------------------------------------------------------------------- training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self.model(batch)
        self.log("train/loss", loss, batch_size=batch["input_ids"].shape[0], prog_bar=True)
        return loss

    # ----------------------------------------------------------------------------- evaluation
    def _eval_step(self, batch: dict) -> None:
        probs = self.model.letter_probs(batch).cpu()
        new_tokens = self.model.generate(
            batch,
            self.max_new_tokens,
            eos_token_id=self.tokenizer.convert_tokens_to_ids("<|im_end|>"),
            pad_token_id=self.tokenizer.pad_token_id,
        )
        replies = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        for meta, reply, p in zip(batch["meta"], replies, probs.tolist(), strict=True):
            self._eval_records.append(make_record(meta, reply.strip(), p, parse=self.parse))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
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
        """Gather every rank's records, drop the sampler's duplicates, log the CloseQA accuracies."""
        records = self._eval_records
        if self.trainer.world_size > 1:
            gathered: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, records)
            records = [r for rank_records in gathered for r in rank_records]
        unique = {str(r["id"]): r for r in records}
        records = [unique[k] for k in sorted(unique, key=lambda k: (len(k), k))]
        self._eval_records = []
        if records and all(r["answer"] is not None for r in records):
            for name, value in closeqa_metrics(records).items():
                self.log(f"{prefix}/{name}", value, batch_size=len(records), prog_bar=name == "accuracy")
        return records

    def write_predictions(self, run_dir: str | Path) -> Path:
        """Write ``predictions.json`` (reply, prediction, option probabilities per item) and, when every
        item knows its ``question_id``, the challenge ``submission.json``."""
        path = write_predictions(Path(run_dir) / PREDICTIONS_FILE, self.test_records)
        if self.test_records and all(r.get("question_id") for r in self.test_records):
            write_submission(Path(run_dir) / SUBMISSION_FILE, self.test_records)
        return path
