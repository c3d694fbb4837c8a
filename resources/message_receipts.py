"""The SQL of delivery receipts: `message_receipts` (one row per wamid and status), read from
the stored webhook events, and their application to the outbound message they name, never
backwards (`message_status_rank`), `failed` final, each status keeping its own time.
`webhook_app/receipts.py` decides what follows (consent).

The database reads the receipts, not the worker: a campaign's receipts are most of the
webhook traffic, and reading each event into Python objects and writing its statuses back as
JSON cost the worker more CPU than the app spent receiving it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import sqlalchemy as sa

# Every `statuses[]` object of the `messages` changes of the stored events `:ids`, read as
# leniently as the rest of a webhook: a part of the wrong type reads as absent. Tracked
# statuses are recorded; our message id in `biz_opaque_callback_data` gives a message that
# has no wamid yet (the sender stopped between its send and its store) the receipt's wamid,
# once per message and wamid.
_RECORD = sa.text(
    """
    WITH statuses AS (
        SELECT i.id AS event_id, s FROM webhook_inbox i, jsonb_path_query(i.payload,
            'strict $.entry[*].changes[*]
                ? (@.field == "messages" && @.value.statuses.type() == "array")
                .value.statuses[*] ? (@.type() == "object")', '{}', true) s
        WHERE i.id = ANY(:ids)
    ), tracked AS (
        SELECT event_id, s->>'id' AS wamid, s->>'status' AS status,
               CASE WHEN s->>'timestamp' ~ '^[0-9]{1,11}$'
                    THEN to_timestamp((s->>'timestamp')::bigint) END AS ts,
               CASE WHEN s->>'biz_opaque_callback_data' ~ '^[0-9]{1,18}$'
                    THEN (s->>'biz_opaque_callback_data')::bigint END AS message_id,
               CASE WHEN jsonb_typeof(s->'errors'->0->'code') = 'number'
                     AND s->'errors'->0->>'code' ~ '^-?[0-9]{1,9}$'
                    THEN (s->'errors'->0->>'code')::integer END AS code,
               coalesce(nullif(s->'errors'->0->>'title', ''),
                        nullif(s->'errors'->0->>'message', '')) AS title,
               nullif(s->'errors'->0->'error_data'->>'details', '') AS details
        FROM statuses
        WHERE jsonb_typeof(s->'id') = 'string'
          AND s->>'status' IN ('sent', 'delivered', 'read', 'failed')
    ), recorded AS (
        INSERT INTO message_receipts
            (provider_message_id, status, provider_ts, error_code, error_title, event_id)
        SELECT wamid, status, ts, code,
               CASE WHEN status = 'failed' THEN
                    CASE WHEN details IS NULL THEN title ELSE title || ': ' || details END
               END,
               event_id
        FROM tracked
        ON CONFLICT (provider_message_id, status) DO NOTHING
        RETURNING provider_message_id
    ), callbacks AS (
        SELECT DISTINCT ON (message_id) message_id, wamid
        FROM (SELECT DISTINCT ON (wamid) wamid, message_id FROM tracked
              WHERE message_id IS NOT NULL ORDER BY wamid, message_id) c
        ORDER BY message_id, wamid
    ), claimed AS (
        UPDATE messages m SET provider_message_id = c.wamid
        FROM callbacks c
        WHERE m.id = c.message_id AND m.direction = 'outbound' AND m.provider_message_id IS NULL
          AND NOT EXISTS (SELECT 1 FROM messages o WHERE o.provider_message_id = c.wamid)
    )
    SELECT (SELECT count(*) FROM statuses) AS read, (SELECT count(*) FROM recorded) AS recorded,
           ARRAY(SELECT DISTINCT provider_message_id FROM recorded ORDER BY 1) AS wamids
    """
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


class Recorded(NamedTuple):
    read: int  # statuses[] objects in the events
    recorded: int  # new receipts (a redelivered receipt is a no-op)
    wamids: list[str]  # the wamids of the new receipts


def record(conn: sa.Connection, event_ids: Sequence[int]) -> Recorded:
    """Records the receipts of these stored webhook events, straight from their payloads: one
    statement for a batch, however many receipts it holds."""
    return Recorded(*conn.execute(_RECORD, {"ids": list(event_ids)}).one())


def apply(conn: sa.Connection, wamids: Sequence[str]) -> list[sa.Row]:
    """Applies every waiting receipt of these wamids whose message is known; each applied
    receipt (id, message_id, status, error_code, error_title, provider_ts)."""
    return conn.execute(_APPLY, {"wamids": list(wamids)}).all()


def waiting_known(conn: sa.Connection, limit: int) -> list[str]:
    """Wamids of receipts that arrived before their message's wamid was stored, and whose
    message now carries it."""
    return list(conn.execute(_WAITING_KNOWN, {"limit": limit}).scalars())
