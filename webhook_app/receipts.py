"""Delivery receipts (`statuses`) → the outbound message's status.

Every receipt is first recorded in `message_receipts` (unique per wamid and status, so a
redelivered receipt is a no-op), then applied to its message if the message is known.
Receipts that arrive before the sender has stored the wamid wait there and are applied by
`apply_waiting()`, which the inbox workers run on every pass. Application follows
`message_status_rank`: never backwards, `failed` final; each status keeps its own time.
A `failed` receipt with error 131050 (the customer stopped marketing messages) also opts the
message's contact out of marketing (consent source `error_131050`), once per message.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from resources import consent
from resources.graph_errors import MARKETING_STOPPED
from webhook_app.payloads import Status

RECEIPT_STATUSES = ("sent", "delivered", "read", "failed")

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


def record(conn: sa.Connection, statuses: list[Status]) -> int:
    """Record `statuses[]` items and apply those whose message is known; how many were new.

    Duplicates and statuses we do not track (WhatsApp also sends e.g. `deleted`) change
    nothing. One statement records a whole batch, one more applies it.
    """
    tracked = [s for s in statuses if s.wamid is not None and s.status in RECEIPT_STATUSES]
    if not tracked:
        return 0
    rows = [_row(s) for s in tracked]
    new = conn.execute(_RECORD, {"rows": json.dumps(rows)}).scalars().all()
    for status in tracked:
        if status.callback.isdigit():
            conn.execute(_CLAIM_WAMID, {"wamid": status.wamid, "id": int(status.callback)})
    apply(conn, sorted(set(new)))
    return len(new)


def apply(conn: sa.Connection, wamids: list[str]) -> int:
    """Apply every waiting receipt of these wamids whose message is known; how many.

    A `failed` receipt with error 131050 (the customer stopped marketing messages) also
    opts the message's contact out of marketing."""
    if not wamids:
        return 0
    applied = conn.execute(_APPLY, {"wamids": wamids}).all()
    for r in applied:
        if r.status == "failed" and r.error_code == MARKETING_STOPPED:
            consent.marketing_stopped(conn, r.message_id, r.provider_ts, r.error_title)
    return len(applied)


def apply_waiting(conn: sa.Connection, limit: int = 500) -> int:
    """Receipts that were early: apply those whose wamid a message now carries."""
    return apply(conn, list(conn.execute(_WAITING_KNOWN, {"limit": limit}).scalars()))


def _row(status: Status) -> dict[str, Any]:
    return {
        "wamid": status.wamid,
        "status": status.status,
        "ts": status.at.isoformat() if status.at else None,
        "code": status.error.code,
        "title": status.error.title if status.status == "failed" else None,
        "raw": status.raw,
    }
