"""The sender's database statements: a few set-based round trips per received batch, each
one statement, atomic on its own (they autocommit).

Rows move only by compare-and-set: `pending → sending` claims a row for exactly one send;
the result then moves it from `sending` (a receipt that arrived first is never undone).
The claim is also the last look at the row before its send: a contact who opted out since
dispatch ends it `skipped`, a paused campaign holds it (`pending`, no payload queued), as
does a campaign that failed while it was being sent (its media failure threshold crossed), and
a row held for a breaker still open is left alone (its payload is a stale copy).

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
    """A row the claim found: `sending` for us when `verdict` is None; else `skipped`
    (the verdict is why) or held because its campaign is paused (`PAUSED`)."""

    id: int
    peer_phone: str | None
    attempts: int
    last_inbound_at: datetime | None
    within_window: bool
    verdict: str | None = None


PAUSED = "campaign paused"


@dataclass(frozen=True)
class Outcome:
    """What one attempt came to: `sent`, `retry` (back to pending), `hold` (back to
    pending, held by `breaker_id`, the attempt not counted) or `failed`."""

    message_id: int
    kind: str
    wamid: str | None = None
    error_code: int | None = None
    error_title: str | None = None
    error_detail: str | None = None
    breaker_id: int | None = None


@dataclass(frozen=True)
class Slots:
    wait_seconds: float
    spacing_seconds: float


RESERVE = "SELECT wait_seconds, spacing_seconds FROM reserve_send_slots(%(p)s, %(k)s)"
ADMIT = "SELECT admit_recipients(CAST(%(o)s AS uuid), CAST(%(r)s AS text[]))"
CLAIM = (
    "WITH target AS ("
    "  SELECT m.id, CASE WHEN c.status IN ('paused', 'failed') THEN %(paused)s"
    "    WHEN ct.opted_out THEN 'contact opted out of campaign messages'"
    "    WHEN ct.marketing_opted_out AND COALESCE(m.category, 'marketing') = 'marketing'"
    "      THEN 'contact opted out of marketing messages' END AS verdict"
    "  FROM messages m LEFT JOIN contacts ct ON ct.id = m.contact_id"
    "  LEFT JOIN campaign_runs r ON r.id = m.campaign_run_id"
    "  LEFT JOIN campaigns c ON c.id = r.campaign_id"
    "  LEFT JOIN circuit_breakers b ON b.id = m.breaker_id"
    "  WHERE m.id = ANY(%(ids)s) AND m.direction = 'outbound'"
    # A held row is claimed only once its hold is lifted: the payload is then the one the
    # release is queueing (its commit may not have landed yet) or a copy of it.
    "  AND (m.held_at IS NULL OR m.breaker_id IS NULL OR b.closed_at IS NOT NULL"
    "    OR b.probe_message_id = m.id)"
    "  AND (m.status = 'pending'"
    "    OR (m.status = 'sending' AND m.claim_token = CAST(%(token)s AS uuid)))"
    "  FOR UPDATE OF m)"
    " UPDATE messages m SET"
    " status = CASE WHEN t.verdict IS NULL THEN 'sending'"
    "   WHEN t.verdict = %(paused)s THEN 'pending' ELSE 'skipped' END,"
    " claim_token = CAST(%(token)s AS uuid),"
    " sending_at = CASE WHEN t.verdict IS NULL AND m.status = 'pending' THEN now()"
    "   ELSE m.sending_at END,"
    " attempts = CASE WHEN t.verdict IS NULL AND m.status = 'pending' THEN m.attempts + 1"
    "   WHEN t.verdict IS NOT NULL AND m.status = 'sending' THEN m.attempts - 1"
    "   ELSE m.attempts END,"
    " skipped_at = CASE WHEN t.verdict <> %(paused)s THEN now() ELSE m.skipped_at END,"
    " held_at = CASE WHEN t.verdict = %(paused)s THEN now() END,"
    " hold_reason = CASE WHEN t.verdict = %(paused)s THEN 'paused' END,"
    " queued_at = CASE WHEN t.verdict = %(paused)s THEN NULL ELSE m.queued_at END,"
    " status_reason = t.verdict"
    " FROM target t WHERE m.id = t.id"
    " RETURNING m.id, m.peer_phone, m.attempts,"
    " (SELECT max(c.last_inbound_at) FROM conversations c"
    "   WHERE c.id = m.conversation_id OR c.contact_id = m.contact_id) AS last_inbound_at,"
    " t.verdict"
)
RECORD = (
    "UPDATE messages m SET"
    " status = CASE v.kind WHEN 'sent' THEN"
    "   CASE WHEN m.status = 'sending' THEN 'sent' ELSE m.status END"
    "   WHEN 'retry' THEN %(retry_target)s WHEN 'hold' THEN %(retry_target)s ELSE 'failed' END,"
    " provider_message_id = COALESCE(m.provider_message_id, v.wamid),"
    " sent_at = CASE WHEN v.kind = 'sent' THEN COALESCE(m.sent_at, now()) ELSE m.sent_at END,"
    " failed_at = CASE WHEN v.kind = 'failed' THEN now() ELSE m.failed_at END,"
    " attempts = CASE WHEN v.kind = 'hold' THEN greatest(m.attempts - 1, 0) ELSE m.attempts END,"
    " held_at = CASE WHEN v.kind = 'hold' THEN now() ELSE m.held_at END,"
    " hold_reason = CASE WHEN v.kind = 'hold' THEN 'breaker' ELSE m.hold_reason END,"
    " breaker_id = CASE WHEN v.kind = 'hold' THEN v.breaker ELSE m.breaker_id END,"
    " queued_at = CASE WHEN v.kind = 'hold' THEN NULL WHEN v.kind = 'retry' THEN now()"
    "   ELSE m.queued_at END,"
    " status_reason = CASE WHEN v.kind = 'hold' THEN v.detail ELSE m.status_reason END,"
    " error_code = CASE WHEN v.kind = 'sent' THEN m.error_code ELSE v.code END,"
    " error_title = CASE WHEN v.kind = 'sent' THEN m.error_title ELSE v.title END,"
    " error_detail = CASE WHEN v.kind IN ('sent', 'hold') THEN m.error_detail ELSE v.detail END"
    " FROM unnest(CAST(%(ids)s AS bigint[]), CAST(%(kinds)s AS text[]),"
    "   CAST(%(wamids)s AS text[]), CAST(%(codes)s AS integer[]), CAST(%(titles)s AS text[]),"
    "   CAST(%(details)s AS text[]), CAST(%(breakers)s AS bigint[]))"
    "   AS v(id, kind, wamid, code, title, detail, breaker)"
    " WHERE m.id = v.id AND CASE v.kind"
    "   WHEN 'sent' THEN m.status IN ('sending', 'delivered', 'read')"
    "   WHEN 'failed' THEN m.status IN ('pending', 'sending')"
    "   ELSE m.status = %(retry_source)s AND m.provider_message_id IS NULL END"
)
# Payloads received while a breaker on their scope is open, or over their organisation's
# messaging limit: their rows wait here, unsent.
# A row still held but whose hold is lifted is being released: its payload may arrive
# before the release commits, and then waits for it (rather than miss the row).
HOLD = (
    "UPDATE messages m SET held_at = now(), hold_reason = %(why)s, breaker_id = %(breaker)s,"
    " queued_at = NULL, status_reason = %(reason)s"
    " WHERE m.id = ANY(%(ids)s) AND m.status = 'pending' AND (m.held_at IS NULL"
    "   OR m.breaker_id IS NULL OR EXISTS (SELECT 1 FROM circuit_breakers b"
    "     WHERE b.id = m.breaker_id AND (b.closed_at IS NOT NULL OR b.probe_message_id = m.id)))"
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
        rows = self._run(CLAIM, {"ids": list(message_ids), "token": token, "paused": PAUSED})
        return {
            id_: Claimed(
                id_,
                peer_phone,
                attempts,
                last_inbound_at,
                within_window=last_inbound_at is not None
                and (datetime.now(last_inbound_at.tzinfo) - last_inbound_at).total_seconds()
                < 24 * 3600,
                verdict=verdict,
            )
            for id_, peer_phone, attempts, last_inbound_at, verdict in rows
        }

    def hold(
        self, message_ids: Sequence[int], why: str, reason: str, breaker_id: int | None = None
    ) -> None:
        """Hold rows still `pending` (their payloads leave the queue) until `why` (a
        `breaker`, the `messaging_limit`) is lifted; `reason` says it in words."""
        self._run(
            HOLD,
            {"ids": list(message_ids), "why": why, "reason": reason, "breaker": breaker_id},
        )

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
                "breakers": [o.breaker_id for o in outcomes],
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
            raise sa.exc.DBAPIError.instance(
                sql, params, error, psycopg2.Error, hide_parameters=True
            ) from error

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
