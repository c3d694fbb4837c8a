"""`/webhook`: the verification handshake and the event receiver.

The receiver only reads (capped), verifies, stores and answers; processing runs in the
background workers. Order of refusals: too large (413) before anything else is read,
unsigned or wrongly signed (403), not a WhatsApp payload (400), not stored (503).
"""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from resources import settings
from webhook_app import signature
from webhook_app.bodies import BodyTooLarge, read_capped
from webhook_app.inbox import InboxUnavailable
from webhook_app.payloads import BadPayload, parse, receipts_only
from webhook_app.runtime import Runtime

MAX_BODY_BYTES = 4 * 1024 * 1024


# Every stored event gets the same answer: built once, sent as is.
RECEIVED = JSONResponse({"status": "received"})


async def verify(request: Request) -> Response:
    params = request.query_params
    token = params.get("hub.verify_token", "").encode()
    expected = settings.require("WHATSAPP_VERIFY_TOKEN").encode()
    if params.get("hub.mode") == "subscribe" and hmac.compare_digest(token, expected):
        return PlainTextResponse(params.get("hub.challenge", ""))
    return _error(403, "verification failed: wrong hub.mode or hub.verify_token")


async def receive(request: Request) -> Response:
    header = request.headers.get("x-hub-signature-256")
    if not header:
        return _error(403, "missing X-Hub-Signature-256 header")
    try:
        body = await read_capped(request, MAX_BODY_BYTES)
    except BodyTooLarge:
        return _error(413, f"body larger than {MAX_BODY_BYTES} bytes")
    runtime: Runtime = request.app.state.webhook
    if not signature.is_valid(runtime.app_secret, body, header):
        return _error(403, "X-Hub-Signature-256 does not match the body")
    try:
        await runtime.writer.store(body, receipts_only(parse(body)))
    except BadPayload as error:
        return _error(400, str(error))
    except InboxUnavailable as error:
        return _error(503, str(error), headers={"Retry-After": "5"})
    return RECEIVED


def _error(status: int, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


routes = [
    Route("/webhook", receive, methods=["POST"]),
    Route("/webhook", verify, methods=["GET"]),
]
