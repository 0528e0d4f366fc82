"""make_loader: worker signal handling, Lightning's worker seeding, and exact mid-epoch resume."""

import functools
import random
import signal
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function, seed_everything
from torch.utils.data import DataLoader, Dataset

from egolab.callbacks import LoaderPositionRestore, RNGStateCheckpoint
from egolab.data.loaders import MAIN_PROCESS_SIGNALS, EpochSampler, SeededSamples, make_loader


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


class RandomCrops(Dataset):
    """Item i: i and one draw from each global RNG (torch, NumPy, Python), as augmentations draw them."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> torch.Tensor:
        draws = [torch.randint(0, 1000, ()).item(), np.random.randint(1000), random.randint(0, 999)]
        return torch.tensor([index, *draws], dtype=torch.float64)


class Recorder(L.LightningModule):
    """Records every training batch and a draw from the main process's global RNG in each step."""

    def __init__(self, seen: list, num_workers: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 1, dtype=torch.float64)
        self.seen, self.num_workers = seen, num_workers

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        dropout = torch.rand((1, 4), dtype=torch.float64)  # the main process's draw, as dropout makes
        self.seen.append(torch.cat([batch, dropout]))
        return self.linear(batch).mean() * dropout.mean()

    def configure_optimizers(self):
        """A per-step schedule over ``estimated_stepping_batches``, as every egolab task has: Lightning then
        builds the training loader before a checkpoint is loaded (see LoaderPositionRestore)."""
        optimizer = torch.optim.SGD(self.parameters(), lr=1e-3)
        total = self.trainer.estimated_stepping_batches
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def train_dataloader(self):
        return make_loader(RandomCrops(), 3, training=True, num_workers=self.num_workers)


class StopAt(L.Callback):
    """Save a checkpoint after batch ``batch_idx`` of epoch 1 (a preemption) and stop."""

    def __init__(self, path: Path, batch_idx: int) -> None:
        self.path, self.batch_idx = path, batch_idx

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == 1 and batch_idx == self.batch_idx:
            trainer.save_checkpoint(self.path)
            trainer.should_stop = True


def fit(
    num_workers: int, callbacks: list = (), ckpt_path: Path | None = None, module: type[Recorder] = Recorder
) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    seed_everything(0, workers=True)
    trainer = L.Trainer(
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[RNGStateCheckpoint(), LoaderPositionRestore(), *callbacks],
    )
    trainer.fit(module(seen, num_workers), ckpt_path=ckpt_path)
    return seen


@pytest.mark.parametrize(
    ("workers", "batch_idx"), [((0, 0), 0), ((0, 0), 2), ((2, 2), 1), ((2, 2), 2), ((0, 2), 1)]
)
def test_a_run_resumed_mid_epoch_sees_the_uninterrupted_batches(tmp_path, workers, batch_idx):
    """Checkpoint after batch 0, 1 or 2 (the last) of epoch 1, resume (with as many DataLoader workers, or
    another number): the same samples with the same random draws, and the same draws of the main
    process, batch for batch, as the run that was never stopped (3 epochs of 3 batches)."""
    uninterrupted = fit(workers[0])
    stopped = fit(workers[0], [StopAt(tmp_path / "mid.ckpt", batch_idx)])
    resumed = fit(workers[1], ckpt_path=tmp_path / "mid.ckpt")
    assert len(stopped) == 4 + batch_idx and len(stopped) + len(resumed) == len(uninterrupted) == 9
    assert torch.equal(torch.cat(stopped + resumed), torch.cat(uninterrupted))
    orders = [torch.cat(uninterrupted[e * 3 : e * 3 + 3])[:, 0].tolist() for e in range(3)]
    assert orders[0] != orders[1] != orders[2], "each epoch has its own order"


class FourCrops(RandomCrops):
    def __len__(self) -> int:
        return 4


