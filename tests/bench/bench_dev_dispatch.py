"""Dispatch through the local S3/SQS server as `make dev` runs it.

- `dev_dispatch_messages_per_s`: a `dispatched_batches` run of 10,000 members through the
  server `local_stack` starts for itself (as `make dev`, `make demo` and the tests get it) on
  a FIFO queue, as `make dev`'s is (one message group per recipient, deduplication ids).
  Baseline, same run and same code path: the same run through the benchmarks' server
  (`aws_server()`) on a standard queue, as `dispatch_messages_per_s` measures it.

The two servers are the same code (`pipelines.dev.local_aws`: moto in its own process, patched,
uvicorn with keep-alive); the baseline is a second instance of it, on the queue type
moto has always served fastest. So the ratio says what `make dev` pays for its server and
its FIFO queue together; the FIFO rate on the second instance is printed beside it, to tell
the two apart. Best of three alternating rounds of each; each on a new campaign and a new,
empty queue.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from unittest import mock

from resources.queue import SQSResource
from tests.bench import Figure, benchmark
from tests.bench.aws_server import aws_server
from tests.bench.bench_dispatch import bench_campaign, materialize

MEMBERS = int(os.environ.get("BENCH_DEV_DISPATCH_MEMBERS", "10000"))
ROUNDS = int(os.environ.get("BENCH_DEV_DISPATCH_ROUNDS", "3"))


def _dispatch(engine, endpoint: str, queue: str) -> float:
    """Messages/s of one run of `MEMBERS` through `endpoint`, on a new queue named `queue`
    (FIFO when it ends in `.fifo`), as the run's own metadata reports it."""
    dlq = queue.removesuffix(".fifo") + "-dlq" + (".fifo" if queue.endswith(".fifo") else "")
    with mock.patch.dict(
        os.environ, {"AWS_ENDPOINT_URL": endpoint, "SQS_QUEUE_NAME": queue, "SQS_DLQ_NAME": dlq}
    ):
        SQSResource.from_settings().ensure_queues()
        result = materialize(bench_campaign(engine, MEMBERS))
    assert result["queued"] == MEMBERS, result
    return result["messages_per_second"]


@benchmark("dev_dispatch")
def dev_dispatch() -> list[Figure]:
    from pipelines.dev.local_stack import local_stack
    from resources.postgres import PostgresResource

    for name in (
        "DATABASE_URL",
        "AWS_ENDPOINT_URL",
        "DAGSTER_HOME",
        "DAGSTER_POSTGRES_URL",
        "APP_ENV",
        "SQS_QUEUE_NAME",
        "SQS_DLQ_NAME",
    ):
        os.environ.pop(name, None)
    with tempfile.TemporaryDirectory() as state, local_stack(Path(state)) as stack:
        dev_server = stack.env["AWS_ENDPOINT_URL"]
        postgres = PostgresResource.from_settings()
        dev, baseline, second_fifo = [], [], []
        with aws_server() as second_server:
            for n in range(ROUNDS):
                dev.append(_dispatch(postgres.engine, dev_server, f"dev-{n}.fifo"))
                baseline.append(_dispatch(postgres.engine, second_server, f"standard-{n}"))
                second_fifo.append(_dispatch(postgres.engine, second_server, f"second-{n}.fifo"))
        postgres.engine.dispose()
    print(
        f"{MEMBERS:,} members, {ROUNDS} rounds (messages/s): the stack's server, FIFO"
        f" {[round(r) for r in dev]}; second instance, standard {[round(r) for r in baseline]};"
        f" second instance, FIFO {[round(r) for r in second_fifo]}"
    )
    return [
        Figure(
            "dev_dispatch_messages_per_s",
            round(max(dev), 1),
            "messages/s",
            "second_server_standard_queue_dispatch_per_s",
            round(max(baseline), 1),
            f"≥ 0.5× baseline at {MEMBERS:,} members (make dev's server and FIFO queue"
            " against the benchmarks' server and a standard queue)",
        )
    ]
