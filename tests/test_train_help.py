"""`python -m egolab.train --help` lists the config groups instead of failing to compose."""

import subprocess
import sys

from egolab.train import usage


def test_help_lists_every_group_and_option():
    proc = subprocess.run(
        [sys.executable, "-m", "egolab.train", "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == usage().strip()
    groups = dict(line.strip().split(": ", 1) for line in proc.stdout.splitlines() if line.startswith("  "))
    assert "localization" in groups["task"].split(", ")
    assert "demo" in groups["data/localization"].split(", ")
    assert "thumos_i3d" in groups["model/actionformer"].split(", ")
