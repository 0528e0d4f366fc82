"""The one DataLoader shape every datamodule uses: shuffled training batches without a ragged last one,
and workers that leave interrupt and preemption signals to the main process."""

from __future__ import annotations

import os
import signal
from typing import Any

from torch.utils.data import DataLoader, Dataset

MAIN_PROCESS_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR2)


def worker_init(worker_id: int) -> None:
    """Ignore Ctrl-C, SIGTERM and SLURM's preemption signal in a worker, then seed it as Lightning would.

    Workers are forked with the main process's handlers (submitit's requeue handler among them) and
    SLURM signals every process of a job: a worker must neither die of SIGTERM (its death fails the
    attempt that SLURM is requeueing) nor run a handler meant for the main process, which saves the
    checkpoint and owns the requeue. Seeding: a loader with its own ``worker_init_fn`` does not get
    Lightning's, so it is called here when ``seed_everything(workers=True)`` asked for it.
    """
    for signum in MAIN_PROCESS_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    if int(os.environ.get("PL_SEED_WORKERS", "0")):
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    training: bool,
    *,
    num_workers: int = 0,
    pin_memory: bool = False,
    persistent_workers: bool = False,
    shuffle: bool | None = None,
    drop_last: bool | None = None,
    loader_cls: type[DataLoader] = DataLoader,
    **kwargs: Any,
) -> DataLoader:
    """A ``loader_cls`` over ``dataset``; training shuffles and drops the last incomplete batch.

    ``drop_last`` defaults to ``training and len(dataset) > batch_size``, so a training set smaller than
    one batch still yields a step. ``persistent_workers`` only applies with workers. Extra keyword
    arguments (``collate_fn``, ``generator``, ...) go to ``loader_cls`` (e.g. the PyG DataLoader).
    """
    if shuffle is None:
        shuffle = training
    if drop_last is None:
        drop_last = training and len(dataset) > batch_size
    return loader_cls(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
        worker_init_fn=worker_init,
        **kwargs,
    )
