"""Killing a real process with SIGKILL at a named crash point (`resources.crash_points`): the
process stops itself there and says so, and the test kills it at that very moment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PYTHON = sys.executable


def start_until(
    point: str, args: list[str], env: dict[str, str], cwd: Path, ready_dir: Path
) -> subprocess.Popen:
    """Start `python <args>` and return once it has stopped at `point` (SIGSTOP'd)."""
    ready = ready_dir / f"{point}.{time.monotonic_ns()}.ready"
    process = subprocess.Popen(
        [PYTHON, *args],
        cwd=cwd,
        env={**os.environ, **env, "WAFLOW_CRASH_POINT": point, "WAFLOW_CRASH_READY": str(ready)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 180
    while not ready.exists():
        if process.poll() is not None:
            _out, err = process.communicate()
            raise AssertionError(f"exited ({process.returncode}) before {point}: {err[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"{point} not reached within 180 s")
        time.sleep(0.05)
    return process


def kill_9(process: subprocess.Popen) -> None:
    """SIGKILL, as `kill -9`: no handler, no clean-up, nothing flushed."""
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
