"""Operator API (seed 4): list conversations, read a transcript, take a conversation over,
hand it back, dismiss its "needs a human" flag, write to the customer.

While a conversation is taken over the agent stays silent; the operator's messages are
stored in the conversation, which is the agent's memory, so after the handback it knows
what was said. Free-form messages are allowed only within 24 h of the customer's last
message (WhatsApp's customer-service window); outside it a template is needed.

The conversation is named by its `conversation_id`, or by the customer's `phone` or
`user_id` looked up within one organisation: an organisation's token's own (an
`organisation_id` naming another answers 404, as an unknown customer), or, for the platform
admin, the body's `organisation_id`, which it must give when the customer has conversations
in more than one organisation. Every move is recorded with its operator: the body's
`operator` (a name), else the token that made it.

The queries live in `resources.conversations`; the console (`webhook_app.console`) calls
the same functions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from resources import conversations
from resources.errors import (
    BadRequest,
    Conflict,
    DomainError,
    InvalidInput,
    NotFound,
    Refused,
    TooLarge,
)
from resources.phone import InvalidPhoneNumber, to_e164
from resources.queue_message import MEDIA_MESSAGE_TYPES
from resources.storage import S3Storage
from webhook_app import bodies, outbound
from webhook_app.auth import Caller, caller, requires_token
from webhook_app.campaign_api import operation
from webhook_app.runtime import Runtime

SERVICE_WINDOW = conversations.SERVICE_WINDOW
MEDIA_LINK_SECONDS = 300


def _refused(kind: Callable[..., DomainError], message: str, quoted: str | None = None):
    """The action routes' error: they have always answered the message itself in `error`,
    with the caller's input it quotes (`quoted`), which the message proper never holds."""
    return kind(message, summary=quoted or message)


async def _body(request: Request) -> dict[str, Any]:
    try:
        return await bodies.json_object(request)
    except bodies.BodyTooLarge as error:
        raise TooLarge([{"field": "body", "error": str(error)}], summary=str(error)) from None
    except bodies.BodyRefused as error:
        raise _refused(BadRequest, str(error)) from None


def _customer(body: dict[str, Any]) -> tuple[str | None, str | None]:
    phone, user_id = body.get("phone"), body.get("user_id")
    if not phone and not user_id:
        raise _refused(BadRequest, "give the customer's phone (or user_id)")
    if phone:
        try:
            return to_e164(str(phone)), None
        except InvalidPhoneNumber as error:
            raise _refused(BadRequest, "phone is not a valid phone number", str(error)) from None
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
        raise _refused(BadRequest, "organisation_id must be a UUID") from None
    return organisation_id, who.sees(organisation_id)


def operator_of(body: dict[str, Any], who: Caller) -> conversations.Operator:
    """The body's `operator` name, else the caller: the platform admin or a token by id."""
    named = body.get("operator")
    if named is not None and (not isinstance(named, str) or not 0 < len(named.strip()) <= 200):
        raise _refused(BadRequest, "operator must be text of 1 to 200 characters")
    fallback = "platform admin" if who.organisation_id is None else f"token {who.token_id}"
    return conversations.Operator(named.strip() if named else fallback, who.token_id)


def _conversation(
    conn: sa.Connection, body: dict[str, Any], who: Caller
) -> conversations.Conversation:
    if body.get("conversation_id") not in (None, ""):
        return _by_id(conn, body["conversation_id"], who)
    phone, user_id = _customer(body)
    organisation_id, visible = _organisation(body, who)
    found = conversations.find(conn, phone, user_id, organisation_id) if visible else []
    if not found:
        raise _refused(
            NotFound,
            "no conversation with this customer",
            f"no conversation with {phone or user_id}",
        )
    if len(found) > 1:
        raise _refused(
            BadRequest,
            "this customer has conversations in more than one organisation: give organisation_id",
        )
    return found[0]


def _by_id(conn: sa.Connection, given: Any, who: Caller) -> conversations.Conversation:
    try:
        conversation_id = int(given)
    except (TypeError, ValueError):
        raise _refused(BadRequest, "conversation_id must be a number") from None
    try:
        conversation = conversations.load(conn, conversation_id)
    except sa.exc.NoResultFound:
        conversation = None
    if conversation is None or not who.sees(conversation.organisation_id):
        raise _refused(NotFound, f"no conversation {conversation_id}")
    return conversation


