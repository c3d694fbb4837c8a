"""Messages the business side sends in a conversation (agent, operator, confirmations).

They go out through the shared `WhatsAppClient` and are stored as outbound rows of the
conversation, so the messages table is the whole conversation: what the agent remembers,
what an operator reads, what the archive keeps.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import sqlalchemy as sa

from resources.whatsapp import WhatsAppClient


@dataclass(frozen=True)
class Conversation:
    id: int
    organisation_id: UUID
    contact_id: int
    phone: str | None
    user_id: str | None
    phone_number_id: str | None
    human_takeover: bool
    opted_out: bool
    last_inbound_at: Any


_SELECT = (
    "SELECT v.id, v.organisation_id, v.contact_id, c.phone, c.wa_user_id, v.phone_number_id,"
    " v.human_takeover, c.opted_out, v.last_inbound_at"
    " FROM conversations v JOIN contacts c ON c.id = v.contact_id"
)


def load(conn: sa.Connection, conversation_id: int, lock: bool = False) -> Conversation:
    sql = _SELECT + " WHERE v.id = :id" + (" FOR UPDATE OF v" if lock else "")
    return Conversation(*conn.execute(sa.text(sql), {"id": conversation_id}).one())


def find(
    conn: sa.Connection, phone: str | None, user_id: str | None, organisation_id: str | None
) -> list[Conversation]:
    """The conversation of the customer with this phone (E.164) or business-scoped user id
    in the organisation (one at most), or, with no organisation, in each that has one (the
    first two: enough to tell that the customer is not one organisation's)."""
    rows = conn.execute(
        sa.text(
            _SELECT + " WHERE (c.phone = :p OR c.wa_user_id = :u)"
            " AND (CAST(:o AS uuid) IS NULL OR v.organisation_id = CAST(:o AS uuid))"
            " ORDER BY v.id LIMIT 2"
        ),
        {"p": phone, "u": user_id, "o": organisation_id},
    ).all()
    return [Conversation(*row) for row in rows]


def send(
    conn: sa.Connection,
    client: WhatsAppClient,
    conversation: Conversation,
    message: dict[str, Any],
    sender_type: str,
) -> int:
    """Send `message` (`type` + its object) to the customer and store it; the row id."""
    sent = client.send(
        conversation.phone or "",
        message,
        phone_number_id=conversation.phone_number_id,
        recipient=None if conversation.phone else conversation.user_id,
    )
    kind = message["type"]
    content = message.get(kind) or {}
    return conn.execute(
        sa.text(
            "INSERT INTO messages (organisation_id, conversation_id, contact_id, direction,"
            " sender_type, phone_number_id, peer_phone, peer_wa_user_id, message_type, body,"
            " payload, media, provider_message_id, status, sent_at)"
            " VALUES (:o, :conv, :c, 'outbound', :sender, :p, :phone, :user, :kind, :body,"
            " CAST(:payload AS jsonb), CAST(:media AS jsonb), :wamid, 'sent', now())"
            " RETURNING id"
        ),
        {
            "o": conversation.organisation_id,
            "conv": conversation.id,
            "c": conversation.contact_id,
            "sender": sender_type,
            "p": conversation.phone_number_id,
            "phone": conversation.phone,
            "user": conversation.user_id,
            "kind": kind,
            "body": content.get("body") or content.get("caption"),
            "payload": json.dumps({**message, "wamid": sent.wamid}),
            "media": json.dumps(content) if kind != "text" else None,
            "wamid": sent.wamid,
        },
    ).scalar_one()


def text(body: str) -> dict[str, Any]:
    return {"type": "text", "text": {"body": body, "preview_url": False}}
