"""The `media` table: one row a file the platform keeps or fetches. An inbound message's
media arrives `pending` with WhatsApp's media id, is copied to our bucket (`stored`), or,
after its last attempt, `failed`; the media archive moves stored files by day
(`assets_defs/archive/media.py`, in bulk beside the objects it moves).
"""

from __future__ import annotations

from uuid import UUID

import sqlalchemy as sa

_CLAIM = sa.text(
    "SELECT id, organisation_id, message_id, provider_media_id, media_type, mime_type,"
    " created_at FROM media"
    " WHERE status = 'pending' AND provider_media_id IS NOT NULL"
    " AND (retry_at IS NULL OR retry_at <= now())"
    " ORDER BY id LIMIT :n FOR UPDATE SKIP LOCKED"
)


def add_inbound(
    conn: sa.Connection,
    organisation_id: UUID,
    message_id: int,
    provider_media_id: str,
    media_type: str,
    mime_type: str | None,
    sha256: str | None,
) -> None:
    """The file of a stored inbound message, `pending` until it is copied."""
    conn.execute(
        sa.text(
            "INSERT INTO media (organisation_id, message_id, provider_media_id, media_type,"
            " mime_type, sha256) VALUES (:o, :m, :id, :type, :mime, :sha)"
        ),
        {
            "o": organisation_id,
            "m": message_id,
            "id": provider_media_id,
            "type": media_type,
            "mime": mime_type,
            "sha": sha256,
        },
    )


def claim_pending(conn: sa.Connection, limit: int) -> list[sa.Row]:
    """Up to `limit` pending files due for a copy attempt, locked for the caller's
    transaction (others skip them): id, organisation, message, WhatsApp's media id, type,
    mime type and when it arrived."""
    return list(conn.execute(_CLAIM, {"n": limit}).all())


def mark_stored(
    conn: sa.Connection,
    media_id: int,
    bucket: str,
    key: str,
    mime_type: str,
    size: int,
    sha256: str,
) -> None:
    """The file is copied to `bucket`/`key`; the attempt counts."""
    conn.execute(
        sa.text(
            "UPDATE media SET status = 'stored', s3_bucket = :b, s3_key = :k, mime_type = :mime,"
            " size_bytes = :size, sha256 = :sha, error = NULL, attempts = attempts + 1"
            " WHERE id = :id"
        ),
        {"id": media_id, "b": bucket, "k": key, "mime": mime_type, "size": size, "sha": sha256},
    )


def attempt_failed(conn: sa.Connection, media_id: int, error: str, max_attempts: int) -> None:
    """A copy attempt failed: try again after a backoff that doubles, `failed` after the
    last of `max_attempts`."""
    conn.execute(
        sa.text(
            "UPDATE media SET attempts = attempts + 1, error = :e,"
            " retry_at = now() + make_interval(secs => 5 * power(2, attempts)),"
            " status = CASE WHEN attempts + 1 >= :max THEN 'failed' ELSE status END"
            " WHERE id = :id"
        ),
        {"id": media_id, "e": error, "max": max_attempts},
    )


def location(
    engine: sa.Engine, media_id: int, organisation_id: str | None
) -> tuple[str, str] | None:
    """The bucket and key of an inbound media copy of the organisation, None if none."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.text(
                "SELECT s3_bucket, s3_key FROM media WHERE id = :m AND status = 'stored'"
                " AND (CAST(:o AS uuid) IS NULL OR organisation_id = CAST(:o AS uuid))"
            ),
            {"m": media_id, "o": organisation_id},
        ).one_or_none()
    return (row.s3_bucket, row.s3_key) if row else None