Move = Callable[[sa.Connection, int, conversations.Operator], None]


def act(runtime: Runtime, body: dict[str, Any], who: Caller, move: Move) -> None:
    """Take over, hand back or dismiss (`move`), recorded with the operator."""
    operator = operator_of(body, who)
    with runtime.engine.begin() as conn:
        conversation = _conversation(conn, body, who)
        conversations.load(conn, conversation.id, lock=True)
        move(conn, conversation.id, operator)


def send(runtime: Runtime, body: dict[str, Any], who: Caller) -> dict[str, Any]:
    """Queue the operator's message (text, media, or with `template_id` an approved
    template, the only kind allowed outside the 24-hour window), then deliver it."""
    operator = operator_of(body, who)
    with runtime.engine.begin() as conn:
        conversation = _conversation(conn, body, who)
        conversation = conversations.load(conn, conversation.id, lock=True)
        if body.get("template_id") not in (None, ""):
            try:
                message, shown = conversations.template_message(
                    conn,
                    body["template_id"],
                    str(conversation.organisation_id),
                    conversation.contact_id,
                )
            except InvalidInput as error:
                raise InvalidInput(error.errors, summary=error.errors[0]["error"]) from None
        else:
            message, shown = _message_of(body), None
            last = conversation.last_inbound_at
            if last is None or datetime.now(UTC) - last > SERVICE_WINDOW:
                raise _refused(
                    Conflict,
                    "outside the 24-hour customer-service window (no customer message in the"
                    " last 24 h): only an approved template may be sent (template_id)",
                )
        message_id = outbound.queue(
            conn, conversation, message, "operator", operator=operator.name, body=shown
        )
    delivery = outbound.deliver(runtime.engine, runtime.client, message_id)
    if delivery.outcome == "failed":
        raise _refused(Refused, f"WhatsApp refused the message: {delivery.error}")
    status = {"sent": "sent", "retry": "queued"}.get(delivery.outcome, "sending")
    return {"status": status, "message_id": message_id}


def _message_of(body: dict[str, Any]) -> dict[str, Any]:
    text = body.get("message")
    media = body.get("media")
    if media:
        if not isinstance(media, dict) or media.get("type") not in MEDIA_MESSAGE_TYPES:
            raise _refused(
                BadRequest, f"media.type must be one of {', '.join(MEDIA_MESSAGE_TYPES)}"
            )
        if not media.get("link") and not media.get("id"):
            raise _refused(BadRequest, "media needs a link (https URL) or a WhatsApp media id")
        content = {k: media[k] for k in ("link", "id", "filename") if media.get(k)}
        if text and media["type"] != "audio":
            content["caption"] = str(text)
        return {"type": media["type"], media["type"]: content}
    if not isinstance(text, str) or not text.strip():
        raise _refused(BadRequest, "message must be non-empty text (or give media)")
    return outbound.text(text)


async def _answer(request: Request, work: Callable, answer: dict[str, Any] | None = None):
    body = await _body(request)
    result = await run_in_threadpool(work, request.app.state.webhook, body, caller(request))
    return JSONResponse(answer or result)


@requires_token
async def takeover(request: Request) -> JSONResponse:
    """The operator takes the conversation: the agent stays silent, the flag is cleared.
    ---
    summary: Take a conversation over
    tags: [conversations]
    requestBody:
      content:
        application/json:
          example: {"conversation_id": 42, "operator": "Bo"}
    responses:
      200: {description: '{"status": "takeover_complete"}'}
      404: {description: "no such conversation in the caller's organisation"}
    """
    work = functools.partial(act, move=conversations.take_over)
    return await _answer(request, work, {"status": "takeover_complete"})


@requires_token
async def handback(request: Request) -> JSONResponse:
    """The agent answers again.
    ---
    summary: Hand a conversation back to the agent
    tags: [conversations]
    requestBody:
      content:
        application/json:
          example: {"phone": "+16505551234", "operator": "Bo"}
    responses:
      200: {description: '{"status": "handback_complete"}'}
      404: {description: "no such conversation in the caller's organisation"}
    """
    work = functools.partial(act, move=conversations.hand_back)
    return await _answer(request, work, {"status": "handback_complete"})


