"""Action anticipation (AVT-h / S-GEAR): training with the weighted losses, evaluation by class-mean recall.

The module receives built objects: the model (:class:`egolab.models.avt.AnticipationModel`), the loss
(:class:`egolab.models.sgear.AnticipationLoss`) and an optimizer factory. Batches come from
:class:`egolab.data.anticipation.AnticipationDataModule`. Evaluation gathers the action logits of every
segment (across ranks, de-duplicated), scores them with :mod:`egolab.metrics.anticipation`, and the
test set's scores become ``predictions.npz`` (format in :meth:`AnticipationTask.write_predictions`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from egolab.metrics.anticipation import PREDICTIONS_VERSION, marginalize, metrics_from_arrays, tail_action_ids
from egolab.models.sgear import RELEASE_INIT_BLOCKS, init_from_run
from egolab.recipe import scale_learning_rates
from egolab.schedules import WARMUP_AVT, warmup_cosine_scheduler

PREDICTIONS_FILE = "predictions.npz"
EMBEDDINGS_FILE = "embeddings.pt"


class AnticipationTask(L.LightningModule):
    """AVT/S-GEAR recipe: one optimizer with linear warmup then cosine decay per step.

    ``include_discarded`` counts the dataset's discarded segments (``dataset.discarded``) with all-zero
    scores. With the dataset's ``rulstm_discard`` (the data configs set it from this flag) that is RULSTM's
    official EK100 evaluation: RULSTM's 10 discarded validation segments score zero, and the 20 more that
    AVT drops are scored from RULSTM's padding frame. Without it, AVT's 30 score zero (as AVT's challenge
    submissions fill them). Off by default, as in AVT / S-GEAR, whose numbers cover the kept segments only.

    ``store_embeddings=N`` keeps, at test time, up to N head embeddings (the gated feature the classifier
    sees) per ground-truth action and writes them to ``embeddings.pt`` beside the predictions: the input
    of ``python -m egolab.prototypes visual`` (S-GEAR's visual prototypes from a recognition run).

    ``init_from`` (a run folder or a ``.ckpt``) starts a fit from the ``init_blocks`` of that run (the
    released S-GEAR feature runs start from the ViT run), see :func:`egolab.models.sgear.init_from_run`;
    a resumed run then restores its own checkpoint over them.
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        warmup_epochs: int = 0,
        eta_min: float = 0.0,
        store_embeddings: int = 0,
        include_discarded: bool = False,
        init_from: str | None = None,
        init_blocks: Sequence[str] = RELEASE_INIT_BLOCKS,
    ) -> None:
        super().__init__()
        self.model = model
        self.criterion = criterion
        self.optimizer_factory = optimizer
        self.warmup_epochs = warmup_epochs
        self.eta_min = eta_min
        self.store_embeddings = int(store_embeddings)
        self.include_discarded = include_discarded
        self.lr_scale = 1.0  # set at start-up by egolab.recipe (linear rule on another world size)
        self.init_from = init_from
        self.init_blocks = list(init_blocks)
        self._records: list[tuple[int, np.ndarray, np.ndarray | None]] = []
        self.test_arrays: dict[str, np.ndarray] | None = None
        self.test_embeddings: dict[int, torch.Tensor] = {}

    # ----------------------------------------------------------------------------- wiring
    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        for dataset in (datamodule.train_dataset, datamodule.val_dataset, datamodule.test_dataset):
            if dataset is not None:
                self._check_classes(dataset)
        if stage == "fit":
            self.model.load_pretrained()
            if self.init_from is not None:
                init_from_run(self.model, self.init_from, self.init_blocks)

    def _check_classes(self, dataset: Any) -> None:
        head = getattr(self.model.head, "fc", None)
        actions = dataset.actions.num_actions
        if head is not None and head.out_features != actions:
            raise ValueError(
                f"{dataset.actions.path}: {actions} actions, but the model classifies {head.out_features} "
                "(set model.num_actions)"
            )

    def configure_optimizers(self) -> dict:
        optimizer = self.optimizer_factory([p for p in self.model.parameters() if p.requires_grad])
        scale_learning_rates(optimizer, self.lr_scale)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        warmup = int(round(total * self.warmup_epochs / max(self.trainer.max_epochs, 1)))
        scheduler = warmup_cosine_scheduler(
            optimizer, total, warmup, eta_min=self.eta_min, warmup_slope=WARMUP_AVT
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ----------------------------------------------------------------------------- training
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        outputs = self.model(batch["inputs"])
        losses = self.criterion(outputs, batch, self.model.prototypes)
        size = len(batch["uid"])
        for name, value in losses.items():
            self.log(f"train/{name}", value, batch_size=size, prog_bar=name == "loss")
        return losses["loss"]

    # ----------------------------------------------------------------------------- evaluation
    def _eval_step(self, batch: dict) -> None:
        outputs = self.model(batch["inputs"])
        logits = outputs["logits"].float().cpu().numpy()
        embeddings = outputs["embedding"].float().cpu().numpy() if self.store_embeddings else None
        for i, index in enumerate(batch["index"].tolist()):
            self._records.append((index, logits[i], None if embeddings is None else embeddings[i]))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_start(self) -> None:
        self._records = []

    def on_test_epoch_start(self) -> None:
        self._records = []

    def on_validation_epoch_end(self) -> None:
        self._evaluate("val", self.trainer.datamodule.val_dataset)

    def on_test_epoch_end(self) -> None:
        self.test_arrays = self._evaluate("test", self.trainer.datamodule.test_dataset)

    def _gather(self) -> list[tuple[int, np.ndarray, np.ndarray | None]]:
        """Records of every rank, one per segment index (the distributed sampler repeats a few)."""
        records = self._records
        if self.trainer.world_size > 1:
            gathered: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, records)
            records = [r for rank_records in gathered for r in rank_records]
        unique = {r[0]: r for r in records}
        return [unique[k] for k in sorted(unique)]

    def _evaluate(self, prefix: str, dataset: Any) -> dict[str, np.ndarray]:
        records = self._gather()
        self._records = []
        if not records:
            return {}
        indices = [r[0] for r in records]
        arrays = prediction_arrays(
            dataset, indices, np.stack([r[1] for r in records]), include_discarded=self.include_discarded
        )
        if prefix == "test" and self.store_embeddings:
            self.test_embeddings = self._collect_embeddings(arrays["action_label"], [r[2] for r in records])
        metrics = metrics_from_arrays(arrays)
        for name, value in metrics.items():
            self.log(
                f"{prefix}/{name}", float(value), batch_size=len(indices), prog_bar=name == "action_recall5"
            )
        return arrays

    def _collect_embeddings(self, labels: np.ndarray, embeddings: list) -> dict[int, torch.Tensor]:
        per_class: dict[int, list[np.ndarray]] = {}
        for label, vector in zip(labels.tolist(), embeddings):
            if label >= 0 and len(per_class.setdefault(label, [])) < self.store_embeddings:
                per_class[label].append(vector)
        return {c: torch.from_numpy(np.stack(v)) for c, v in sorted(per_class.items())}

    def write_predictions(self, run_dir: str | Path) -> Path:
        """Write ``predictions.npz`` (and ``embeddings.pt`` with ``store_embeddings``) into ``run_dir``.

        Arrays: ``uid`` (N,) str; ``action_logits`` (N, A) float32; ``verb_scores`` (N, V) and
        ``noun_scores`` (N, Nn) float32 marginals of the softmaxed action scores; ``verb_label``,
        ``noun_label``, ``action_label`` (N,) int64, -1 unknown; ``unseen`` (N,) bool; ``action_to_verb``
        and ``action_to_noun`` (A,) int64; ``tail_verbs``, ``tail_nouns``, ``tail_actions`` class ids;
        ``task`` = "anticipation" and ``version`` = "egolab-anticipation-1" (0-d strings).
        """
        if self.test_arrays is None:
            raise RuntimeError("no test predictions: run trainer.test first")
        run_dir = Path(run_dir)
        path = run_dir / PREDICTIONS_FILE
        np.savez_compressed(path, **self.test_arrays)
        if self.store_embeddings:
            torch.save({"embeddings": self.test_embeddings}, run_dir / EMBEDDINGS_FILE)
        return path


