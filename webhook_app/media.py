"""Inbound media → our bucket (`inbound-media/…`), in the background.

A media id expires after some days and its download URL after minutes, so each pending
media row is resolved and copied soon after it arrives; the S3 location is recorded on the
media row and in the message's `media`, where the archive finds it.
"""

from __future__ import annotations

import hashlib
import logging
import mimetypes

import sqlalchemy as sa

from resources import conversation_messages, media_files, safe_errors
from resources.storage import S3Storage
from resources.whatsapp import WhatsAppClient

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
MAX_BYTES = 100 * 1024 * 1024


def copy_pending(engine: sa.Engine, client: WhatsAppClient, s3: S3Storage, limit: int = 5) -> int:
    """Copy up to `limit` pending media to S3; how many rows were attempted."""
    with engine.begin() as conn:
        rows = media_files.claim_pending(conn, limit)
        for row in rows:
            try:
                _copy(conn, client, s3, row)
            except Exception as error:
                log.warning("inbound media %s not copied: %s", row.id, safe_errors.describe(error))
                media_files.attempt_failed(conn, row.id, str(error), MAX_ATTEMPTS)
    return len(rows)


def _copy(conn: sa.Connection, client: WhatsAppClient, s3: S3Storage, row: sa.Row) -> None:
    if client.dev_mode:
        raise RuntimeError("WHATSAPP_ACCESS_TOKEN is not set: inbound media cannot be fetched")
    meta = client.media_url(row.provider_media_id)
    content = client.download(meta["url"], MAX_BYTES)
    mime_type = meta.get("mime_type") or row.mime_type or "application/octet-stream"
    extension = mimetypes.guess_extension(mime_type.split(";")[0].strip()) or ""
    day = row.created_at.strftime("%Y/%m/%d")
    key = f"inbound-media/{row.organisation_id}/{day}/{row.provider_media_id}{extension}"
    s3.client.put_object(Bucket=s3.bucket, Key=key, Body=content, ContentType=mime_type)
    media_files.mark_stored(
        conn,
        row.id,
        s3.bucket,
        key,
        mime_type,
        len(content),
        hashlib.sha256(content).hexdigest(),
    )
    conversation_messages.set_media_key(conn, row.message_id, s3.bucket, key)
