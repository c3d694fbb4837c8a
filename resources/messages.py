"""Statements on message rows, for those who write and watch them from outside the sender:
dispatch storing and queueing a run's rows, the operator's cancel and retry, the media
runs' failure reason, and `waflow sender-stuck`.

The sender's own statements (claim, record, hold), run on a connection per lane thread,
are in `resources.sender_store`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import sqlalchemy as sa
from psycopg2.extras import execute_values

from resources import graph_errors
from resources.queue_message import CampaignSpec, Prepared
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


# -- Dispatch (`assets_defs.dispatch`) ------------------------------------------------------


def unqueued_page(
    conn: sa.Connection, campaign_run_id: int, after: int, limit: int
) -> list[sa.Row]:
    """Up to `limit` of the run's rows after the id `after`, in id order, that an earlier
    attempt stored but did not get onto the queue (held rows are the sender's to re-queue):
    id, member id, recipient, payload."""
    return conn.execute(
        sa.text(
            "SELECT m.id, m.campaign_audience_id::text, m.peer_phone, m.payload FROM messages m"
            " JOIN campaign_audience a ON a.id = m.campaign_audience_id"
            " WHERE m.campaign_run_id = :r AND m.status = 'pending' AND m.held_at IS NULL"
            " AND a.dispatch_run_id IS DISTINCT FROM :r AND m.id > :after ORDER BY m.id LIMIT :n"
        ),
        {"r": campaign_run_id, "after": after, "n": limit},
    ).all()


def insert_pending(
    conn: sa.Connection,
    spec: CampaignSpec,
    campaign_run_id: int,
    valid: list[Prepared],
    page_size: int,
) -> dict[str, int]:
    """Insert the run's pending rows, queued from now on (nothing writes them again on the
    way to SQS); a row that already exists (same run and member, or same run and recipient)
    is left alone. Returns member id → message id of the new rows."""
    cursor = conn.connection.dbapi_connection.cursor()
    rows = execute_values(
        cursor,
        "INSERT INTO messages (organisation_id, contact_id, campaign_run_id,"
        " campaign_audience_id, direction, sender_type, phone_number_id, peer_phone,"
        " message_type, body, payload, status, category, queued_at)"
        " VALUES %s ON CONFLICT DO NOTHING RETURNING campaign_audience_id::text, id",
        [
            (
                spec.organisation_id,
                item.recipient.contact_id,
                campaign_run_id,
                item.recipient.member_id,
                spec.phone_number_id,
                item.to,
                spec.message_type,
                item.payload.get("messageContent") or item.payload.get("caption"),
                item.serialized,
                spec.category,
            )
            for item in valid
        ],
        template="(%s, %s, %s, %s, 'outbound', 'campaign', %s, %s, %s, %s, %s::jsonb,"
        " 'pending', %s, now())",
        page_size=page_size,
        fetch=True,
    )
    return dict(rows)


def fail_not_queued(conn: sa.Connection, failed: Sequence[tuple[int, str]]) -> None:
    """End `failed` the rows SQS refused (message id, reason): never queued, so a retry
    may queue them again."""
    conn.execute(
        sa.text(
            "UPDATE messages m SET status = 'failed', failed_at = now(),"
            " queued_at = NULL, error_title = 'not queued', error_detail = v.reason"
            " FROM unnest(CAST(:ids AS bigint[]), CAST(:reasons AS text[])) AS v(id, reason)"
            " WHERE m.id = v.id AND m.status = 'pending'"
        ),
        {"ids": [id_ for id_, _ in failed], "reasons": [reason for _, reason in failed]},
    )


def run_queued_and_sent(conn: sa.Connection, campaign_run_id: int) -> tuple[int, int]:
    """How many of the run's rows it queued (their member records it), and how many the
    sender has sent already."""
    queued, sent = conn.execute(
        sa.text(
            "SELECT count(*) FILTER (WHERE a.dispatch_run_id = :r"
            "   AND m.error_title IS DISTINCT FROM 'not queued'),"
            " count(*) FILTER (WHERE m.status IN ('sent', 'delivered', 'read'))"
            " FROM messages m JOIN campaign_audience a ON a.id = m.campaign_audience_id"
            " WHERE m.campaign_run_id = :r"
        ),
        {"r": campaign_run_id},
    ).one()
    return queued, sent


# -- The media runs (`assets_defs.media`) --------------------------------------------------


def sent_count(conn: sa.Connection, campaign_id: UUID) -> int:
    """The campaign's rows the sender has sent or is sending, over all its runs."""
    return conn.execute(
        sa.text(
            "SELECT count(*) FROM messages m JOIN campaign_runs r ON r.id = m.campaign_run_id"
            " WHERE r.campaign_id = :c AND m.status IN ('sending', 'sent', 'delivered', 'read')"
        ),
        {"c": campaign_id},
    ).scalar_one()
