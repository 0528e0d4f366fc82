"""Run one training command from launch.py so that launch.py and its child stop together.

The child runs in its own session, so a Ctrl-C at the terminal reaches launch.py only, which passes it on
once (a second Ctrl-C, passed on too, stops the child at once). SIGTERM and SIGHUP sent to launch.py are
passed on the same way, and launch.py waits for the child to stop (it saves ``last.ckpt`` first). If
launch.py dies without that chance (SIGKILL), the kernel sends the child SIGTERM (Linux parent-death
signal), so no training runs on unattended.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
from collections.abc import Callable

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_PDEATHSIG = 1


def _term_when_parent_dies() -> None:
    """In the child, before exec: ask the kernel for SIGTERM when the parent exits (Linux only)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Start ``cmd`` in its own session, to be stopped with its parent."""
    return subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=_term_when_parent_dies)


def run(cmd: list[str], env: dict[str, str], wait: Callable[[subprocess.Popen], int] | None = None) -> int:
    """Run ``cmd`` (see the module docstring) and return its exit code; ``wait`` waits for it (default
    ``Popen.wait``), e.g. reporting a SLURM queue meanwhile."""
    proc = start(cmd, env)

    def forward(signum: int, frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in FORWARDED}
    try:
        return (wait or subprocess.Popen.wait)(proc)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
