"""What one webhook app instance runs beside its routes: the inbox writer of the request
path and the background workers (inbox, agent turns, inbound media).

Workers sleep on an event that the request path (or the previous stage) sets, and poll
as well, because another instance may have stored the work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import psycopg_pool
import sqlalchemy as sa
from langchain_core.language_models import BaseChatModel

from resources import settings
from resources.chat import ChatModelResource
from resources.storage import S3Storage
from resources.whatsapp import WhatsAppClient, WhatsAppResource
from webhook_app import buffer, media, processing
from webhook_app.agent import Agent, AgentConfig
from webhook_app.inbox import InboxWriter, open_pool

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0
AGENT_POLL_SECONDS = 0.25
# Early receipts wait for the sender to store their wamid; looking for them is a join over
# every waiting receipt, so it runs on its own, slower clock rather than after every batch.
RECEIPT_POLL_SECONDS = 2.0
RETRY_TURN_SECONDS = 30.0
BUSY_PAUSE_SECONDS = 0.5
BUSY_EVENTS_PER_SECOND = 200
MAX_CONCURRENT_TURNS = 8


@dataclass
class Runtime:
    engine: sa.Engine
    client: WhatsAppClient
    s3: S3Storage
    agent: Agent
    pool: psycopg_pool.AsyncConnectionPool
    writer: InboxWriter
    buffer_seconds: float
    buffer_max_seconds: float
    counters: Counter = field(default_factory=Counter)
    inbox_ready: asyncio.Event = field(default_factory=asyncio.Event)
    turns_ready: asyncio.Event = field(default_factory=asyncio.Event)
    media_ready: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: dict[str, asyncio.Task] = field(default_factory=dict)
    beats: dict[str, float] = field(default_factory=dict)

    def workers_alive(self) -> dict[str, bool]:
        return {name: not task.done() for name, task in self.tasks.items()}

    def start_workers(self, inbox_workers: int) -> None:
        for n in range(inbox_workers):
            self._spawn(f"inbox-{n}", self._inbox_step, self.inbox_ready, POLL_SECONDS)
        self._spawn("agent", self._agent_step, self.turns_ready, AGENT_POLL_SECONDS)
        self._spawn("media", self._media_step, self.media_ready, POLL_SECONDS)
        self._spawn(
            "early-receipts", self._early_receipts_step, asyncio.Event(), RECEIPT_POLL_SECONDS
        )

    async def stop(self) -> None:
        for task in self.tasks.values():
            task.cancel()
        await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        await self.writer.close()
        await self.pool.close()
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
            self.beats[name] = time.time()
            ready.clear()
            try:
                busy = await step()
                failures = 0
            except Exception as error:
                failures += 1
                log.warning(
                    "%s worker: %s", name, str(error).splitlines()[0] if str(error) else error
                )
                await asyncio.sleep(min(30.0, 0.5 * 2**failures))
                continue
            if not busy:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ready.wait(), poll)

    async def _inbox_step(self) -> bool:
        """While webhooks are pouring in, the workers yield to the request path: they take
        larger batches less often, so answering WhatsApp keeps the CPU and the GIL, and the
        durable inbox absorbs the burst (its backlog and age are in /health)."""
        limit = processing.BATCH
        if self.writer.rate() > BUSY_EVENTS_PER_SECOND:
            await asyncio.sleep(BUSY_PAUSE_SECONDS)
            limit = processing.BATCH_WHEN_BUSY
        tally = await asyncio.to_thread(processing.process_batch, self.engine, limit)
        self.counters.update(tally)
        if tally["inbound"]:
            self.turns_ready.set()
            self.media_ready.set()
        return tally["events"] > 0

    async def _agent_step(self) -> bool:
        lease = self.agent.config.model_timeout_seconds + 60
        conversation_ids = await asyncio.to_thread(
            buffer.claim_due,
            self.engine,
            self.buffer_seconds,
            self.buffer_max_seconds,
            lease,
            MAX_CONCURRENT_TURNS,
        )
        await asyncio.gather(*(self._answer(c) for c in conversation_ids))
        return bool(conversation_ids)

    async def _answer(self, conversation_id: int) -> None:
        try:
            turn = await self.agent.answer(conversation_id)
        except Exception as error:
            log.warning("turn of conversation %s not answered: %s", conversation_id, error)
            self.counters["turns_failed"] += 1
            await asyncio.to_thread(
                buffer.release_later, self.engine, conversation_id, RETRY_TURN_SECONDS
            )
            return
        self.counters["turns"] += 1
        self.counters["replies_sent"] += len(turn.get("sent") or [])
        self.counters["fallback_replies"] += int(bool(turn.get("fallback")))

    async def _early_receipts_step(self) -> bool:
        applied = await asyncio.to_thread(processing.apply_early_receipts, self.engine)
        self.counters["receipts_applied_late"] += applied
        return False

    async def _media_step(self) -> bool:
        return await asyncio.to_thread(media.copy_pending, self.engine, self.client, self.s3) > 0


async def start(
    engine: sa.Engine,
    database_url: str,
    chat_model: BaseChatModel | None = None,
    client: WhatsAppClient | None = None,
) -> Runtime:
    """Open the request path's pool and start the workers (`WEBHOOK_WORKERS` inbox workers)."""
    client = client or WhatsAppResource.from_env().client
    model = chat_model or ChatModelResource.from_env().chat_model()
    pool = open_pool(database_url)
    await pool.open(wait=False)
    runtime = Runtime(
        engine=engine,
        client=client,
        s3=S3Storage.from_env(),
        agent=Agent(engine, client, model, AgentConfig.from_env()),
        pool=pool,
        writer=InboxWriter(pool),
        buffer_seconds=float(settings.get("AGENT_BUFFER_SECONDS")),
        buffer_max_seconds=float(settings.get("AGENT_BUFFER_MAX_SECONDS")),
    )
    runtime.start_workers(int(settings.get("WEBHOOK_WORKERS")))
    return runtime
