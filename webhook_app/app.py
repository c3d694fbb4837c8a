"""The live side: WhatsApp webhooks, the operator API and health, as one Starlette app.

All state is in Postgres, so any number of instances can run behind a load balancer.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from resources import settings
from resources.postgres import PostgresResource
from webhook_app import campaign_api

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
    settings.check_production(REQUIRED_IN_PRODUCTION)
    postgres = PostgresResource.from_env()
    await run_in_threadpool(postgres.migrate)
    app.state.postgres = postgres
    yield
    postgres.engine.dispose()


async def health(request: Request) -> JSONResponse:
    postgres: PostgresResource = request.app.state.postgres
    try:
        await run_in_threadpool(postgres.ping)
    except sa.exc.SQLAlchemyError as error:
        reason = str(error.orig if hasattr(error, "orig") else error).splitlines()[0]
        return JSONResponse({"status": "unavailable", "database": reason}, status_code=503)
    return JSONResponse({"status": "ok", "database": "ok"})


routes = [
    Route("/health", health),
    *campaign_api.routes,
]

app = Starlette(routes=routes, lifespan=lifespan)
