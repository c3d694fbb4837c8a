"""The webhook app's background work: inbox processing, the agent's turns, inbound media and
early receipts. It runs in its own process, `waflow webhook-worker`, beside the app.

Why a process of its own: the request path only verifies, stores and answers, and it must
keep its process (the GIL and a core) to itself while webhooks pour in. The inbox is
durable, so this work may lag a burst and catch up after it; the process lowers its own CPU
priority (`WEBHOOK_WORKER_NICE`) so that, on a shared host, answering WhatsApp comes first.
Any number of worker processes share the inbox without doing an event twice.

Loops sleep on an event and poll as well. A trigger on `webhook_inbox` notifies the
`webhook_inbox` channel on every insert, so whichever app instance stored an event, the
inbox loops wake at once. Each process keeps a heartbeat row in `webhook_workers` (its
loops alive, its counters), which the app's /health and /stats read.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import socket
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import psycopg
import sqlalchemy as sa
from langchain_core.language_models import BaseChatModel
from starlette.applications import Starlette

from resources import message_buffer, safe_errors, settings
from resources.chat import ChatModelResource
from resources.postgres import PostgresResource
from resources.storage import S3Storage
from resources.whatsapp import WhatsAppClient, WhatsAppResource
from webhook_app import media, outbound, processing
from webhook_app.agent import Agent, AgentConfig
from webhook_app.inbox import conninfo

log = logging.getLogger(__name__)

REQUIRED_IN_PRODUCTION = (
    "DATABASE_URL",
    "S3_BUCKET",
    "WHATSAPP_ACCESS_TOKEN",
    "WHATSAPP_PHONE_NUMBER_ID",
)
CHANNEL = "webhook_inbox"
POLL_SECONDS = 1.0
AGENT_POLL_SECONDS = 0.25
# Early receipts wait for the sender to store their wamid; looking for them is a join over
# every waiting receipt, so it runs on its own, slower clock rather than after every batch.
RECEIPT_POLL_SECONDS = 2.0
RETRY_TURN_SECONDS = 30.0
OUTBOX_POLL_SECONDS = 2.0
BURST_EVENTS = 20
GATHER_SECONDS = 0.1
# While webhooks pour in, every batch the app stores notifies. A notification that comes
# while the inbox loops are still to take the last one adds nothing: the listener then
# reads those of the next this many seconds together.
NOTIFY_COALESCE_SECONDS = 0.05
BEAT_SECONDS = 2.0
MAX_CONCURRENT_TURNS = 8

_BEAT = sa.text(
    "INSERT INTO webhook_workers (id, loops, counters)"
    " VALUES (:id, CAST(:loops AS jsonb), CAST(:counters AS jsonb))"
    " ON CONFLICT (id) DO UPDATE SET beat_at = now(), loops = excluded.loops,"
    " counters = excluded.counters"
)
_GONE = sa.text("DELETE FROM webhook_workers WHERE id = :id")
# Rows of processes that were killed rather than stopped: long past any health check.
_FORGOTTEN = sa.text("DELETE FROM webhook_workers WHERE beat_at < now() - interval '1 day'")


@dataclass
class Workers:
    engine: sa.Engine
    database_url: str
    client: WhatsAppClient
    s3: S3Storage
    agent: Agent
    buffer_seconds: float
    buffer_max_seconds: float
    id: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    )
    counters: Counter = field(default_factory=Counter)
    inbox_ready: asyncio.Event = field(default_factory=asyncio.Event)
    turns_ready: asyncio.Event = field(default_factory=asyncio.Event)
    media_ready: asyncio.Event = field(default_factory=asyncio.Event)
    progressed: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: dict[str, asyncio.Task] = field(default_factory=dict)

    def loops_alive(self) -> dict[str, bool]:
        return {name: not task.done() for name, task in self.tasks.items()}

    def start(self, inbox_workers: int) -> None:
        for n in range(inbox_workers):
            self._spawn(f"inbox-{n}", self._inbox_step, self.inbox_ready, POLL_SECONDS)
        self._spawn("agent", self._agent_step, self.turns_ready, AGENT_POLL_SECONDS)
        self._spawn("media", self._media_step, self.media_ready, POLL_SECONDS)
        self._spawn("outbox", self._outbox_step, asyncio.Event(), OUTBOX_POLL_SECONDS)
        self._spawn(
            "early-receipts", self._early_receipts_step, asyncio.Event(), RECEIPT_POLL_SECONDS
        )
        self._spawn("listen", self._listen_step, asyncio.Event(), POLL_SECONDS)
        self._spawn("heartbeat", self._beat_step, self.progressed, BEAT_SECONDS)

    async def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        with contextlib.suppress(sa.exc.SQLAlchemyError):
            await asyncio.to_thread(self._gone)
        self.client.close()

    def _spawn(
        self,
        name: str,
        step: Callable[[], Awaitable[bool]],
        ready: asyncio.Event,
        poll: float,
    ) -> None:
        self.tasks[name] = asyncio.create_task(self._loop(name, step, ready, poll), name=name)

    async def _loop(
        self, name: str, step: Callable[[], Awaitable[bool]], ready: asyncio.Event, poll: float
    ) -> None:
        failures = 0
        while True:
            ready.clear()
            try:
                busy = await step()
                failures = 0
            except Exception as error:
                failures += 1
                log.warning("%s worker: %s", name, safe_errors.describe(error))
                await asyncio.sleep(min(30.0, 0.5 * 2**failures))
                continue
            if busy:
                self.progressed.set()
            else:
                # Not `asyncio.wait_for`: in Python 3.11 it swallows a cancellation that lands
                # in the same tick as the event, and the loop would outlive `stop()`.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(poll):
                        await ready.wait()

    async def _inbox_step(self) -> bool:
        """One batch. A pass costs far more than an event in it, so while events pour in
        (a pass found more than a few) the next pass waits a moment to take a fuller batch;
        a lone event (a customer's message) is still handled at once."""
        tally = await asyncio.to_thread(processing.process_batch, self.engine)
        self.counters.update(tally)
        if tally["inbound"]:
            self.turns_ready.set()
            self.media_ready.set()
        if BURST_EVENTS <= tally["events"] < processing.BATCH:
            await asyncio.sleep(GATHER_SECONDS)
        return tally["events"] > 0

    async def _agent_step(self) -> bool:
        lease = self.agent.config.model_timeout_seconds + 60
        conversation_ids = await asyncio.to_thread(
            message_buffer.claim_due,
            self.engine,
            self.buffer_seconds,
            self.buffer_max_seconds,
            lease,
            MAX_CONCURRENT_TURNS,
            self.agent.sees_media,
        )
        await asyncio.gather(*(self._answer(c) for c in conversation_ids))
        return bool(conversation_ids)

    async def _answer(self, conversation_id: int) -> None:
        try:
            turn = await self.agent.answer(conversation_id)
        except Exception as error:
            log.warning(
                "turn of conversation %s not answered: %s",
                conversation_id,
                safe_errors.describe(error),
            )
            self.counters["turns_failed"] += 1
            await asyncio.to_thread(
                message_buffer.release_later, self.engine, conversation_id, RETRY_TURN_SECONDS
            )
            return
        self.counters["turns"] += 1
        self.counters["replies_sent"] += len(turn.get("sent") or [])
        self.counters["fallback_replies"] += int(bool(turn.get("fallback")))

    async def _early_receipts_step(self) -> bool:
        applied = await asyncio.to_thread(processing.apply_early_receipts, self.engine)
        self.counters["receipts_applied_late"] += applied
        return False

    async def _outbox_step(self) -> bool:
        """Replies left in the outbox by a crash before their send, or by a retryable error."""
        sent = await asyncio.to_thread(outbound.deliver_due, self.engine, self.client)
        self.counters["outbox_sent_late"] += sent
        return False

    async def _media_step(self) -> bool:
        return await asyncio.to_thread(media.copy_pending, self.engine, self.client, self.s3) > 0

    async def _listen_step(self) -> bool:
        """Wake the inbox loops on a notification, at once. Returns only by raising (the
        connection is lost), after which the loop reconnects with backoff."""
        async with await psycopg.AsyncConnection.connect(
            conninfo(self.database_url), autocommit=True, connect_timeout=3
        ) as conn:
            await conn.execute(f"LISTEN {CHANNEL}")
            self.inbox_ready.set()
            while not conn.closed:
                # Whatever notifications have arrived, read at once.
                async for _ in conn.notifies(stop_after=1):
                    pass
                if self.inbox_ready.is_set():
                    # The loops are busy with a batch and have yet to take the last wake-up.
                    await asyncio.sleep(NOTIFY_COALESCE_SECONDS)
                self.inbox_ready.set()
        raise ConnectionError("the notification connection closed")

    async def beat(self) -> None:
        """The heartbeat row: loops alive and counters, written together."""
        params = {
            "id": self.id,
            "loops": json.dumps(self.loops_alive()),
            "counters": json.dumps(self.counters),
        }
        await asyncio.to_thread(self.execute, _BEAT, params)

    async def _beat_step(self) -> bool:
        """After every loop pass that did work, and at least every `BEAT_SECONDS`."""
        await self.beat()
        return False

    def execute(self, statement: sa.TextClause, params: dict) -> None:
        with self.engine.begin() as conn:
            conn.execute(statement, params)

    def _gone(self) -> None:
        self.execute(_GONE, {"id": self.id})


async def start(
    engine: sa.Engine,
    database_url: str,
    chat_model: BaseChatModel | None = None,
    client: WhatsAppClient | None = None,
) -> Workers:
    """Build the workers from the environment and start their loops (`WEBHOOK_WORKERS`
    inbox loops); the first heartbeat is written when this returns."""
    client = client or WhatsAppResource.from_settings().client
    s3 = S3Storage.from_settings()
    workers = Workers(
        engine=engine,
        database_url=database_url,
        client=client,
        s3=s3,
        agent=Agent(
            engine,
            client,
            chat_model or ChatModelResource.from_settings().chat_model(),
            settings.load(AgentConfig),
            s3,
        ),
        buffer_seconds=settings.number("AGENT_BUFFER_SECONDS"),
        buffer_max_seconds=settings.number("AGENT_BUFFER_MAX_SECONDS"),
    )
    await asyncio.to_thread(workers.execute, _FORGOTTEN, {})
    workers.start(settings.number("WEBHOOK_WORKERS"))
    await workers.beat()
    return workers


def run() -> None:
    """`waflow webhook-worker`: run the workers until SIGTERM or Ctrl-C."""
    settings.check_production(REQUIRED_IN_PRODUCTION, "webhook worker")
    os.nice(settings.number("WEBHOOK_WORKER_NICE"))
    asyncio.run(_serve())


async def _serve() -> None:
    postgres = PostgresResource.from_settings()
    await asyncio.to_thread(postgres.migrate)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    workers = await start(postgres.engine, postgres.database_url)
    # As in the app (webhook_app.app): what start-up loaded lives as long as the process,
    # so full collections need not scan it (about 100 ms of CPU each time otherwise).
    gc.freeze()
    try:
        await stopping.wait()
    finally:
        await workers.stop()
        postgres.engine.dispose()


def app_with_workers(
    chat_model: BaseChatModel | None = None, client: WhatsAppClient | None = None
) -> Starlette:
    """The app with the workers in its own process: what `make demo` and the tests run, one
    process and no supervisor. Deployments run `waflow webhook-worker` beside the app."""
    from webhook_app.app import exception_handlers, lifespan, routes

    @contextlib.asynccontextmanager
    async def app_and_workers(app: Starlette) -> AsyncIterator[None]:
        async with lifespan(app):
            postgres = app.state.postgres
            app.state.workers = await start(
                postgres.engine, postgres.database_url, chat_model, client
            )
            try:
                yield
            finally:
                await app.state.workers.stop()

    app = Starlette(routes=routes, lifespan=app_and_workers, exception_handlers=exception_handlers)
    if client is not None:
        app.state.whatsapp_client = client
    return app
