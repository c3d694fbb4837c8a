from datetime import date, timedelta

import dagster as dg
import pytest
import sqlalchemy as sa

from assets_defs.reports import (
    campaign_delivery_report,
    campaign_delivery_report_sensor,
    messages_stuck_in_sending,
)
from tests.sending import make_run

# A run date whose daily partition exists (today's is added when the day is over).
DAY = date.today() - timedelta(days=1)


def _settle(engine, run):
    """Give the run's ten messages a spread of outcomes, as sends and receipts would."""
    ids = run.message_ids
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE messages SET status = 'sent', sent_at = now(), provider_message_id = 'w' || id"
                " WHERE id = ANY(:ids)"
            ),
            {"ids": ids[:6]},
        )
        conn.execute(
            sa.text(
                "UPDATE messages SET status = 'delivered', delivered_at = now() WHERE id = ANY(:ids)"
            ),
            {"ids": ids[:4]},
        )
        conn.execute(
            sa.text("UPDATE messages SET status = 'read', read_at = now() WHERE id = ANY(:ids)"),
            {"ids": ids[:2]},
        )
        conn.execute(
            sa.text(
                "UPDATE messages SET status = 'failed', failed_at = now(), error_code = :c,"
                " error_title = :t WHERE id = ANY(:ids)"
            ),
            [
                {"ids": ids[6:8], "c": 131026, "t": "Message undeliverable"},
                {"ids": ids[8:9], "c": 132001, "t": "Template does not exist"},
            ],
        )
        conn.execute(
            sa.text(
                "UPDATE messages SET status = 'sending', sending_at = now() - interval '2 hours'"
                " WHERE id = :id"
            ),
            {"id": ids[9]},
        )
        conn.execute(  # a reply from the first recipient, after the campaign message
            sa.text(
                "INSERT INTO messages (organisation_id, direction, sender_type, peer_phone,"
                " message_type, body, status) SELECT organisation_id, 'inbound', 'customer',"
                " peer_phone, 'text', 'Thanks!', 'received' FROM messages WHERE id = :id"
            ),
            {"id": ids[0]},
        )


def _partition(run):
    return dg.MultiPartitionKey({"campaign": run.campaign_id, "date": DAY.isoformat()})


def test_the_report_materialises_the_funnel_of_a_campaign_run(engine, postgres):
    run = make_run(engine, 10, run_date=DAY)
    _settle(engine, run)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("campaigns", [run.campaign_id])
        result = dg.materialize(
            [campaign_delivery_report, messages_stuck_in_sending],
            partition_key=_partition(run),
            resources={"postgres": postgres},
            instance=instance,
            raise_on_error=False,
        )
    [materialization] = result.asset_materializations_for_node("campaign_delivery_report")
    metadata = materialization.metadata
    stages = {stage: metadata[stage].value for stage in ("queued", "sent", "delivered", "read")}
    assert stages == {"queued": 10, "sent": 6, "delivered": 4, "read": 2}
    assert metadata["failed"].value == 3 and metadata["replied"].value == 1
    assert metadata["sending"].value == 1
    failures = {
        r.data["error_code"]: r.data["messages"] for r in metadata["failed_by_code"].value.records
    }
    assert failures == {"131026": 2, "132001": 1}
    assert "█" in metadata["chart"].value
    [check] = result.get_asset_check_evaluations()
    assert not check.passed and check.metadata["stuck_messages"].value == 1


def test_a_partition_without_a_campaign_run_fails_with_a_clear_reason(engine, postgres):
    run = make_run(engine, 1, run_date=DAY)
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("campaigns", [run.campaign_id])
        with pytest.raises(dg.Failure, match="has no run on 2025-01-02"):
            dg.materialize(
                [campaign_delivery_report],
                partition_key=dg.MultiPartitionKey(
                    {"campaign": run.campaign_id, "date": "2025-01-02"}
                ),
                resources={"postgres": postgres},
                instance=instance,
            )


def _tick(instance, postgres, cursor=None):
    with dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"postgres": postgres}
    ) as context:
        return campaign_delivery_report_sensor(context)


def test_the_sensor_requests_a_refresh_per_run_and_change_and_keeps_a_cursor(engine, postgres):
    run = make_run(engine, 3, run_date=DAY)
    with dg.instance_for_test() as instance:
        first = _tick(instance, postgres)
        [request] = first.run_requests
        assert request.partition_key == _partition(run)
        assert first.dynamic_partitions_requests[0].partition_keys == [run.campaign_id]

        instance.add_dynamic_partitions("campaigns", [run.campaign_id])
        again = _tick(instance, postgres, first.cursor)
        # Nothing changed: the same run_key, which Dagster never launches twice.
        assert [r.run_key for r in again.run_requests] == [request.run_key]
        assert again.dynamic_partitions_requests == []

        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE messages SET status = 'sending' WHERE id = :id"),
                {"id": run.message_ids[0]},
            )
        changed = _tick(instance, postgres, again.cursor)
        [refresh] = changed.run_requests
        assert refresh.run_key != request.run_key
        assert changed.cursor > first.cursor


def test_the_sensor_skips_when_nothing_changed(engine, postgres):
    with dg.instance_for_test() as instance:
        result = _tick(instance, postgres)
    assert result.run_requests == [] and result.skip_reason
