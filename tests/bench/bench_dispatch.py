"""Dispatch throughput, database to SQS, and its peak memory.

- `dispatch_messages_per_s`: one `dispatched_batches` run of 50,000 members (payloads built,
  validated, stored, queued and marked), against the same-run baseline: a plain boto3 loop
  sending the same 50,000 prepared payloads with sequential `SendMessageBatch` calls.
- `dispatch_peak_rss_mb`: peak RSS of a process that materialises a 200,000-member run.

The local SQS server (moto) runs in its own process, so it shares no interpreter lock with
the dispatcher and its memory is not counted. Some of moto's costs would make 50,000 messages
measure moto rather than the dispatcher, so that process avoids them for both measurements:
it computes every queue attribute, three full scans of the queue, on each message sent (here
only for GetQueueAttributes), and it scans the whole queue for every message sent to a FIFO
queue (deduplication), so the queue is a standard one. It also lists its own package
directory (one `stat` per service) on every request, converts the same attribute names from
camelCase on every message and logs every request line: here the directory listing is read
once, the name conversion is remembered and the request log is off. Each measurement starts
on a new, empty queue.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import sqlalchemy as sa

from tests.bench import Figure, benchmark

# The sizes by default; smaller ones through these variables when the local server is
# too slow for them (on a loaded machine it takes ~0.2 s per call: 50,000 members = minutes).
# The sizes used are printed with the figures.
THROUGHPUT_MEMBERS = int(os.environ.get("BENCH_DISPATCH_MEMBERS", "50000"))
RSS_MEMBERS = int(os.environ.get("BENCH_DISPATCH_RSS_MEMBERS", "200000"))


@contextmanager
def moto_process():
    from pipelines.local_stack import free_port

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.bench_dispatch", "serve-moto", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/moto-api/", timeout=1)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                server.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.2)
    try:
        yield url
    finally:
        server.terminate()
        server.wait(10)


def bench_campaign(engine: sa.Engine, count: int) -> str:
    """A template campaign with two parameters, in `asset_generated`, with `count` members
    (valid US numbers +1 202 555 xxxx … spread over exchanges 555-574)."""
    from resources import campaigns

    with engine.begin() as conn:
        org = campaigns.create_organisation(conn, f"Bench {count}")
        campaigns.add_phone_number(conn, org, "bench-phone")
        template = campaigns.create_template(
            conn,
            org,
            f"bench_{count}",
            parameters=[
                {"type": "body", "valueType": "text", "source": "contact.name"},
                {"type": "body", "valueType": "text", "source": "literal:see you soon"},
            ],
        )
        campaign = campaigns.create_campaign(
            conn,
            org,
            "Bench",
            message_type="template",
            template_id=template,
            phone_number_id="bench-phone",
        )
        numbers = (
            campaigns.Member(
                f"+1{202 + i // 100_000}{555 + (i // 10_000) % 10}{i % 10_000:04d}", f"Customer {i}"
            )
            for i in range(count)
        )
        campaigns.add_audience(conn, campaign, numbers)
        campaigns.set_campaign_status(conn, campaign, "approved")
        campaigns.set_campaign_status(conn, campaign, "asset_generated")
    return str(campaign)


def materialize(campaign_id: str) -> dict:
    import dagster as dg

    from assets_defs.dispatch.asset import dispatched_batches
    from pipelines.definitions import resources

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("campaigns", [campaign_id])
    result = dg.materialize(
        [dispatched_batches],
        partition_key=dg.MultiPartitionKey(
            {"campaign": campaign_id, "date": datetime.now(UTC).date().isoformat()}
        ),
        resources=resources(),
        instance=instance,
    )
    metadata = result.asset_materializations_for_node("dispatched_batches")[0].metadata
    return {k: v.value for k, v in metadata.items()}


def baseline_messages_per_s(engine: sa.Engine, campaign_id: str, sqs) -> float:
    """The same prepared payloads, sent by a plain loop of sequential SendMessageBatch calls."""
    with engine.connect() as conn:
        bodies = [
            json.dumps({**payload, "messageId": message_id}, separators=(",", ":"))
            for message_id, payload in conn.execute(
                sa.text(
                    "SELECT m.id, m.payload FROM messages m JOIN campaign_runs r"
                    " ON r.id = m.campaign_run_id WHERE r.campaign_id = :c ORDER BY m.id"
                ),
                {"c": campaign_id},
            )
        ]
    client, url = sqs.client, sqs.url()
    started = time.perf_counter()
    for start in range(0, len(bodies), 10):
        client.send_message_batch(
            QueueUrl=url,
            Entries=[
                {"Id": str(i), "MessageBody": body}
                for i, body in enumerate(bodies[start : start + 10])
            ],
        )
    return len(bodies) / (time.perf_counter() - started)


def empty_queue(label: str):
    """A new, empty queue for one measurement (SQS allows one purge a minute), made the one
    `resources()` uses."""
    from resources.queue import SQSResource

    os.environ.update(SQS_QUEUE_NAME=f"bench-{label}", SQS_DLQ_NAME=f"bench-{label}-dlq")
    sqs = SQSResource.from_env()
    sqs.ensure_queues()
    return sqs


@benchmark("dispatch")
def dispatch() -> list[Figure]:
    from pipelines.local_stack import local_stack
    from resources.postgres import PostgresResource

    for name in (
        "DATABASE_URL",
        "DAGSTER_HOME",
        "DAGSTER_POSTGRES_URL",
        "APP_ENV",
        "SQS_QUEUE_NAME",
    ):
        os.environ.pop(name, None)
    with moto_process() as endpoint, tempfile.TemporaryDirectory() as state:
        os.environ.update(
            AWS_ENDPOINT_URL=endpoint,
            AWS_ACCESS_KEY_ID="local",
            AWS_SECRET_ACCESS_KEY="local",
            AWS_SESSION_TOKEN="local",
        )
        with local_stack(Path(state)):
            postgres = PostgresResource.from_env()
            campaign = bench_campaign(postgres.engine, THROUGHPUT_MEMBERS)
            empty_queue("pipeline")
            pipeline = materialize(campaign)
            assert pipeline["queued"] == THROUGHPUT_MEMBERS, pipeline
            baseline = baseline_messages_per_s(postgres.engine, campaign, empty_queue("baseline"))
            empty_queue("rss")

            big = bench_campaign(postgres.engine, RSS_MEMBERS)
            started = time.perf_counter()
            child = subprocess.run(
                [sys.executable, "-m", "tests.bench.bench_dispatch", big],
                capture_output=True,
                text=True,
                check=True,
            )
            rss_seconds = time.perf_counter() - started
            rss = json.loads(child.stdout.strip().splitlines()[-1])
            assert rss["queued"] == RSS_MEMBERS, rss
            postgres.engine.dispose()
    print(
        f"{THROUGHPUT_MEMBERS:,} members: pipeline {pipeline['messages_per_second']} msg/s,"
        f" baseline {baseline:.1f} msg/s; {RSS_MEMBERS:,}-member run: {rss_seconds:.0f} s"
        " in its own process"
    )
    return [
        Figure(
            "dispatch_messages_per_s",
            pipeline["messages_per_second"],
            "messages/s",
            "boto3_sequential_send_message_batch_per_s",
            round(baseline, 1),
            f"≥ 1.0× baseline at {THROUGHPUT_MEMBERS:,} members",
        ),
        Figure(
            "dispatch_peak_rss_mb",
            rss["peak_rss_mb"],
            "MB",
            target=f"< 300 MB at {RSS_MEMBERS:,} members",
        ),
    ]


def _measure_rss(campaign_id: str) -> None:
    """Child process: materialise one run and report its peak RSS."""
    metadata = materialize(campaign_id)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sys.stdout.write(
        json.dumps({"queued": metadata["queued"], "peak_rss_mb": round(peak_mb, 1)}) + "\n"
    )


def _serve_moto(port: int) -> None:
    """Child process: moto's server, without its per-request costs that do not depend on the
    client (see the module docstring)."""
    import functools
    import logging
    import threading

    from moto import backends
    from moto.core import responses, utils
    from moto.server import ThreadedMotoServer
    from moto.sqs import models

    asked = threading.local()
    for name in (
        "approximate_number_of_messages",
        "approximate_number_of_messages_delayed",
        "approximate_number_of_messages_not_visible",
    ):
        count = getattr(models.Queue, name).fget
        setattr(
            models.Queue,
            name,
            property(lambda queue, count=count: count(queue) if getattr(asked, "on", False) else 0),
        )
    get_attributes = models.SQSBackend.get_queue_attributes

    def get_queue_attributes(self, *args, **kwargs):
        asked.on = True
        try:
            return get_attributes(self, *args, **kwargs)
        finally:
            asked.on = False

    models.SQSBackend.get_queue_attributes = get_queue_attributes
    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules
    remembered = functools.lru_cache(maxsize=None)(utils.camelcase_to_underscores)
    models.camelcase_to_underscores = remembered
    responses.camelcase_to_underscores = remembered
    logging.getLogger("werkzeug").disabled = True
    ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False).start()
    threading.Event().wait()


if __name__ == "__main__":
    if sys.argv[1] == "serve-moto":
        _serve_moto(int(sys.argv[2]))
    else:
        _measure_rss(sys.argv[1])
