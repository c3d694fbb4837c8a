"""Where a campaign run's messages are, and what keeps the rest waiting: the answer to
"why is my campaign not done?", for the campaign status API and the delivery report.

Every message that is not yet final waits for one thing, and each is named with what it
waits on: the throughput limit (queued, sent at the number's rate), the organisation's
messaging limit (held until the 24-hour window frees room or the limit is raised), a
circuit breaker (held until it closes), a pause, a requested retry (queued again within
seconds), or a row stuck in `sending` (surfaced, never re-sent). From them an estimated
time to finish, or none while something waits on a person.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from resources import messages

WINDOW = timedelta(hours=24)

_WINDOW = sa.text(
    "SELECT o.messaging_limit, count(w.recipient), min(w.counted_at)"
    " FROM organisations o LEFT JOIN messaging_window w ON w.organisation_id = o.id"
    "   AND w.counted_at > now() - interval '24 hours'"
    " WHERE o.id = CAST(:o AS uuid) GROUP BY o.id"
)
_RATE = sa.text(
    "SELECT COALESCE((SELECT messages_per_second FROM phone_numbers WHERE phone_number_id = :p),"
    " 80)"
)


def run_progress(
    conn: sa.Connection, campaign_run_id: int, stuck_after_seconds: float
) -> dict[str, Any]:
    """The run's messages by stage, what the waiting ones wait for, and when it should end."""
    counts = messages.run_stage_counts(conn, campaign_run_id, stuck_after_seconds)
    now = datetime.now(UTC)
    waiting: list[dict[str, Any]] = []
    finish: datetime | None = now
    rate = conn.execute(_RATE, {"p": counts.phone_number_id}).scalar_one()
    to_send = counts.pending + counts.retry + (counts.sending - counts.stuck)
    if to_send:
        seconds = to_send / rate
        waiting.append(
            {
                "reason": "throughput",
                "messages": to_send,
                "messages_per_second": rate,
                "seconds": round(seconds, 1),
            }
        )
        finish = now + timedelta(seconds=seconds)
    if counts.limit_held:
        limit_wait = _messaging_limit(conn, counts.organisation_id, counts.limit_held, now)
        waiting.append(limit_wait)
        ends = datetime.fromisoformat(limit_wait["estimated_release_of_all_at"])
        finish = max(finish, ends)
    for breaker in messages.run_breaker_holds(conn, campaign_run_id):
        waiting.append(
            {
                "reason": "circuit_breaker",
                "messages": breaker.messages,
                "breaker_id": breaker.id,
                "scope": breaker.scope,
                "scope_key": breaker.scope_key,
                "error_code": breaker.error_code,
                "error_title": breaker.error_title,
                "closes_by": breaker.closes_by,
                "next_probe_at": breaker.probe_at.isoformat() if breaker.probe_at else None,
            }
        )
        finish = None  # until it closes: a probe may fail, an operator must act
    if counts.paused:
        waiting.append({"reason": "paused", "messages": counts.paused})
        finish = None
    if counts.stuck:
        waiting.append(
            {
                "reason": "stuck_in_sending",
                "messages": counts.stuck,
                "see": "waflow sender-stuck (never re-sent automatically)",
            }
        )
    stages = (
        "queued",
        "pending",
        "held",
        "sending",
        "sent",
        "delivered",
        "read",
        "failed",
        "skipped",
        "cancelled",
    )
    return {
        "messages": {stage: getattr(counts, stage) for stage in stages},
        "waiting": waiting,
        "estimated_finish_at": finish.isoformat() if finish and waiting else None,
    }


def _messaging_limit(
    conn: sa.Connection, organisation_id: str, held: int, now: datetime
) -> dict[str, Any]:
    """Rows held by the messaging limit: the limit, how full the window is, when it next
    frees room, and when the last of them should go at this limit."""
    limit, counted, oldest = conn.execute(_WINDOW, {"o": organisation_id}).one()
    frees_at = (oldest + WINDOW) if oldest else now
    room = max((limit or 0) - counted, 0)
    # `room` go now; the rest one window of `limit` recipients after another.
    windows = math.ceil(max(held - room, 0) / limit) if limit else 0
    return {
        "reason": "messaging_limit",
        "messages": held,
        "messaging_limit": limit,
        "counted_in_window": counted,
        "next_slot_frees_at": frees_at.isoformat(),
        "estimated_release_of_all_at": (
            frees_at + (windows - 1) * WINDOW if windows else now
        ).isoformat(),
        "to_raise_it": f"PATCH /api/organisations/{organisation_id} with the messaging_limit"
        " WhatsApp granted (Meta's webhook sets it by itself when it raises the tier)",
    }
