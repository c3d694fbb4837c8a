"""Sending while the media are made: a campaign's dispatch run starts with its first members
whose media are ready and takes the others as they come, each member sent once.

The media of the members not yet done are held by a sibling media run (as
`MEDIA_RUNS_PER_CAMPAIGN` runs share a campaign) until the test lets them go, so "the media
are still being made" is a state of the database rather than a race against the clock.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from uuid import UUID

import pytest
import sqlalchemy as sa

from assets_defs.dispatch.dispatcher import Dispatch, Halted
from assets_defs.dispatch.planner import plan_tick
from assets_defs.media.runner import CampaignMediaRun, Policy
from resources import audience, campaigns, media_generation, settings
from resources import campaign_runs as runs
from resources.campaigns import campaign_spec
from resources.queue import SQSResource
from resources.sandbox.pool import Limits
from resources.storage import S3Storage
from tests.dispatch_fixtures import PHONE_NUMBER_ID, TODAY, materialize_run, org_with_phone
from tests.media_campaigns import versioned
from tests.sending import client_for, drain, start, wait_for

SIBLING = "sibling-media-run"
SENT = ("sent", "delivered", "read")


@pytest.fixture(autouse=True)
def quick(monkeypatch):
    monkeypatch.setenv("MEDIA_RETRY_BACKOFF_SECONDS", "0.01")
    monkeypatch.setenv("DISPATCH_MEDIA_POLL_SECONDS", "30")  # woken by NOTIFY, not the poll


@pytest.fixture
def resources(postgres, sqs, s3):
    return {
        "postgres": postgres,
        "sqs": SQSResource(**sqs.model_dump()),
        "s3": S3Storage(**s3.model_dump()),
    }


def generating_campaign(engine, members: int, failing: int = 0) -> str:
    """A campaign whose media are being made (as the approval sensor leaves it), its
    template's header the member's generated file."""
    with engine.begin() as conn:
        org = org_with_phone(conn)
        template = campaigns.create_template(
            conn,
            org,
            "offer",
            message_type="image",
            parameters=[{"type": "header", "valueType": "image", "source": "asset.json"}],
        )
        campaigns.add_generator(conn, template, "gen.py", versioned(1))
        campaign = campaigns.create_campaign(
            conn,
            org,
            "Offer",
            message_type="template",
            template_id=template,
            phone_number_id=PHONE_NUMBER_ID,
        )
        campaigns.add_audience(
            conn,
            campaign,
            [
                campaigns.Member(f"+1202555{i:04d}", f"Customer {i}", {"fail": i < failing})
                for i in range(members)
            ],
        )
        campaigns.set_campaign_status(conn, campaign, "approved")
        assert [c for c, _ in media_generation.begin_generation(conn, 50)] == [campaign]
    return str(campaign)


def hold_all_but(engine, campaign_id: str, free: int) -> None:
    """The sibling run claims every member but `free`."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE campaign_audience SET status = 'asset_generating', claimed_by_run = :s,"
                " status_changed_at = now() WHERE id IN (SELECT id FROM campaign_audience"
                " WHERE campaign_id = :c ORDER BY msisdn OFFSET :n)"
            ),
            {"s": SIBLING, "c": campaign_id, "n": free},
        )


def make_media(engine, s3, campaign_id: str, live: list[str], threshold: float = 0.1):
    """One media run over the members nobody else holds."""
    run = CampaignMediaRun(
        engine,
        s3,
        campaign_id,
        settings.load(Limits),
        Policy(max_attempts=1, backoff_seconds=0.01, failure_threshold=threshold),
        lambda _: None,
    )
    return run.run(live_run_ids=live)


def scalar(engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar_one()


def messages_by_status(engine, campaign_id: str) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT m.status, count(*) FROM messages m JOIN campaign_runs r"
                " ON r.id = m.campaign_run_id WHERE r.campaign_id = :c GROUP BY m.status"
            ),
            {"c": campaign_id},
        )
        return dict(rows.all())


