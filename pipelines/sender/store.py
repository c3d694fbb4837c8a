"""The sender's database statements: a few set-based round trips per received batch, each
one statement, atomic on its own (the worker's engine autocommits).

Rows move only by compare-and-set: `pending → sending` claims a row for exactly one send;
the result then moves it from `sending` (a receipt that arrived first is never undone).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from resources.status import RETRY_BEFORE_ACCEPTED


@dataclass(frozen=True)
class Claimed:
    id: int
    peer_phone: str | None
    attempts: int
    last_inbound_at: datetime | None
    within_window: bool


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to: `sent`, `retry` (back to pending) or `failed`."""

    message_id: int
    kind: str
    wamid: str | None = None
    error_code: int | None = None
    error_title: str | None = None
    error_detail: str | None = None


@dataclass(frozen=True)
class Slots:
    wait_seconds: float
    spacing_seconds: float


# Built once: parsing a statement's text for its parameters costs more than running it.
RESERVE = sa.text("SELECT * FROM reserve_send_slots(:p, :k)")
ADMIT = sa.text("SELECT admit_recipients(CAST(:o AS uuid), CAST(:r AS text[]))")
CLAIM = sa.text(
    "UPDATE messages m SET status = 'sending', claim_token = CAST(:token AS uuid),"
    " sending_at = CASE WHEN m.status = 'pending' THEN now() ELSE m.sending_at END,"
    " attempts = CASE WHEN m.status = 'pending' THEN m.attempts + 1 ELSE m.attempts END"
    " WHERE m.id = ANY(:ids) AND m.direction = 'outbound'"
    " AND (m.status = 'pending' OR (m.status = 'sending' AND m.claim_token = CAST(:token AS uuid)))"
    " RETURNING m.id, m.peer_phone, m.attempts,"
    " (SELECT max(c.last_inbound_at) FROM conversations c"
    "   WHERE c.id = m.conversation_id OR c.contact_id = m.contact_id) AS last_inbound_at"
)
RECORD = sa.text(
    "UPDATE messages m SET"
    " status = CASE v.kind WHEN 'sent' THEN"
    "   CASE WHEN m.status = 'sending' THEN 'sent' ELSE m.status END"
    "   WHEN 'retry' THEN :retry_target ELSE 'failed' END,"
    " provider_message_id = COALESCE(m.provider_message_id, v.wamid),"
    " sent_at = CASE WHEN v.kind = 'sent' THEN COALESCE(m.sent_at, now()) ELSE m.sent_at END,"
    " failed_at = CASE WHEN v.kind = 'failed' THEN now() ELSE m.failed_at END,"
    " error_code = CASE WHEN v.kind = 'sent' THEN m.error_code ELSE v.code END,"
    " error_title = CASE WHEN v.kind = 'sent' THEN m.error_title ELSE v.title END,"
    " error_detail = CASE WHEN v.kind = 'sent' THEN m.error_detail ELSE v.detail END"
    " FROM unnest(CAST(:ids AS bigint[]), CAST(:kinds AS text[]), CAST(:wamids AS text[]),"
    "   CAST(:codes AS integer[]), CAST(:titles AS text[]), CAST(:details AS text[]))"
    "   AS v(id, kind, wamid, code, title, detail)"
    " WHERE m.id = v.id AND CASE v.kind"
    "   WHEN 'sent' THEN m.status IN ('sending', 'delivered', 'read')"
    "   WHEN 'retry' THEN m.status = :retry_source AND m.provider_message_id IS NULL"
    "   ELSE m.status IN ('pending', 'sending') END"
)


def reserve_slots(engine: sa.Engine, phone_number_id: str, count: int) -> Slots:
    with engine.begin() as conn:
        row = conn.execute(RESERVE, {"p": phone_number_id, "k": count}).one()
    return Slots(max(0.0, row.wait_seconds), row.spacing_seconds)


def admit(engine: sa.Engine, organisation_id: str, recipients: Sequence[str]) -> set[str]:
    """Recipients the organisation's messaging limit lets through now."""
    with engine.begin() as conn:
        admitted = conn.execute(ADMIT, {"o": organisation_id, "r": list(recipients)}).scalar_one()
    return set(admitted)


def claim(engine: sa.Engine, message_ids: Sequence[int], token: str) -> dict[int, Claimed]:
    """Claim the rows still `pending`; a row already past it is someone else's (or done).

    Repeated with the same `token` after an error, it also returns the rows the first try
    claimed: their answer was lost, and nothing was sent for them.
    """
    with engine.begin() as conn:
        rows = conn.execute(CLAIM, {"ids": list(message_ids), "token": token}).all()
    return {
        row.id: Claimed(
            row.id,
            row.peer_phone,
            row.attempts,
            row.last_inbound_at,
            within_window=row.last_inbound_at is not None
            and (datetime.now(row.last_inbound_at.tzinfo) - row.last_inbound_at).total_seconds()
            < 24 * 3600,
        )
        for row in rows
    }


def record(engine: sa.Engine, outcomes: Iterable[Outcome]) -> None:
    """Store each attempt's result in one statement.

    `sent` keeps a status a receipt already moved further (delivered, read) and only adds the
    wamid; `retry` is the one backwards move, allowed only before WhatsApp accepted the
    message (see `resources.status.RETRY_BEFORE_ACCEPTED`).
    """
    outcomes = list(outcomes)
    if not outcomes:
        return
    source, target = RETRY_BEFORE_ACCEPTED
    with engine.begin() as conn:
        conn.execute(
            RECORD,
            {
                "ids": [o.message_id for o in outcomes],
                "kinds": [o.kind for o in outcomes],
                "wamids": [o.wamid for o in outcomes],
                "codes": [o.error_code for o in outcomes],
                "titles": [o.error_title for o in outcomes],
                "details": [o.error_detail for o in outcomes],
                "retry_source": source,
                "retry_target": target,
            },
        )


@dataclass(frozen=True)
class Stuck:
    id: int
    campaign_run_id: int | None
    peer_phone: str | None
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
            "SELECT id, campaign_run_id, peer_phone, sending_at, attempts FROM messages"
            " WHERE status = 'sending' AND sending_at < now() - make_interval(secs => :s)"
            " AND (CAST(:run AS bigint) IS NULL OR campaign_run_id = :run)"
            " ORDER BY sending_at LIMIT 1000"
        ),
        {"s": older_than_seconds, "run": campaign_run_id},
    ).all()
    return [Stuck(**row._mapping) for row in rows]
