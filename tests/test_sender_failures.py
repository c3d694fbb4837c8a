"""The worker under failure: SIGTERM, kill -9 with requests in flight, a database outage."""

import os
import signal
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from resources.postgres import create_engine
from tests.fake_graph import FakeGraph
from tests.sending import (
    client_for,
    drain,
    enqueue,
    make_run,
    payload,
    start,
    statuses,
    wait_for,
)
from tests.servers import serve
from tests.tcp_proxy import TCPProxy

OUTAGE_SECONDS = 10  # the 30 s, shortened to keep the suite fast; the path is the same


@pytest.fixture
def slow_graph():
    fake = FakeGraph()
    with serve(fake.app()) as url:
        fake.url = url
        yield fake


def _worker_process(database_url, sqs, graph_url, repo_root, **env):
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "sender"],
        cwd=repo_root,
        env={
            **os.environ,
            "DATABASE_URL": database_url,
            "SQS_QUEUE_NAME": sqs.queue_name,
            "SQS_DLQ_NAME": sqs.dlq_name,
            "WHATSAPP_ACCESS_TOKEN": "test-token",
            "WHATSAPP_API_BASE_URL": graph_url,
            "SENDER_WAIT_SECONDS": "1",
            **env,
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigterm_finishes_in_flight_sends_and_leaves_nothing_invisible(
    engine, database_url, sqs, slow_graph, repo_root
):
    run = make_run(engine, 40)
    slow_graph.delay_seconds = 1.0
    enqueue(sqs, [payload(run, i) for i in range(40)])
    worker = _worker_process(database_url, sqs, slow_graph.url, repo_root, SENDER_LANES="2")
    wait_for(lambda: len(slow_graph.requests) >= 5)
    worker.send_signal(signal.SIGTERM)
    _out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    counts = statuses(engine, run)
    assert "sending" not in counts
    assert counts["sent"] == len(slow_graph.requests)
    assert counts.get("pending", 0) == 40 - counts["sent"] > 0
    depth = sqs.depth()
    assert depth.in_flight == 0
    assert depth.visible == counts["pending"]


def test_kill_9_with_50_requests_in_flight_never_sends_twice_and_surfaces_the_rows(
    engine, database_url, sqs, slow_graph, repo_root
):
    run = make_run(engine, 50)
    # Answers held far longer than the 50 requests take to arrive on a slow machine, so all 50
    # are truly in flight when the worker dies.
    slow_graph.delay_seconds = 20.0
    enqueue(sqs, [payload(run, i) for i in range(50)])
    worker = _worker_process(
        database_url,
        sqs,
        slow_graph.url,
        repo_root,
        SENDER_LANES="5",
        SENDER_VISIBILITY_SECONDS="2",
    )
    wait_for(lambda: len(slow_graph.requests) == 50)
    worker.kill()
    worker.communicate(timeout=30)
    assert statuses(engine, run) == {"sending": 50}

    survivor = drain(engine, sqs, client_for(slow_graph.url))
    assert survivor.stats["duplicates"] == 50 and survivor.stats["sent"] == 0
    assert len(slow_graph.requests) == 50
    assert statuses(engine, run) == {"sending": 50}
    assert sqs.depth().visible == 0

    listing = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "sender-stuck", "--older-than", "0"],
        cwd=repo_root,
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0, listing.stderr
    listed = {int(line.split("\t")[0].split()[1]) for line in listing.stdout.splitlines()}
    assert listed == set(run.message_ids)
    assert "50 message(s) in sending" in listing.stderr


def test_a_database_outage_mid_batch_loses_nothing_and_sends_nothing_twice(
    engine, database_url, stack, sqs, slow_graph
):
    run = make_run(engine, 20)
    slow_graph.delay_seconds = 1.0
    enqueue(sqs, [payload(run, i) for i in range(20)])
    url = sa.make_url(database_url)
    with TCPProxy(f"{url.host}:{url.port}") as link:
        through_link = create_engine(url.set(port=link.port).render_as_string(hide_password=False))
        worker, thread = start(through_link, sqs, client_for(slow_graph.url), visibility_seconds=30)
        wait_for(lambda: len(slow_graph.requests) >= 1)
        link.cut()  # requests are in flight: their results cannot be recorded now
        time.sleep(OUTAGE_SECONDS)
        link.restore()
        wait_for(lambda: statuses(engine, run) == {"sent": 20}, timeout=120)
        wait_for(lambda: sqs.depth().visible + sqs.depth().in_flight == 0, timeout=60)
        worker.stop()
        thread.join(timeout=60)
        through_link.dispose()
    sent_ids = sorted(int(r["biz_opaque_callback_data"]) for r in slow_graph.requests)
    assert sent_ids == run.message_ids  # each message exactly once
    with engine.connect() as conn:
        unrecorded = conn.execute(
            sa.text(
                "SELECT count(*) FROM messages WHERE campaign_run_id = :r"
                " AND provider_message_id IS NULL"
            ),
            {"r": run.campaign_run_id},
        ).scalar_one()
    assert unrecorded == 0
