"""What the app process holds beside its routes: the database engine, the WhatsApp client
(operator messages), and the request path's inbox writer with its connection pool.

The background work is not here: it runs in the worker process (`webhook_app.workers`).
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg_pool
import sqlalchemy as sa

from resources.whatsapp import WhatsAppClient, WhatsAppResource
from webhook_app import signature
from webhook_app.inbox import InboxWriter, open_pool


@dataclass
class Runtime:
    engine: sa.Engine
    client: WhatsAppClient
    pool: psycopg_pool.AsyncConnectionPool
    writer: InboxWriter
    app_secret: str

    async def stop(self) -> None:
        await self.writer.close()
        await self.pool.close()
        self.client.close()


async def start(
    engine: sa.Engine, database_url: str, client: WhatsAppClient | None = None
) -> Runtime:
    """Open the request path's pool and start its inbox writer; the app secret is read
    once here rather than from the environment on every request."""
    pool = open_pool(database_url)
    await pool.open(wait=False)
    return Runtime(
        engine=engine,
        client=client or WhatsAppResource.from_settings().client,
        pool=pool,
        writer=InboxWriter(pool),
        app_secret=signature.app_secret(),
    )
