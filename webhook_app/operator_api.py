"""Operator API (seed 4): take a conversation over, hand it back, write to the customer.

While a conversation is taken over the agent stays silent; the operator's messages are
stored in the conversation, which is the agent's memory, so after the handback it knows
what was said. Free-form messages are allowed only within 24 h of the customer's last
message (WhatsApp's customer-service window); outside it a template is needed.

The customer is looked up within one organisation: an organisation's token's own (an
`organisation_id` naming another answers 404, as an unknown customer), or, for the platform
admin, the body's `organisation_id`, which it must give when the customer has conversations
in more than one organisation.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from resources.phone import InvalidPhoneNumber, to_e164
from webhook_app import bodies, outbound
from webhook_app.auth import Caller, caller, requires_token
from webhook_app.runtime import Runtime

SERVICE_WINDOW = timedelta(hours=24)
MEDIA_KINDS = ("image", "video", "document", "audio")


class RequestError(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


async def _body(request: Request) -> dict[str, Any]:
    try:
        return await bodies.json_object(request)
    except bodies.BodyRefused as error:
        status = 413 if isinstance(error, bodies.BodyTooLarge) else 400
        raise RequestError(status, str(error)) from None


def _customer(body: dict[str, Any]) -> tuple[str | None, str | None]:
    phone, user_id = body.get("phone"), body.get("user_id")
    if not phone and not user_id:
        raise RequestError(400, "give the customer's phone (or user_id)")
    if phone:
        try:
            return to_e164(str(phone)), None
        except InvalidPhoneNumber as error:
            raise RequestError(400, str(error)) from None
    return None, str(user_id)


def _organisation(body: dict[str, Any], who: Caller) -> tuple[str | None, bool]:
    """The organisation to look in (None: any, for the platform admin), and whether the
    caller may see that one."""
    given = body.get("organisation_id")
    if given in (None, ""):
        return who.organisation_id, True
    try:
        organisation_id = str(UUID(str(given)))
    except ValueError:
        raise RequestError(400, "organisation_id must be a UUID") from None
    return organisation_id, who.sees(organisation_id)


def _conversation(conn: sa.Connection, body: dict[str, Any], who: Caller) -> outbound.Conversation:
    phone, user_id = _customer(body)
    organisation_id, visible = _organisation(body, who)
    found = outbound.find(conn, phone, user_id, organisation_id) if visible else []
    if not found:
        raise RequestError(404, f"no conversation with {phone or user_id}")
    if len(found) > 1:
        raise RequestError(
            400,
            "this customer has conversations in more than one organisation: give organisation_id",
        )
    return found[0]


def _set_takeover(runtime: Runtime, body: dict[str, Any], who: Caller, taken: bool) -> None:
    with runtime.engine.begin() as conn:
        conversation = _conversation(conn, body, who)
        conn.execute(
            sa.text(
                "UPDATE conversations SET human_takeover = :t,"
                " takeover_at = CASE WHEN :t THEN now() END,"
                " takeover_by = CASE WHEN :t THEN :by END WHERE id = :id"
            ),
            {"t": taken, "by": str(body.get("operator") or "operator"), "id": conversation.id},
        )


def _operator_message(runtime: Runtime, body: dict[str, Any], who: Caller) -> dict[str, Any]:
    message = _message_of(body)
    with runtime.engine.begin() as conn:
        conversation = _conversation(conn, body, who)
        conversation = outbound.load(conn, conversation.id, lock=True)
        last = conversation.last_inbound_at
        if last is None or datetime.now(UTC) - last > SERVICE_WINDOW:
            raise RequestError(
                409,
                "outside the 24-hour customer-service window (no customer message in the"
                " last 24 h): only an approved template may be sent",
            )
        message_id = outbound.queue(conn, conversation, message, "operator")
    delivery = outbound.deliver(runtime.engine, runtime.client, message_id)
    if delivery.outcome == "failed":
        raise RequestError(502, f"WhatsApp refused the message: {delivery.error}")
    status = {"sent": "sent", "retry": "queued"}.get(delivery.outcome, "sending")
    return {"status": status, "message_id": message_id}


def _message_of(body: dict[str, Any]) -> dict[str, Any]:
    text = body.get("message")
    media = body.get("media")
    if media:
        if not isinstance(media, dict) or media.get("type") not in MEDIA_KINDS:
            raise RequestError(400, f"media.type must be one of {', '.join(MEDIA_KINDS)}")
        if not media.get("link") and not media.get("id"):
            raise RequestError(400, "media needs a link (https URL) or a WhatsApp media id")
        content = {k: media[k] for k in ("link", "id", "filename") if media.get(k)}
        if text and media["type"] != "audio":
            content["caption"] = str(text)
        return {"type": media["type"], media["type"]: content}
    if not isinstance(text, str) or not text.strip():
        raise RequestError(400, "message must be non-empty text (or give media)")
    return outbound.text(text)


def _endpoint(work, doc: str, answer: dict[str, Any] | None = None):
    @requires_token
    async def endpoint(request: Request) -> JSONResponse:
        try:
            body = await _body(request)
            result = await run_in_threadpool(work, request.app.state.webhook, body, caller(request))
        except RequestError as error:
            return JSONResponse({"error": error.reason}, status_code=error.status)
        return JSONResponse(answer or result)

    endpoint.__doc__ = doc
    return endpoint


def _doc(summary: str, example: str, ok: str, *errors: str) -> str:
    """The route's OpenAPI operation (see `webhook_app.openapi`)."""
    described = "".join(f"\n      {e}" for e in errors)
    return f"""{summary}.

    ---
    summary: "{summary}"
    tags: [conversations]
    requestBody:
      required: true
      content:
        application/json:
          schema: {{type: object}}
          example: {example}
    responses:
      "200":
        description: "{ok}"
      "400":
        description: no phone or user_id, a bad phone, or a customer of several organisations
          without organisation_id
      "404":
        description: no conversation with this customer in the caller's organisation{described}
    """


routes = [
    Route(
        "/api/v1/takeover",
        _endpoint(
            lambda r, b, c: _set_takeover(r, b, c, True),
            _doc(
                "Take a conversation over: the agent stays silent",
                '{"phone": "+16505551234", "operator": "Bo"}',
                "takeover_complete",
            ),
            {"status": "takeover_complete"},
        ),
        methods=["POST"],
    ),
    Route(
        "/api/v1/handback",
        _endpoint(
            lambda r, b, c: _set_takeover(r, b, c, False),
            _doc(
                "Hand a conversation back to the agent",
                '{"phone": "+16505551234"}',
                "handback_complete",
            ),
            {"status": "handback_complete"},
        ),
        methods=["POST"],
    ),
    Route(
        "/api/v1/operator-message",
        _endpoint(
            _operator_message,
            _doc(
                "Write to the customer as an operator",
                '{"phone": "+16505551234", "message": "Your parcel left today",'
                ' "media": {"type": "image", "link": "https://example.com/parcel.jpg"}}',
                "sent, queued or sending, with the message's id",
                '"409":\n        description: outside the 24-hour customer-service window',
                '"502":\n        description: WhatsApp refused the message',
            ),
        ),
        methods=["POST"],
    ),
]
