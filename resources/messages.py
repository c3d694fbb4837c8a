"""Statements on message rows, for those who write and watch them from outside the sender:
dispatch storing and queueing a run's rows, the operator's cancel and retry, the delivery
report, and `waflow sender-stuck`.

The sender's own statements (claim, record, hold), run on a connection per lane thread,
are in `resources.sender_store`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa


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
