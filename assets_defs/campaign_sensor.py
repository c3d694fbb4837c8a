"""`campaign_sensor`: each tick moves every campaign forward.

- Approved campaigns start their media (`campaign_media` runs), or go straight to
  `asset_generated` when their template has no active generator.
- Every campaign whose media are being made or ready has its due occurrence recorded and the
  `dispatched_batches` run of that occurrence requested; finished runs and campaigns complete.

Both happen in one tick on purpose: a campaign approved now gets its dispatch run beside its
media runs, so the first member is sent as soon as its media are ready, not a tick later.
"""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

from assets_defs.dispatch.asset import dispatched_batches
from assets_defs.dispatch.planner import plan_tick, run_request
from assets_defs.media.asset import campaign_media
from assets_defs.media.sensors import start_media
from assets_defs.partitions import campaign_partition_key, campaign_partitions
from resources import settings
from resources.postgres import PostgresResource


def campaign_sensor() -> dg.SensorDefinition:
    """Built when the code location loads, not at import: its interval is a setting."""
    return dg.sensor(
        name="campaign_sensor",
        minimum_interval_seconds=int(settings.number("CAMPAIGN_SENSOR_INTERVAL_SECONDS")),
        asset_selection=[campaign_media, dispatched_batches],
        default_status=dg.DefaultSensorStatus.RUNNING,
    )(tick)


def tick(context: dg.SensorEvaluationContext, postgres: PostgresResource) -> dg.SensorResult:
    media = start_media(postgres.engine)
    if media.without_media:
        context.log.info(
            f"{media.without_media} approved campaign(s) have no active generator:"
            " asset_generated, members left pending"
        )
    plan = plan_tick(postgres.engine, datetime.now(UTC), context.cursor or "")
    if plan.sent:
        context.log.info(
            f"completed, every message sent or settled: {', '.join(map(str, plan.sent))}"
        )
    if plan.completed:
        context.log.info(f"completed after their end date: {', '.join(map(str, plan.completed))}")
    new_partitions = sorted(
        set(media.partition_keys)
        | {
            key
            for key in {campaign_partition_key(run.campaign_id) for run in plan.to_launch}
            if not context.instance.has_dynamic_partition(campaign_partitions.name, key)
        }
    )
    return dg.SensorResult(
        run_requests=[*media.run_requests, *(run_request(run) for run in plan.to_launch)],
        dynamic_partitions_requests=(
            [campaign_partitions.build_add_request(new_partitions)] if new_partitions else []
        ),
        cursor=plan.cursor,
    )


def defs() -> dg.Definitions:
    return dg.Definitions(sensors=[campaign_sensor()])
