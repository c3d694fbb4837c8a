"""Delivery receipts (`statuses`) → the outbound message's status.

Every receipt is first recorded in `message_receipts` (unique per wamid and status, so a
redelivered receipt is a no-op), then applied to its message if the message is known.
Receipts that arrive before the sender has stored the wamid wait there and are applied by
`apply_waiting()`, which the inbox workers run on every pass. Application follows
`message_status_rank`: never backwards, `failed` final; each status keeps its own time.
A `failed` receipt with error 131050 (the customer stopped marketing messages) also opts the
message's contact out of marketing (consent source `error_131050`), once per message.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from resources import consent, message_receipts
from resources.graph_errors import MARKETING_STOPPED
from webhook_app.payloads import Status

RECEIPT_STATUSES = ("sent", "delivered", "read", "failed")


def record(conn: sa.Connection, statuses: list[Status]) -> int:
    """Record `statuses[]` items and apply those whose message is known; how many were new.

    Duplicates and statuses we do not track (WhatsApp also sends e.g. `deleted`) change
    nothing. One statement records a whole batch, one more applies it.
    """
    tracked = [s for s in statuses if s.wamid is not None and s.status in RECEIPT_STATUSES]
    if not tracked:
        return 0
    new = message_receipts.record(conn, [_row(s) for s in tracked])
    for status in tracked:
        if status.callback.isdigit():
            message_receipts.claim_wamid(conn, status.wamid, int(status.callback))
    apply(conn, sorted(set(new)))
    return len(new)


def apply(conn: sa.Connection, wamids: list[str]) -> int:
    """Apply every waiting receipt of these wamids whose message is known; how many.

    A `failed` receipt with error 131050 (the customer stopped marketing messages) also
    opts the message's contact out of marketing."""
    if not wamids:
        return 0
    applied = message_receipts.apply(conn, wamids)
    for r in applied:
        if r.status == "failed" and r.error_code == MARKETING_STOPPED:
            consent.marketing_stopped(conn, r.message_id, r.provider_ts, r.error_title)
    return len(applied)


def apply_waiting(conn: sa.Connection, limit: int = 500) -> int:
    """Receipts that were early: apply those whose wamid a message now carries."""
    return apply(conn, message_receipts.waiting_known(conn, limit))


def _row(status: Status) -> dict[str, Any]:
    return {
        "wamid": status.wamid,
        "status": status.status,
        "ts": status.at.isoformat() if status.at else None,
        "code": status.error.code,
        "title": status.error.title if status.status == "failed" else None,
        "raw": status.raw,
    }
