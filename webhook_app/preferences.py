"""WhatsApp's `user_preferences` webhook field → the contact's marketing consent.

A customer can stop (and resume) marketing messages from the business in WhatsApp itself;
WhatsApp then sends `user_preferences[]` items (`category: "marketing_messages"`,
`value: "stop"` or `"resume"`, a `timestamp`, a `detail`), naming the customer by `wa_id`
and/or by the business-scoped `user_id`. Each becomes a `marketing` consent event with
source `user_preferences` and the item's time, so a stop and a resume delivered out of order
end on the newer, and a redelivered item changes nothing. A customer not known yet is
created, so a later import or campaign respects the choice.

An item with a category or value we do not know, or that names no customer, changes
nothing: the event stays in the inbox as it came, and one log line (without the customer's
identifiers) says what was not understood.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from typing import Any

import sqlalchemy as sa

from resources import consent
from webhook_app import inbound
from webhook_app.payloads import Preference, Value

log = logging.getLogger(__name__)

CATEGORY = "marketing_messages"
VALUES = {"stop": True, "resume": False}
MAX_REASON = 500
# What may be quoted in a log line: a word, never digits (no phone number, no user id).
_QUOTABLE = re.compile(r"[A-Za-z_]{1,40}")


def apply(conn: sa.Connection, value: Value, event_id: int | None = None) -> Counter:
    """Apply every item of one `user_preferences` change; the tally of what happened."""
    tally: Counter = Counter()
    if value.preferences is None:
        log.warning("user_preferences change in inbox event %s has no list of items", event_id)
        tally["preferences_ignored"] += 1
        return tally
    organisation_id = None
    for i, item in enumerate(value.preferences):
        problem = _problem(item)
        customer = None
        if item is not None and problem is None:
            customer = inbound.customer_named(item.wa_id, item.user_id, value.contacts)
            if customer is None:
                problem = "it names no customer (no valid wa_id, no user_id)"
        if item is None or customer is None:
            log.warning(
                "user_preferences item %d of inbox event %s ignored: %s", i, event_id, problem
            )
            tally["preferences_ignored"] += 1
            continue
        if organisation_id is None:
            organisation_id = inbound.organisation_of(conn, value.phone_number_id)
        contact_id = consent.upsert_contact(
            conn, organisation_id, customer.phone, customer.user_id, customer.name
        )
        stopped = VALUES[item.value.lower()]
        changed = consent.record(
            conn,
            consent.Change(
                contact_id,
                "marketing",
                stopped,
                "user_preferences",
                occurred_at=item.sent_at,
                reason=item.detail[:MAX_REASON] if item.detail else None,
            ),
        )
        if changed:
            log.info(
                "contact %s %s marketing messages (user_preferences, inbox event %s)",
                contact_id,
                "stopped" if stopped else "resumed",
                event_id,
            )
        tally["preferences_applied" if changed else "preferences_unchanged"] += 1
    return tally


def _problem(item: Preference | None) -> str | None:
    """Why this item cannot be applied (in words safe to log), or None."""
    if item is None:
        return "it is not an object"
    if item.category != CATEGORY:
        return f"unknown category {_quoted(item.category)} (known: {CATEGORY})"
    if not isinstance(item.value, str) or item.value.lower() not in VALUES:
        return f"unknown value {_quoted(item.value)} (known: {', '.join(VALUES)})"
    return None


def _quoted(value: Any) -> str:
    if value is None:
        return "(missing)"
    if isinstance(value, str) and _QUOTABLE.fullmatch(value):
        return repr(value)
    return f"(a {type(value).__name__}, not shown)"
