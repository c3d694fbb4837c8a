"""Circuit breakers: errors about the account, a phone number or a template stop sending in
their scope instead of failing every queued row one by one.

A breaker covers one scope: `app` (the access token: everything), `account` (an
organisation's WhatsApp Business account), `phone_number`, or `template` (one template,
by organisation, name and language). While it is open, payloads in its scope are neither
sent nor failed: the sender holds their rows (`pending`, `held_at` set, `breaker_id` it)
and re-queues them once the breaker closes. Rate limits close by themselves after a probe
succeeds (one held message let through at `probe_at`, with exponential backoff between
probes); the others close when an operator resets them.

The sender opens and probes breakers; the operator API and CLI list and reset them; the
delivery report's check and `/health` show them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

SCOPES = ("app", "account", "phone_number", "template")
PROBE_MAX_SECONDS = 3600.0
# A probe whose outcome never came back (its sender died) is given up after this long.
PROBE_LOST_SECONDS = 300


@dataclass(frozen=True)
class Breaker:
    id: int
    scope: str
    scope_key: str
    error_code: int | None
    error_title: str | None
    closes_by: str
    opened_at: datetime
    trips: int
    probe_at: datetime | None
    probe_message_id: int | None
    closed_at: datetime | None = None
    closed_by: str | None = None
    close_reason: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in asdict(self).items()}


def template_key(organisation_id: str, name: str, language: str) -> str:
    return f"{organisation_id}/{name}/{language}"


_COLUMNS = (
    "id, scope, scope_key, error_code, error_title, closes_by, opened_at, trips, probe_at,"
    " probe_message_id, closed_at, closed_by, close_reason"
)


def trip(
    conn: sa.Connection,
    scope: str,
    scope_key: str,
    code: int | None,
    title: str | None,
    closes_by: str,
    probe_seconds: float,
) -> tuple[Breaker, bool]:
    """Open the scope's breaker, or find the one already open; and whether it is new.
    A breaker that closes by probe tries its first probe after `probe_seconds`."""
    row = conn.execute(
        sa.text(
            "INSERT INTO circuit_breakers (scope, scope_key, error_code, error_title, closes_by,"
            " probe_at) VALUES (:scope, :key, :code, :title, :closes,"
            " CASE WHEN :closes = 'probe' THEN now() + make_interval(secs => :first) END)"
            " ON CONFLICT (scope, scope_key) WHERE closed_at IS NULL DO NOTHING"
            f" RETURNING {_COLUMNS}"
        ),
        {
            "scope": scope,
            "key": scope_key,
            "code": code,
            "title": title,
            "closes": closes_by,
            "first": probe_seconds,
        },
    ).one_or_none()
    if row is not None:
        return Breaker(*row), True
    existing = conn.execute(
        sa.text(
            f"SELECT {_COLUMNS} FROM circuit_breakers"
            " WHERE scope = :scope AND scope_key = :key AND closed_at IS NULL"
        ),
        {"scope": scope, "key": scope_key},
    ).one_or_none()
    if existing is None:  # closed between the two statements: open a fresh one
        return trip(conn, scope, scope_key, code, title, closes_by, probe_seconds)
    return Breaker(*existing), False


def open_breakers(conn: sa.Connection) -> list[Breaker]:
    rows = conn.execute(
        sa.text(f"SELECT {_COLUMNS} FROM circuit_breakers WHERE closed_at IS NULL ORDER BY id")
    )
    return [Breaker(*row) for row in rows]


def listing(conn: sa.Connection, include_closed: int = 0) -> list[dict[str, Any]]:
    """Open breakers, then the `include_closed` most recently closed, as JSON-ready dicts;
    each with how many rows it holds."""
    rows = conn.execute(
        sa.text(
            f"SELECT {_COLUMNS}, (SELECT count(*) FROM messages m WHERE m.breaker_id = b.id"
            "   AND m.held_at IS NOT NULL AND m.status = 'pending') AS held"
            " FROM circuit_breakers b WHERE closed_at IS NULL"
            " OR id IN (SELECT id FROM circuit_breakers WHERE closed_at IS NOT NULL"
            "   ORDER BY closed_at DESC LIMIT :n)"
            " ORDER BY closed_at IS NOT NULL, id DESC"
        ),
        {"n": include_closed},
    ).all()
    return [{**Breaker(*row[:-1]).as_dict(), "held_messages": row[-1]} for row in rows]


def close(conn: sa.Connection, breaker_id: int, by: str, reason: str | None = None) -> bool:
    """Close an open breaker (an operator's reset, or a probe that went through); False if
    it was not open. Its held rows are re-queued by the sender."""
    return (
        conn.execute(
            sa.text(
                "UPDATE circuit_breakers SET closed_at = now(), closed_by = :by,"
                " close_reason = :reason WHERE id = :id AND closed_at IS NULL RETURNING id"
            ),
            {"id": breaker_id, "by": by, "reason": reason},
        ).first()
        is not None
    )


def claim_probe(conn: sa.Connection, breaker_id: int, message_id: int) -> bool:
    """Make `message_id` the breaker's probe, if a probe is due and none other is out
    (True also when it already is: the sender re-queued it as the probe)."""
    return (
        conn.execute(
            sa.text(
                "UPDATE circuit_breakers SET probe_message_id = :m,"
                " probe_started_at = COALESCE(CASE WHEN probe_message_id = :m"
                "   THEN probe_started_at END, now())"
                " WHERE id = :id AND closed_at IS NULL AND closes_by = 'probe'"
                " AND probe_at <= now() AND (probe_message_id IS NULL OR probe_message_id = :m"
                "   OR probe_started_at < now() - make_interval(secs => :lost))"
                " RETURNING id"
            ),
            {"id": breaker_id, "m": message_id, "lost": PROBE_LOST_SECONDS},
        ).first()
        is not None
    )


def probe_failed(conn: sa.Connection, breaker_id: int, probe_seconds: float) -> None:
    """The probe met the same error: wait twice as long as last time before the next."""
    conn.execute(
        sa.text(
            "UPDATE circuit_breakers SET trips = trips + 1, probe_message_id = NULL,"
            " probe_started_at = NULL,"
            " probe_at = now() + make_interval(secs => least(:base * power(2, trips), :max))"
            " WHERE id = :id AND closed_at IS NULL"
        ),
        {"id": breaker_id, "base": probe_seconds, "max": PROBE_MAX_SECONDS},
    )


def probe_inconclusive(conn: sa.Connection, breaker_id: int) -> None:
    """The probe said nothing about the scope (it never left): another may go at once."""
    conn.execute(
        sa.text(
            "UPDATE circuit_breakers SET probe_message_id = NULL, probe_started_at = NULL"
            " WHERE id = :id AND closed_at IS NULL"
        ),
        {"id": breaker_id},
    )


def due_probes(conn: sa.Connection) -> list[Breaker]:
    """Open probe breakers whose next probe is due and not yet out."""
    rows = conn.execute(
        sa.text(
            f"SELECT {_COLUMNS} FROM circuit_breakers WHERE closed_at IS NULL"
            " AND closes_by = 'probe' AND probe_at <= now() AND (probe_message_id IS NULL"
            "   OR probe_started_at < now() - make_interval(secs => :lost))"
        ),
        {"lost": PROBE_LOST_SECONDS},
    )
    return [Breaker(*row) for row in rows]
