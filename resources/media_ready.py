"""The signal that a campaign has members whose media are ready, from the media runs to the
dispatch run that sends them while the rest are still being made.

A Postgres `NOTIFY` on one channel, its payload the campaign id, sent in the transaction
that records the members (so it arrives once they are visible) or that ends the campaign's
generation. The listener falls back to a short poll: a notification is a hint to look now,
never the only way a member is found, so one lost with a dropped connection costs at most
the poll interval.
"""

from __future__ import annotations

import select
import time
from uuid import UUID

import sqlalchemy as sa

CHANNEL = "waflow_media_ready"


def notify(conn: sa.Connection, campaign_id: UUID) -> None:
    """Tell the campaign's dispatch run to look again, once this transaction commits."""
    conn.execute(sa.text("SELECT pg_notify(:ch, :c)"), {"ch": CHANNEL, "c": str(campaign_id)})


class Listener:
    """A connection of its own, listening for one campaign's signal."""

    def __init__(self, engine: sa.Engine, campaign_id: UUID) -> None:
        self.campaign_id = str(campaign_id)
        self._connection = engine.raw_connection()
        # Out of the pool: it is autocommit and listening, not for anyone else.
        self._connection.detach()
        self._dbapi = self._connection.dbapi_connection
        self._dbapi.rollback()  # the pool's liveness check may have begun a transaction
        self._dbapi.autocommit = True
        with self._dbapi.cursor() as cursor:
            cursor.execute(f"LISTEN {CHANNEL}")

    def wait(self, timeout: float) -> bool:
        """Until the campaign is signalled or `timeout` passes; whether it was signalled.
        Signals that came since the last wait count, and are consumed."""
        deadline = time.monotonic() + timeout
        while True:
            self._dbapi.poll()
            signalled = any(n.payload == self.campaign_id for n in self._dbapi.notifies)
            self._dbapi.notifies.clear()
            left = deadline - time.monotonic()
            if signalled or left <= 0:
                return signalled
            select.select([self._dbapi], [], [], left)

    def close(self) -> None:
        try:
            with self._dbapi.cursor() as cursor:
                cursor.execute(f"UNLISTEN {CHANNEL}")
        finally:
            self._connection.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
