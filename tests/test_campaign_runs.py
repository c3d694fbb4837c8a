"""Recurrence, the campaign sensor's runs and the campaign's status around its runs."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta

import dagster as dg
import pytest
import sqlalchemy as sa

from assets_defs.campaign_sensor import campaign_sensor
from assets_defs.dispatch.planner import plan_tick
from pipelines.definitions import defs as load_defs
from resources import campaign_runs as runs
from resources import recurrence
from resources.campaigns import Member
from tests.dispatch_fixtures import campaign_status, ready_campaign

defs = load_defs()


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("kind", "now", "due"),
    [
        ("once", "2026-03-01 08:59", None),
        ("once", "2026-03-01 09:00", "2026-03-01 09:00"),
        ("once", "2026-05-20 12:00", "2026-03-01 09:00"),
        ("daily", "2026-03-04 08:00", "2026-03-03 09:00"),
        ("daily", "2026-03-04 09:30", "2026-03-04 09:00"),
        ("weekly", "2026-03-14 10:00", "2026-03-08 09:00"),
        ("monthly", "2026-04-01 08:00", "2026-03-01 09:00"),
        ("monthly", "2026-04-01 09:00", "2026-04-01 09:00"),
    ],
)
def test_the_due_occurrence_is_the_latest_one_not_after_now(kind, now, due):
    start = at("2026-03-01 09:00")
    expected = at(due) if due else None
    assert recurrence.due_occurrence(kind, start, None, at(now)) == expected


def test_monthly_occurrences_keep_the_day_clamped_to_the_month_end():
    start = at("2026-01-31 09:00")
    assert [recurrence.occurrence("monthly", start, i).date() for i in range(4)] == [
        date(2026, 1, 31),
        date(2026, 2, 28),
        date(2026, 3, 31),
        date(2026, 4, 30),
    ]
    assert recurrence.due_occurrence("monthly", start, None, at("2026-03-15 00:00")) == at(
        "2026-02-28 09:00"
    )


def test_nothing_is_due_after_the_end_and_the_last_occurrence_is_known():
    start, end = at("2026-03-01 09:00"), at("2026-03-10 23:59")
    assert recurrence.due_occurrence("daily", start, end, at("2026-03-11 00:00")) is None
    assert recurrence.last_occurrence_date("daily", start, end) == date(2026, 3, 10)
    assert recurrence.last_occurrence_date("weekly", start, end) == date(2026, 3, 8)
    assert recurrence.last_occurrence_date("daily", start, None) is None
    assert recurrence.last_occurrence_date("once", start, None) == date(2026, 3, 1)


def count_runs(engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM campaign_runs")).scalar_one()


def test_a_due_campaign_gets_one_run_and_a_run_request_for_its_partition(engine, postgres):
    start = datetime.now(UTC) - timedelta(minutes=5)
    campaign_id = ready_campaign(engine, [Member("+12025550100", "A")], start_at=start)
    instance = dg.DagsterInstance.ephemeral()
    with dg.build_sensor_context(
        instance=instance, definitions=defs, resources={"postgres": postgres}
    ) as context:
        result = campaign_sensor()(context)
        instance.add_dynamic_partitions("campaigns", [str(campaign_id)])
        again = campaign_sensor()(context)

    (request,) = result.run_requests
    today = datetime.now(UTC).date().isoformat()
    assert request.partition_key == dg.MultiPartitionKey(
        {"campaign": str(campaign_id), "date": today}
    )
    assert request.run_key == f"dispatch-{campaign_id}-{today}"
    assert request.tags["campaign"] == str(campaign_id)
    (add,) = result.dynamic_partitions_requests
    assert add.partitions_def_name == "campaigns"
    assert list(add.partition_keys) == [str(campaign_id)]
    assert campaign_status(engine, campaign_id) == "ready_to_launch"
    # The next tick records nothing new and asks for the same run (Dagster skips its key).
    assert [r.run_key for r in again.run_requests] == [request.run_key]
    assert again.dynamic_partitions_requests == []
    assert count_runs(engine) == 1


def test_an_approved_campaign_gets_its_media_and_dispatch_runs_in_the_same_tick(engine, postgres):
    """The dispatch run is launched beside the media runs, so it is there to send the first
    member whose media are ready rather than a tick later."""
    from tests.media_campaigns import create_campaign, versioned

    campaign_id, _ = create_campaign(engine, 3, versioned(1))
    instance = dg.DagsterInstance.ephemeral()
    # Resolving a request checks its partition exists: the daemon adds it from the result first.
    instance.add_dynamic_partitions("campaigns", [str(campaign_id)])
    with (
        dg.build_sensor_context(
            instance=instance, definitions=defs, resources={"postgres": postgres}
        ) as context,
        dg.partition_loading_context(dynamic_partitions_store=instance),
    ):
        # As the daemon evaluates it: each request resolved against its own assets' partitions.
        result = campaign_sensor().evaluate_tick(context)

    key = str(campaign_id)
    today = datetime.now(UTC).date().isoformat()
    media, dispatch = result.run_requests
    assert media.partition_key == key
    assert media.run_key.startswith(f"campaign_media:{key}:")
    assert dispatch.partition_key == dg.MultiPartitionKey({"campaign": key, "date": today})
    assert dispatch.run_key == f"dispatch-{key}-{today}"
    (add,) = result.dynamic_partitions_requests
    assert add.partitions_def_name == "campaigns"
    assert list(add.partition_keys) == [key]
    assert campaign_status(engine, campaign_id) == "asset_generation"
    assert count_runs(engine) == 1


def test_a_campaign_not_yet_due_or_without_ready_media_gets_no_run(engine):
    later = ready_campaign(
        engine, [Member("+12025550100", "A")], start_at=datetime.now(UTC) + timedelta(days=1)
    )
    assert plan_tick(engine, datetime.now(UTC)).to_launch == []
    assert campaign_status(engine, later) == "asset_generated"
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE campaigns SET status = 'approved'"))
    assert plan_tick(engine, datetime.now(UTC) + timedelta(days=2)).to_launch == []
    assert count_runs(engine) == 0


def test_a_recurring_campaign_whose_end_date_passed_completes_without_a_run(engine):
    campaign_id = ready_campaign(
        engine,
        [Member("+12025550100", "A")],
        recurrence="weekly",
        start_at=at("2026-01-05 09:00"),
        end_at=at("2026-02-01 09:00"),
    )
    plan = plan_tick(engine, at("2026-03-01 12:00"))
    assert plan.completed == [campaign_id]
    assert plan.to_launch == []
    assert count_runs(engine) == 0
    assert campaign_status(engine, campaign_id) == "completed"
    with engine.connect() as conn:
        reason = conn.execute(sa.text("SELECT status_reason FROM campaigns")).scalar_one()
    assert reason == "end date passed"


def test_two_sensor_ticks_racing_for_the_same_occurrence_record_one_run(engine):
    now = datetime.now(UTC)
    start_at = now - timedelta(hours=1)  # a one-off campaign's occurrence is its start
    campaign_id = ready_campaign(engine, [Member("+12025550100", "A")], start_at=start_at)
    barrier = threading.Barrier(4)
    plans = []

    def tick():
        barrier.wait()
        plans.append(plan_tick(engine, now))

    threads = [threading.Thread(target=tick) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert count_runs(engine) == 1
    keys = {runs.run_key(r.campaign_id, r.run_date) for plan in plans for r in plan.to_launch}
    assert keys == {f"dispatch-{campaign_id}-{start_at.date().isoformat()}"}
    assert campaign_status(engine, campaign_id) == "ready_to_launch"


def test_a_daily_campaign_runs_each_day_and_completes_after_its_last(engine, postgres, sqs, s3):
    from assets_defs.dispatch.asset import dispatched_batches  # noqa: F401
    from resources.queue import SQSResource
    from resources.storage import S3Storage
    from tests.dispatch_fixtures import drain, materialize_run

    resources = {
        "postgres": postgres,
        "sqs": SQSResource(**sqs.model_dump()),
        "s3": S3Storage(**s3.model_dump()),
    }
    campaign_id = ready_campaign(
        engine,
        [Member("+12025550100", "A"), Member("+12025550101", "B")],
        message_type="text",
        recurrence="daily",
        start_at=at("2026-03-01 09:00"),
        end_at=at("2026-03-02 18:00"),
    )
    for day in ("2026-03-01", "2026-03-02"):
        plan = plan_tick(engine, at(f"{day} 10:00"))
        assert [r.run_date.isoformat() for r in plan.to_launch] == [day]
        materialize_run(campaign_id, resources, run_date=date.fromisoformat(day))
        assert campaign_status(engine, campaign_id) == "running"  # its messages are queued
        with engine.begin() as conn:  # as the sender leaves them
            conn.execute(sa.text("UPDATE messages SET status = 'sent'"))
        plan_tick(engine, at(f"{day} 10:05"))
        status = campaign_status(engine, campaign_id)
        assert status == ("running" if day == "2026-03-01" else "completed")
    bodies = drain(sqs, expected=4)
    assert len(bodies) == 4  # both members, once per day
    assert len({b["messageId"] for b in bodies}) == 4
    assert plan_tick(engine, at("2026-03-03 10:00")).to_launch == []
