"""Resume helpers: RNG states travel with checkpoints; preemption, SIGTERM and Ctrl-C write last.ckpt."""

import os
import random
import signal

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from egolab.callbacks import Interrupted, RNGStateCheckpoint, SignalCheckpoint


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
    """Sends itself ``signals`` in step 3."""

    def __init__(self, *signals: int):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.signals = list(signals)

    def training_step(self, batch, batch_idx):
        if self.global_step == 3:
            for signum in self.signals:
                os.kill(os.getpid(), signum)
        x, y = batch
        return torch.nn.functional.mse_loss(self.layer(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(tmp_path, module: _Tiny) -> tuple[L.Trainer, "os.PathLike"]:
    data = TensorDataset(torch.randn(64, 4), torch.randn(64, 1))
    path = tmp_path / "checkpoints" / "last.ckpt"
    path.parent.mkdir()
    trainer = L.Trainer(
        max_epochs=5,
        callbacks=[SignalCheckpoint(str(path))],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(module, DataLoader(data, batch_size=8))
    return trainer, path


def test_preemption_signal_saves_last_checkpoint_and_calls_previous_handler(tmp_path):
    """submitit's USR2 handler (here one that returns) runs after the checkpoint, then training stops."""
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        with pytest.raises(Interrupted) as stopped:
            _fit(tmp_path, _Tiny(signal.SIGUSR2))
        assert signal.getsignal(signal.SIGUSR2) is not None and calls == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert stopped.value.signum == signal.SIGUSR2
    path = tmp_path / "checkpoints" / "last.ckpt"
    assert torch.load(path, weights_only=False)["global_step"] == 4  # the signalled step finished, then saved
    assert not path.with_name("last.ckpt.tmp").exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_save_last_checkpoint_and_stop(tmp_path, signum):
    before = signal.getsignal(signum)
    with pytest.raises(Interrupted, match=f"interrupted by {signal.Signals(signum).name}.*relaunch"):
        _fit(tmp_path, _Tiny(signum))
    assert signal.getsignal(signum) == before, "the previous handler is back"
    assert torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 4


def test_a_second_ctrl_c_interrupts_at_once(tmp_path):
    with pytest.raises(SystemExit) as stopped:  # Lightning turns KeyboardInterrupt into exit code 1
        _fit(tmp_path, _Tiny(signal.SIGINT, signal.SIGINT))
    assert stopped.value.code == 1
    assert not (tmp_path / "checkpoints" / "last.ckpt").exists()


def test_rng_state_survives_a_weights_only_load(tmp_path):
    torch.save({"callbacks": RNGStateCheckpoint().state_dict()}, tmp_path / "x.ckpt")
    state = torch.load(tmp_path / "x.ckpt", weights_only=True)["callbacks"]
    expected = np.random.rand(2)
    np.random.seed(5)
    RNGStateCheckpoint().load_state_dict(state)
    assert np.array_equal(np.random.rand(2), expected)  # back to the state before `expected` was drawn