def prediction_arrays(
    dataset: Any, indices: list[int], action_logits: np.ndarray, include_discarded: bool = False
) -> dict[str, np.ndarray]:
    """The predictions-file arrays of the given dataset segments and their action logits.

    ``include_discarded`` appends the dataset's discarded segments with all-zero verb, noun and action
    scores (RULSTM's ``get_scores(include_discarded=True)``).
    """
    actions = dataset.actions
    segments = [dataset.segments[i] for i in indices]
    logits = np.asarray(action_logits, dtype=np.float32)
    unseen = np.zeros(len(segments), dtype=bool) if dataset.unseen is None else dataset.unseen[indices]
    verb_scores = marginalize(logits, actions.verb, actions.num_verbs).astype(np.float32)
    noun_scores = marginalize(logits, actions.noun, actions.num_nouns).astype(np.float32)
    discarded = list(dataset.discarded) if include_discarded else []
    if discarded:
        segments = segments + discarded
        logits, verb_scores, noun_scores = (
            np.concatenate([a, np.zeros((len(discarded), a.shape[1]), np.float32)])
            for a in (logits, verb_scores, noun_scores)
        )
        flags = dataset.discarded_unseen
        unseen = np.concatenate([unseen, np.zeros(len(discarded), bool) if flags is None else flags])
    empty = np.zeros(0, dtype=np.int64)
    tail_verbs = empty if dataset.tail_verbs is None else dataset.tail_verbs
    tail_nouns = empty if dataset.tail_nouns is None else dataset.tail_nouns
    return {
        "uid": np.array([s.uid for s in segments], dtype=str),
        "action_logits": logits,
        "verb_scores": verb_scores,
        "noun_scores": noun_scores,
        "verb_label": np.array([s.verb for s in segments], dtype=np.int64),
        "noun_label": np.array([s.noun for s in segments], dtype=np.int64),
        "action_label": np.array([s.action for s in segments], dtype=np.int64),
        "unseen": np.asarray(unseen, dtype=bool),
        "action_to_verb": actions.verb.astype(np.int64),
        "action_to_noun": actions.noun.astype(np.int64),
        "tail_verbs": tail_verbs.astype(np.int64),
        "tail_nouns": tail_nouns.astype(np.int64),
        "tail_actions": tail_action_ids(actions.verb, actions.noun, tail_verbs, tail_nouns),
        "task": np.array("anticipation"),
        "version": np.array(PREDICTIONS_VERSION),
    }
