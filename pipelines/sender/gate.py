"""The sender's view of the open circuit breakers, and the gate every send passes.

All lanes of a worker share one view. It reads the open breakers from the database at most
once a second, and learns of a breaker this process opens the moment the error arrives on
the Graph API client's event loop (`observe`), before the lane that met it has recorded
anything: the sends still waiting for their time slot, in every lane, are then held
rather than made. That is what keeps the requests wasted after an account-level error to
at most the ones already in flight.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import sqlalchemy as sa

from resources import breakers
from resources.graph_errors import Breaks, ErrorClass, classify
from resources.queue_message import Payload
from resources.whatsapp import Outgoing, SentMessage

REFRESH_SECONDS = 1.0


class Held(Exception):
    """A send the gate stopped before it left: its scope's breaker is open."""

    def __init__(self, breaker: breakers.Breaker) -> None:
        super().__init__(f"circuit breaker on {breaker.scope} open")
        self.breaker = breaker


@dataclass(frozen=True)
class Trip:
    """An error that opens a breaker, as met by one payload."""

    scope: str
    scope_key: str
    code: int | None
    title: str
    closes_by: str


def trip_of(payload: Payload, breaks: Breaks, code: int | None, title: str) -> Trip:
    key = dict(payload.scopes)[breaks.scope]
    return Trip(breaks.scope, key, code, title, breaks.closes_by)


class BreakerView:
    """The open breakers, as this process knows them; thread-safe."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self._open: dict[tuple[str, str], breakers.Breaker] = {}
        # Opened here and not yet in the database (id 0): kept until the lane stores it.
        self._local: dict[tuple[str, str], breakers.Breaker] = {}
        self._read_at = 0.0

    def refresh(self, force: bool = False) -> None:
        """Re-read the open breakers when the last read is older than a second."""
        if not force and time.monotonic() - self._read_at < REFRESH_SECONDS:
            return
        with self._engine.connect() as conn:
            found = breakers.open_breakers(conn)
        with self._lock:
            self._open = {(b.scope, b.scope_key): b for b in found}
            self._read_at = time.monotonic()

    def blocking(self, payload: Payload) -> breakers.Breaker | None:
        """The open breaker that covers the payload, unless the payload is its probe."""
        with self._lock:
            for scope in payload.scopes:
                found = self._local.get(scope) or self._open.get(scope)
                if found is not None and found.probe_message_id != payload.message_id:
                    return found
        return None

    def learn(self, breaker: breakers.Breaker) -> None:
        """A breaker just opened (or probed) in the database."""
        with self._lock:
            scope = (breaker.scope, breaker.scope_key)
            self._open[scope] = breaker
            self._local.pop(scope, None)

    def forget(self, breaker_id: int) -> None:
        with self._lock:
            self._open = {k: b for k, b in self._open.items() if b.id != breaker_id}

    def probe_of(self, message_id: int) -> breakers.Breaker | None:
        with self._lock:
            return next((b for b in self._open.values() if b.probe_message_id == message_id), None)

    def probing(self, breaker: breakers.Breaker, message_id: int) -> None:
        self.learn(replace(breaker, probe_message_id=message_id))

    # The gate, called on the Graph API client's event loop.

    def check(self, outgoing: Outgoing) -> Exception | None:
        found = self.blocking(outgoing.key)
        return Held(found) if found is not None else None

    def observe(self, outgoing: Outgoing, result: SentMessage | Exception) -> None:
        if isinstance(result, SentMessage | Held):
            return
        verdict = classify(result)
        if verdict.kind is not ErrorClass.BREAKER or outgoing.key is None:
            return
        trip = trip_of(outgoing.key, verdict.breaks, verdict.code, verdict.title)
        provisional = breakers.Breaker(
            0,
            trip.scope,
            trip.scope_key,
            trip.code,
            trip.title,
            trip.closes_by,
            datetime.now(UTC),
            1,
            None,
            None,
        )
        with self._lock:
            self._local.setdefault((trip.scope, trip.scope_key), provisional)