class TwoTasks(Recorder):
    """Batches of a 3-batch loader and a 2-batch one cycled by Lightning's ``max_size_cycle`` (as the
    backpack task combines its tasks): the short one's second pass starts in the last step of an epoch."""

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        dropout = torch.rand((1, 4), dtype=torch.float64)
        self.seen.append(torch.cat([batch["long"], batch["short"] + 100, dropout]))
        return self.linear(batch["long"]).mean() * dropout.mean()

    def train_dataloader(self):
        from lightning.pytorch.utilities.combined_loader import CombinedLoader

        loaders = {
            "long": make_loader(RandomCrops(), 3, training=True, num_workers=self.num_workers),
            "short": make_loader(FourCrops(), 2, training=True, num_workers=self.num_workers),
        }
        return CombinedLoader(loaders, mode="max_size_cycle")


@pytest.mark.parametrize("batch_idx", [0, 1, 2])
def test_cycled_loaders_resume_where_each_one_was(tmp_path, batch_idx):
    """Checkpoint in the middle of both loaders' passes, at the end of the short one's pass, and after an
    epoch's last batch (the short one part-way through its second pass): the resumed run's batches are the
    uninterrupted run's."""
    uninterrupted = fit(0, module=TwoTasks)
    stopped = fit(0, [StopAt(tmp_path / "mid.ckpt", batch_idx)], module=TwoTasks)
    resumed = fit(0, ckpt_path=tmp_path / "mid.ckpt", module=TwoTasks)
    assert len(stopped) == 4 + batch_idx and len(stopped) + len(resumed) == len(uninterrupted) == 9
    assert torch.equal(torch.cat(stopped + resumed), torch.cat(uninterrupted))


def test_a_samples_draws_depend_only_on_seed_epoch_and_index():
    """The same sample gets the same draws whether read in the main process or by either of 2 workers,
    and reading a sample leaves the main process's RNGs as they were."""
    seed_everything(0)
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    first = SeededSamples(RandomCrops())[3, 7]
    assert torch.equal(first, SeededSamples(RandomCrops())[3, 7])
    assert torch.equal(torch.get_rng_state(), states[0])
    assert np.array_equal(np.random.get_state()[1], states[1]) and random.getstate() == states[2]
    main = torch.cat(list(make_loader(RandomCrops(), 3, training=True)))
    workers = torch.cat(list(make_loader(RandomCrops(), 3, training=True, num_workers=2)))
    assert torch.equal(main, workers)
    assert main[:, 1:].unique().numel() > 20, "different samples get different draws"


def passes(epoch: int, count: int) -> list[list[tuple[int, int]]]:
    """The first ``count`` passes of a fresh sampler (seed 0) in ``epoch``."""
    sampler = EpochSampler(RandomCrops(), seed=0, batch_size=3, drop_last=True)
    sampler.set_epoch(epoch)
    return [list(sampler) for _ in range(count)]


def test_each_pass_of_an_epoch_has_its_own_order_and_seeds():
    """A loader cycled within an epoch (Lightning's max_size_cycle) gets a new order each pass."""
    (first, second), (other_epoch,) = passes(2, 2), passes(3, 1)
    orders = [[index for index, _ in p] for p in (first, second, other_epoch)]
    assert all(sorted(order) == list(range(10)) for order in orders)
    assert orders[0] != orders[1] and orders[0] != orders[2] and orders[1] != orders[2]
    assert {seed for _, seed in first}.isdisjoint(seed for _, seed in second)


def test_epoch_sampler_resumes_part_way_through_a_pass_at_the_next_pass_or_at_the_next_epoch():
    sampler = EpochSampler(RandomCrops(), seed=0, batch_size=3, drop_last=True)
    sampler.resume(2, 1, 4)
    assert list(sampler) == passes(2, 2)[1][4:]
    sampler.resume(4, 0, 9)  # 3 full batches of 10 samples: the pass is over, the next one starts
    assert list(sampler) == passes(4, 2)[1]
    sampler.resume(4, 0, 5)
    sampler.set_epoch(5)  # the epoch was over: the next one starts from its beginning
    assert list(sampler) == passes(5, 1)[0]
