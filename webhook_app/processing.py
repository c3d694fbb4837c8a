"""Background processing of the webhook inbox, after the 200 has gone out.

Workers claim unprocessed rows with `FOR UPDATE SKIP LOCKED` inside the transaction that
applies them, so several workers and app instances share the inbox without doing a row
twice, and a crash rolls the claim back: the row is picked up again after a restart.
Each event runs in a savepoint; one that fails is retried with backoff and, after
`MAX_ATTEMPTS`, closed with its error kept for inspection.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import sqlalchemy as sa

from webhook_app import inbound, receipts
from webhook_app.payloads import changes

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
BATCH = 100

_CLAIM = sa.text(
    "SELECT id, payload FROM webhook_inbox"
    " WHERE processed_at IS NULL AND (retry_at IS NULL OR retry_at <= now())"
    " ORDER BY id LIMIT :n FOR UPDATE SKIP LOCKED"
)
_DONE = sa.text(
    "UPDATE webhook_inbox SET processed_at = now(), attempts = attempts + 1, error = NULL"
    " WHERE id = :id"
)
_FAILED = sa.text(
    "UPDATE webhook_inbox SET attempts = attempts + 1, error = :error,"
    " retry_at = now() + make_interval(secs => power(2, attempts + 1)),"
    " processed_at = CASE WHEN attempts + 1 >= :max THEN now() END"
    " WHERE id = :id"
)


def process_batch(engine: sa.Engine, limit: int = BATCH) -> Counter:
    """Apply up to `limit` inbox events; the tally of what they held ('events' = rows done)."""
    tally: Counter = Counter()
    with engine.begin() as conn:
        for event_id, payload in conn.execute(_CLAIM, {"n": limit}).all():
            try:
                with conn.begin_nested():
                    tally.update(apply_event(conn, payload))
            except Exception as error:
                log.warning("webhook event %s failed: %s", event_id, error)
                conn.execute(_FAILED, {"id": event_id, "error": str(error), "max": MAX_ATTEMPTS})
                tally["failed"] += 1
            else:
                conn.execute(_DONE, {"id": event_id})
            tally["events"] += 1
        tally["receipts_applied_late"] += receipts.apply_waiting(conn)
    return tally


def apply_event(conn: sa.Connection, payload: dict[str, Any]) -> Counter:
    """Every change of every entry: statuses, inbound messages; other fields are skipped."""
    tally: Counter = Counter()
    for field, value in changes(payload):
        if field != "messages":
            tally["ignored_changes"] += 1
            continue
        for status in value.get("statuses") or []:
            tally["receipts" if receipts.record(conn, status) else "duplicate_receipts"] += 1
        messages = value.get("messages") or []
        if not messages:
            continue
        phone_number_id = (value.get("metadata") or {}).get("phone_number_id")
        organisation_id = inbound.organisation_of(conn, phone_number_id)
        contacts = value.get("contacts") or []
        for message in messages:
            customer = inbound.customer_of(message, contacts)
            stored = inbound.store(conn, organisation_id, phone_number_id, message, customer)
            tally["inbound" if stored is not None else "duplicates_dropped"] += 1
    return tally
