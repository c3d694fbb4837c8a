"""`dispatched_batches` against the real Postgres and the local SQS server: payload shapes,
validation, exactly-once queueing, partial batch failures and an unreachable endpoint."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit
from uuid import UUID

import httpx
import pytest
import sqlalchemy as sa

from assets_defs.dispatch.dispatcher import CANDIDATE_STATUSES, Dispatch, run_counts
from pipelines.dev.local_stack import free_port
from resources import audience
from resources import campaign_runs as runs
from resources.campaigns import Member, campaign_spec
from resources.queue import SQSResource
from resources.queue_message import SQS_MAX_MESSAGE_BYTES
from resources.storage import S3Storage
from tests.dispatch_fixtures import (
    PHONE_NUMBER_ID,
    TODAY,
    campaign_status,
    drain,
    materialize_run,
    member_rows,
    ready_campaign,
)
from tests.tcp_proxy import TCPProxy

OFFER_PARAMETERS = [
    {"type": "header", "valueType": "image", "source": "asset.image"},
    {"type": "body", "valueType": "text", "source": "contact.name"},
    {"type": "body", "valueType": "text", "source": "attributes.offer"},
]


@pytest.fixture
def resources(postgres, sqs, s3):
    """Resources rebuilt from their fields: Dagster configures a run's resources from the
    constructor arguments, which `model_copy` (the session fixtures' way) does not change."""
    return {
        "postgres": postgres,
        "sqs": SQSResource(**sqs.model_dump()),
        "s3": S3Storage(**s3.model_dump()),
    }


def test_a_template_campaign_is_queued_in_seed_3s_shape(engine, resources, sqs, monkeypatch):
    monkeypatch.setenv("MEDIA_PUBLIC_BASE_URL", "https://cdn.example.com/media/")
    members = [
        Member("+12025550100", "Ada Lovelace", {"offer": "20% off"}),
        Member("+12025550101", "Alan Turing", {"offer": "Free delivery"}),
    ]
    campaign_id = ready_campaign(
        engine,
        members,
        parameters=OFFER_PARAMETERS,
        asset_keys={
            m.msisdn: {"image": f"campaigns/c/{i}/image.jpg"} for i, m in enumerate(members)
        },
    )
    result = materialize_run(campaign_id, resources)

    bodies = sorted(drain(sqs, expected=2), key=lambda b: b["to"])
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT m.id, m.campaign_audience_id::text, m.status, m.queued_at IS NOT NULL,"
                " o.id::text FROM messages m JOIN organisations o ON o.id = m.organisation_id"
                " ORDER BY m.peer_phone"
            )
        ).all()
    assert [(status, queued) for _, _, status, queued, _ in rows] == [("pending", True)] * 2
    message_id, member_id, _, _, org_id = rows[0]
    assert bodies[0] == {
        "organizationId": org_id,
        "campaignId": str(campaign_id),
        "campaignAudienceId": member_id,
        "to": "+12025550100",
        "templateName": "offer",
        "templateLanguage": "en",
        "templateParameters": [
            {
                "type": "header",
                "valueType": "image",
                "value": "https://cdn.example.com/media/campaigns/c/0/image.jpg",
            },
            {"type": "body", "valueType": "text", "value": "Ada Lovelace"},
            {"type": "body", "valueType": "text", "value": "20% off"},
        ],
        "messageId": message_id,
        "phoneNumberId": PHONE_NUMBER_ID,
        "payloadVersion": 1,
    }
    assert bodies[1]["templateParameters"][2]["value"] == "Free delivery"
    assert {m["status"] for m in member_rows(engine, campaign_id).values()} == {"ready_to_send"}
    metadata = result.asset_materializations_for_node("dispatched_batches")[0].metadata
    assert (metadata["queued"].value, metadata["failed"].value, metadata["skipped"].value) == (
        2,
        0,
        0,
    )
    assert metadata["queue_depth_after"].value == 2
    check = result.get_asset_check_evaluations()[0]
    assert check.passed
    # The run is dispatched; a one-off campaign completes once its messages are out.
    assert campaign_status(engine, campaign_id) == "running"
    with engine.connect() as conn:
        run = conn.execute(sa.text("SELECT status, queued FROM campaign_runs")).one()
    assert tuple(run) == ("dispatched", 2)
    with engine.begin() as conn:
        assert runs.complete_runs(conn, 1800) == []
        conn.execute(sa.text("UPDATE messages SET status = 'sent'"))
        assert runs.complete_runs(conn, 1800) == [campaign_id]
    assert campaign_status(engine, campaign_id) == "completed"


