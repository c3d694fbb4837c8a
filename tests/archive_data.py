"""Messages and media rows dated in the past, and a way to run the archive assets on them."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from uuid import UUID

import dagster as dg
import sqlalchemy as sa

from assets_defs.archive.policy import today
from resources import campaigns
from resources.storage import S3Storage

# Every kind of value a message row holds: NULLs, JSON, quotes, backslashes, non-ASCII
# text and microsecond timestamps, so that a round trip is checked where it could break.
INSERT_MESSAGES = """
INSERT INTO messages (organisation_id, direction, sender_type, phone_number_id, peer_phone,
    peer_wa_user_id, message_type, body, payload, media, provider_message_id, status,
    sent_at, delivered_at, read_at, error_code, error_title, attempts, provider_ts,
    created_at, updated_at)
SELECT :org,
    CASE WHEN g % 3 = 0 THEN 'inbound' ELSE 'outbound' END,
    CASE WHEN g % 3 = 0 THEN 'customer' ELSE 'ai' END,
    'pn-1',
    '+1202555' || lpad((g % 10000)::text, 4, '0'),
    CASE WHEN g % 2 = 0 THEN 'US.' || g END,
    'text',
    'Hi "there" \\ back\\slash, ünïcode ✓ #' || g || E'\\nsecond line',
    jsonb_build_object('n', g, 'nested', jsonb_build_object('q', 'a"b\\c'), 'list', jsonb_build_array(1, 2.5, null)),
    CASE WHEN g % 4 = 0 THEN jsonb_build_object('id', 'media-' || g) END,
    :prefix || '-' || g,
    CASE WHEN g % 3 = 0 THEN 'received' ELSE 'read' END,
    :start + g * interval '1 second' + interval '0.123456 seconds',
    CASE WHEN g % 3 <> 0 THEN :start + g * interval '2 seconds' END,
    NULL,
    CASE WHEN g % 5 = 0 THEN 131047 END,
    CASE WHEN g % 5 = 0 THEN 'Re-engagement message' END,
    g % 4,
    :start + g * interval '1 second',
    :start + (g * :spacing) * interval '1 microsecond',
    :start + (g * :spacing) * interval '1 microsecond'
FROM generate_series(0, :count - 1) g
"""


def day_ago(days: int) -> date:
    return today() - timedelta(days=days)


def midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def organisation(engine: sa.Engine) -> UUID:
    with engine.begin() as conn:
        return campaigns.create_organisation(conn, "Archive test")


def insert_messages(engine: sa.Engine, org: UUID, day: date, count: int) -> None:
    """`count` messages spread over the whole UTC day (the last one just before midnight)."""
    spacing = (86_400_000_000 - 1) // max(count - 1, 1) if count > 1 else 0
    with engine.begin() as conn:
        conn.execute(
            sa.text(INSERT_MESSAGES),
            {
                "org": org,
                "start": midnight(day),
                "count": count,
                "spacing": spacing,
                "prefix": f"wamid.{day}",
            },
        )


def message_rows(engine: sa.Engine, day: date | None = None) -> dict[int, str]:
    """Every message (or one day's) as the JSON text Postgres makes of it, by id."""
    where = ""
    params: dict[str, Any] = {}
    if day is not None:
        where = "WHERE created_at >= :s AND created_at < :e"
        params = {"s": midnight(day), "e": midnight(day + timedelta(days=1))}
    with engine.connect() as conn:
        return dict(
            conn.execute(
                sa.text(f"SELECT id, row_to_json(m)::text FROM messages m {where}"), params
            ).all()
        )


def run_archive(
    asset: dg.AssetsDefinition,
    postgres,
    s3,
    first: date,
    last: date | None = None,
    **config: Any,
) -> dg.ExecuteInProcessResult:
    last = last or first
    return dg.materialize(
        [asset],
        resources=resources(postgres, s3),
        tags={
            "dagster/asset_partition_range_start": first.isoformat(),
            "dagster/asset_partition_range_end": last.isoformat(),
        },
        run_config={"ops": {asset.op.name: {"config": config}}} if config else None,
        raise_on_error=False,
    )


def resources(postgres, s3) -> dict[str, Any]:
    """Run resources for the test's database and bucket.

    The bucket's storage object itself is handed over: Dagster would rebuild a resource from
    its config, which `model_copy` (how the `s3` fixture names its bucket) does not change,
    and tests inject failures into this object's client.
    """
    return {"postgres": postgres, "s3": dg.ResourceDefinition.hardcoded_resource(s3)}


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    return "\n".join(
        event.step_failure_data.error.to_string()
        + str(event.step_failure_data.user_failure_data or "")
        for event in result.all_events
        if event.is_step_failure
    )


def keys(s3, prefix: str = "") -> list[str]:
    pages = s3.client.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket, Prefix=prefix)
    return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def manifest_rows(engine: sa.Engine, kind: str) -> list[sa.Row]:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT day, files, row_count, rows_deleted, rows_failed, bytes_raw,"
                " bytes_compressed FROM archive_manifests WHERE kind = :k ORDER BY day"
            ),
            {"k": kind},
        ).all()


def storage_config(s3) -> S3Storage:
    """The test's bucket as resource config (for code that rebuilds resources from it)."""
    return S3Storage(bucket=s3.bucket, endpoint_url=s3.endpoint_url, region_name=s3.region_name)
