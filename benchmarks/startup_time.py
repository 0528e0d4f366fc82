"""Start-up: ``launch.py -c expts/demo/localization.txt -g`` to the first training step, against its floor.

The launch runs with a fresh ``--outputs`` folder each time and an extra callback
(``benchmarks/first_step_marker.py``) that prints a marker as the first training batch starts; the wall
time from starting ``launch.py`` to that line is the figure, and the run is then stopped. A warm-up
launch first generates the demo data. The floor is a fresh ``python -c "import lightning.pytorch"``:
Lightning imports torchmetrics, which imports torchvision and transformers whenever they are installed,
and that alone is printed with its three largest parts (from ``-X importtime``).

    python benchmarks/startup_time.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 5.0
MARKER = "EGOLAB_FIRST_TRAINING_STEP"  # as in first_step_marker.py (not imported: it imports Lightning)


def launch_to_first_step() -> float:
    """Seconds from starting launch.py to the marker line; the run is stopped there."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO / "benchmarks"), os.environ.get("PYTHONPATH", "")]),
    }
    with tempfile.TemporaryDirectory() as outputs:
        cmd = [sys.executable, "launch.py", "-c", "expts/demo/localization.txt", "-g", "--outputs", outputs]
        cmd += ["+callbacks.first_step._target_=first_step_marker.FirstStepMarker"]
        start = time.perf_counter()
        proc = subprocess.Popen(
            cmd,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        lines = []
        for line in proc.stdout:
            if MARKER in line:
                elapsed = time.perf_counter() - start
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                return elapsed
            lines.append(line)
        proc.wait()
    raise RuntimeError("the run ended without a training step:\n" + "".join(lines[-20:]))


def import_floor() -> tuple[float, list[tuple[str, float]]]:
    """Wall seconds of a fresh ``import lightning.pytorch`` and its largest top-level packages' shares."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import lightning.pytorch"], check=True)
    wall = time.perf_counter() - start
    report = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import lightning.pytorch"],
        check=True,
        capture_output=True,
        text=True,
    ).stderr
    parts = {}
    for line in report.splitlines():
        fields = line.split("|")
        if len(fields) == 3 and fields[2].strip() in ("torch", "torchvision", "transformers"):
            parts[fields[2].strip()] = int(fields[1]) / 1e6
    return wall, sorted(parts.items(), key=lambda kv: -kv[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    launch_to_first_step()  # warm-up: generates the demo data, fills the OS file cache
    launch_s = statistics.median(launch_to_first_step() for _ in range(args.repeats))
    floor = [import_floor() for _ in range(args.repeats)]
    floor_s = statistics.median(f[0] for f in floor)
    print(
        f"launch.py -g to the first training step: {launch_s:5.2f} s "
        f"(median of {args.repeats}; target {TARGET_S:g} s)"
    )
    print(
        f"floor, a bare import lightning.pytorch:  {floor_s:5.2f} s, of which (cumulative, last run): "
        + ", ".join(f"{name} {s:.2f} s" for name, s in floor[-1][1])
    )


if __name__ == "__main__":
    main()