def test_text_and_media_payloads_and_presigned_urls(engine, resources, sqs, s3, tmp_path):
    path = tmp_path / "card.jpg"
    path.write_bytes(b"jpeg bytes")
    s3.upload_file(path, "campaigns/x/image.jpg", "image/jpeg")
    image_campaign = ready_campaign(
        engine,
        [Member("+12025550100", "Ada")],
        message_type="image",
        asset_keys={"+12025550100": {"image": "campaigns/x/image.jpg"}},
    )
    materialize_run(image_campaign, resources)
    (image,) = drain(sqs, expected=1)
    assert image["messageType"] == "image"
    assert image["caption"] == ""  # always present for media
    query = parse_qs(urlsplit(image["mediaUrl"]).query)
    # Signature Version 4, valid for MEDIA_URL_EXPIRY_SECONDS (7 days by default) from now
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and "X-Amz-Signature" in query
    assert query["X-Amz-Expires"] == [str(7 * 24 * 3600)]
    signed_at = datetime.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert abs(signed_at.timestamp() - time.time()) < 600
    assert httpx.get(image["mediaUrl"]).content == b"jpeg bytes"

    text_campaign = ready_campaign(engine, [Member("+12025550101", "Alan")], message_type="text")
    materialize_run(text_campaign, resources)
    (text,) = drain(sqs, expected=1)
    assert {k: v for k, v in text.items() if k in ("messageType", "messageContent")} == {
        "messageType": "text",
        "messageContent": "Hello from the campaign",
    }
    assert "templateName" not in text and "mediaUrl" not in text


def test_bad_members_fail_or_are_skipped_and_are_never_queued(engine, resources, sqs):
    members = [
        Member("+12025550100", "Good", {"offer": "20% off"}),
        Member("+1 (202) 555-0143", "Spaced", {"offer": "20% off"}),
        Member("12345", "Short", {"offer": "20% off"}),
        Member("not a number", "Words", {"offer": "20% off"}),
        Member("+12025550102", "No offer", {}),
        Member("+12025550103", "Opted out", {"offer": "20% off"}),
        Member("+12025550104", "Twin", {"offer": "20% off"}),
        Member("+1 202 555 0104", "Twin again", {"offer": "20% off"}),
    ]
    campaign_id = ready_campaign(
        engine,
        members,
        parameters=[
            {"type": "body", "valueType": "text", "source": "contact.name"},
            {"type": "body", "valueType": "text", "source": "attributes.offer"},
        ],
    )
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE contacts SET opted_out = true WHERE phone = '+12025550103'"))
    result = materialize_run(campaign_id, resources)

    bodies = drain(sqs, expected=3)
    assert sorted(b["to"] for b in bodies) == ["+12025550100", "+12025550104", "+12025550143"]
    rows = member_rows(engine, campaign_id)
    assert rows["+12025550143"]["status"] == "ready_to_send"  # normalised when added, then sent
    assert rows["12345"]["status"] == "failed"
    assert "invalid phone number" in rows["12345"]["last_error"]
    assert rows["not a number"]["status"] == "failed"
    assert rows["+12025550102"]["status"] == "failed"
    assert "template parameter 2" in rows["+12025550102"]["last_error"]
    assert "attributes.offer" in rows["+12025550102"]["last_error"]
    assert rows["+12025550103"] | {"msisdn": None} == {
        "msisdn": None,
        "status": "skipped",
        "last_error": "contact opted out of campaign messages",
    }
    # The twin is the same number once parsed: added once, so sent once.
    assert "+1 202 555 0104" not in rows
    assert rows["+12025550104"]["status"] == "ready_to_send"
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM messages")).scalar_one() == 3
    metadata = result.asset_materializations_for_node("dispatched_batches")[0].metadata
    assert (metadata["queued"].value, metadata["failed"].value, metadata["skipped"].value) == (
        3,
        3,
        1,
    )
    assert result.get_asset_check_evaluations()[0].passed


