"""Experiment TXT files under test: the tracked ones, so a user's unfinished file cannot break the suite."""

from __future__ import annotations

import subprocess
from pathlib import Path


def tracked_experiments(root: Path) -> list[Path]:
    """Tracked ``expts/**/*.txt`` under ``root``; every such file when ``root`` is not a git checkout."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--", "expts"], cwd=root, capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return sorted((root / "expts").rglob("*.txt"))
    return sorted(root / name for name in listed.split("\0") if name.endswith(".txt"))
