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
from typing import Any

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
from webhook_app.payloads import changes

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 5
BATCH = 500

_CLAIM = sa.text(
    "SELECT id, payload, received_at FROM webhook_inbox"
    " WHERE processed_at IS NULL AND (retry_at IS NULL OR retry_at <= now())"
    " ORDER BY id LIMIT :n FOR UPDATE SKIP LOCKED"
)
_DONE = sa.text(
    "UPDATE webhook_inbox SET processed_at = now(), attempts = attempts + 1, error = NULL"
    " WHERE id = ANY(:id)"
)
_FAILED = sa.text(
    "UPDATE webhook_inbox SET attempts = attempts + 1, error = :error,"
    " retry_at = now() + make_interval(secs => power(2, attempts + 1)),"
    " processed_at = CASE WHEN attempts + 1 >= :max THEN now() END"
    " WHERE id = :id"
)


def process_batch(engine: sa.Engine, limit: int = BATCH) -> Counter:
    """Apply up to `limit` inbox events; the tally of what they held ('events' = rows done).

    Events that hold only statuses (most of the traffic) are applied together in a few
    set-based statements; the rest, or all of them if that fails, one by one.
    """
    tally: Counter = Counter()
    with engine.begin() as conn:
        claimed = conn.execute(_CLAIM, {"n": limit}).all()
        receipts_only, one_by_one = [], []
        for event in claimed:
            kind = receipts_only if _receipts_only(event.payload) else one_by_one
            kind.append(event)
        if receipts_only:
            try:
                with conn.begin_nested():
                    tally.update(_apply_receipts(conn, receipts_only))
            except Exception as error:
                log.warning(
                    "batch of receipts failed, retrying one by one: %s", safe_errors.describe(error)
                )
                one_by_one = claimed
        for event_id, payload, received_at in one_by_one:
            try:
                with conn.begin_nested():
                    tally.update(apply_event(conn, payload, event_id, received_at))
            except Exception as error:
                log.warning(
                    "webhook event %s failed: %s (in webhook_inbox.error)",
                    event_id,
                    safe_errors.describe(error),
                )
                conn.execute(_FAILED, {"id": event_id, "error": str(error), "max": MAX_ATTEMPTS})
                tally["failed"] += 1
            else:
                conn.execute(_DONE, {"id": [event_id]})
            tally["events"] += 1
    return tally


def apply_early_receipts(engine: sa.Engine) -> int:
    """Receipts that arrived before their wamid was stored, applied now that it is."""
    with engine.begin() as conn:
        return receipts.apply_waiting(conn)


def _receipts_only(payload: dict[str, Any]) -> bool:
    return all(
        field == "messages" and not value.get("messages") and not value.get("errors")
        for field, value in changes(payload)
    )


def _apply_receipts(conn: sa.Connection, events: list[sa.Row]) -> Counter:
    statuses = [
        s
        for event in events
        for _, value in changes(event.payload)
        for s in value.get("statuses") or []
    ]
    recorded = receipts.record(conn, statuses)
    conn.execute(_DONE, {"id": [event.id for event in events]})
    return Counter(
        events=len(events), receipts=recorded, duplicate_receipts=len(statuses) - recorded
    )


def apply_event(
    conn: sa.Connection,
    payload: dict[str, Any],
    event_id: int | None = None,
    received_at: datetime | None = None,
) -> Counter:
    """Every change of every entry: statuses, inbound messages (and a customer's change of
    number), the customer's marketing preferences (`user_preferences`), template status,
    category and quality, and the errors WhatsApp reports beside them; other fields are
    skipped. Inbound messages keep `received_at`, when the event reached us: workers apply
    events out of that order."""
    tally: Counter = Counter()
    tally.update(provider_errors.keep(conn, payload, event_id))
    tally.update(template_webhooks.apply(conn, payload, event_id))
    tally.update(account_webhooks.apply(conn, payload, event_id))
    for field, value in changes(payload):
        if field in template_webhooks.FIELDS:
            continue
        if field in account_webhooks.FIELDS:
            continue
        if field == "user_preferences":
            tally.update(preferences.apply(conn, value, event_id))
            continue
        if field != "messages":
            tally["ignored_changes"] += 1
            continue
        statuses = value.get("statuses") or []
        recorded = receipts.record(conn, statuses)
        tally.update(receipts=recorded, duplicate_receipts=len(statuses) - recorded)
        messages = value.get("messages") or []
        if not messages:
            continue
        phone_number_id = (value.get("metadata") or {}).get("phone_number_id")
        organisation_id = inbound.organisation_of(conn, phone_number_id)
        contacts = value.get("contacts") or []
        for message in messages:
            customer = inbound.customer_of(message, contacts)
            stored = inbound.store(
                conn, organisation_id, phone_number_id, message, customer, received_at
            )
            tally["inbound" if stored is not None else "duplicates_dropped"] += 1
            if stored is not None and inbound.changed_number(message):
                tally.update(inbound.follow_number(conn, organisation_id, message, stored))
    return tally
