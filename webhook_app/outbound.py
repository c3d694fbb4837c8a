"""Messages the business side sends in a conversation (agent, operator, confirmations).

They are stored as outbound rows of the conversation, so the messages table is the whole
conversation: what the agent remembers, what an operator reads, what the archive keeps.
The row comes first (an outbox: `queue`, in the transaction that decides to answer), the
send after its commit (`deliver`), so a crash at any point neither loses the reply's record
nor sends it twice. Rows a crash or a retryable error left `pending` are sent by the webhook
worker's outbox loop (`deliver_due`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from resources import crash_points, outbox
from resources.conversations import Conversation
from resources.graph_errors import ErrorClass, classify
from resources.whatsapp import WhatsAppClient

log = logging.getLogger(__name__)


OUTBOX_RETRY_SECONDS = 10.0
MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class Delivery:
    """What one delivery came to: `sent` (with the wamid), `retry` (back in the outbox),
    `failed` (with WhatsApp's code and title), `unclear` (the request may have reached
    WhatsApp: left `sending`, never sent again) or `taken` (not ours to send)."""

    message_id: int
    outcome: str
    wamid: str | None = None
    error: str | None = None


def queue(
    conn: sa.Connection,
    conversation: Conversation,
    message: dict[str, Any],
    sender_type: str,
    *,
    operator: str | None = None,
    body: str | None = None,
) -> int:
    """Store `message` (`type` + its object) for the customer as a `pending` outbound row of
    the conversation, in the caller's transaction; `deliver` sends it after the commit.
    `operator` names who wrote it; `body` is the text kept for the transcript when the
    message's own object has none (a template's rendered text)."""
    kind = message["type"]
    content = message.get(kind) or {}
    return outbox.store(
        conn,
        organisation_id=conversation.organisation_id,
        conversation_id=conversation.id,
        contact_id=conversation.contact_id,
        sender_type=sender_type,
        phone_number_id=conversation.phone_number_id,
        phone=conversation.phone,
        user_id=conversation.user_id,
        kind=kind,
        body=body or content.get("body") or content.get("caption"),
        payload=json.dumps(message),
        media=json.dumps(content) if kind not in ("text", "template") else None,
        operator=operator,
    )


def deliver(engine: sa.Engine, client: WhatsAppClient, message_id: int) -> Delivery:
    """Send one outbox row at most once: the claim (`pending → sending`) commits before the
    request, and the answer is recorded after it. A crash between the two leaves the row in
    `sending`: it is never sent again, and the `sent` receipt, which carries the row's id in
    `biz_opaque_callback_data`, records its wamid."""
    crash_points.reached("outbound.queued")
    with engine.begin() as conn:
        row = outbox.claim(conn, message_id)
    if row is None:
        return Delivery(message_id, "taken")
    message = {**row.payload, "biz_opaque_callback_data": str(message_id)}
    try:
        sent = client.send(
            row.peer_phone or "",
            message,
            phone_number_id=row.phone_number_id,
            recipient=None if row.peer_phone else row.peer_wa_user_id,
        )
    except Exception as error:
        return _refused(engine, message_id, row.attempts, error)
    crash_points.reached("outbound.accepted")
    with engine.begin() as conn:
        outbox.mark_sent(conn, message_id, sent.wamid)
    return Delivery(message_id, "sent", wamid=sent.wamid)


def deliver_due(engine: sa.Engine, client: WhatsAppClient, limit: int = 50) -> int:
    """Send the outbox rows left `pending` (a crash before their delivery, or a retryable
    error) for `OUTBOX_RETRY_SECONDS`; how many were sent."""
    with engine.connect() as conn:
        ids = outbox.due(conn, OUTBOX_RETRY_SECONDS, limit)
    return sum(deliver(engine, client, message_id).outcome == "sent" for message_id in ids)


def _refused(engine: sa.Engine, message_id: int, attempts: int, error: Exception) -> Delivery:
    verdict = classify(error)
    if verdict.kind is ErrorClass.AMBIGUOUS:
        log.warning("message %s: %s; left in sending, not sent again", message_id, verdict.title)
        return Delivery(message_id, "unclear", error=verdict.title)
    retry = verdict.kind is ErrorClass.RETRYABLE and attempts < MAX_ATTEMPTS
    with engine.begin() as conn:
        outbox.refused(conn, message_id, verdict.code, verdict.title, retry=retry)
    reason = f"{verdict.code} {verdict.title}" if verdict.code is not None else verdict.title
    return Delivery(message_id, "retry" if retry else "failed", error=reason)


def text(body: str) -> dict[str, Any]:
    return {"type": "text", "text": {"body": body, "preview_url": False}}
