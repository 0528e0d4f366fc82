"""The one DataLoader shape every datamodule uses: shuffled training batches without a ragged last one,
workers that leave interrupt and preemption signals to the main process, and training loaders that
resume exactly in the middle of an epoch.

Exact mid-epoch resume (a preemption checkpoint is taken between two batches) needs two things: the
loader's position, and the random augmentations of the samples still to come. The training loader,
:class:`ResumableLoader`, draws its order from ``(seed, epoch, pass)`` (:class:`EpochSampler`) and has a
state (the epoch, the pass and how many samples it has handed out) that Lightning stores in checkpoints.
Each index carries a seed derived from ``(seed, epoch, pass, index)``; :class:`SeededSamples` seeds the
Python, NumPy and torch RNGs with it around ``dataset[index]``. A sample's crop therefore depends on
nothing else (not on the worker that reads it, the number of workers or what came before), and a resumed
epoch reads the same samples with the same crops as an uninterrupted one, with any number of workers.
"""

from __future__ import annotations

import math
import os
import random
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

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


def mixed_seed(*values: int) -> int:
    """A 32-bit seed mixed from non-negative integers (NumPy's SeedSequence)."""
    return int(np.random.SeedSequence(list(values)).generate_state(1)[0])


@contextmanager
def seeded_rngs(seed: int) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's (CPU) global RNGs, and put their states back afterwards.

    Only the CPU generator is touched: ``torch.manual_seed`` would also (lazily) reseed CUDA's.
    """
    python, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)


class SeededSamples(Dataset):
    """``dataset`` read by ``(index, seed)`` keys: item ``index``, the global RNGs seeded by ``seed``."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        index, seed = key
        with seeded_rngs(seed):
            return self.dataset[index]


class EpochSampler(DistributedSampler):
    """Training order: a permutation drawn from ``(seed, epoch, pass)``, this process's share of it under
    DDP (padded as ``DistributedSampler`` pads), each index paired with the seed of its sample's random
    augmentation, drawn from ``(seed, epoch, pass, index)``. ``pass`` counts the passes within one epoch:
    Lightning's ``max_size_cycle`` runs a shorter loader several times, each time in a new order.
    :meth:`resume` starts the next pass part-way.

    A ``DistributedSampler`` so that Lightning neither replaces it under DDP nor forgets its epoch: it calls
    ``set_epoch`` before every epoch (but on resume only after the loader has started reading, so the
    loader's state carries the epoch too).
    """

    def __init__(self, dataset: Dataset, seed: int, batch_size: int = 1, drop_last: bool = False) -> None:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        super().__init__(
            dataset,
            num_replicas=torch.distributed.get_world_size() if distributed else 1,
            rank=torch.distributed.get_rank() if distributed else 0,
            shuffle=True,
            seed=seed,
        )
        self.epoch_end = self.num_samples - self.num_samples % batch_size if drop_last else self.num_samples
        self.current_pass = 0
        self._next_pass = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:  # a new epoch starts with its first pass, from its first sample
            self._next_pass = 0
            self.start = 0
        super().set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        self.current_pass, self._next_pass = self._next_pass, self._next_pass + 1
        key = (self.seed, self.epoch, self.current_pass)
        generator = torch.Generator().manual_seed(mixed_seed(*key, 0))
        order = torch.randperm(len(self.dataset), generator=generator)
        padded = (order.tolist() * math.ceil(self.total_size / len(order)))[: self.total_size]
        share = padded[self.rank : self.total_size : self.num_replicas][self.start :]
        self.start = 0
        return iter([(index, mixed_seed(*key, 1, index)) for index in share])

    def resume(self, epoch: int, pass_: int, position: int) -> None:
        """Go on from sample ``position`` of pass ``pass_`` of ``epoch``: part-way through that pass, or,
        at or past its last full batch (``batch_size`` and ``drop_last`` say which that is), at the start
        of the next pass of the epoch, which ``max_size_cycle`` runs when a longer loader goes on. When the
        epoch is over, Lightning's ``set_epoch`` with the next epoch starts that one from the beginning."""
        finished = position >= self.epoch_end
        self.epoch = epoch
        self._next_pass = pass_ + 1 if finished else pass_
        self.start = 0 if finished else position


class ResumableLoader(DataLoader):
    """A training DataLoader over an :class:`EpochSampler` whose state is the epoch, the pass and the number
    of samples it has handed out in that pass: Lightning saves it in checkpoints and restores it on resume.
    The state does not depend on the number of workers, which may change between attempts."""

    sampler: EpochSampler

    def __iter__(self) -> Iterator[Any]:
        self._position = self.sampler.start
        for batch in super().__iter__():
            self._position += self.batch_size
            yield batch

    def state_dict(self) -> dict[str, int]:
        position = getattr(self, "_position", 0)
        return {"epoch": self.sampler.epoch, "pass": self.sampler.current_pass, "position": position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.resume(state["epoch"], state["pass"], state["position"])


def global_seed() -> int:
    """The seed ``seed_everything`` set (``PL_GLOBAL_SEED``), else one drawn from torch's global RNG."""
    seed = os.environ.get("PL_GLOBAL_SEED")
    return int(seed) if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())


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
    **kwargs: Any,
) -> DataLoader:
    """A loader over ``dataset``; training shuffles and drops the last incomplete batch.

    A shuffled loader is a :class:`ResumableLoader` over :class:`EpochSampler` and :class:`SeededSamples`;
    batches of another kind come from ``collate_fn`` (e.g. PyG's ``Collater``). ``drop_last`` defaults to
    ``training and len(dataset) > batch_size``, so a training set smaller than one batch still yields a
    step. ``persistent_workers`` only applies with workers. Extra keyword arguments (``collate_fn``, ...)
    go to the loader.
    """
    if shuffle is None:
        shuffle = training
    if drop_last is None:
        drop_last = training and len(dataset) > batch_size
    common = dict(
        batch_size=batch_size,
        drop_last=drop_last,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=persistent_workers and num_workers > 0,
        worker_init_fn=worker_init,
        **kwargs,
    )
    if not shuffle:
        return DataLoader(dataset, shuffle=False, **common)
    seed = global_seed()
    sampler = EpochSampler(dataset, seed, batch_size, drop_last)
    # A private generator for the workers' base seed: drawn from the global RNG, it would shift dropout
    # after a mid-epoch resume (the resumed epoch's loader starts at another point of the global stream).
    generator = torch.Generator().manual_seed(seed)
    return ResumableLoader(SeededSamples(dataset), sampler=sampler, generator=generator, **common)
