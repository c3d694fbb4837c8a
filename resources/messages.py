"""Statements on message rows, for those who write and watch them from outside the sender:
dispatch storing and queueing a run's rows, the operator's cancel and retry, the delivery
report, and `waflow sender-stuck`.

The sender's own statements (claim, record, hold), run on a connection per lane thread,
are in `resources.sender_store`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import sqlalchemy as sa

from resources import graph_errors
from resources.status import RETRY_ON_REQUEST


@dataclass(frozen=True)
class Stuck:
    id: int
    campaign_run_id: int | None
    contact_id: int | None
    sending_at: datetime
    attempts: int


def stuck_in_sending(
    conn: sa.Connection, older_than_seconds: float, campaign_run_id: int | None = None
) -> list[Stuck]:
    """Rows a worker claimed and never finished (crash, or an ambiguous network failure):
    the request may or may not have reached WhatsApp, so they are never re-sent
    automatically; an operator decides (a status webhook may still settle them)."""
    rows = conn.execute(
        sa.text(
            "SELECT id, campaign_run_id, contact_id, sending_at, attempts FROM messages"
            " WHERE status = 'sending' AND sending_at < now() - make_interval(secs => :s)"
            " AND (CAST(:run AS bigint) IS NULL OR campaign_run_id = :run)"
            " ORDER BY sending_at LIMIT 1000"
        ),
        {"s": older_than_seconds, "run": campaign_run_id},
    ).all()
    return [Stuck(**row._mapping) for row in rows]


# -- The operator's cancel and retry (`resources.campaign_control`) -------------------------


def cancel_unsent(conn: sa.Connection, campaign_id: UUID, reason: str) -> int:
    """End the campaign's rows not yet sent `cancelled`, held ones included (their payloads
    still on the queue are then dropped unsent); returns how many."""
    return conn.execute(
        sa.text(
            "UPDATE messages m SET status = 'cancelled', cancelled_at = now(),"
            " held_at = NULL, hold_reason = NULL, status_reason = :why FROM campaign_runs r"
            " WHERE r.campaign_id = :c AND m.campaign_run_id = r.id AND m.status = 'pending'"
        ),
        {"c": campaign_id, "why": reason},
    ).rowcount


def retry_failed(
    conn: sa.Connection, campaign_id: UUID, campaign_run_id: int | None, reason: str
) -> list[int]:
    """Hold again, for the sender to re-queue, the failed rows WhatsApp never accepted whose
    error could pass (a retryable or account-level one, or never queued), unless the contact
    has since opted out; returns the run of each row retried."""
    source, target = RETRY_ON_REQUEST
    return (
        conn.execute(
            sa.text(
                "UPDATE messages m SET status = :target, attempts = 0, held_at = now(),"
                " hold_reason = 'retry',"
                " breaker_id = NULL, queued_at = NULL, failed_at = NULL, error_code = NULL,"
                " error_title = NULL, error_detail = NULL, status_reason = :why"
                " FROM campaign_runs r"
                " WHERE r.campaign_id = :c AND m.campaign_run_id = r.id"
                " AND (CAST(:run AS bigint) IS NULL OR r.id = :run)"
                " AND m.status = :source AND m.provider_message_id IS NULL"
                " AND m.payload IS NOT NULL"
                " AND (m.error_code = ANY(:codes) OR (m.error_code IS NULL"
                "   AND (m.error_title LIKE 'network:%' OR m.error_title = 'not queued')))"
                " AND NOT EXISTS (SELECT 1 FROM contacts ct WHERE ct.id = m.contact_id"
                "   AND (ct.opted_out OR (ct.marketing_opted_out"
                "     AND COALESCE(m.category, 'marketing') = 'marketing')))"
                " RETURNING m.campaign_run_id"
            ),
            {
                "c": campaign_id,
                "run": campaign_run_id,
                "source": source,
                "target": target,
                "why": reason,
                "codes": graph_errors.codes_retryable_on_request(),
            },
        )
        .scalars()
        .all()
    )


def failed_count(conn: sa.Connection, campaign_id: UUID, campaign_run_id: int | None) -> int:
    """The campaign's rows still `failed` (of one run, when given)."""
    return conn.execute(
        sa.text(
            "SELECT count(*) FROM messages m JOIN campaign_runs r ON r.id = m.campaign_run_id"
            " WHERE r.campaign_id = :c AND m.status = 'failed'"
            " AND (CAST(:run AS bigint) IS NULL OR r.id = :run)"
        ),
        {"c": campaign_id, "run": campaign_run_id},
    ).scalar_one()
