"""The operator API's view of the webhook inbox (the platform admin's token): redrive the
events whose processing failed for good, as `waflow webhook redrive` does."""

from __future__ import annotations

from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.routing import Route

from resources import webhook_history
from resources.errors import InvalidInput
from webhook_app import bodies
from webhook_app.campaign_api import operation


@operation(200, platform=True)
async def redrive(request: Request) -> Any:
    """`{"since": "2026-01-31", "until": …}` → how many events went back to processing.
    The inbox is the platform's (one webhook for every organisation): admin only.

    ---
    summary: Process again the webhook events that failed for good
    tags: [webhooks]
    requestBody:
      required: true
      content:
        application/json:
          schema: {type: object}
          example: {"since": "2026-03-01T08:00:00Z", "until": "2026-03-01T12:00:00Z"}
    responses:
      "200":
        description: how many events went back to processing
      "422":
        description: since is missing or not an ISO date or time
    """
    body = await bodies.json_object(request)
    if not body.get("since"):
        raise InvalidInput([{"field": "since", "error": "required: an ISO date or date-time"}])
    return await run_in_threadpool(
        webhook_history.redrive,
        request.app.state.postgres.engine,
        str(body["since"]),
        str(body["until"]) if body.get("until") else None,
    )


routes = [Route("/api/webhooks/redrive", redrive, methods=["POST"])]
