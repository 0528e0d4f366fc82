"""Model tests: one torch thread (tiny models are fastest so, and a busy host is not oversubscribed)."""

import pytest


@pytest.fixture(autouse=True)
def _single_thread(single_thread):
    yield
