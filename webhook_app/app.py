"""The live side: WhatsApp webhooks, the operator API and health, as one Starlette app.

All state is in Postgres, so any number of instances can run behind a load balancer. The
background work (inbox processing, the agent, media) runs in the worker process beside it
(`waflow webhook-worker`, `webhook_app.workers`). `app.state.whatsapp_client`, when set
before start-up, replaces the client built from the environment.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.routing import Route

from resources import settings
from resources.postgres import PostgresResource
from webhook_app import (
    access_log,
    campaign_api,
    console,
    errors,
    generator_api,
    inbox_api,
    openapi,
    operator_api,
    runtime,
    stats,
    webhook,
)

REQUIRED_IN_PRODUCTION = (
    "DATABASE_URL",
    "S3_BUCKET",
    "WHATSAPP_ACCESS_TOKEN",
    "WHATSAPP_PHONE_NUMBER_ID",
    "WHATSAPP_APP_SECRET",
    "WHATSAPP_VERIFY_TOKEN",
    "ADMIN_API_TOKEN",
)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    settings.check_production(REQUIRED_IN_PRODUCTION, "webhook app")
    access_log.install()
    postgres = PostgresResource.from_settings()
    await run_in_threadpool(postgres.migrate)
    app.state.postgres = postgres
    app.state.webhook = await runtime.start(
        postgres.engine, postgres.database_url, getattr(app.state, "whatsapp_client", None)
    )
    yield
    await app.state.webhook.stop()
    postgres.engine.dispose()


# The webhook first: routes are matched in order, and it takes nearly all the traffic.
routes = [
    *webhook.routes,
    Route("/health", stats.health),
    Route("/stats", stats.stats),
    *operator_api.routes,
    *campaign_api.routes,
    *generator_api.routes,
    *inbox_api.routes,
    *openapi.routes,
    *console.routes,
]

# Domain errors become HTTP answers here, for every route (`webhook_app.errors`); an app
# built from these routes takes these handlers too.
exception_handlers = errors.handlers

app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=exception_handlers)

# What the imports above loaded (Dagster, SQLAlchemy, LangChain: some 170,000 objects)
# lives as long as the process. Left to the collector, every full collection scans it all
# and stalls the requests in flight for about 100 ms; frozen, it is never scanned.
gc.freeze()
# Nearly every object a request makes is freed by its reference count; the collector is only
# for cycles. At Python's default (a young collection every 700 allocations) it walked the
# objects of the requests in flight every few requests: 10 % of the app's CPU per webhook.
gc.set_threshold(10_000, 10, 10)
