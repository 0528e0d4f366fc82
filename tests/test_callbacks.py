"""Resume helpers: RNG states travel with checkpoints; the preemption signal writes last.ckpt."""

import os
import random
import signal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from egolab.callbacks import PreemptionCheckpoint, RNGStateCheckpoint


def test_rng_state_round_trip():
    callback = RNGStateCheckpoint()
    torch.manual_seed(1)
    np.random.seed(1)
    random.seed(1)
    state = callback.state_dict()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    callback.load_state_dict(state)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


class _Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        if self.global_step == 3:
            os.kill(os.getpid(), signal.SIGUSR2)
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_preemption_signal_saves_last_checkpoint_and_calls_previous_handler(tmp_path):
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        data = TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
        path = tmp_path / "checkpoints" / "last.ckpt"
        path.parent.mkdir()
        trainer = L.Trainer(
            max_epochs=5,
            callbacks=[PreemptionCheckpoint(str(path))],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
        )
        trainer.fit(_Tiny(), DataLoader(data, batch_size=8))
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert calls == [signal.SIGUSR2]
    assert trainer.global_step == 4  # the step that got the signal finished, then training stopped
    checkpoint = torch.load(path, weights_only=False)
    assert checkpoint["global_step"] == 4
    assert not path.with_name("last.ckpt.tmp").exists()


def test_rng_state_survives_a_weights_only_load(tmp_path):
    torch.save({"callbacks": RNGStateCheckpoint().state_dict()}, tmp_path / "x.ckpt")
    state = torch.load(tmp_path / "x.ckpt", weights_only=True)["callbacks"]
    expected = np.random.rand(2)
    np.random.seed(5)
    RNGStateCheckpoint().load_state_dict(state)
    assert np.array_equal(np.random.rand(2), expected)  # back to the state before `expected` was drawn
