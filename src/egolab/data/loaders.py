"""The one DataLoader shape every datamodule uses: shuffled training batches without a ragged last one."""

from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader, Dataset


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
        **kwargs,
    )
