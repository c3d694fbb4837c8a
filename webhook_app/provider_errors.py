"""The `errors` array WhatsApp puts in a change's `value`, beside `messages` and `statuses`.

It reports what WhatsApp could not deliver to us (a message it could not process, a
throughput or configuration problem), not a failure of one of our sends. Each error is
logged by its code and title (Meta's text, never the customer's), counted in `/stats`, and
kept with the event (`webhook_inbox.provider_errors`) for an operator to read; the rest of
the event is applied as usual.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from typing import Any

import sqlalchemy as sa

from resources.graph_errors import reported_error
from webhook_app.payloads import Event

log = logging.getLogger(__name__)


def keep(conn: sa.Connection, event: Event, event_id: int | None) -> Counter:
    errors = [error for change in event.changes() for error in change.value.errors]
    if not errors:
        return Counter()
    for error in errors:
        found = reported_error(error)
        log.warning(
            "webhook event %s: WhatsApp reported error %s (%s)",
            event_id,
            found.code,
            str(found.name or "no title")[:200],
        )
    if event_id is not None:
        conn.execute(
            sa.text(
                "UPDATE webhook_inbox SET provider_errors = CAST(:errors AS jsonb) WHERE id = :id"
            ),
            {"errors": json.dumps(errors), "id": event_id},
        )
    return Counter(provider_errors=len(errors))


def by_code(conn: sa.Connection) -> dict[str, Any]:
    """The errors kept with the stored events: how many events reported some, and how many
    errors of each code."""
    events = conn.execute(
        sa.text("SELECT count(*) FROM webhook_inbox WHERE provider_errors IS NOT NULL")
    ).scalar_one()
    codes = conn.execute(
        sa.text(
            "SELECT coalesce(e->>'code', 'none'), count(*) FROM webhook_inbox i,"
            " jsonb_array_elements(i.provider_errors) e"
            " WHERE i.provider_errors IS NOT NULL GROUP BY 1 ORDER BY 1"
        )
    ).all()
    return {"events": events, "by_code": dict(codes)}
