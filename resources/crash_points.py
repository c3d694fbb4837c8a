"""Named points where a test can kill a process with SIGKILL at exactly the worst moment.

A process started with `WAFLOW_CRASH_POINT=<name>` and `WAFLOW_CRASH_READY=<file>` that
reaches that point creates the file and stops itself whole (SIGSTOP: every thread at once,
nothing more happens), so the test's `kill -9` lands there and nowhere else. Unset (always,
outside the tests) a point costs one dictionary lookup; in production it does nothing.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from resources import settings


def reached(name: str) -> None:
    if os.environ.get("WAFLOW_CRASH_POINT") != name or settings.is_production():
        return
    Path(os.environ["WAFLOW_CRASH_READY"]).write_text(str(os.getpid()))
    # Stopped again whenever something continues it: the kernel sends SIGCONT to a stopped
    # process whose process group becomes orphaned. Only the test's kill -9 ends it here.
    while True:
        os.kill(os.getpid(), signal.SIGSTOP)
