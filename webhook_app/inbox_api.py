"""The operator API's view of the webhook inbox (bearer `ADMIN_API_TOKEN`): redrive the
events whose processing failed for good, as `waflow webhook redrive` does."""

from __future__ import annotations

import json
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.routing import Route

from resources import webhook_history
from resources.campaign_admin import InvalidInput
from webhook_app.campaign_api import operation


@operation(200)
async def redrive(request: Request) -> Any:
    """`{"since": "2026-01-31", "until": …}` → how many events went back to processing."""
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise InvalidInput([{"field": "body", "error": "must be a JSON object"}])
    if not body.get("since"):
        raise InvalidInput([{"field": "since", "error": "required: an ISO date or date-time"}])
    return await run_in_threadpool(
        webhook_history.redrive,
        request.app.state.postgres.engine,
        str(body["since"]),
        str(body["until"]) if body.get("until") else None,
    )


routes = [Route("/api/webhooks/redrive", redrive, methods=["POST"])]
