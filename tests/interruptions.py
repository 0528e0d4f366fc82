"""Callbacks that interrupt a training run at a known point, for the end-to-end resume tests: launch.py's
training process imports them by name (``+callbacks.kill._target_=interruptions.KillAtEpoch``) with this
folder on ``PYTHONPATH`` (:func:`env_with_interruptions`)."""

import os
import signal
from pathlib import Path

import lightning as L

FOLDER = Path(__file__).resolve().parent


def env_with_interruptions(env: dict) -> dict:
    """``env`` with this folder on ``PYTHONPATH``, so that a training process can import these."""
    return dict(env, PYTHONPATH=os.pathsep.join(filter(None, [str(FOLDER), env.get("PYTHONPATH")])))


class KillAtEpoch(L.Callback):
    """SIGKILL this process when an epoch starts: a crash at a known point, after a checkpoint."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


class SignalAtBatch(L.Callback):
    """Send this process ``signum`` during batch ``batch`` of epoch ``epoch``: mid-epoch."""

    def __init__(self, epoch: int, batch: int, signum: int) -> None:
        self.epoch, self.batch, self.signum = epoch, batch, signum

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx
    ) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            os.kill(os.getpid(), self.signum)
