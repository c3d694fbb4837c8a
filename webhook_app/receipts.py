"""Delivery receipts (`statuses`) → the outbound message's status.

The database reads every receipt from its stored event and records it in `message_receipts`
(unique per wamid and status, so a redelivered receipt is a no-op); it is then applied to
its message if the message is known. Receipts that arrive before the sender has stored the
wamid wait there and are applied by `apply_waiting()`, which the workers run on a clock. Application follows
`message_status_rank`: never backwards, `failed` final; each status keeps its own time.
A `failed` receipt with error 131050 (the customer stopped marketing messages) also opts the
message's contact out of marketing (consent source `error_131050`), once per message.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import sqlalchemy as sa

from resources import consent, message_receipts
from resources.graph_errors import MARKETING_STOPPED


def record(conn: sa.Connection, event_ids: Sequence[int]) -> Counter:
    """Record the receipts of these stored webhook events and apply those whose message is
    known: two statements for a batch. Duplicates and statuses we do not track (WhatsApp
    also sends e.g. `deleted`) change nothing."""
    read, recorded, wamids = message_receipts.record(conn, event_ids)
    apply(conn, wamids)
    return Counter(receipts=recorded, duplicate_receipts=read - recorded)


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