@requires_token
async def dismiss(request: Request) -> JSONResponse:
    """Lower the "needs a human" flag without taking over.
    ---
    summary: Dismiss a conversation's needs-a-human flag
    tags: [conversations]
    requestBody:
      content:
        application/json:
          example: {"conversation_id": 42, "operator": "Bo"}
    responses:
      200: {description: '{"status": "dismissed"}'}
      404: {description: "no such conversation in the caller's organisation"}
    """
    work = functools.partial(act, move=conversations.dismiss)
    return await _answer(request, work, {"status": "dismissed"})


@requires_token
async def operator_message(request: Request) -> JSONResponse:
    """Write to the customer: free text or media inside the 24-hour window, an approved
    template (`template_id`) at any time.
    ---
    summary: Send an operator message
    tags: [conversations]
    requestBody:
      content:
        application/json:
          example: {"conversation_id": 42, "message": "Hello, Bo here.", "operator": "Bo"}
    responses:
      200: {description: '{"status": "sent", "message_id": 7}'}
      409: {description: 'outside the 24-hour window without a template'}
      422: {description: 'a template that cannot be sent to this customer'}
      502: {description: 'WhatsApp refused the message'}
    """
    return await _answer(request, send)


@functools.cache
def _s3() -> S3Storage:
    return S3Storage.from_settings()


def presign(bucket: str, key: str) -> str:
    """A short-lived link to a copy of inbound media in our bucket."""
    return _s3().client.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=MEDIA_LINK_SECONDS
    )


def _flag(query: Any, name: str) -> bool | None:
    value = query.get(name)
    if value in (None, ""):
        return None
    if value.lower() not in ("true", "false", "1", "0"):
        raise InvalidInput([{"field": name, "error": "must be true or false"}])
    return value.lower() in ("true", "1")


@operation(200)
async def list_conversations(request: Request) -> Any:
    """The caller's conversations, those needing a human first.
    ---
    summary: List conversations
    tags: [conversations]
    parameters:
      - {name: needs_human, in: query, schema: {type: boolean}}
      - {name: taken_over, in: query, schema: {type: boolean}}
      - name: open_window
        in: query
        schema: {type: boolean}
        description: a customer message in the last 24 h
      - name: q
        in: query
        schema: {type: string}
        description: a name, part of a phone number, a user id or a conversation id
      - {name: limit, in: query, schema: {type: integer, default: 50, maximum: 200}}
      - {name: after, in: query, schema: {type: string}, description: "the previous page's next"}
    responses:
      200:
        description: '{"conversations": [{"id", "name", "phone", "needs_human",
          "taken_over", "last_message", "window_ends_at", "unanswered", ...}], "next": cursor}'
    """
    query = request.query_params
    filters = conversations.Filters(
        needs_human=_flag(query, "needs_human"),
        taken_over=_flag(query, "taken_over"),
        open_window=_flag(query, "open_window"),
        q=(query.get("q") or "").strip()[:200] or None,
    )
    return await run_in_threadpool(
        conversations.list_conversations,
        request.app.state.postgres.engine,
        caller(request).organisation_id,
        filters,
        conversations.page_size(query.get("limit", "50")),
        query.get("after") or None,
    )


@operation(200)
async def conversation_messages(request: Request) -> Any:
    """The transcript, a page at a time, newest page first.
    ---
    summary: A conversation's messages
    tags: [conversations]
    parameters:
      - {name: limit, in: query, schema: {type: integer, default: 50, maximum: 200}}
      - {name: before, in: query, schema: {type: string}, description: "the previous page's older"}
    responses:
      200:
        description: '{"conversation": {...}, "messages": [{"id", "direction", "sender",
          "operator", "type", "body", "status", "error_code", "media": {"url"}, ...}],
          "older": cursor}'
      404: {description: "no such conversation in the caller's organisation"}
    """
    query = request.query_params
    return await run_in_threadpool(
        conversations.transcript,
        request.app.state.postgres.engine,
        request.path_params["conversation_id"],
        caller(request).organisation_id,
        presign,
        conversations.page_size(query.get("limit", "50")),
        query.get("before") or None,
    )


routes = [
    Route("/api/v1/conversations", list_conversations, methods=["GET"]),
    Route(
        "/api/v1/conversations/{conversation_id:int}/messages",
        conversation_messages,
        methods=["GET"],
    ),
    Route("/api/v1/takeover", takeover, methods=["POST"]),
    Route("/api/v1/handback", handback, methods=["POST"]),
    Route("/api/v1/dismiss", dismiss, methods=["POST"]),
    Route("/api/v1/operator-message", operator_message, methods=["POST"]),
]
