"""Lightning callback printing one marker line as the first training batch starts (see startup_time.py)."""

import lightning.pytorch as pl

MARKER = "EGOLAB_FIRST_TRAINING_STEP"


class FirstStepMarker(pl.Callback):
    """Prints :data:`MARKER` to stdout once, as the first training batch starts."""

    def __init__(self) -> None:
        self.seen = False

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx: int):
        if not self.seen:
            self.seen = True
            print(MARKER, flush=True)
