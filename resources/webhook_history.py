"""The webhook history's upkeep: retention of `webhook_inbox` and `message_receipts`, and the
redrive of inbox events whose processing failed for good.

Retention rules (the README's "Retention" says the same):
- an inbox event is deleted `WEBHOOK_RETENTION_DAYS` after it was settled: processed, or
  closed after its last failed attempt (failed for good: redrive it before then). An event
  still to be processed, new or waiting for a retry (a redriven one too), is never deleted,
  however old;
- a receipt applied to its message is deleted `WEBHOOK_RETENTION_DAYS` after it was applied:
  the message row keeps its status and times;
- a receipt that never matched a message is deleted `RECEIPT_RETENTION_DAYS` after it arrived.

Deletes go in batches, each its own short transaction, so the writers of these tables are
never held up; a row being redriven at that moment is skipped, not deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa

from resources import settings
from resources.errors import InvalidInput

BATCH = 5000

_SETTLED_EVENTS = sa.text(
    "DELETE FROM webhook_inbox WHERE id IN (SELECT id FROM webhook_inbox"
    " WHERE processed_at IS NOT NULL AND processed_at < now() - make_interval(days => :days)"
    " LIMIT :n FOR UPDATE SKIP LOCKED)"
)
_APPLIED_RECEIPTS = sa.text(
    "DELETE FROM message_receipts WHERE id IN (SELECT id FROM message_receipts"
    " WHERE applied_at IS NOT NULL AND applied_at < now() - make_interval(days => :days)"
    " LIMIT :n FOR UPDATE SKIP LOCKED)"
)
_UNMATCHED_RECEIPTS = sa.text(
    "DELETE FROM message_receipts WHERE id IN (SELECT id FROM message_receipts"
    " WHERE applied_at IS NULL AND received_at < now() - make_interval(days => :days)"
    " LIMIT :n FOR UPDATE SKIP LOCKED)"
)
_KEPT = sa.text(
    "SELECT count(*) FILTER (WHERE processed_at IS NULL) AS unprocessed,"
    " count(*) FILTER (WHERE processed_at IS NOT NULL AND error IS NOT NULL) AS failed_for_good"
    " FROM webhook_inbox"
)
_REDRIVE = sa.text(
    "UPDATE webhook_inbox SET processed_at = NULL, retry_at = NULL, attempts = 0,"
    " redriven_at = now()"
    " WHERE processed_at IS NOT NULL AND error IS NOT NULL AND received_at >= :since"
    " AND (CAST(:until AS timestamptz) IS NULL OR received_at < :until)"
    " RETURNING id"
)
_WAKE = sa.text("SELECT pg_notify('webhook_inbox', '')")


@dataclass(frozen=True)
class Retention:
    """Read by `settings.load(Retention)` when a prune starts."""

    webhook_days: int = settings.setting("WEBHOOK_RETENTION_DAYS")
    receipt_days: int = settings.setting("RECEIPT_RETENTION_DAYS")


@dataclass(frozen=True)
class Pruned:
    events: int
    applied_receipts: int
    unmatched_receipts: int
    # What stays: events still to be processed, and those failed for good (redrivable).
    unprocessed_events: int
    failed_events: int


def prune(engine: sa.Engine, retention: Retention) -> Pruned:
    """Delete what the retention rules let go; how many of each, and what is kept."""
    events = _delete_all(engine, _SETTLED_EVENTS, retention.webhook_days)
    applied = _delete_all(engine, _APPLIED_RECEIPTS, retention.webhook_days)
    unmatched = _delete_all(engine, _UNMATCHED_RECEIPTS, retention.receipt_days)
    with engine.connect() as conn:
        kept = conn.execute(_KEPT).one()
    return Pruned(events, applied, unmatched, kept.unprocessed, kept.failed_for_good)


def _delete_all(engine: sa.Engine, statement: sa.TextClause, days: int) -> int:
    total = 0
    while True:
        with engine.begin() as conn:
            deleted = conn.execute(statement, {"days": days, "n": BATCH}).rowcount
        total += deleted
        if deleted < BATCH:
            return total


def redrive(engine: sa.Engine, since: str, until: str | None = None) -> dict:
    """Send the events that failed for good and arrived from `since` (up to `until`) back to
    processing, with a fresh set of attempts. Each of an event's effects is idempotent, so a
    redriven event that had partly applied applies the rest and repeats nothing."""
    start, end = _moment("since", since), _moment("until", until) if until else None
    if end is not None and end <= start:
        raise InvalidInput([{"field": "until", "error": "must be after since"}])
    with engine.begin() as conn:
        ids = conn.execute(_REDRIVE, {"since": start, "until": end}).scalars().all()
        if ids:
            conn.execute(_WAKE)
    return {
        "redriven": len(ids),
        "since": start.isoformat(),
        "until": end.isoformat() if end else None,
    }


def _moment(field: str, text: str) -> datetime:
    """An ISO date or date-time; without a zone it is UTC."""
    try:
        moment = datetime.fromisoformat(str(text))
    except ValueError:
        raise InvalidInput(
            [{"field": field, "error": "must be an ISO date or date-time, e.g. 2026-01-31"}]
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
