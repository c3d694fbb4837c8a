"""Every two days, request every day that has become eligible and has no manifest yet.

Contiguous days go into one ranged run (the assets' single-run backfill policy), and the
run key names the tick and the range, so a tick evaluated twice launches nothing twice
while a day whose run failed is requested again at the next tick.
"""

from datetime import date, timedelta

import dagster as dg
import sqlalchemy as sa

from assets_defs.archive import manifests
from assets_defs.archive.media import media_archive
from assets_defs.archive.messages import message_archive
from assets_defs.archive.policy import ArchivePolicy, day_bounds, last_eligible_day
from assets_defs.partitions import archive_day_partitions
from resources import settings
from resources.postgres import PostgresResource

message_archive_job = dg.define_asset_job("message_archive_job", selection=[message_archive])
media_archive_job = dg.define_asset_job("media_archive_job", selection=[media_archive])

# The distinct UTC days that still hold rows, found by hopping along the created_at index
# (one index probe per day, not a scan of the table).
_DAYS_WITH_ROWS = """
WITH RECURSIVE hop(t) AS (
    SELECT min(created_at) FROM {table} WHERE created_at >= :start {where}
    UNION ALL
    SELECT (SELECT min(created_at) FROM {table}
            WHERE created_at >= date_trunc('day', hop.t, 'UTC') + interval '24 hours' {where})
    FROM hop WHERE hop.t < :end
)
SELECT DISTINCT (t AT TIME ZONE 'UTC')::date AS day FROM hop WHERE t < :end ORDER BY day
"""


def days_to_archive(conn: sa.Connection, kind: str, last_day: date) -> list[date]:
    first = archive_day_partitions.start.date()
    start, _ = day_bounds(first)
    _, end = day_bounds(last_day)
    table, where = ("messages", "") if kind == "messages" else ("media", "AND status <> 'archived'")
    with_rows = conn.execute(
        sa.text(_DAYS_WITH_ROWS.format(table=table, where=where)), {"start": start, "end": end}
    ).scalars()
    done = manifests.archived_days(conn, kind, first, last_day)
    return [day for day in with_rows if day not in done]


def ranges(days: list[date]) -> list[tuple[date, date]]:
    found: list[tuple[date, date]] = []
    for day in days:
        if found and found[-1][1] + timedelta(days=1) == day:
            found[-1] = (found[-1][0], day)
        else:
            found.append((day, day))
    return found


def run_requests(
    postgres: PostgresResource, kind: str, threshold_days: int, tick: date
) -> list[dg.RunRequest]:
    with postgres.engine.connect() as conn:
        days = days_to_archive(conn, kind, last_eligible_day(threshold_days, tick))
    return [
        dg.RunRequest(
            run_key=f"{kind}:{tick}:{first}:{last}",
            tags={
                "dagster/asset_partition_range_start": first.isoformat(),
                "dagster/asset_partition_range_end": last.isoformat(),
            },
        )
        for first, last in ranges(days)
    ]


def _tick_day(context: dg.ScheduleEvaluationContext) -> date:
    return context.scheduled_execution_time.date()


@dg.schedule(
    job=message_archive_job,
    cron_schedule="0 2 */2 * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def message_archive_schedule(
    context: dg.ScheduleEvaluationContext, postgres: PostgresResource
) -> list[dg.RunRequest] | dg.SkipReason:
    policy = settings.load(ArchivePolicy)
    requests = run_requests(postgres, "messages", policy.message_threshold_days, _tick_day(context))
    return requests or dg.SkipReason("no eligible day of messages left to archive")


@dg.schedule(
    job=media_archive_job,
    cron_schedule="0 3 */2 * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
)
def media_archive_schedule(
    context: dg.ScheduleEvaluationContext, postgres: PostgresResource
) -> list[dg.RunRequest] | dg.SkipReason:
    policy = settings.load(ArchivePolicy)
    requests = run_requests(postgres, "media", policy.media_threshold_days, _tick_day(context))
    return requests or dg.SkipReason("no eligible day of media left to archive")
