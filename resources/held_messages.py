"""Held rows and their way back onto the queue, for the sender's release
(`pipelines.sender.release`): which rows are due, how much room an organisation's messaging
window has, and the record that a row was queued again.

Each read locks the rows it returns (`SKIP LOCKED`, so workers share the work) until the
transaction that records their queueing commits.
"""

from __future__ import annotations

from uuid import UUID

import sqlalchemy as sa

_RUNNING = (
    " FROM messages m JOIN campaign_runs r ON r.id = m.campaign_run_id"
    " JOIN campaigns c ON c.id = r.campaign_id"
    " LEFT JOIN circuit_breakers b ON b.id = m.breaker_id"
    " WHERE m.held_at IS NOT NULL AND m.status = 'pending'"
    " AND c.status NOT IN ('paused', 'cancelled', 'failed')"
)
# Each row found: id, campaign run id, member id, recipient, stored payload.
_COLUMNS = "SELECT m.id, m.campaign_run_id, m.campaign_audience_id::text, m.peer_phone, m.payload"
_LIFTED = sa.text(
    _COLUMNS + _RUNNING + " AND m.hold_reason <> 'messaging_limit'"
    " AND (m.breaker_id IS NULL OR b.closed_at IS NOT NULL OR b.probe_message_id = m.id)"
    " ORDER BY m.id LIMIT :n FOR UPDATE OF m SKIP LOCKED"
)
_WITHIN_LIMIT = sa.text(
    _COLUMNS + _RUNNING + " AND m.hold_reason = 'messaging_limit' AND m.organisation_id = :o"
    " ORDER BY m.id LIMIT :n FOR UPDATE OF m SKIP LOCKED"
)
_LOST = sa.text(
    _COLUMNS + " FROM messages m WHERE m.status = 'pending' AND m.held_at IS NULL"
    " AND m.queued_at < now() - make_interval(secs => :age) AND m.requeued_at IS NULL"
    " ORDER BY m.queued_at LIMIT :n FOR UPDATE OF m SKIP LOCKED"
)


def probe_candidate(conn: sa.Connection, breaker_id: int) -> int | None:
    """The first row the breaker holds whose campaign still runs: its probe."""
    return conn.execute(
        sa.text(
            "SELECT m.id FROM messages m JOIN campaign_runs r ON r.id = m.campaign_run_id"
            " JOIN campaigns c ON c.id = r.campaign_id"
            " WHERE m.breaker_id = :b AND m.held_at IS NOT NULL AND m.status = 'pending'"
            " AND c.status NOT IN ('paused', 'cancelled', 'failed') ORDER BY m.id LIMIT 1"
        ),
        {"b": breaker_id},
    ).scalar_one_or_none()


def lifted(conn: sa.Connection, limit: int) -> list[sa.Row]:
    """Up to `limit` held rows whose campaign runs again and whose breaker closed (or
    which are its probe), not those waiting for a messaging window."""
    return conn.execute(_LIFTED, {"n": limit}).all()


def rooms(conn: sa.Connection) -> list[sa.Row]:
    """Room in each organisation's messaging window, for those with rows waiting for it
    (NULL: unlimited): its limit, less the recipients counted in the last 24 h and the
    payloads already on the queue (each will be counted when a sender admits it)."""
    return conn.execute(
        sa.text(
            "SELECT o.id, o.messaging_limit - (SELECT count(*) FROM messaging_window w"
            "   WHERE w.organisation_id = o.id AND w.counted_at > now() - interval '24 hours')"
            " - (SELECT count(*) FROM messages q WHERE q.organisation_id = o.id"
            "   AND q.status = 'pending' AND q.held_at IS NULL AND q.queued_at IS NOT NULL)"
            " FROM organisations o WHERE EXISTS (SELECT 1 FROM messages m"
            "   WHERE m.organisation_id = o.id AND m.hold_reason = 'messaging_limit'"
            "   AND m.status = 'pending')"
        )
    ).all()


def within_limit(conn: sa.Connection, organisation_id: UUID, limit: int) -> list[sa.Row]:
    """Up to `limit` of the organisation's rows held for its messaging window whose
    campaign runs."""
    return conn.execute(_WITHIN_LIMIT, {"o": organisation_id, "n": limit}).all()


def lost(conn: sa.Connection, older_than_seconds: float, limit: int) -> list[sa.Row]:
    """Up to `limit` rows `pending`, not held, queued longer ago than `older_than_seconds`
    and not re-queued since, oldest first: their payload was lost."""
    return conn.execute(_LOST, {"age": older_than_seconds, "n": limit}).all()


def mark_released(conn: sa.Connection, message_ids: list[int]) -> None:
    """Held rows queued again: no longer held, queued from now on."""
    conn.execute(
        sa.text(
            "UPDATE messages SET held_at = NULL, hold_reason = NULL, queued_at = now(),"
            " requeued_at = NULL, status_reason = NULL"
            " WHERE id = ANY(:ids)"
        ),
        {"ids": message_ids},
    )


def mark_requeued(conn: sa.Connection, message_ids: list[int]) -> None:
    """Lost rows queued once more (and not again)."""
    conn.execute(
        sa.text("UPDATE messages SET queued_at = now(), requeued_at = now() WHERE id = ANY(:ids)"),
        {"ids": message_ids},
    )


def fail_unsendable(conn: sa.Connection, message_ids: list[int], reason: str) -> None:
    """Rows with no stored payload to queue again end `failed`, never queued."""
    conn.execute(
        sa.text(
            "UPDATE messages SET status = 'failed', failed_at = now(), held_at = NULL,"
            " hold_reason = NULL,"
            " error_title = 'not queued', error_detail = :reason WHERE id = ANY(:ids)"
        ),
        {"ids": message_ids, "reason": reason},
    )