def test_a_media_member_without_its_asset_and_an_oversized_caption_fail(engine, resources, sqs):
    no_asset = ready_campaign(
        engine,
        [Member("+12025550100", "Has"), Member("+12025550101", "Has not")],
        message_type="image",
        asset_keys={"+12025550100": {"image": "campaigns/a/image.jpg"}},
    )
    materialize_run(no_asset, resources)
    rows = member_rows(engine, no_asset)
    assert rows["+12025550100"]["status"] == "ready_to_send"
    assert rows["+12025550101"]["status"] == "failed"
    assert rows["+12025550101"]["last_error"] == "no generated image asset for this member"
    assert len(drain(sqs, expected=1)) == 1

    huge = ready_campaign(
        engine,
        [Member("+12025550102", "Big")],
        message_type="image",
        media_caption="x" * 300_000,
        asset_keys={"+12025550102": {"image": "campaigns/b/image.jpg"}},
    )
    result = materialize_run(huge, resources)
    error = member_rows(engine, huge)["+12025550102"]["last_error"]
    assert f"over the SQS limit of {SQS_MAX_MESSAGE_BYTES:,} bytes" in error
    assert drain(sqs) == []
    assert result.get_asset_check_evaluations()[0].passed


def test_re_running_a_partition_queues_nothing_twice(engine, resources, sqs):
    members = [Member(f"+1202555{i:04d}", f"M{i}", {"offer": "x"}) for i in range(100, 125)]
    campaign_id = ready_campaign(
        engine,
        members,
        message_type="text",
        recurrence="daily",
    )
    materialize_run(campaign_id, resources)
    materialize_run(campaign_id, resources)
    bodies = drain(sqs, expected=25)
    assert len(bodies) == 25
    assert len({b["campaignAudienceId"] for b in bodies}) == 25
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM messages")).scalar_one() == 25
    assert campaign_status(engine, campaign_id) == "running"  # daily, no end: more to come


class RejectingSQS(SQSResource):
    """The real queue, with three entries of a batch made invalid (DelaySeconds over SQS's
    900 s maximum) for the first `rejecting_calls` calls, so SQS itself refuses them."""

    rejecting_calls: int = 1

    def send_batch(self, entries):
        calls = getattr(self, "_calls", 0)
        object.__setattr__(self, "_calls", calls + 1)
        if calls < self.rejecting_calls:
            entries = [dict(e, DelaySeconds=901) if i < 3 else e for i, e in enumerate(entries)]
        return super().send_batch(entries)


@pytest.fixture
def standard_queue(sqs):
    queue = sqs.model_copy(
        update={
            "queue_name": sqs.queue_name.removesuffix(".fifo"),
            "dlq_name": sqs.dlq_name.removesuffix(".fifo"),
        }
    )
    queue.ensure_queues()
    return queue


