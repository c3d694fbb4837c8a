"""The SQL of delivery receipts: `message_receipts` (one row per wamid and status) and their
application to the outbound message they name, never backwards (`message_status_rank`),
`failed` final, each status keeping its own time. `webhook_app/receipts.py` decides what to
record and what follows (consent)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa

_RECORD = sa.text(
    "INSERT INTO message_receipts"
    " (provider_message_id, status, provider_ts, error_code, error_title, raw)"
    " SELECT x.wamid, x.status, x.ts, x.code, x.title, x.raw"
    " FROM jsonb_to_recordset(CAST(:rows AS jsonb))"
    " AS x(wamid text, status text, ts timestamptz, code integer, title text, raw jsonb)"
    " ON CONFLICT (provider_message_id, status) DO NOTHING"
    " RETURNING provider_message_id"
)

# Our message id travels in biz_opaque_callback_data: it finds the row before its wamid does.
_CLAIM_WAMID = sa.text(
    "UPDATE messages SET provider_message_id = :wamid"
    " WHERE id = :id AND direction = 'outbound' AND provider_message_id IS NULL"
    " AND NOT EXISTS (SELECT 1 FROM messages WHERE provider_message_id = :wamid)"
)

_APPLY = sa.text(
    """
    WITH waiting AS (
        SELECT r.id, r.status, r.provider_ts, r.error_code, r.error_title, m.id AS message_id
        FROM message_receipts r
        JOIN messages m ON m.provider_message_id = r.provider_message_id
                       AND m.direction = 'outbound'
        WHERE r.applied_at IS NULL AND r.provider_message_id = ANY(:wamids)
        ORDER BY message_status_rank(r.status)
        FOR UPDATE OF r
    ), best AS (
        SELECT message_id,
               (array_agg(status ORDER BY message_status_rank(status) DESC))[1] AS status,
               max(provider_ts) FILTER (WHERE status = 'sent') AS sent_ts,
               max(provider_ts) FILTER (WHERE status = 'delivered') AS delivered_ts,
               max(provider_ts) FILTER (WHERE status = 'read') AS read_ts,
               max(provider_ts) FILTER (WHERE status = 'failed') AS failed_ts,
               max(error_code) FILTER (WHERE status = 'failed') AS error_code,
               max(error_title) FILTER (WHERE status = 'failed') AS error_title
        FROM waiting GROUP BY message_id
    ), moved AS (
        UPDATE messages m SET
            status = CASE WHEN m.status <> 'failed'
                           AND message_status_rank(b.status) > message_status_rank(m.status)
                          THEN b.status ELSE m.status END,
            sent_at = coalesce(m.sent_at, b.sent_ts),
            delivered_at = coalesce(m.delivered_at, b.delivered_ts),
            read_at = coalesce(m.read_at, b.read_ts),
            failed_at = coalesce(m.failed_at, b.failed_ts),
            error_code = CASE WHEN m.status <> 'failed' AND b.failed_ts IS NOT NULL
                              THEN b.error_code ELSE m.error_code END,
            error_title = CASE WHEN m.status <> 'failed' AND b.failed_ts IS NOT NULL
                               THEN b.error_title ELSE m.error_title END
        FROM best b WHERE m.id = b.message_id
        RETURNING m.id
    )
    UPDATE message_receipts r SET applied_at = now(), message_id = w.message_id
    FROM waiting w WHERE r.id = w.id AND EXISTS (SELECT 1 FROM moved)
    RETURNING r.id, w.message_id, w.status, w.error_code, w.error_title, w.provider_ts
    """
)

_WAITING_KNOWN = sa.text(
    "SELECT DISTINCT r.provider_message_id FROM message_receipts r"
    " JOIN messages m ON m.provider_message_id = r.provider_message_id"
    " AND m.direction = 'outbound'"
    " WHERE r.applied_at IS NULL LIMIT :limit"
)


def record(conn: sa.Connection, rows: list[dict[str, Any]]) -> list[str]:
    """Records receipts (wamid, status, ts, code, title, raw); the wamids of the new ones (a
    redelivered receipt is a no-op). One statement for the batch."""
    return list(conn.execute(_RECORD, {"rows": json.dumps(rows)}).scalars())


def claim_wamid(conn: sa.Connection, wamid: str, message_id: int) -> None:
    """The outbound message `message_id` carries `wamid`, if it has none yet and no other does."""
    conn.execute(_CLAIM_WAMID, {"wamid": wamid, "id": message_id})


def apply(conn: sa.Connection, wamids: Sequence[str]) -> list[sa.Row]:
    """Applies every waiting receipt of these wamids whose message is known; each applied
    receipt (id, message_id, status, error_code, error_title, provider_ts)."""
    return conn.execute(_APPLY, {"wamids": list(wamids)}).all()


def waiting_known(conn: sa.Connection, limit: int) -> list[str]:
    """Wamids of receipts that arrived before their message's wamid was stored, and whose
    message now carries it."""
    return list(conn.execute(_WAITING_KNOWN, {"limit": limit}).scalars())
