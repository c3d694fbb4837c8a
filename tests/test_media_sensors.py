"""The sensors that start media generation for approved campaigns and recover stuck ones."""

import uuid

import dagster as dg
import pytest
import sqlalchemy as sa

from assets_defs.media.sensors import media_recovery_sensor, start_media
from tests.media_campaigns import campaign_row, create_campaign, members, versioned


@pytest.fixture
def instance():
    with dg.instance_for_test() as running:
        yield running


def tick(sensor, instance, postgres) -> dg.SensorResult:
    with dg.build_sensor_context(instance=instance, resources={"postgres": postgres}) as context:
        return sensor(context)


def age(engine, campaign_id, minutes: int, claimed: int = 0, by_run: str | None = None) -> None:
    """Make the campaign look untouched for `minutes`, with `claimed` members claimed as long
    (by the run `by_run`)."""
    with engine.begin() as conn:
        conn.execute(sa.text("SET LOCAL session_replication_role = replica"))  # no touch trigger
        conn.execute(
            sa.text(
                "UPDATE campaigns SET status = 'asset_generation',"
                " updated_at = now() - make_interval(mins => :m) WHERE id = :c"
            ),
            {"c": campaign_id, "m": minutes},
        )
        conn.execute(
            sa.text(
                "UPDATE campaign_audience SET status = 'asset_generating',"
                " status_changed_at = now() - make_interval(mins => :m), claimed_by_run = :run"
                " WHERE id IN (SELECT id FROM campaign_audience WHERE campaign_id = :c"
                " ORDER BY msisdn LIMIT :n)"
            ),
            {"c": campaign_id, "m": minutes, "n": claimed, "run": by_run},
        )


def test_approved_campaigns_get_a_partition_and_one_run_each(engine):
    with_media, _ = create_campaign(engine, 3, versioned(1))
    without_media, _ = create_campaign(engine, 2, None)
    draft, _ = create_campaign(engine, 2, versioned(1), approve=False)

    started = start_media(engine)

    key = str(with_media)
    [request] = started.run_requests
    assert request.partition_key == key
    assert request.tags["campaign"] == key
    assert request.run_key.startswith(f"campaign_media:{key}:")
    assert started.partition_keys == [key]
    assert started.without_media == 1
    assert campaign_row(engine, with_media).status == "asset_generation"
    assert campaign_row(engine, without_media).status == "asset_generated"
    assert {m.status for m in members(engine, without_media)} == {"pending"}
    assert campaign_row(engine, draft).status == "draft"

    again = start_media(engine)
    assert again.run_requests == []


def test_a_campaign_approved_again_gets_a_new_run(engine):
    campaign_id, _ = create_campaign(engine, 1, versioned(1))
    first = start_media(engine).run_requests[0]
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE campaigns SET status = 'approved' WHERE id = :c"), {"c": campaign_id}
        )

    second = start_media(engine).run_requests[0]

    assert second.run_key != first.run_key


def test_recovery_resets_stuck_members_and_requests_an_orphaned_campaign(
    engine, postgres, instance
):
    campaign_id, _ = create_campaign(engine, 4, versioned(1))
    age(engine, campaign_id, minutes=31, claimed=3)

    result = tick(media_recovery_sensor, instance, postgres)

    statuses = [m.status for m in members(engine, campaign_id)]
    assert statuses == ["pending"] * 4
    [request] = result.run_requests
    assert request.partition_key == str(campaign_id)
    assert request.run_key == f"campaign_media:{campaign_id}:orphaned"
    assert list(result.dynamic_partitions_requests[0].partition_keys) == [str(campaign_id)]


def test_members_claimed_recently_are_left_alone(engine, postgres, instance):
    campaign_id, _ = create_campaign(engine, 2, versioned(1))
    age(engine, campaign_id, minutes=5, claimed=2)

    tick(media_recovery_sensor, instance, postgres)

    assert {m.status for m in members(engine, campaign_id)} == {"asset_generating"}


def test_recovery_leaves_a_live_runs_claims_and_returns_a_gone_ones(engine, postgres, instance):
    campaign_id, _ = create_campaign(engine, 3, versioned(1))
    live = str(uuid.uuid4())
    age(engine, campaign_id, minutes=45, claimed=3, by_run="a-run-that-is-gone")
    age(engine, campaign_id, minutes=45, claimed=2, by_run=live)
    instance.add_run(
        dg.DagsterRun(
            job_name="__ASSET_JOB",
            run_id=live,
            status=dg.DagsterRunStatus.STARTED,
            tags={"dagster/partition": str(campaign_id)},
        )
    )

    result = tick(media_recovery_sensor, instance, postgres)

    assert result.run_requests == []  # a run is live: it finishes the campaign
    assert sorted(m.status for m in members(engine, campaign_id)) == [
        "asset_generating",
        "asset_generating",
        "pending",
    ]


def test_after_a_dead_run_the_next_request_is_named_by_it(engine, postgres, instance):
    campaign_id, _ = create_campaign(engine, 2, versioned(1))
    age(engine, campaign_id, minutes=45)
    dead = str(uuid.uuid4())
    instance.add_run(
        dg.DagsterRun(
            job_name="__ASSET_JOB",
            run_id=dead,
            status=dg.DagsterRunStatus.FAILURE,
            tags={"dagster/partition": str(campaign_id)},
        )
    )

    result = tick(media_recovery_sensor, instance, postgres)

    assert [r.run_key for r in result.run_requests] == [
        f"campaign_media:{campaign_id}:after:{dead}"
    ]


def test_a_campaign_whose_runs_keep_failing_is_failed_not_retried_for_ever(
    engine, postgres, instance
):
    campaign_id, _ = create_campaign(engine, 2, versioned(1))
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE campaigns SET asset_generation_started_at = now() - interval '1 hour'"
                " WHERE id = :c"
            ),
            {"c": campaign_id},
        )
    age(engine, campaign_id, minutes=45)
    for _ in range(3):
        instance.add_run(
            dg.DagsterRun(
                job_name="__ASSET_JOB",
                run_id=str(uuid.uuid4()),
                status=dg.DagsterRunStatus.FAILURE,
                tags={"dagster/partition": str(campaign_id)},
            )
        )

    result = tick(media_recovery_sensor, instance, postgres)

    assert result.run_requests == []
    campaign = campaign_row(engine, campaign_id)
    assert campaign.status == "failed"
    assert campaign.status_reason.startswith("3 campaign_media runs failed (last: ")
