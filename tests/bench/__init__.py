"""`make bench`: each benchmark measures its figures and the same-run baseline they are compared with.

A benchmark is a function in a `tests/bench/bench_*.py` module, registered with `@benchmark`,
that returns `Figure`s. Results merge into `.bench/results.json` by figure name, so running
one benchmark keeps the others' last results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

BENCHMARKS: dict[str, Callable[[], list[Figure]]] = {}


@dataclass(frozen=True)
class Figure:
    name: str
    value: float
    unit: str
    baseline_name: str | None = None
    baseline_value: float | None = None
    target: str | None = None

    @property
    def ratio(self) -> float | None:
        if not self.baseline_value:
            return None
        return round(self.value / self.baseline_value, 3)


def benchmark(name: str) -> Callable:
    def register(function: Callable[[], list[Figure]]) -> Callable[[], list[Figure]]:
        BENCHMARKS[name] = function
        return function

    return register