@pytest.mark.parametrize(("rejecting_calls", "failed"), [(1, 0), (100, 3)])
def test_three_of_ten_entries_rejected_are_retried_then_failed(
    engine, postgres, s3, standard_queue, rejecting_calls, failed
):
    members = [Member(f"+1202555{i:04d}", f"M{i}") for i in range(100, 110)]
    campaign_id = ready_campaign(engine, members, message_type="text")
    rejecting = RejectingSQS(**standard_queue.model_dump(), rejecting_calls=rejecting_calls)
    result = materialize_run(
        campaign_id, {"postgres": postgres, "sqs": rejecting, "s3": S3Storage(**s3.model_dump())}
    )

    assert len(drain(standard_queue, expected=10 - failed)) == 10 - failed
    statuses = [m["status"] for m in member_rows(engine, campaign_id).values()]
    assert statuses.count("failed") == failed
    assert statuses.count("ready_to_send") == 10 - failed
    with engine.connect() as conn:
        errors = conn.execute(
            sa.text("SELECT error_detail FROM messages WHERE status = 'failed'")
        ).scalars()
        assert all("InvalidParameterValue" in e and "DelaySeconds" in e for e in errors)
    assert result.get_asset_check_evaluations()[0].passed


def _dispatch(engine, sqs, campaign_id, retry_seconds):
    with engine.begin() as conn:
        run = runs.record_run(conn, campaign_id, TODAY)
        runs.start_run(conn, run)
        spec = campaign_spec(conn, campaign_id, PHONE_NUMBER_ID)
    dispatch = Dispatch(engine, sqs, spec, run.id, str, concurrency=4, retry_seconds=retry_seconds)
    return run, dispatch


def test_an_unreachable_queue_fails_the_run_cleanly_and_a_re_run_sends_everything_once(engine, sqs):
    members = [Member(f"+1202555{i:04d}", f"M{i}") for i in range(100, 140)]
    campaign_id = ready_campaign(engine, members, message_type="text")
    closed = SQSResource(**(sqs.model_dump() | {"endpoint_url": f"http://127.0.0.1:{free_port()}"}))
    run, dispatch = _dispatch(engine, closed, campaign_id, retry_seconds=1)
    with pytest.raises(Exception, match="SQS unreachable"):
        dispatch.run()
    with engine.connect() as conn:
        stored = conn.execute(
            sa.text(
                "SELECT count(*) FROM messages m JOIN campaign_audience a"
                " ON a.id = m.campaign_audience_id"
                " WHERE m.status = 'pending' AND a.dispatch_run_id IS NULL"
            )
        ).scalar_one()
        assert stored == 40  # stored before queueing, nothing lost, no member marked queued
    assert {m["status"] for m in member_rows(engine, campaign_id).values()} == {"pending"}

    _, retry = _dispatch(engine, sqs, campaign_id, retry_seconds=5)
    retry.run()
    bodies = drain(sqs, expected=40)
    assert sorted(b["campaignAudienceId"] for b in bodies) == sorted(
        {b["campaignAudienceId"] for b in bodies}
    )
    assert len(bodies) == 40
    with engine.connect() as conn:
        counts = run_counts(conn, campaign_id, run.id)
    assert (counts.queued, counts.failed, counts.skipped, counts.eligible) == (40, 0, 0, 40)


@pytest.mark.timeout(180)
def test_the_queue_down_for_30_seconds_mid_run_waits_and_resumes(engine, sqs):
    """The endpoint drops in the middle of a batch (after SQS stored it, before the answer)
    and stays down for 30 s: the run waits, resumes, and every member is queued once."""
    members = [Member(f"+1202555{i:04d}", f"M{i}") for i in range(100, 400)]
    campaign_id = ready_campaign(engine, members, message_type="text")
    upstream = sqs.endpoint_url.removeprefix("http://")
    with TCPProxy(upstream, cut_after=b"SendMessageBatch", cut_on_nth=5) as proxy:
        proxied = SQSResource(**(sqs.model_dump() | {"endpoint_url": proxy.url}))
        run, dispatch = _dispatch(engine, proxied, campaign_id, retry_seconds=90)
        outage = threading.Timer(30, proxy.restore)
        proxy.on_cut = outage.start
        dispatch.run()
        assert outage.finished.is_set()  # the run outlasted the outage instead of failing
    assert proxy.cuts == 1
    bodies = drain(sqs, expected=300)
    assert len(bodies) == 300
    assert len({b["campaignAudienceId"] for b in bodies}) == 300
    with engine.connect() as conn:
        counts = run_counts(conn, campaign_id, run.id)
    assert (counts.queued, counts.failed, counts.skipped) == (300, 0, 0)


