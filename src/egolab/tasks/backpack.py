"""Multi-task backpack (EgoPack): phase 1 trains one temporal graph with several task heads, phase 2
transfers it to a novel task through frozen per-task prototypes (the "backpack").

The module receives built objects: the multi-task model (:class:`egolab.models.egopack.MultiTaskGraph`),
in phase 2 the :class:`egolab.models.egopack.EgoPack` interaction module, and an optimizer factory.
Batches come from :class:`egolab.data.backpack.BackpackDataModule`: a training step gets one PyG batch
per enabled task (``{task: Batch}``) and sums their weighted losses, as the release's multi-loader does;
evaluation has one loader per task. Metrics and the ``predictions.npz`` format are in
:mod:`egolab.metrics.backpack` (contract: docs/backpack_contract.md).

Phase 2 (``support_run`` set) loads the temporal model and support heads of a phase-1 run when fitting
starts, builds the prototypes over the AR training windows, and trains the novel task with the
support features refined by the prototypes and fused into its logits by new auxiliary classifiers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from egolab.metrics.backpack import PREDICTIONS_FILE, metrics_from_arrays, write_predictions
from egolab.recipe import scale_learning_rates
from egolab.schedules import warmup_cosine_scheduler

log = logging.getLogger(__name__)

LTA_OBSERVED = 2
"""Observed action nodes at the start of every LTA graph (the release's ``num_input_clips``)."""


def resolve_support_checkpoint(
    support_run: str, outputs: str | Path, which: str = "best", run_index: int = 0
) -> Path:
    """The phase-1 checkpoint named by ``support_run``.

    ``support_run`` is an experiment TXT path (``expts/backpack/mtl_lta-oscc-pnr.txt`` →
    ``<outputs>/expts/backpack/mtl_lta-oscc-pnr.txt/<run_index>/checkpoints/<which>.ckpt``), a run dir,
    or a ``.ckpt`` file.
    """
    from egolab.launch.runs import run_dir

    path = Path(support_run)
    if path.suffix == ".ckpt":
        candidate = path
    elif path.suffix == ".txt":
        candidate = run_dir(path, run_index, root=outputs) / "checkpoints" / f"{which}.ckpt"
    else:
        candidate = path / "checkpoints" / f"{which}.ckpt"
    if not candidate.is_file():
        hint = f"run `python launch.py -c {support_run} -l` first" if path.suffix == ".txt" else ""
        raise FileNotFoundError(f"support_run={support_run!r}: no checkpoint at {candidate}. {hint}".strip())
    return candidate


class BackpackTask(L.LightningModule):
    """EgoPack recipe: Adam over every trainable parameter, cosine annealing per epoch.

    ``tasks``: the tasks trained and evaluated (phase 1: the enabled tasks; phase 2: the novel task);
    ``weights``: per-task loss weights (missing → 1). Phase 2 is on when ``egopack`` is given: the
    support heads are frozen (the release detaches their features), the prototypes are frozen buffers,
    and ``train_temporal`` / ``temporal_train_mode`` say whether the temporal model is trained and in
    train mode (the release's ``backprop_temporal_graph`` / ``temporal_graph_train_mode``; both off for
    LTA). ``release_prototypes`` reproduces the release's backpack (mean / number of support tasks,
    training-mode sampling, last partial batch dropped); the default builds true means over every window.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        tasks: Sequence[str],
        weights: Mapping[str, float] | None = None,
        warmup_epochs: int = 0,
        eta_min: float = 0.0,
        egopack: nn.Module | None = None,
        support_run: str | None = None,
        support_ckpt: str = "best",
        support_run_index: int = 0,
        outputs: str = "OUTPUTS",
        train_temporal: bool = True,
        temporal_train_mode: bool = True,
        release_prototypes: bool = False,
        lta_samples: int = 5,
        eval_seed: int = 0,
    ) -> None:
        super().__init__()
        unknown = [t for t in tasks if t not in model.heads]
        if unknown:
            raise ValueError(f"tasks {unknown} have no head in the model (heads: {sorted(model.heads)})")
        if egopack is not None and support_run is None:
            raise ValueError("phase 2 (egopack given) needs task.support_run: the phase-1 run to start from")
        self.model = model
        self.egopack = egopack
        self.optimizer_factory = optimizer
        self.tasks = list(tasks)
        self.weights = {t: float((weights or {}).get(t, 1.0)) for t in self.tasks}
        self.warmup_epochs = warmup_epochs
        self.eta_min = eta_min
        self.lr_scale = 1.0  # set at start-up by egolab.recipe (linear rule on another world size)
        self.support_run = support_run
        self.support_ckpt = support_ckpt
        self.support_run_index = support_run_index
        self.outputs = outputs
        self.train_temporal = train_temporal
        self.temporal_train_mode = temporal_train_mode
        self.release_prototypes = release_prototypes
        self.lta_samples = lta_samples
        self.eval_seed = eval_seed
        self._records: dict[str, list[dict]] = {}
        self._eval_losses: dict[str, list[tuple[float, int]]] = {}
        self.test_arrays: dict[str, np.ndarray] | None = None
        if egopack is not None:
            self._freeze_for_phase2()

    # ----------------------------------------------------------------------------- wiring
    @property
    def support_tasks(self) -> list[str]:
        return list(self.egopack.support_tasks) if self.egopack is not None else []

    def _freeze_for_phase2(self) -> None:
        missing = [t for t in self.support_tasks if t not in self.model.heads]
        if missing:
            raise ValueError(f"support tasks {missing} have no head in the model")
        for task in self.support_tasks:
            if task not in self.tasks:
                self.model.heads[task].requires_grad_(False)
        if not self.train_temporal:
            self.model.temporal.requires_grad_(False)

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule
        taxonomy = getattr(datamodule, "taxonomy", None)
        if taxonomy is not None:
            for task in ("ar", "lta"):
                if task in self.model.heads:
                    self._check_classes(task, len(taxonomy.verbs), len(taxonomy.nouns), taxonomy.path)
        eval_tasks = list(getattr(datamodule, "eval_tasks", self.tasks))
        if eval_tasks != self.tasks:
            raise ValueError(f"data.tasks {eval_tasks} differ from task.tasks {self.tasks}")

    def _check_classes(self, task: str, verbs: int, nouns: int, path: Any) -> None:
        sizes = tuple(self.model.heads[task].num_classes)
        if sizes != (verbs, nouns):
            raise ValueError(
                f"{path}: {verbs} verbs / {nouns} nouns, but the {task} head classifies {sizes} "
                "(set model.num_verbs / model.num_nouns)"
            )

    def on_fit_start(self) -> None:
        """Phase 2, fresh start: load the support run and build the backpack (a resumed run has its own)."""
        if self.egopack is None or self.egopack.has_prototypes():
            return
        path = resolve_support_checkpoint(
            self.support_run, self.outputs, self.support_ckpt, self.support_run_index
        )
        self.load_support_checkpoint(path)
        self.build_backpack()

    def load_support_checkpoint(self, path: str | Path) -> None:
        """Copy the phase-1 temporal model and heads into this model (heads it lacks keep their init)."""
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
        own = self.model.state_dict()
        wanted = [k for k in own if k.startswith("temporal.") or k.split(".")[1] in self.support_tasks]
        missing = [k for k in wanted if f"model.{k}" not in state]
        if missing:
            raise ValueError(
                f"{path}: not a phase-1 run of the support tasks {self.support_tasks}: missing {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''}"
            )
        loaded = {}
        for key, value in own.items():
            source = state.get(f"model.{key}")
            if source is None:
                continue
            if source.shape != value.shape:
                raise ValueError(
                    f"{path}: {key} has shape {tuple(source.shape)}, this model {tuple(value.shape)}"
                )
            loaded[key] = source
        self.model.load_state_dict(loaded, strict=False)
        log.info("loaded %d tensors of the support run from %s", len(loaded), path)

    @torch.no_grad()
    def build_backpack(self) -> None:
        """Prototypes per support task from the frozen temporal model over the AR training windows."""
        from egolab.models.egopack import build_prototypes

        loader = self.trainer.datamodule.prototype_dataloader(release=self.release_prototypes)
        heads = {t: self.model.heads[t] for t in self.support_tasks}
        num_nouns = len(self.trainer.datamodule.taxonomy.nouns)
        was_training = self.model.training
        prototypes, actions = build_prototypes(
            self.model.temporal,
            heads,
            _on_device(loader, self.device),
            num_nouns=num_nouns,
            release_scaling=self.release_prototypes,
        )
        self.model.train(was_training)
        self.egopack.set_prototypes(prototypes)
        log.info("backpack: %d seen actions x %d support tasks", len(actions), len(prototypes))

    def configure_optimizers(self) -> dict:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        scale_learning_rates(optimizer, self.lr_scale)
        epochs = max(int(self.trainer.max_epochs or 1), 1)
        scheduler = warmup_cosine_scheduler(optimizer, epochs, self.warmup_epochs, eta_min=self.eta_min)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}

    # ----------------------------------------------------------------------------- forward
    def _apply_frozen_modes(self) -> None:
        """Frozen parts stay in eval mode while training (Lightning switches everything to train)."""
        if not self.temporal_train_mode:
            self.model.temporal.eval()
        for task in self.support_tasks:
            if task not in self.tasks:
                self.model.heads[task].eval()

    def on_train_epoch_start(self) -> None:
        self._apply_frozen_modes()

    def on_validation_model_train(self) -> None:
        super().on_validation_model_train()
        self._apply_frozen_modes()

    def forward_task(self, task: str, batch: Any) -> Any:
        """Logits of ``task`` on a PyG batch; in phase 2 fused with the prototype-refined support views."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.train_temporal):
            hidden = self.model.temporal(batch.x, batch.pos, batch.edge_index)
        head = self.model.heads[task]
        aux = None
        if self.egopack is not None:
            queries = {t: self.model.heads[t].features(hidden).detach() for t in self.support_tasks}
            aux = self.egopack.interact(queries)
        return head.logits(head.features(hidden), batch.batch, aux)

    def task_loss(self, task: str, logits: Any, batch: Any) -> torch.Tensor:
        """The release's per-task loss: per-row losses averaged over every row of the batch."""
        return self.model.heads[task].loss(logits, batch.y).mean()

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        total = 0.0
        for task in self.tasks:
            data = batch.get(task)
            if data is None:
                continue
            loss = self.task_loss(task, self.forward_task(task, data), data)
            self.log(f"train/{task}_loss", loss, batch_size=int(data.num_graphs))
            total = total + self.weights[task] * loss
        self.log("train/loss", total, prog_bar=True, batch_size=1)
        return total

    # ----------------------------------------------------------------------------- evaluation
    def _eval_step(self, batch: Any, dataloader_idx: int) -> None:
        task = self.tasks[dataloader_idx]
        logits = self.forward_task(task, batch)
        loss = float(self.task_loss(task, logits, batch))
        self._eval_losses.setdefault(task, []).append((loss, int(batch.num_graphs)))
        self._records.setdefault(task, []).extend(self._rows(task, logits, batch))

    def _rows(self, task: str, logits: Any, batch: Any) -> list[dict]:
        """One record per sample (graph): what the predictions file keeps for it."""
        uids = list(batch.uid)
        graphs = int(batch.num_graphs)
        y = batch.y.cpu()
        if task == "ar":
            centre = (batch.pos == 0).cpu()
            verb, noun = (t.float().cpu()[centre].numpy() for t in logits)
            labels = y[centre].numpy()
            return [
                {"uid": u, "verb_logits": verb[i], "noun_logits": noun[i], "label": labels[i]}
                for i, u in enumerate(uids)
            ]
        if task == "oscc":
            scores = logits.float().cpu().numpy()
            return [{"uid": u, "logits": scores[i], "label": int(y[i])} for i, u in enumerate(uids)]
        if task == "pnr":
            scores = logits.float().cpu().reshape(graphs, -1).numpy()
            start, end, pnr = (
                getattr(batch, k).cpu().double().numpy() for k in ("start_frame", "end_frame", "pnr_frame")
            )
            return [
                {"uid": u, "logits": scores[i], "start": start[i], "end": end[i], "pnr": pnr[i]}
                for i, u in enumerate(uids)
            ]
        forecast = (batch.pos >= LTA_OBSERVED).cpu()
        head = self.model.heads["lta"]
        forecast_logits = tuple(t[forecast.to(t.device)] for t in logits)
        verb, noun = head.sample(forecast_logits, k=self.lta_samples, generator=self._sampler)
        verb = verb.cpu().reshape(graphs, -1, self.lta_samples).transpose(1, 2).numpy()
        noun = noun.cpu().reshape(graphs, -1, self.lta_samples).transpose(1, 2).numpy()
        labels = y[forecast].reshape(graphs, -1, 2).numpy()
        return [{"uid": u, "verb": verb[i], "noun": noun[i], "label": labels[i]} for i, u in enumerate(uids)]

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, dataloader_idx)

    def _start_eval(self) -> None:
        self._records, self._eval_losses = {}, {}
        self._sampler = torch.Generator(device=self.device).manual_seed(self.eval_seed)

    def on_validation_epoch_start(self) -> None:
        self._start_eval()

    def on_test_epoch_start(self) -> None:
        self._start_eval()

    def on_validation_epoch_end(self) -> None:
        self._evaluate("val")

    def on_test_epoch_end(self) -> None:
        self.test_arrays = self._evaluate("test")

    def _gather(self) -> dict[str, list[dict]]:
        """Records of every rank, one per sample uid (the distributed sampler repeats a few)."""
        records = self._records
        if self.trainer.world_size > 1:
            gathered: list[Any] = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(gathered, records)
            records = {}
            for rank_records in gathered:
                for task, rows in rank_records.items():
                    records.setdefault(task, []).extend(rows)
        unique = {task: {r["uid"]: r for r in rows} for task, rows in records.items()}
        return {task: [rows[u] for u in sorted(rows)] for task, rows in unique.items()}

    def _evaluate(self, prefix: str) -> dict[str, np.ndarray]:
        records = self._gather()
        losses = self._eval_losses
        self._records, self._eval_losses = {}, {}
        if not records:
            return {}
        arrays = prediction_arrays(records)
        metrics = metrics_from_arrays(arrays)
        total = 0.0
        for task, values in losses.items():
            task_loss = sum(v * n for v, n in values) / max(sum(n for _, n in values), 1)
            metrics[f"{task}_loss"] = task_loss
            total += self.weights.get(task, 1.0) * task_loss
        metrics["loss"] = total
        for name, value in metrics.items():
            self.log(f"{prefix}/{name}", float(value), sync_dist=False)
        return arrays

    def write_predictions(self, run_dir: str | Path) -> Path:
        """Write ``predictions.npz`` (format: :mod:`egolab.metrics.backpack`) into ``run_dir``."""
        if self.test_arrays is None:
            raise RuntimeError("no test predictions: run trainer.test first")
        path = Path(run_dir) / PREDICTIONS_FILE
        write_predictions(path, self.test_arrays)
        return path

    # ----------------------------------------------------------------------------- W&B artifact
    def on_fit_end(self) -> None:
        """Phase 1 with W&B online: log the best checkpoint as artifact ``MTL_<tasks>`` (as released)."""
        if self.egopack is not None or not self.trainer.is_global_zero:
            return
        from lightning.pytorch.loggers import WandbLogger

        best = next((c.best_model_path for c in self.trainer.checkpoint_callbacks if c.best_model_path), "")
        runs = [logger.experiment for logger in self.trainer.loggers if isinstance(logger, WandbLogger)]
        online = [run for run in runs if run.settings.mode == "online"]
        if not best or not online:
            return
        import wandb

        for run in online:
            artifact = wandb.Artifact(name="MTL_" + "-".join(sorted(self.tasks)), type="model")
            artifact.add_file(best, name="checkpoint.ckpt")
            run.log_artifact(artifact)


