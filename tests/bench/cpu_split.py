"""Where a benchmark's CPU goes: the benchmark's processes, sampled from `/proc`, summed by
what they are (our pipeline's processes, the local S3/SQS server, PostgreSQL, …).

Ours are the benchmark process and its descendants, and processes whose command line holds
one of the given markers (PostgreSQL leaves its parent: its data directory marks it) and
their descendants; nothing else on the machine is counted.

CPU seconds, unlike wall time, hardly move with whatever else the cores are doing, so the
split says which part to make cheaper even on a shared machine. A process that ends between
two samples loses at most one interval of its time.
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")

# (category, a piece of the command line), first match wins; one of ours that matches
# nothing takes its parent's category.
_KINDS = (
    ("S3/SQS server (moto)", "local_aws"),
    ("media sandbox workers", "sandbox/worker.py"),
    ("dagster-daemon", "dagster._daemon run"),
    ("code server", "code-server start"),
    ("code server", "api grpc"),
    ("Dagster UI (webserver)", "dagster_webserver"),
    ("dagster dev", "dagster dev"),
    ("Dagster run processes", "execute_run"),
    ("Dagster run processes", "multiprocessing.spawn"),  # the code server's launches
    ("sender", "waflow sender"),
    ("sender", "cli sender"),
    ("webhook", "uvicorn"),
)


class CpuSplit:
    """Samples our processes every `interval` seconds between `start()` and `stop()`."""

    def __init__(self, markers: tuple[str, ...] = (), interval: float = 1.0) -> None:
        self.markers = markers
        self.interval = interval
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._kind: dict[int, str | None] = {}  # None: not ours
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._own = os.getpid()

    def start(self) -> CpuSplit:
        self._sample(initial=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, float]:
        """CPU seconds by category, largest first."""
        self._stop.set()
        self._thread.join()
        self._sample()
        totals: dict[str, float] = defaultdict(float)
        for pid, seconds in self._last.items():
            if kind := self._kind[pid]:
                totals[kind] += seconds - self._first.get(pid, 0.0)
        return dict(sorted(totals.items(), key=lambda item: -item[1]))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self, initial: bool = False) -> None:
        parents: dict[int, int] = {}
        for pid in sorted(int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit()):
            entry = Path(f"/proc/{pid}")
            try:
                stat = (entry / "stat").read_text()
                cmdline = (
                    (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
            except OSError:
                continue
            command = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            parents[pid] = int(fields[1])
            seconds = (int(fields[11]) + int(fields[12])) / _TICKS
            if initial:
                self._first[pid] = seconds
            self._last[pid] = seconds
            if pid not in self._kind:
                self._kind[pid] = self._classify(pid, command, cmdline, parents)

    def _classify(
        self, pid: int, command: str, cmdline: str, parents: dict[int, int]
    ) -> str | None:
        if pid == self._own:
            return "benchmark process (fake Graph API, polling)"
        parent_kind = self._kind.get(parents.get(pid, 0))
        if not (parent_kind or any(marker in cmdline for marker in self.markers)):
            return None
        if command == "postgres":  # by name: other command lines carry postgres:// URLs
            return "PostgreSQL"
        for kind, piece in _KINDS:
            if piece in cmdline:
                return kind
        return parent_kind or "other processes"


def table(split: dict[str, float]) -> str:
    total = sum(split.values()) or 1.0
    return "\n".join(
        f"  {kind:<45} {seconds:8.1f} CPU-s  {100 * seconds / total:5.1f} %"
        for kind, seconds in split.items()
    )
