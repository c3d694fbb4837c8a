"""The worker under failure: SIGTERM, kill -9 with requests in flight, a database outage."""

import os
import signal
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from pipelines.sender import release
from resources.postgres import create_engine
from tests.fake_graph import FakeGraph
from tests.sending import (
    client_for,
    dead_letters,
    drain,
    enqueue,
    make_run,
    payload,
    row,
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


@pytest.mark.parametrize("statement", [b"admit_recipients", b"reserve_send_slots"])
def test_admission_and_slots_wait_out_a_database_outage_and_nothing_is_dead_lettered(
    engine, database_url, sqs, graph, statement, caplog
):
    """The outage starts as a statement reaches the database and its answer does not come
    back; it lasts several times `visibility × SQS_MAX_RECEIVE_COUNT` (the issue's five
    minutes, shortened: the path is the same). A lane waits it out holding its batch hidden,
    so SQS never dead-letters payloads whose rows are still pending."""
    run = make_run(engine, 30)
    enqueue(sqs, [payload(run, i) for i in range(30)])
    url = sa.make_url(database_url)
    with TCPProxy(f"{url.host}:{url.port}", cut_after=statement) as link:
        through_link = create_engine(url.set(port=link.port).render_as_string(hide_password=False))
        worker, thread = start(
            through_link, sqs, client_for(graph.url), visibility_seconds=2, lanes=2
        )
        wait_for(lambda: link.cuts == 1)
        time.sleep(OUTAGE_SECONDS)
        link.restore()
        wait_for(lambda: statuses(engine, run) == {"sent": 30}, timeout=120)
        wait_for(lambda: sqs.depth().visible + sqs.depth().in_flight == 0, timeout=60)
        worker.stop()
        thread.join(timeout=60)
        through_link.dispose()
    assert sorted(int(r["biz_opaque_callback_data"]) for r in graph.requests) == run.message_ids
    assert dead_letters(sqs) == []
    assert worker.stats["sent"] == 30
    what = "admit recipients" if statement == b"admit_recipients" else "reserve send slots"
    assert any(f"cannot {what} yet" in r.getMessage() for r in caplog.records)


def test_rows_whose_payload_left_the_queue_are_requeued_once_and_sent_once(engine, sqs, graph):
    """Rows `pending` and queued long ago whose payloads SQS dead-lettered (or that an emptied
    queue lost) go back on the queue once; a payload still on the queue makes a copy the
    claim drops."""
    run = make_run(engine, 6)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE messages SET queued_at = now() - interval '2 hours'"
                " WHERE campaign_run_id = :r"
            ),
            {"r": run.campaign_run_id},
        )
    enqueue(sqs, [payload(run, 0)])  # still on the queue, behind a long backlog
    assert release.requeue_lost(engine, sqs, 3600) == 6
    assert release.requeue_lost(engine, sqs, 0) == 0  # once
    assert sqs.depth().visible == 7

    worker = drain(engine, sqs, client_for(graph.url), requeue_after_seconds=3600)

    assert statuses(engine, run) == {"sent": 6}
    assert sorted(int(r["biz_opaque_callback_data"]) for r in graph.requests) == run.message_ids
    assert worker.stats["duplicates"] == 1
    requeued = [row(engine, i).requeued_at for i in run.message_ids]
    assert all(requeued)


def test_the_sender_requeues_lost_rows_by_itself_after_their_age(engine, sqs, graph):
    run = make_run(engine, 3)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE messages SET queued_at = now() - make_interval(secs => :age)"
                " WHERE campaign_run_id = :r"
            ),
            {"r": run.campaign_run_id, "age": 120},
        )
    worker, thread = start(engine, sqs, client_for(graph.url), requeue_after_seconds=60)
    wait_for(lambda: statuses(engine, run) == {"sent": 3}, timeout=60)
    worker.stop()
    thread.join(timeout=60)
    assert worker.stats["requeued_lost"] == 3
    assert len(graph.requests) == 3
