"""Statements on message rows, for those who write and watch them from outside the sender:
dispatch storing and queueing a run's rows, the operator's cancel and retry, the media
runs' failure reason, the delivery report, a run's progress, and `waflow sender-stuck`.

The sender's own statements (claim, record, hold), run on a connection per lane thread,
are in `resources.sender_store`; the release of held rows in `resources.held_messages`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
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


def recipient(conn: sa.Connection, message_id: int) -> sa.Row:
    """Who the row was sent to: its organisation, contact (if stored), phone and WhatsApp
    user id; for recording the recipient's consent."""
    return conn.execute(
        sa.text(
            "SELECT organisation_id, contact_id, peer_phone, peer_wa_user_id FROM messages"
            " WHERE id = :m"
        ),
        {"m": message_id},
    ).one()


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


# -- The delivery report (`assets_defs.reports`) --------------------------------------------

# What a run's delivery report counts of its rows.
FUNNEL_STAGES = (
    "queued",
    "sent",
    "delivered",
    "read",
    "failed",
    "skipped",
    "cancelled",
    "replied",
    "pending",
    "held",
    "sending",
)


@dataclass(frozen=True)
class Funnel:
    campaign_run_id: int
    stages: dict[str, int]
    failed_by_code: list[tuple[str, str, int]]


def delivery_funnel(conn: sa.Connection, campaign_run_id: int) -> Funnel:
    """What became of the run's rows, by stage (a row counts in each stage it reached),
    and its failures by error code."""
    stages = conn.execute(
        sa.text(
            "SELECT count(*) AS queued,"
            " count(*) FILTER (WHERE sent_at IS NOT NULL OR status IN ('sent', 'delivered', 'read')) AS sent,"
            " count(*) FILTER (WHERE delivered_at IS NOT NULL OR status IN ('delivered', 'read')) AS delivered,"
            " count(*) FILTER (WHERE read_at IS NOT NULL OR status = 'read') AS read,"
            " count(*) FILTER (WHERE status = 'failed') AS failed,"
            " count(*) FILTER (WHERE status = 'skipped') AS skipped,"
            " count(*) FILTER (WHERE status = 'cancelled') AS cancelled,"
            " count(*) FILTER (WHERE status = 'pending' AND held_at IS NULL) AS pending,"
            " count(*) FILTER (WHERE status = 'pending' AND held_at IS NOT NULL) AS held,"
            " count(*) FILTER (WHERE status = 'sending') AS sending,"
            " count(*) FILTER (WHERE sent_at IS NOT NULL AND EXISTS ("
            "   SELECT 1 FROM messages i WHERE i.direction = 'inbound'"
            "   AND i.organisation_id = m.organisation_id AND i.peer_phone = m.peer_phone"
            "   AND i.created_at >= m.sent_at)) AS replied"
            " FROM messages m WHERE campaign_run_id = :r"
        ),
        {"r": campaign_run_id},
    ).one()
    failures = conn.execute(
        sa.text(
            "SELECT COALESCE(error_code::text, '-') AS code, min(error_title) AS title, count(*)"
            " FROM messages WHERE campaign_run_id = :r AND status = 'failed'"
            " GROUP BY error_code ORDER BY count(*) DESC"
        ),
        {"r": campaign_run_id},
    ).all()
    return Funnel(
        campaign_run_id,
        {stage: getattr(stages, stage) for stage in FUNNEL_STAGES},
        [(code, title or "", count) for code, title, count in failures],
    )


def changed_runs(
    conn: sa.Connection, since: datetime, overlap_seconds: float, first: date, last: date
) -> list[sa.Row]:
    """Up to 200 campaign runs dated `first` to `last` whose rows changed after `since`
    (less `overlap_seconds`, for rows committed late), oldest change first: each run's id,
    campaign id, date and last change (`changed_at`)."""
    return conn.execute(
        sa.text(
            "SELECT r.id, r.campaign_id, r.run_date, max(m.updated_at) AS changed_at"
            " FROM messages m JOIN campaign_runs r ON r.id = m.campaign_run_id"
            " WHERE m.updated_at > :since - make_interval(secs => :overlap)"
            " AND r.run_date BETWEEN :first AND :last"
            " GROUP BY r.id ORDER BY changed_at LIMIT 200"
        ),
        {"since": since, "overlap": overlap_seconds, "first": first, "last": last},
    ).all()


# -- Progress (`resources.campaign_runs`, `resources.progress`) ----------------------------