def test_a_large_upload_refreshes_the_audience_tables_statistics(engine):
    """The planner must know a new campaign's members are there, or it plans dispatch pages
    and media claims for a campaign of none."""

    def analyses() -> int:
        with engine.connect() as conn:
            return conn.execute(
                sa.text(
                    "SELECT analyze_count FROM pg_stat_user_tables"
                    " WHERE relname = 'campaign_audience'"
                )
            ).scalar_one()

    before = analyses()
    ready_campaign(engine, [Member(f"+1202555{i:04d}", f"C{i}") for i in range(10)])
    assert analyses() == before  # a small upload leaves it to autovacuum
    ready_campaign(engine, [Member(f"+1202556{i:04d}", f"C{i}") for i in range(1000)])
    deadline = time.monotonic() + 60
    while analyses() == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert analyses() > before


def test_a_page_reads_no_more_stored_messages_than_it_has_members(engine):
    """Dispatch asks, page after page, which members the run already stored. A page must
    cost what its members cost, not what the run stored before it, even for a run newer
    than the last ANALYZE of `messages`, which the planner believes has one row: a page
    that read the run's stored rows made a large run's dispatch quadratic."""

    def new_run(exchange: int) -> tuple[UUID, int]:
        campaign_id = ready_campaign(
            engine, [Member(f"+1202{exchange}{i:04d}", f"C{i}") for i in range(2000)]
        )
        with engine.begin() as conn:
            return campaign_id, runs.record_run(conn, campaign_id, TODAY).id

    def store(campaign_id: UUID, run_id: int, members: int) -> None:
        """Pending rows for the run's first `members` members, as dispatch stores them."""
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO messages (organisation_id, campaign_run_id, campaign_audience_id,"
                    " direction, sender_type, peer_phone, message_type, status)"
                    " SELECT c.organisation_id, :r, a.id, 'outbound', 'campaign', a.msisdn,"
                    " 'template', 'pending' FROM campaign_audience a"
                    " JOIN campaigns c ON c.id = a.campaign_id"
                    " WHERE a.campaign_id = :c ORDER BY a.id LIMIT :n"
                ),
                {"r": run_id, "c": campaign_id, "n": members},
            )

    store(*new_run(571), 2000)
    with engine.begin() as conn:
        conn.execute(sa.text("ANALYZE messages"))
    campaign_id, run_id = new_run(572)
    store(campaign_id, run_id, 1000)
    with engine.connect() as conn:
        after = conn.execute(
            sa.text(
                "SELECT max(campaign_audience_id::text) FROM messages WHERE campaign_run_id = :r"
            ),
            {"r": run_id},
        ).scalar_one()

    statements: list[tuple[str, dict]] = []
    with engine.connect() as conn:
        sa.event.listen(
            conn, "before_cursor_execute", lambda *args: statements.append((args[2], args[3]))
        )
        page = audience.candidate_page(conn, campaign_id, run_id, CANDIDATE_STATUSES, after, 100)
        ((statement, parameters),) = statements
        cursor = conn.connection.dbapi_connection.cursor()
        cursor.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, parameters)
        plan = cursor.fetchone()[0][0]["Plan"]
    assert len(page) == 100 and all(row[0] > after for row in page)

    def nodes(node: dict) -> Iterator[dict]:
        yield node
        for child in node.get("Plans", []):
            yield from nodes(child)

    read = sum(
        (n["Actual Rows"] + n.get("Rows Removed by Filter", 0)) * n["Actual Loops"]
        for n in nodes(plan)
        if n.get("Relation Name") == "messages"
    )
    compared = sum(n.get("Rows Removed by Join Filter", 0) for n in nodes(plan))
    assert read <= 100 and compared == 0
