"""The request path's only write: raw webhook events into `webhook_inbox`, durably, fast.

Requests that arrive together share one INSERT and one commit (group commit): each request
waits for its own batch's commit before it answers, so nothing is acknowledged unstored,
while the database sees a few large commits instead of one per event. It uses psycopg 3's
async pool, so waiting for Postgres never ties up a thread. A batch travels as one JSON
array of the raw bodies (each already checked to be JSON), so its cost in this process is
a join, not a per-event conversion; Postgres splits it into rows, each with its flag
`receipts_only` from the array beside it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

import psycopg
import psycopg_pool
import sqlalchemy as sa

from webhook_app.payloads import BadPayload

log = logging.getLogger(__name__)

MAX_BATCH = 500
# `clock_timestamp()` is read per row: the events of one batch get distinct arrival times in
# their arrival order (`now()` would give them the batch's one), and agent turns are read in
# that order.
_INSERT = (
    "INSERT INTO webhook_inbox (payload, receipts_only, received_at)"
    " SELECT e, r, clock_timestamp()"
    " FROM ROWS FROM (jsonb_array_elements(convert_from(%b, 'UTF8')::jsonb), unnest(%s::boolean[]))"
    " AS x(e, r)"
)


class InboxUnavailable(RuntimeError):
    """The event could not be stored (database down): the caller answers 503."""


def conninfo(database_url: str) -> str:
    """A libpq URL from the SQLAlchemy-style `DATABASE_URL` (drops the `+driver`)."""
    url = sa.make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def open_pool(database_url: str, max_size: int = 4) -> psycopg_pool.AsyncConnectionPool:
    return psycopg_pool.AsyncConnectionPool(
        conninfo(database_url),
        min_size=1,
        max_size=max_size,
        timeout=3.0,
        # Each batch is one INSERT, atomic on its own: autocommit spares the BEGIN and COMMIT
        # round trips of every batch.
        kwargs={"connect_timeout": 3, "application_name": "waflow-webhook", "autocommit": True},
        open=False,
    )


@dataclass
class _Pending:
    body: bytes
    receipts_only: bool
    done: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class InboxWriter:
    """Group commit of inbox inserts; `store()` returns once the event is committed."""

    def __init__(self, pool: psycopg_pool.AsyncConnectionPool, flushers: int = 2) -> None:
        self._pool = pool
        self._queue: list[_Pending] = []
        self._ready = asyncio.Event()
        self._tasks = [asyncio.create_task(self._flush_forever()) for _ in range(flushers)]
        self.stored = 0

    async def store(self, body: bytes, receipts_only: bool) -> None:
        """`body` must be one JSON value (the caller has parsed it); `receipts_only` says it
        holds only delivery receipts (`payloads.receipts_only`)."""
        pending = _Pending(body, receipts_only)
        self._queue.append(pending)
        self._ready.set()
        await pending.done

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _flush_forever(self) -> None:
        while True:
            await self._ready.wait()
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            if not self._queue:
                self._ready.clear()
            if batch:
                await self._flush(batch)

    async def _flush(self, batch: list[_Pending]) -> None:
        try:
            await self._insert(batch)
        except psycopg.DataError:
            # One event Postgres cannot hold as jsonb (e.g. a \u0000 escape) must not sink
            # the others: store them one by one and refuse only the bad one.
            for pending in batch:
                await self._flush_one(pending)
            return
        except (psycopg.Error, psycopg_pool.PoolTimeout, OSError) as error:
            log.warning("webhook inbox unavailable: %s", type(error).__name__)
            _fail(batch, InboxUnavailable("the webhook inbox is unavailable"))
            return
        self.stored += len(batch)
        for pending in batch:
            if not pending.done.done():
                pending.done.set_result(None)

    async def _flush_one(self, pending: _Pending) -> None:
        try:
            await self._insert([pending])
        except psycopg.DataError as error:
            reason = str(error).splitlines()[0]
            _fail([pending], BadPayload(f"the database cannot store this payload: {reason}"))
        except (psycopg.Error, psycopg_pool.PoolTimeout, OSError):
            _fail([pending], InboxUnavailable("the webhook inbox is unavailable"))
        else:
            self.stored += 1
            if not pending.done.done():
                pending.done.set_result(None)

    async def _insert(self, batch: list[_Pending]) -> None:
        """One INSERT and commit; once more on a fresh connection if the pooled one had died
        (a server restart). A retried batch that had in fact committed is stored twice,
        which processing tolerates: every effect of an event is idempotent."""
        params = [b"[" + b",".join(p.body for p in batch) + b"]", [p.receipts_only for p in batch]]
        try:
            async with self._pool.connection() as conn:
                await conn.execute(_INSERT, params)
        except psycopg.OperationalError:
            async with self._pool.connection() as conn:
                await conn.execute(_INSERT, params)


def _fail(batch: list[_Pending], error: Exception) -> None:
    for pending in batch:
        if not pending.done.done():
            pending.done.set_exception(error)
