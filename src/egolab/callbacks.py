"""Callbacks that make a run survive being killed: exact RNG resume, and a checkpoint on preemption,
SIGTERM or Ctrl-C."""

from __future__ import annotations

import os
import random
import signal
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint


class AtomicCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint that writes to a temporary file and renames it into place.

    A run killed while saving keeps its previous checkpoint intact instead of a truncated file.
    egolab uses two: `last.ckpt` every epoch (monitor None, save_top_k 1, filename "last"), what a
    relaunch resumes from and `-t` tests, and `best.ckpt` by the task's validation metric.
    """

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        tmp = f"{filepath}.tmp"
        super()._save_checkpoint(trainer, tmp)
        if trainer.is_global_zero:
            os.replace(tmp, filepath)
        self._last_checkpoint_saved = filepath


class RNGStateCheckpoint(L.Callback):
    """Store the Python, NumPy and torch RNG states in checkpoints and restore them on resume.

    Lightning restores model, optimizer, schedulers and loops but not the global RNGs, so shuffling,
    random crops and dropout after a resume would differ from an uninterrupted run. The states are
    stored as tensors and plain Python values so that `torch.load(weights_only=True)` accepts them.
    """

    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state = {
            "python": random.getstate(),
            "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        random.setstate(state_dict["python"])
        kind, keys, pos, has_gauss, cached = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(state_dict["torch"])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


class LoaderPositionRestore(L.Callback):
    """Put the training loader back where a mid-epoch checkpoint left it.

    Lightning applies the saved loader states (``egolab.data.loaders.ResumableLoader``) when it
    builds the training loader after loading the checkpoint. A ``configure_optimizers`` that reads
    ``trainer.estimated_stepping_batches`` (every egolab task: warmup + cosine per step) makes it build the
    loader before the checkpoint is loaded, and then the states are never applied (Lightning 2.6): the
    resumed epoch would start over. This applies them, and restarts the loader, when training starts.
    The samplers are first told the epoch that will run (Lightning tells them only after the loader has
    started): a checkpoint taken after the last batch of an epoch resumes at the start of the next one.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from lightning.fabric.utilities.data import _set_sampler_epoch

        fit_loop = trainer.fit_loop
        if fit_loop._combined_loader_states_to_load and fit_loop._combined_loader is not None:
            fit_loop._load_combined_loader_states()
            for loader in fit_loop._combined_loader.flattened:
                _set_sampler_epoch(loader, fit_loop.epoch_progress.current.processed)
            iter(fit_loop._data_fetcher)


class Interrupted(Exception):
    """Training stopped on a signal after saving ``last.ckpt``; relaunching the same command resumes."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        name = signal.Signals(signum).name
        super().__init__(f"interrupted by {name}; last.ckpt saved: relaunch the same command to resume")


class SignalCheckpoint(L.Callback):
    """On SLURM's preemption signal (submitit's USR2), SIGTERM or Ctrl-C: finish the batch, save
    ``last.ckpt`` atomically, and stop.

    The loader's position travels in the checkpoint, so the resumed run is the uninterrupted one. After
    saving on the preemption signal, the handler that was there before ours is called (submitit's, which
    requeues the job and exits). Then :class:`Interrupted` is raised, which ``egolab.train`` reports in one
    line with exit code 128 + the signal number. A second Ctrl-C interrupts at once. The decision is reduced
    over ranks so that every rank saves at the same step. Handlers are installed when training starts,
    after Lightning's own (which would otherwise wrap ours and stop at its own points without a checkpoint);
    DataLoader workers ignore these signals (``egolab.data.loaders.worker_init``).
    """

    def __init__(
        self,
        path: str,
        signals: tuple[str, ...] = ("SIGUSR2", "SIGTERM", "SIGINT"),
        requeue_signal: str = "SIGUSR2",
    ) -> None:
        self.path = Path(path)
        self.signals = [signal.Signals[name] for name in signals]
        self.requeue_signal = signal.Signals[requeue_signal]
        self._received = 0
        self._previous: dict[int, Any] = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        if signum == signal.SIGINT and self._received == signal.SIGINT:
            raise KeyboardInterrupt
        self._received = signum

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._received = 0
        self._previous = {signum: signal.signal(signum, self._on_signal) for signum in self.signals}

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, error: BaseException) -> None:
        self._restore()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if not trainer.strategy.reduce_boolean_decision(bool(self._received), all=False):
            return
        signum = int(trainer.strategy.reduce(torch.tensor(self._received), reduce_op="max"))
        tmp = self.path.with_name(self.path.name + ".tmp")
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        trainer.strategy.barrier("signal-checkpoint")
        previous = self._previous.get(signum)
        self._restore()
        if signum == self.requeue_signal and callable(previous):
            previous(signum, None)
        raise Interrupted(signum)
