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
from datetime import datetime

import sqlalchemy as sa

from resources import safe_errors
from webhook_app import (
    account_webhooks,
    inbound,
    preferences,
    provider_errors,
    receipts,
    template_webhooks,
)
from webhook_app.payloads import Event, Value

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
BATCH = 500

# The oldest events due, locked; those that hold only receipts are closed at once (when
# `:close`), as their receipts will be recorded in the same transaction, by the database.
# Only the ids travel: a pass over a burst of receipts returns two arrays, not 500 rows.
_CLAIM = sa.text(
    """
    WITH claimed AS (
        SELECT id, receipts_only FROM webhook_inbox
        WHERE processed_at IS NULL AND (retry_at IS NULL OR retry_at <= now())
        ORDER BY id LIMIT :n FOR UPDATE SKIP LOCKED
    ), closed AS (
        UPDATE webhook_inbox i SET processed_at = now(), attempts = i.attempts + 1, error = NULL
        FROM claimed c WHERE i.id = c.id AND c.receipts_only AND :close
        RETURNING i.id
    )
    SELECT ARRAY(SELECT id FROM closed) AS closed,
           ARRAY(SELECT id FROM claimed WHERE NOT (receipts_only AND :close) ORDER BY id) AS rest
    """
)
# A receipts-only event's payload stays in the database, which reads its receipts.
_LOAD = sa.text(
    "SELECT id, received_at, receipts_only, CASE WHEN receipts_only THEN NULL ELSE payload END"
    " AS payload FROM webhook_inbox WHERE id = ANY(:ids) ORDER BY id"
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
    """Apply up to `limit` inbox events; the tally of what they held ('events' = rows done).

    Events that hold only receipts (most of the traffic) are claimed, closed and recorded
    together, by the database, in a few statements; the rest, or all of them if that fails,
    one by one, each read once, here (`payloads.Event`).
    """
    tally: Counter = Counter()
    with engine.begin() as conn:
        try:
            with conn.begin_nested():
                closed, rest = _claim(conn, limit, close_receipts_only=True)
                recorded = receipts.record(conn, closed) if closed else Counter()
        except Exception as error:
            log.warning(
                "batch of receipts failed, applying its events one by one: %s",
                safe_errors.describe(error),
            )
            _, rest = _claim(conn, limit, close_receipts_only=False)
        else:
            tally.update(recorded, events=len(closed))
        for row in rest:
            try:
                with conn.begin_nested():
                    tally.update(_apply_row(conn, row))
            except Exception as error:
                log.warning(
                    "webhook event %s failed: %s (in webhook_inbox.error)",
                    row.id,
                    safe_errors.describe(error),
                )
                conn.execute(_FAILED, {"id": row.id, "error": str(error), "max": MAX_ATTEMPTS})
                tally["failed"] += 1
            else:
                conn.execute(_DONE, {"id": row.id})
            tally["events"] += 1
    return tally


def _claim(
    conn: sa.Connection, limit: int, close_receipts_only: bool
) -> tuple[list[int], list[sa.Row]]:
    """Lock the oldest due events: the ids of those closed as receipts-only, and the rows of
    the rest, to apply one by one."""
    closed, rest = conn.execute(_CLAIM, {"n": limit, "close": close_receipts_only}).one()
    rows = conn.execute(_LOAD, {"ids": rest}).all() if rest else []
    return closed, rows


def apply_early_receipts(engine: sa.Engine) -> int:
    """Receipts that arrived before their wamid was stored, applied now that it is."""
    with engine.begin() as conn:
        return receipts.apply_waiting(conn)


def _apply_row(conn: sa.Connection, row: sa.Row) -> Counter:
    """One claimed event: its receipts, then (unless it holds only receipts) the rest of it."""
    tally = receipts.record(conn, [row.id])
    if not row.receipts_only:
        tally.update(apply_event(conn, Event.of(row.payload), row.id, row.received_at))
    return tally


def apply_event(conn: sa.Connection, event: Event, event_id: int, received_at: datetime) -> Counter:
    """Every change of every entry but its receipts (`receipts.record`): inbound messages
    (and a customer's change of number), the customer's marketing preferences
    (`user_preferences`), template status, category and quality, and the errors WhatsApp
    reports beside them; other fields are skipped. Inbound messages keep `received_at`, when
    the event reached us: workers apply events out of that order."""
    tally: Counter = Counter()
    tally.update(provider_errors.keep(conn, event, event_id))
    tally.update(template_webhooks.apply(conn, event, event_id))
    tally.update(account_webhooks.apply(conn, event, event_id))
    for change in event.changes():
        if change.field in template_webhooks.FIELDS:
            continue
        if change.field in account_webhooks.FIELDS:
            continue
        if change.field == "user_preferences":
            tally.update(preferences.apply(conn, change.value, event_id))
            continue
        if change.field != "messages":
            tally["ignored_changes"] += 1
            continue
        tally.update(_apply_messages(conn, change.value, received_at))
    return tally


def _apply_messages(conn: sa.Connection, value: Value, received_at: datetime) -> Counter:
    tally: Counter = Counter()
    if not value.messages:
        return tally
    organisation_id = inbound.organisation_of(conn, value.phone_number_id)
    for message in value.messages:
        customer = inbound.customer_of(message, value.contacts)
        stored = inbound.store(
            conn, organisation_id, value.phone_number_id, message, customer, received_at
        )
        tally["inbound" if stored is not None else "duplicates_dropped"] += 1
        if stored is not None and inbound.changed_number(message):
            tally.update(inbound.follow_number(conn, organisation_id, message, stored))
    return tally
