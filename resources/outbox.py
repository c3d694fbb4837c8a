"""The outbox of replies in a conversation (agent, operator, confirmations): each reply is
an outbound row stored before its send, claimed once for it, then given its result.

The statements of `webhook_app.outbound`, which decides what to send and sends it.
"""

from __future__ import annotations

from uuid import UUID

import sqlalchemy as sa

_QUEUE = sa.text(
    "INSERT INTO messages (organisation_id, conversation_id, contact_id, direction,"
    " sender_type, phone_number_id, peer_phone, peer_wa_user_id, message_type, body,"
    " payload, media, status, operator)"
    " VALUES (:o, :conv, :c, 'outbound', :sender, :p, :phone, :user, :kind, :body,"
    " CAST(:payload AS jsonb), CAST(:media AS jsonb), 'pending', :operator)"
    " RETURNING id"
)
# Only an outbox row (no campaign run) that is still `pending`: the compare-and-set that
# lets one sender through, whoever else tries.
_CLAIM = sa.text(
    "UPDATE messages SET status = 'sending', sending_at = now(), attempts = attempts + 1"
    " WHERE id = :id AND direction = 'outbound' AND campaign_run_id IS NULL"
    " AND status = 'pending'"
    " RETURNING payload, peer_phone, peer_wa_user_id, phone_number_id, attempts"
)
# A receipt may have come first (it finds the row by biz_opaque_callback_data): its status
# and wamid stand.
_SENT = sa.text(
    "UPDATE messages SET status = CASE WHEN status = 'sending' THEN 'sent' ELSE status END,"
    " provider_message_id = COALESCE(provider_message_id, :wamid),"
    " sent_at = COALESCE(sent_at, now()),"
    " payload = payload || jsonb_build_object('wamid', CAST(:wamid AS text))"
    " WHERE id = :id"
)
_RETRY = sa.text(
    "UPDATE messages SET status = 'pending', error_code = :code, error_title = :title"
    " WHERE id = :id AND status = 'sending'"
)
_FAILED = sa.text(
    "UPDATE messages SET status = 'failed', failed_at = now(), error_code = :code,"
    " error_title = :title WHERE id = :id AND status = 'sending'"
)
_DUE = sa.text(
    "SELECT id FROM messages WHERE status = 'pending' AND campaign_run_id IS NULL"
    " AND direction = 'outbound'"
    " AND updated_at < now() - make_interval(secs => :after) ORDER BY id LIMIT :n"
)


def store(
    conn: sa.Connection,
    *,
    organisation_id: UUID,
    conversation_id: int,
    contact_id: int,
    sender_type: str,
    phone_number_id: str | None,
    phone: str | None,
    user_id: str | None,
    kind: str,
    body: str | None,
    payload: str,
    media: str | None,
    operator: str | None,
) -> int:
    """A `pending` outbound row of the conversation (`payload` and `media` as JSON text);
    its id."""
    return conn.execute(
        _QUEUE,
        {
            "o": organisation_id,
            "conv": conversation_id,
            "c": contact_id,
            "sender": sender_type,
            "p": phone_number_id,
            "phone": phone,
            "user": user_id,
            "kind": kind,
            "body": body,
            "payload": payload,
            "media": media,
            "operator": operator,
        },
    ).scalar_one()


def claim(conn: sa.Connection, message_id: int) -> sa.Row | None:
    """`pending → sending` for this send (payload, recipient, number, attempts), or None
    when the row is not ours to send."""
    return conn.execute(_CLAIM, {"id": message_id}).one_or_none()


def mark_sent(conn: sa.Connection, message_id: int, wamid: str) -> None:
    conn.execute(_SENT, {"id": message_id, "wamid": wamid})


def refused(
    conn: sa.Connection, message_id: int, code: int | None, title: str, *, retry: bool
) -> None:
    """WhatsApp refused the send: back in the outbox (`retry`) or `failed`, with why."""
    conn.execute(_RETRY if retry else _FAILED, {"id": message_id, "code": code, "title": title})


def due(conn: sa.Connection, after_seconds: float, limit: int) -> list[int]:
    """Up to `limit` outbox rows left `pending` for `after_seconds`, oldest id first."""
    return list(conn.execute(_DUE, {"after": after_seconds, "n": limit}).scalars().all())
