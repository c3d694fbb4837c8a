"""`kill -9` at the worst moment of each step, then a restart: nothing lost, nothing twice.

Each process is real and stops itself at a named crash point (`resources.crash_points`),
where the test kills it with SIGKILL; the windows are the sender between its claim and the
request, dispatch between SQS's answer and its record on the members, the agent around its
reply's send, and the media archive between its copy and the delete of the hot object.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections import Counter

import pytest
import sqlalchemy as sa

from assets_defs.archive.media import media_archive
from resources.campaigns import Member
from resources.messages import stuck_in_sending
from resources.queue import SQSResource
from resources.storage import S3Storage
from tests import payloads as p
from tests.archive_data import (
    day_ago,
    failure_message,
    keys,
    midnight,
    organisation,
    run_archive,
)
from tests.crashes import kill_9, start_until
from tests.dispatch_fixtures import drain as drain_queue
from tests.dispatch_fixtures import materialize_run, ready_campaign
from tests.sending import client_for, drain, enqueue, make_run, payload, statuses, wait_for
from tests.webhook_support import add_organisation, rows, scalar


def _callbacks(graph) -> Counter:
    return Counter(int(r["biz_opaque_callback_data"]) for r in graph.requests)


def test_sender_killed_between_its_claim_and_the_request(
    engine, database_url, sqs, graph, repo_root, tmp_path
):
    run = make_run(engine, 25)
    enqueue(sqs, [payload(run, i) for i in range(25)])
    sender = start_until(
        "sender.claimed",
        ["-m", "pipelines.cli", "sender"],
        {
            "SQS_QUEUE_NAME": sqs.queue_name,
            "SQS_DLQ_NAME": sqs.dlq_name,
            "WHATSAPP_ACCESS_TOKEN": "test-token",
            "WHATSAPP_API_BASE_URL": graph.url,
            "SENDER_LANES": "1",
            "SENDER_WAIT_SECONDS": "1",
            "SENDER_VISIBILITY_SECONDS": "2",
        },
        repo_root,
        tmp_path,
    )
    kill_9(sender)
    claimed = {r.id for r in rows(engine, "SELECT id FROM messages WHERE status = 'sending'")}
    assert claimed and graph.requests == []

    drain(engine, sqs, client_for(graph.url))

    # The claimed rows' payloads came back and were dropped: the request may have left, so
    # they are never sent automatically; they are surfaced instead, and nothing else waits.
    sent = _callbacks(graph)
    assert set(sent.values()) == {1}
    assert set(sent) == set(run.message_ids) - claimed
    assert {s.id for s in stuck_in_sending(engine.connect(), 0)} == claimed
    assert statuses(engine, run) == {"sent": 25 - len(claimed), "sending": len(claimed)}
    assert sqs.depth().visible + sqs.depth().in_flight == 0


@pytest.fixture
def dispatch_resources(postgres, sqs, s3):
    return {
        "postgres": postgres,
        "sqs": SQSResource(**sqs.model_dump()),
        "s3": S3Storage(**s3.model_dump()),
    }


def test_dispatch_killed_between_sqs_accepting_and_its_record(
    engine, database_url, sqs, s3, dispatch_resources, repo_root, tmp_path
):
    members = [Member(f"+1202555{i:04d}", f"Member {i}") for i in range(25)]
    campaign_id = ready_campaign(engine, members, message_type="text")
    child = start_until(
        "dispatch.sqs_accepted",
        ["-m", "tests.crash_child", "dispatch", str(campaign_id)],
        {"SQS_QUEUE_NAME": sqs.queue_name, "SQS_DLQ_NAME": sqs.dlq_name, "S3_BUCKET": s3.bucket},
        repo_root,
        tmp_path,
    )
    kill_9(child)
    unrecorded = "SELECT count(*) FROM campaign_audience WHERE dispatch_run_id IS NULL"
    assert scalar(engine, unrecorded) == 25
    assert sqs.depth().visible == 25  # SQS had them all; the database did not know

    assert materialize_run(campaign_id, dispatch_resources).success

    ids = sorted(r.id for r in rows(engine, "SELECT id FROM messages"))
    assert scalar(engine, unrecorded) == 0
    # The retry's copies carried the same deduplication ids: one payload per row.
    assert sorted(b["messageId"] for b in drain_queue(sqs, expected=25)) == ids


def _wamid(graph, index: int) -> str:
    """The message id the fake Graph API answered its `index`th request with."""
    body = graph.requests[index]
    return "wamid." + base64.b64encode(f"{body['to']}:{index}".encode()).decode()


@pytest.mark.parametrize("point", ["outbound.queued", "outbound.accepted"])
def test_the_agent_killed_around_its_reply_sends_it_once_and_keeps_its_record(
    engine, database_url, graph, repo_root, tmp_path, point
):
    add_organisation(engine)
    env = {
        "WHATSAPP_ACCESS_TOKEN": "test-token",
        "WHATSAPP_API_BASE_URL": graph.url,
        "WHATSAPP_PHONE_NUMBER_ID": p.PHONE_NUMBER_ID,
        "AGENT_BUFFER_SECONDS": "0",
        "WEBHOOK_WORKER_NICE": "0",
    }

    def customer_says(text: str) -> None:
        with engine.begin() as conn:
            conn.execute(
                sa.text("INSERT INTO webhook_inbox (payload) VALUES (CAST(:p AS jsonb))"),
                {"p": json.dumps(p.inbound(p.text(text)))},
            )

    customer_says("hello")
    worker = start_until(point, ["-m", "pipelines.cli", "webhook-worker"], env, repo_root, tmp_path)
    kill_9(worker)
    [reply] = rows(engine, "SELECT * FROM messages WHERE sender_type = 'ai'")
    # The reply was stored with the turn: the customer's message is handled, not re-answered.
    unanswered = "SELECT count(*) FROM messages WHERE direction = 'inbound' AND handled_at IS NULL"
    assert scalar(engine, unanswered) == 0
    accepted = len(graph.requests)
    assert (reply.status, accepted) == (
        ("pending", 0) if point == "outbound.queued" else ("sending", 1)
    )

    restarted = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "webhook-worker"],
        cwd=repo_root,
        env={**os.environ, **env},
    )
    try:
        wait_for(lambda: len(graph.requests) == 1, timeout=90)  # sent now, or before the kill
        customer_says("are you there?")  # the restarted worker answers what comes next
        wait_for(lambda: len(graph.requests) == 2, timeout=90)
        assert _callbacks(graph)[reply.id] == 1
        if point == "outbound.accepted":
            # WhatsApp's `sent` receipt names the row (biz_opaque_callback_data): its wamid
            # is recorded although the answer never was.
            status = p.status(_wamid(graph, 0), "sent", callback=str(reply.id))
            with engine.begin() as conn:
                conn.execute(
                    sa.text("INSERT INTO webhook_inbox (payload) VALUES (CAST(:p AS jsonb))"),
                    {"p": json.dumps(p.statuses(status))},
                )
        wait_for(
            lambda: (
                scalar(engine, "SELECT status FROM messages WHERE id = :id", id=reply.id) == "sent"
            ),
            timeout=60,
        )
    finally:
        restarted.kill()
        restarted.wait(timeout=30)
    recorded = rows(engine, "SELECT * FROM messages WHERE id = :id", id=reply.id)[0]
    assert recorded.provider_message_id == _wamid(graph, 0)
    assert len(rows(engine, "SELECT id FROM messages WHERE sender_type = 'ai'")) == 2
    assert _callbacks(graph) == Counter(
        {r.id: 1 for r in rows(engine, "SELECT id FROM messages WHERE sender_type = 'ai'")}
    )


DAY = day_ago(40)
HOT = "inbound/abc.png"
CONTENT = b"\x89PNG the customer's photo"


def _stored_media(engine, s3) -> int:
    s3.client.put_object(Bucket=s3.bucket, Key=HOT, Body=CONTENT)
    with engine.begin() as conn:
        return conn.execute(
            sa.text(
                "INSERT INTO media (organisation_id, created_at, media_type, mime_type, status,"
                " s3_bucket, s3_key) VALUES (:o, :t, 'image', 'image/png', 'stored', :b, :k)"
                " RETURNING id"
            ),
            {"o": organisation(engine), "t": midnight(DAY), "b": s3.bucket, "k": HOT},
        ).scalar_one()


@pytest.mark.parametrize("point", ["media_archive.copied", "media_archive.recorded"])
def test_media_archive_killed_between_its_copy_and_the_delete_of_the_hot_object(
    engine, postgres, database_url, s3, repo_root, tmp_path, point
):
    media_id = _stored_media(engine, s3)
    child = start_until(
        point,
        ["-m", "tests.crash_child", "media-archive", DAY.isoformat()],
        {"S3_BUCKET": s3.bucket},
        repo_root,
        tmp_path,
    )
    kill_9(child)
    archived = keys(s3, "archived-media/")
    assert len(archived) == 1 and HOT in keys(s3)  # copied; the hot object is still there
    row = rows(engine, "SELECT status, hot_key FROM media WHERE id = :id", id=media_id)[0]
    assert tuple(row) == (("stored", None) if point.endswith("copied") else ("archived", HOT))

    assert run_archive(media_archive, postgres, s3, DAY).success

    assert keys(s3) == archived  # one archived object, no hot copy left behind
    body = s3.client.get_object(Bucket=s3.bucket, Key=archived[0])["Body"].read()
    assert body == CONTENT
    row = rows(engine, "SELECT * FROM media WHERE id = :id", id=media_id)[0]
    assert (row.status, row.s3_key, row.hot_key) == ("archived", archived[0], None)


def test_media_archive_keeps_the_hot_object_when_the_copy_differs_by_content(engine, postgres, s3):
    media_id = _stored_media(engine, s3)
    copy = s3.client.copy_object

    def corrupting_copy(**kwargs):
        answer = copy(**kwargs)
        s3.client.put_object(Bucket=kwargs["Bucket"], Key=kwargs["Key"], Body=CONTENT[::-1])
        return answer

    s3.client.copy_object = corrupting_copy  # same size, other bytes
    result = run_archive(media_archive, postgres, s3, DAY)
    assert not result.success
    assert HOT in keys(s3)
    row = rows(engine, "SELECT status, s3_key FROM media WHERE id = :id", id=media_id)[0]
    assert tuple(row) == ("stored", HOT)
    assert "SHA-256" in failure_message(result)
