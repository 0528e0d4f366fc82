"""The real files of ../shared/data for the tests that read them: skipped in a user's clone, required in CI.

Imported by test modules as ``from shared_data import ...`` (``tests/`` is on pytest's ``pythonpath``).
"""

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
"""Real public annotation files, class lists and clips beside the repository (absent in a user's clone)."""


def require_shared(path: Path) -> Path:
    """``path`` (under :data:`SHARED_DATA`) when it exists; otherwise skip the test with the reason, or
    fail it when ``EGOLAB_REQUIRE_SHARED=1`` (``.ci/run``, where ../shared must be there)."""
    if not path.exists():
        message = f"real data not found at {path} (../shared beside the repository)"
        if os.environ.get("EGOLAB_REQUIRE_SHARED") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path
