"""A contact's consent: two facts, each with the history of how it came to be.

- `campaigns` (the contact's `opted_out`): no campaign message of any category. Set by STOP
  words, a CSV import, the API or an operator; lifted by START, the API or an operator.
- `marketing` (`marketing_opted_out`): no marketing message. Set by WhatsApp itself (the
  `user_preferences` webhook, error 131050 on a send), the API or an operator; lifted by
  the customer's `resume` or an explicit API call.

Every change is a `consent_events` row (what, source, who, why, when); the contact's
columns hold the newest event's value of each scope, so events that arrive out of order
(webhooks do) still leave the contact with the newest fact. Marketing campaigns skip both
facts, utility and authentication ones only `campaigns`: `blocks()` says so in one place,
and the dispatch and the sender's claim follow it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

SCOPES = ("campaigns", "marketing")
SOURCES = ("keyword", "user_preferences", "error_131050", "csv", "api", "operator")
CATEGORIES = ("marketing", "utility", "authentication")
_COLUMNS = {"campaigns": "opted_out", "marketing": "marketing_opted_out"}


@dataclass(frozen=True)
class Change:
    """One consent change. `occurred_at` is when the source says it happened (a webhook's
    timestamp); left out, it is now, and a change that changes nothing is not recorded."""

    contact_id: int
    scope: str
    opted_out: bool
    source: str
    occurred_at: datetime | None = None
    actor: str | None = None
    reason: str | None = None
    message_id: int | None = None

    def __post_init__(self) -> None:
        if self.scope not in SCOPES:
            raise ValueError(f"consent scope must be one of {', '.join(SCOPES)}")
        if self.source not in SOURCES:
            raise ValueError(f"consent source must be one of {', '.join(SOURCES)}")


def blocks(category: str | None, opted_out: bool, marketing_opted_out: bool) -> str | None:
    """Why a campaign message of `category` may not go to this contact, or None."""
    if opted_out:
        return "contact opted out of campaign messages"
    if marketing_opted_out and category in (None, "marketing"):
        return "contact opted out of marketing messages"
    return None


def record(conn: sa.Connection, change: Change) -> bool:
    """Record `change` and bring the contact's fact up to date; True when the fact changed."""
    column = _COLUMNS[change.scope]
    if change.occurred_at is None:
        current = conn.execute(
            sa.text(f"SELECT {column} FROM contacts WHERE id = :c FOR UPDATE"),
            {"c": change.contact_id},
        ).scalar_one_or_none()
        if current is None or current == change.opted_out:
            return False
    inserted = conn.execute(
        sa.text(
            "INSERT INTO consent_events (contact_id, scope, opted_out, source, actor, reason,"
            " message_id, occurred_at)"
            " VALUES (:c, :scope, :v, :source, :actor, :reason, :m, COALESCE(:at, now()))"
            " ON CONFLICT DO NOTHING RETURNING id"
        ),
        {
            "c": change.contact_id,
            "scope": change.scope,
            "v": change.opted_out,
            "source": change.source,
            "actor": change.actor,
            "reason": change.reason,
            "m": change.message_id,
            "at": change.occurred_at,
        },
    ).scalar_one_or_none()
    if inserted is None:  # the same webhook event, delivered again
        return False
    return (
        conn.execute(
            sa.text(
                f"UPDATE contacts c SET {column} = e.opted_out,"
                f" {column}_at = CASE WHEN e.opted_out THEN e.occurred_at END"
                " FROM (SELECT opted_out, occurred_at FROM consent_events"
                "   WHERE contact_id = :c AND scope = :scope"
                "   ORDER BY occurred_at DESC, id DESC LIMIT 1) e"
                f" WHERE c.id = :c AND c.{column} IS DISTINCT FROM e.opted_out RETURNING c.id"
            ),
            {"c": change.contact_id, "scope": change.scope},
        ).first()
        is not None
    )


def state(conn: sa.Connection, contact_id: int, history: int = 50) -> dict[str, Any]:
    """The contact's two facts and its newest `history` consent events, newest first."""
    opted_out, marketing_opted_out = conn.execute(
        sa.text("SELECT opted_out, marketing_opted_out FROM contacts WHERE id = :c"),
        {"c": contact_id},
    ).one()
    events = conn.execute(
        sa.text(
            "SELECT scope, opted_out, source, actor, reason, message_id, occurred_at, recorded_at"
            " FROM consent_events WHERE contact_id = :c"
            " ORDER BY occurred_at DESC, id DESC LIMIT :n"
        ),
        {"c": contact_id, "n": history},
    ).mappings()
    return {
        "opted_out": opted_out,
        "marketing_opted_out": marketing_opted_out,
        "consent_history": [dict(e) for e in events],
    }
