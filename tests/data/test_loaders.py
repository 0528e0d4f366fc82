"""make_loader: worker signal handling and Lightning's worker seeding."""

import functools
import signal

import torch
from lightning.fabric.utilities.seed import pl_worker_init_function, seed_everything
from torch.utils.data import DataLoader, Dataset

from egolab.data.loaders import MAIN_PROCESS_SIGNALS, make_loader


class WorkerProbe(Dataset):
    """Each item: the worker's handlers of the main-process signals (as ints) and one random draw."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> torch.Tensor:
        handlers = [int(signal.getsignal(s) is signal.SIG_IGN) for s in MAIN_PROCESS_SIGNALS]
        return torch.tensor([*handlers, torch.randint(0, 2**30, ()).item()])


def test_workers_ignore_interrupt_and_preemption_signals():
    previous = signal.signal(signal.SIGUSR2, lambda *_: None)  # a main-process handler workers inherit
    try:
        batches = list(make_loader(WorkerProbe(), 2, training=False, num_workers=2))
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert torch.cat(batches)[:, :3].eq(1).all()


def test_workers_are_seeded_as_lightning_seeds_them(monkeypatch):
    seed_everything(3, workers=True)  # sets PL_SEED_WORKERS=1
    ours = torch.cat(list(make_loader(WorkerProbe(), 2, training=False, num_workers=2)))[:, 3]
    seed_everything(3, workers=True)
    init = functools.partial(pl_worker_init_function, rank=0)
    lightning = torch.cat(list(DataLoader(WorkerProbe(), 2, num_workers=2, worker_init_fn=init)))[:, 3]
    assert torch.equal(ours, lightning)
    monkeypatch.delenv("PL_SEED_WORKERS")
