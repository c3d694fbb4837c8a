"""The `messages` and `media` tables as external assets: the sender and the webhooks write them,
Dagster does not, and the two archives drain them.

A sensor observes both every few minutes with what tells whether the archives keep up: the
oldest row still waiting for its archive and its age, beside the archive's threshold, and
the planner's row estimate. Each figure is an index probe or a catalogue read, never a scan.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import dagster as dg
import sqlalchemy as sa

from assets_defs.archive.policy import ArchivePolicy
from resources import settings
from resources.postgres import PostgresResource


def table(name: str, description: str) -> dg.AssetSpec:
    """A Postgres table the live side writes, in the `tables` group."""
    return dg.AssetSpec(
        name,
        group_name="tables",
        kinds={"postgres"},
        owners=["team:platform"],
        description=description,
    )


messages_table = table(
    "messages",
    "Every message, outbound and inbound: dispatch adds a campaign run's rows, the sender"
    " marks them sent, receipts move them to delivered or read, the webhooks add replies."
    " `message_archive` moves each day to S3 once it is ARCHIVE_THRESHOLD_DAYS old.",
)
media_table = table(
    "media",
    "Media records: the files customers send, copied to our bucket on arrival, and media"
    " known only by URL. `media_archive` moves each day's files under `archived-media/`"
    " once the day is MEDIA_THRESHOLD_DAYS old; the row stays and points at the archive.",
)


@dataclass(frozen=True)
class TableState:
    rows_estimate: int
    oldest_waiting: datetime | None
    oldest_waiting_age_days: float | None


# Rows the archive has not taken yet: all of `messages` (archived rows are deleted), and the
# `media` rows not archived (`media_created_idx` holds exactly those).
_WAITING = {"messages": "", "media": "WHERE status <> 'archived'"}


def table_state(conn: sa.Connection, table: str) -> TableState:
    """The planner's row estimate (an exact count before the table's first ANALYZE, when it
    is young and small) and the oldest row waiting for its archive, read from the
    `created_at` index."""
    estimate = conn.execute(
        sa.text("SELECT reltuples::bigint FROM pg_class WHERE oid = CAST(:t AS regclass)"),
        {"t": table},
    ).scalar_one()
    if estimate < 0:
        estimate = conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
    oldest, age = conn.execute(
        sa.text(
            f"SELECT min(created_at), extract(epoch FROM now() - min(created_at)) / 86400"
            f" FROM {table} {_WAITING[table]}"
        )
    ).one()
    return TableState(estimate, oldest, None if age is None else round(float(age), 2))


def observation(
    spec: dg.AssetSpec, state: TableState, archive_after_days: int
) -> dg.AssetObservation:
    metadata: dict[str, dg.MetadataValue] = {
        "rows_estimate": dg.MetadataValue.int(state.rows_estimate),
        "archive_after_days": dg.MetadataValue.int(archive_after_days),
        "oldest_waiting_row": dg.MetadataValue.text(
            state.oldest_waiting.isoformat() if state.oldest_waiting else "none"
        ),
    }
    if state.oldest_waiting_age_days is not None:
        metadata["oldest_waiting_age_days"] = dg.MetadataValue.float(state.oldest_waiting_age_days)
    return dg.AssetObservation(asset_key=spec.key, metadata=metadata)


@dg.sensor(
    minimum_interval_seconds=300,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Observes the messages and media tables: row estimate, oldest row to archive.",
)
def table_observation_sensor(postgres: PostgresResource) -> dg.SensorResult:
    """Reports an observation of each table; it launches no run."""
    policy = settings.load(ArchivePolicy)
    tables = [
        (messages_table, policy.message_threshold_days),
        (media_table, policy.media_threshold_days),
    ]
    with postgres.engine.connect() as conn:
        events = [
            observation(spec, table_state(conn, spec.key.path[-1]), days) for spec, days in tables
        ]
    return dg.SensorResult(asset_events=events)
