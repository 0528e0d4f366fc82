"""Model tests: one torch thread (tiny models are fastest so, and a busy host is not oversubscribed)."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny models run fastest on one thread, and busy hosts do not oversubscribe the cores."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
