"""How long the embedded stack takes to come up, which every `make dev`, `make test` and
`make demo` pays; baseline: the embedded Postgres alone (initdb + start)."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from pipelines.dev.local_stack import EmbeddedPostgres, local_stack
from tests.bench import Figure, benchmark


@benchmark("stack")
def stack_start() -> list[Figure]:
    for name in ("DATABASE_URL", "AWS_ENDPOINT_URL", "DAGSTER_HOME", "DAGSTER_POSTGRES_URL"):
        os.environ.pop(name, None)
    with tempfile.TemporaryDirectory() as state:
        started = time.perf_counter()
        server = EmbeddedPostgres(Path(state) / "pg")
        server.start()
        baseline = time.perf_counter() - started
        server.stop()
    with tempfile.TemporaryDirectory() as state:
        started = time.perf_counter()
        with local_stack(Path(state)):
            elapsed = time.perf_counter() - started
    return [
        Figure(
            "stack_start_s",
            round(elapsed, 2),
            "s",
            "postgres_initdb_and_start_s",
            round(baseline, 2),
        )
    ]
