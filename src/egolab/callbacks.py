"""Callbacks that make a run survive being killed: exact RNG resume and a checkpoint on preemption."""

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


class PreemptionCheckpoint(L.Callback):
    """On the preemption signal (submitit's USR2), save `last.ckpt` atomically, then hand over.

    submitit owns requeueing: after the checkpoint is written, the handler that was installed before
    ours (submitit's, which requeues the job) is called. Without one, training stops cleanly.
    The decision is reduced over ranks so that every rank saves at the same step.
    """

    def __init__(self, path: str, signum: int = signal.SIGUSR2) -> None:
        self.path = Path(path)
        self.signum = signum
        self._requested = False
        self._previous: Any = None

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._requested = True
        self._frame = frame

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._previous = signal.signal(self.signum, self._on_signal)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._previous is not None:
            signal.signal(self.signum, self._previous)
            self._previous = None

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if not trainer.strategy.reduce_boolean_decision(self._requested, all=False):
            return
        self._requested = False
        tmp = self.path.with_name(self.path.name + ".tmp")
        trainer.save_checkpoint(tmp)
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        trainer.strategy.barrier("preemption-checkpoint")
        previous, self._previous = self._previous, None
        signal.signal(self.signum, previous if previous is not None else signal.SIG_DFL)
        if callable(previous):
            previous(self.signum, getattr(self, "_frame", None))
        trainer.should_stop = True
