"""The sender's database statements: a few set-based round trips per received batch, each
one statement, atomic on its own (they autocommit).

Rows move only by compare-and-set: `pending → sending` claims a row for exactly one send;
the result then moves it from `sending` (a receipt that arrived first is never undone).

Each lane thread runs them on a database connection of its own, through the driver's
cursor: SQLAlchemy's work per statement (a pool checkout, the execution context, result
rows) cost two to three times the statement itself.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg2
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


RESERVE = "SELECT wait_seconds, spacing_seconds FROM reserve_send_slots(%(p)s, %(k)s)"
ADMIT = "SELECT admit_recipients(CAST(%(o)s AS uuid), CAST(%(r)s AS text[]))"
CLAIM = (
    "UPDATE messages m SET status = 'sending', claim_token = CAST(%(token)s AS uuid),"
    " sending_at = CASE WHEN m.status = 'pending' THEN now() ELSE m.sending_at END,"
    " attempts = CASE WHEN m.status = 'pending' THEN m.attempts + 1 ELSE m.attempts END"
    " WHERE m.id = ANY(%(ids)s) AND m.direction = 'outbound'"
    " AND (m.status = 'pending'"
    "   OR (m.status = 'sending' AND m.claim_token = CAST(%(token)s AS uuid)))"
    " RETURNING m.id, m.peer_phone, m.attempts,"
    " (SELECT max(c.last_inbound_at) FROM conversations c"
    "   WHERE c.id = m.conversation_id OR c.contact_id = m.contact_id) AS last_inbound_at"
)
RECORD = (
    "UPDATE messages m SET"
    " status = CASE v.kind WHEN 'sent' THEN"
    "   CASE WHEN m.status = 'sending' THEN 'sent' ELSE m.status END"
    "   WHEN 'retry' THEN %(retry_target)s ELSE 'failed' END,"
    " provider_message_id = COALESCE(m.provider_message_id, v.wamid),"
    " sent_at = CASE WHEN v.kind = 'sent' THEN COALESCE(m.sent_at, now()) ELSE m.sent_at END,"
    " failed_at = CASE WHEN v.kind = 'failed' THEN now() ELSE m.failed_at END,"
    " error_code = CASE WHEN v.kind = 'sent' THEN m.error_code ELSE v.code END,"
    " error_title = CASE WHEN v.kind = 'sent' THEN m.error_title ELSE v.title END,"
    " error_detail = CASE WHEN v.kind = 'sent' THEN m.error_detail ELSE v.detail END"
    " FROM unnest(CAST(%(ids)s AS bigint[]), CAST(%(kinds)s AS text[]),"
    "   CAST(%(wamids)s AS text[]), CAST(%(codes)s AS integer[]), CAST(%(titles)s AS text[]),"
    "   CAST(%(details)s AS text[])) AS v(id, kind, wamid, code, title, detail)"
    " WHERE m.id = v.id AND CASE v.kind"
    "   WHEN 'sent' THEN m.status IN ('sending', 'delivered', 'read')"
    "   WHEN 'retry' THEN m.status = %(retry_source)s AND m.provider_message_id IS NULL"
    "   ELSE m.status IN ('pending', 'sending') END"
)


class Store:
    """The sender's statements, each on the calling thread's own connection.

    Errors are SQLAlchemy's (`DBAPIError` and its kinds), as from the engine. A connection
    the server dropped is discarded, and the thread's next statement opens another.
    """

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._local = threading.local()
        self._opened: list[Any] = []
        self._lock = threading.Lock()

    def reserve_slots(self, phone_number_id: str, count: int) -> Slots:
        [(wait_seconds, spacing_seconds)] = self._run(RESERVE, {"p": phone_number_id, "k": count})
        return Slots(max(0.0, wait_seconds), spacing_seconds)

    def admit(self, organisation_id: str, recipients: Sequence[str]) -> set[str]:
        """Recipients the organisation's messaging limit lets through now."""
        [(admitted,)] = self._run(ADMIT, {"o": organisation_id, "r": list(recipients)})
        return set(admitted)

    def claim(self, message_ids: Sequence[int], token: str) -> dict[int, Claimed]:
        """Claim the rows still `pending`; a row already past it is someone else's (or done).

        Repeated with the same `token` after an error, it also returns the rows the first
        try claimed: their answer was lost, and nothing was sent for them.
        """
        rows = self._run(CLAIM, {"ids": list(message_ids), "token": token})
        return {
            id_: Claimed(
                id_,
                peer_phone,
                attempts,
                last_inbound_at,
                within_window=last_inbound_at is not None
                and (datetime.now(last_inbound_at.tzinfo) - last_inbound_at).total_seconds()
                < 24 * 3600,
            )
            for id_, peer_phone, attempts, last_inbound_at in rows
        }

    def record(self, outcomes: Iterable[Outcome]) -> None:
        """Store each attempt's result in one statement.

        `sent` keeps a status a receipt already moved further (delivered, read) and only adds
        the wamid; `retry` is the one backwards move, allowed only before WhatsApp accepted
        the message (see `resources.status.RETRY_BEFORE_ACCEPTED`).
        """
        outcomes = list(outcomes)
        if not outcomes:
            return
        source, target = RETRY_BEFORE_ACCEPTED
        self._run(
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

    def close(self) -> None:
        """Give every thread's connection back to the engine's pool, as it came."""
        with self._lock:
            opened, self._opened = self._opened, []
        for connection in opened:
            connection.dbapi_connection.autocommit = False
            connection.close()

    def _run(self, sql: str, params: dict[str, Any]) -> list[tuple]:
        try:
            connection = self._connection()
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall() if cursor.description else []
        except psycopg2.Error as error:
            self._discard_if_broken()
            raise sa.exc.DBAPIError.instance(sql, params, error, psycopg2.Error) from error

    def _connection(self) -> Any:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._engine.raw_connection()
            # Spares the BEGIN and COMMIT round trips around each statement.
            connection.dbapi_connection.autocommit = True
            self._local.connection = connection
            with self._lock:
                self._opened.append(connection)
        return connection

    def _discard_if_broken(self) -> None:
        connection = getattr(self._local, "connection", None)
        if connection is None or not connection.dbapi_connection.closed:
            return
        self._local.connection = None
        with self._lock:
            self._opened.remove(connection)
        connection.invalidate()
        connection.close()  # frees its place in the pool


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