def test_members_are_sent_while_the_rest_of_the_media_are_made(engine, s3, sqs, graph, resources):
    graph.add_phone_number(PHONE_NUMBER_ID)
    campaign_id = generating_campaign(engine, 24)
    hold_all_but(engine, campaign_id, free=6)
    # The run is launched with the media: it waits for the first members.
    plan = plan_tick(engine, datetime.now(UTC))
    assert [r.campaign_id for r in plan.to_launch] == [UUID(campaign_id)]

    outcome: dict = {}
    dispatch = threading.Thread(
        target=lambda: outcome.update(result=materialize_run(campaign_id, resources)),
        daemon=True,
    )
    dispatch.start()
    worker, sender = start(engine, sqs, client_for(graph.url))
    try:
        wait_for(lambda: scalar(engine, "SELECT status FROM campaign_runs") == "dispatching", 120)
        make_media(engine, s3, campaign_id, live=[SIBLING])
        assert scalar(engine, "SELECT status FROM campaigns WHERE id = :c", c=campaign_id) == (
            "asset_generation"
        )
        wait_for(lambda: len(graph.accepted()) == 6)
        # The first members are out while the others' media are still being made.
        assert (
            scalar(
                engine, "SELECT count(*) FROM campaign_audience WHERE status = 'asset_generating'"
            )
            == 18
        )
        assert dispatch.is_alive()

        with engine.begin() as conn:
            assert audience.release_claims(conn, UUID(campaign_id), []) == 18
        make_media(engine, s3, campaign_id, live=[])
        dispatch.join(timeout=120)
        assert not dispatch.is_alive()
        wait_for(lambda: messages_by_status(engine, campaign_id).get("sent") == 24)
    finally:
        worker.stop()
        sender.join(timeout=30)

    recipients = [request["to"] for request in graph.accepted()]
    assert sorted(recipients) == sorted(set(recipients)) and len(recipients) == 24
    # Each with its member's media.
    assert all(f"campaigns/{campaign_id}/" in json.dumps(r) for r in graph.accepted())
    metadata = outcome["result"].asset_materializations_for_node("dispatched_batches")[0].metadata
    assert metadata["outcome"].value == "dispatched"
    assert metadata["started_during_media"].value is True
    assert metadata["queued"].value == 24
    assert outcome["result"].get_asset_check_evaluations()[0].passed
    assert scalar(engine, "SELECT status FROM campaigns WHERE id = :c", c=campaign_id) == "running"
    assert scalar(engine, "SELECT status FROM campaign_runs") == "dispatched"


def sibling_records(engine, campaign_id: str, numbers: range, status: str) -> None:
    """The sibling run records its members `numbers` (`asset_generated` or `failed`)."""
    with engine.begin() as conn:
        ids = conn.execute(
            sa.text("SELECT id FROM campaign_audience WHERE campaign_id = :c AND msisdn = ANY(:m)"),
            {"c": campaign_id, "m": [f"+1202555{i:04d}" for i in numbers]},
        ).scalars()
        results = [
            audience.MemberResult(
                member,
                status,
                {"json": f"campaigns/{campaign_id}/{member}/json.json"}
                if status != "failed"
                else {},
                1 if status != "failed" else None,
                1,
                "cannot render" if status == "failed" else None,
            )
            for member in ids
        ]
        audience.record_results(conn, UUID(campaign_id), results)
        media_generation.fail_if_certain(conn, campaign_id, 0.1)


def test_the_failure_threshold_crossed_mid_way_stops_the_rest_as_a_pause_would(
    engine, s3, sqs, graph
):
    graph.add_phone_number(PHONE_NUMBER_ID)
    campaign_id = generating_campaign(engine, 20, failing=3)
    hold_all_but(engine, campaign_id, free=0)
    sibling_records(engine, campaign_id, range(10, 20), "asset_generated")
    with engine.begin() as conn:
        run = runs.record_run(conn, campaign_id, TODAY)
        runs.start_run(conn, run)
        spec = campaign_spec(conn, campaign_id, PHONE_NUMBER_ID)
    dispatch = Dispatch(engine, sqs, spec, run.id, str, media_poll_seconds=30)
    stopped: dict = {}

    def dispatching() -> None:
        try:
            dispatch.run()
        except Halted as halted:
            stopped["status"] = halted.status

    thread = threading.Thread(target=dispatching, daemon=True)
    thread.start()
    wait_for(lambda: dispatch.stats.sent == 10)
    drain(engine, sqs, client_for(graph.url))
    assert len(graph.accepted()) == 10

    sibling_records(engine, campaign_id, range(3, 10), "asset_generated")
    wait_for(lambda: dispatch.stats.sent == 17)
    # 3 of 20 failing is over 10% whatever the others do: the campaign fails there.
    sibling_records(engine, campaign_id, range(3), "failed")
    thread.join(timeout=60)
    assert stopped == {"status": "failed"}
    reason = scalar(engine, "SELECT status_reason FROM campaigns WHERE id = :c", c=campaign_id)
    assert reason == (
        "3 of 20 members (15.0%) failed media generation, above the 10% threshold;"
        " 10 message(s) had already been sent, the rest are held"
    )

    # The sender holds what is still queued, as for a paused campaign: nothing more leaves.
    drain(engine, sqs, client_for(graph.url))
    assert len(graph.accepted()) == 10
    assert messages_by_status(engine, campaign_id) == {"sent": 10, "pending": 7}
    assert scalar(engine, "SELECT count(*) FROM messages WHERE held_at IS NOT NULL") == 7