def _on_device(loader: Any, device: torch.device) -> Any:
    for batch in loader:
        yield batch.to(device)


def prediction_arrays(records: Mapping[str, list[dict]]) -> dict[str, np.ndarray]:
    """The predictions-file sections (docs/backpack_contract.md) of per-task evaluation records."""
    arrays: dict[str, np.ndarray] = {}
    for task, rows in records.items():
        if not rows:
            continue
        arrays[f"{task}_uid"] = np.array([r["uid"] for r in rows], dtype=str)
        if task == "ar":
            labels = np.stack([r["label"] for r in rows]).astype(np.int64)
            arrays["ar_verb_logits"] = np.stack([r["verb_logits"] for r in rows]).astype(np.float32)
            arrays["ar_noun_logits"] = np.stack([r["noun_logits"] for r in rows]).astype(np.float32)
            arrays["ar_verb_label"], arrays["ar_noun_label"] = labels[:, 0], labels[:, 1]
        elif task == "oscc":
            arrays["oscc_logits"] = np.stack([r["logits"] for r in rows]).astype(np.float32)
            arrays["oscc_label"] = np.array([r["label"] for r in rows], dtype=np.int64)
        elif task == "pnr":
            arrays["pnr_logits"] = np.stack([r["logits"] for r in rows]).astype(np.float32)
            for key in ("start", "end"):
                arrays[f"pnr_{key}_frame"] = np.array([r[key] for r in rows], dtype=np.float64)
            arrays["pnr_frame"] = np.array([r["pnr"] for r in rows], dtype=np.float64)
        elif task == "lta":
            labels = np.stack([r["label"] for r in rows]).astype(np.int64)
            arrays["lta_verb_samples"] = np.stack([r["verb"] for r in rows]).astype(np.int64)
            arrays["lta_noun_samples"] = np.stack([r["noun"] for r in rows]).astype(np.int64)
            arrays["lta_verb_label"], arrays["lta_noun_label"] = labels[..., 0], labels[..., 1]
    return arrays
