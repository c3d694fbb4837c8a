"""Demo history for `make demo`: messages and media dated past their thresholds, archived.

A new user sees the archive work on day one instead of in 90 days.
"""

from __future__ import annotations

import io
from datetime import date, timedelta
from uuid import UUID

import dagster as dg
import sqlalchemy as sa
from PIL import Image

from assets_defs.archive.media import media_archive
from assets_defs.archive.messages import message_archive
from assets_defs.archive.policy import ArchivePolicy, day_bounds, today
from resources import settings
from resources.postgres import PostgresResource
from resources.storage import S3Storage

MESSAGES_PER_DAY = 40
MESSAGE_DAYS = 3
MEDIA_FILES = 3

_MESSAGES = """
INSERT INTO messages (organisation_id, direction, sender_type, phone_number_id, peer_phone,
    message_type, body, status, provider_message_id, sent_at, created_at, updated_at)
SELECT :org,
    CASE WHEN g % 2 = 0 THEN 'outbound' ELSE 'inbound' END,
    CASE WHEN g % 2 = 0 THEN 'ai' ELSE 'customer' END,
    :phone,
    '+1202555' || lpad((100 + g % 50)::text, 4, '0'),
    'text',
    CASE WHEN g % 2 = 0 THEN 'Thanks for your order #' || g ELSE 'Where is my order?' END,
    CASE WHEN g % 2 = 0 THEN 'read' ELSE 'received' END,
    'wamid.demo.' || :day || '.' || g,
    :start + g * interval '7 minutes',
    :start + g * interval '7 minutes',
    :start + g * interval '7 minutes'
FROM generate_series(0, :count - 1) g
"""


def _png(shade: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 16), (shade, 120, 200)).save(out, format="PNG")
    return out.getvalue()


def create_history(
    engine: sa.Engine, s3: S3Storage, organisation_id: UUID, phone: str
) -> tuple[list[date], date]:
    """Insert the past messages and media; returns the days of messages and the day of media."""
    policy = settings.load(ArchivePolicy)
    message_days = [
        today() - timedelta(days=policy.message_threshold_days + 30 + n)
        for n in range(MESSAGE_DAYS)
    ]
    media_day = today() - timedelta(days=policy.media_threshold_days + 5)
    with engine.begin() as conn:
        for day in message_days:
            conn.execute(
                sa.text(_MESSAGES),
                {
                    "org": organisation_id,
                    "phone": phone,
                    "day": day.isoformat(),
                    "start": day_bounds(day)[0],
                    "count": MESSAGES_PER_DAY,
                },
            )
        for n in range(MEDIA_FILES):
            key = f"inbound-media/demo/{media_day}/{n}.png"
            s3.client.put_object(
                Bucket=s3.bucket, Key=key, Body=_png(40 * n), ContentType="image/png"
            )
            conn.execute(
                sa.text(
                    "INSERT INTO media (organisation_id, media_type, mime_type, s3_bucket, s3_key,"
                    " status, created_at) VALUES (:org, 'image', 'image/png', :bucket, :key,"
                    " 'stored', :created)"
                ),
                {
                    "org": organisation_id,
                    "bucket": s3.bucket,
                    "key": key,
                    "created": day_bounds(media_day)[0] + timedelta(hours=9, minutes=n),
                },
            )
    return message_days, media_day


def archive_history(
    postgres: PostgresResource, s3: S3Storage, organisation_id: UUID, phone: str
) -> dict[str, int]:
    """Create the history, archive it with the real assets, and count what was archived."""
    message_days, media_day = create_history(postgres.engine, s3, organisation_id, phone)
    first, last = min(message_days), max(message_days)
    resources = {"postgres": postgres, "s3": dg.ResourceDefinition.hardcoded_resource(s3)}
    for asset, start, end in (
        (message_archive, first, last),
        (media_archive, media_day, media_day),
    ):
        dg.materialize(
            [asset],
            resources=resources,
            tags={
                "dagster/asset_partition_range_start": start.isoformat(),
                "dagster/asset_partition_range_end": end.isoformat(),
            },
        )
    with postgres.engine.connect() as conn:
        counts = dict(
            conn.execute(
                sa.text("SELECT kind, sum(row_count) FROM archive_manifests GROUP BY kind")
            ).all()
        )
    return {
        "messages_archived": int(counts.get("messages", 0)),
        "media_archived": int(counts.get("media", 0)),
    }