def status_counts(conn: sa.Connection, campaign_id: UUID) -> dict[str, int]:
    """The campaign's rows by status, over all its runs."""
    rows = conn.execute(
        sa.text(
            "SELECT m.status, count(*) FROM messages m"
            " JOIN campaign_runs r ON r.id = m.campaign_run_id"
            " WHERE r.campaign_id = :c GROUP BY m.status"
        ),
        {"c": campaign_id},
    )
    return dict(rows.all())


def run_stage_counts(
    conn: sa.Connection, campaign_run_id: int, stuck_after_seconds: float
) -> sa.Row:
    """The run's rows by stage and by what holds them (`stuck`: in `sending` longer than
    `stuck_after_seconds`), with its organisation and phone number."""
    return conn.execute(
        sa.text(
            "SELECT count(*) FILTER (WHERE queued_at IS NOT NULL OR status <> 'pending') AS queued,"
            " count(*) FILTER (WHERE status = 'pending' AND held_at IS NULL) AS pending,"
            " count(*) FILTER (WHERE status = 'pending' AND held_at IS NOT NULL) AS held,"
            " count(*) FILTER (WHERE status = 'sending') AS sending,"
            " count(*) FILTER (WHERE status IN ('sent', 'delivered', 'read')) AS sent,"
            " count(*) FILTER (WHERE status IN ('delivered', 'read')) AS delivered,"
            " count(*) FILTER (WHERE status = 'read') AS read,"
            " count(*) FILTER (WHERE status = 'failed') AS failed,"
            " count(*) FILTER (WHERE status = 'skipped') AS skipped,"
            " count(*) FILTER (WHERE status = 'cancelled') AS cancelled,"
            " count(*) FILTER (WHERE status = 'sending'"
            "   AND sending_at < now() - make_interval(secs => :stuck)) AS stuck,"
            " count(*) FILTER (WHERE hold_reason = 'messaging_limit') AS limit_held,"
            " count(*) FILTER (WHERE hold_reason = 'paused') AS paused,"
            " count(*) FILTER (WHERE hold_reason = 'retry') AS retry,"
            " min(organisation_id::text) AS organisation_id,"
            " min(phone_number_id) AS phone_number_id"
            " FROM messages WHERE campaign_run_id = :r"
        ),
        {"r": campaign_run_id, "stuck": stuck_after_seconds},
    ).one()


def run_breaker_holds(conn: sa.Connection, campaign_run_id: int) -> list[sa.Row]:
    """Each circuit breaker holding rows of the run still `pending`, with how many."""
    return conn.execute(
        sa.text(
            "SELECT b.id, b.scope, b.scope_key, b.error_code, b.error_title, b.closes_by, b.probe_at,"
            " count(*) AS messages FROM messages m JOIN circuit_breakers b ON b.id = m.breaker_id"
            " WHERE m.campaign_run_id = :r AND m.hold_reason = 'breaker' AND m.status = 'pending'"
            " GROUP BY b.id ORDER BY b.id"
        ),
        {"r": campaign_run_id},
    ).all()


# -- `GET /stats` (`webhook_app.stats`) -------------------------------------------------------


def replies_by_sender(conn: sa.Connection) -> dict[str, int]:
    """Outbound rows of conversations (not campaigns) by who wrote them: the agent (`ai`),
    an operator, or the system."""
    return dict(
        conn.execute(
            sa.text(
                "SELECT sender_type, count(*) FROM messages WHERE direction = 'outbound'"
                " AND sender_type IN ('ai', 'operator', 'system') GROUP BY 1"
            )
        ).all()
    )


def accepted(conn: sa.Connection, campaign_id: UUID) -> list[sa.Row]:
    """The campaign's messages WhatsApp accepted (id, wamid, recipient), in id order."""
    return conn.execute(
        sa.text(
            "SELECT m.id, m.provider_message_id, m.peer_phone FROM messages m"
            " JOIN campaign_audience a ON a.id = m.campaign_audience_id"
            " WHERE a.campaign_id = :c AND m.direction = 'outbound'"
            " AND m.provider_message_id IS NOT NULL ORDER BY m.id"
        ),
        {"c": campaign_id},
    ).all()


def conversation_summary(conn: sa.Connection) -> dict[str, int]:
    """Messages delivered and read, and customer messages answered, over every message."""
    return dict(
        conn.execute(
            sa.text(
                "SELECT count(*) FILTER (WHERE direction = 'outbound'"
                "   AND status IN ('delivered', 'read')) AS messages_delivered,"
                " count(*) FILTER (WHERE direction = 'outbound' AND status = 'read')"
                "   AS messages_read,"
                " count(*) FILTER (WHERE direction = 'inbound' AND handled_at IS NOT NULL)"
                "   AS replies_answered"
                " FROM messages"
            )
        )
        .one()
        ._mapping
    )
