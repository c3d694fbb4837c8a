"""The SQL of a conversation's messages: an inbound message stored as it arrives, the rows the
agent reads as a turn and marks handled, the media key of a copied inbound file, and the
operator's page of a conversation."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa


@dataclass(frozen=True)
class Inbound:
    """An inbound message's row. `received_at` is when its webhook reached us (it orders the
    customer's turn); `created_at` stays when it was stored, which the buffer's quiet window
    counts from. A `silent` one (a reaction, a receipt-like notice) is stored handled."""

    organisation_id: UUID
    conversation_id: int
    contact_id: int
    phone_number_id: str
    peer_phone: str | None
    peer_wa_user_id: str | None
    message_type: str
    body: str | None
    payload: str
    media: str | None
    wamid: str
    sent_at: datetime | None
    received_at: datetime | None
    silent: bool


def store(conn: sa.Connection, message: Inbound) -> int | None:
    """The new row's id, or None when the wamid is stored already."""
    return conn.execute(
        sa.text(
            "INSERT INTO messages (organisation_id, conversation_id, contact_id, direction,"
            " sender_type, phone_number_id, peer_phone, peer_wa_user_id, message_type, body,"
            " payload, media, provider_message_id, status, provider_ts, received_at, handled_at)"
            " VALUES (:o, :conv, :c, 'inbound', 'customer', :p, :phone, :user, :kind, :body,"
            " CAST(:payload AS jsonb), CAST(:media AS jsonb), :wamid, 'received', :ts, :received,"
            " CASE WHEN :silent THEN now() END)"
            " ON CONFLICT (provider_message_id) DO NOTHING RETURNING id"
        ),
        {
            "o": message.organisation_id,
            "conv": message.conversation_id,
            "c": message.contact_id,
            "p": message.phone_number_id,
            "phone": message.peer_phone,
            "user": message.peer_wa_user_id,
            "kind": message.message_type,
            "body": message.body,
            "payload": message.payload,
            "media": message.media,
            "wamid": message.wamid,
            "ts": message.sent_at,
            "received": message.received_at,
            "silent": message.silent,
        },
    ).scalar_one_or_none()


def is_stored(conn: sa.Connection, wamid: str) -> bool:
    """Whether this wamid is stored already. The lock makes a worker holding the same wamid
    wait for the other's commit."""
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:w, 0))"), {"w": wamid})
    found = conn.execute(
        sa.text("SELECT 1 FROM messages WHERE provider_message_id = :w"), {"w": wamid}
    ).first()
    return found is not None


def contact_and_time(conn: sa.Connection, message_id: int) -> tuple[int, datetime | None]:
    """The contact a stored message came from, and when WhatsApp says it was sent."""
    contact_id, sent_at = conn.execute(
        sa.text("SELECT contact_id, provider_ts FROM messages WHERE id = :m"), {"m": message_id}
    ).one()
    return contact_id, sent_at


def set_media_key(conn: sa.Connection, message_id: int, bucket: str, key: str) -> None:
    """Where the message's inbound file was copied in our bucket."""
    conn.execute(
        sa.text(
            "UPDATE messages SET media = coalesce(media, '{}'::jsonb)"
            " || jsonb_build_object('s3_bucket', CAST(:b AS text), 's3_key', CAST(:k AS text))"
            " WHERE id = :m"
        ),
        {"b": bucket, "k": key, "m": message_id},
    )


def recent(conn: sa.Connection, conversation_id: int, rows: int) -> list[sa.Row]:
    """The latest `rows` rows stored, in the order they reached us: inbox workers apply
    webhook events concurrently, so the customer's messages are stored (`created_at`) out of
    the order they sent them (`received_at`)."""
    return conn.execute(
        sa.text(
            "SELECT * FROM (SELECT id, direction, sender_type, message_type, body, media,"
            " handled_at, created_at, received_at FROM messages WHERE conversation_id = :c"
            " ORDER BY created_at DESC, id DESC LIMIT :n) recent"
            " ORDER BY coalesce(received_at, created_at), id"
        ),
        {"c": conversation_id, "n": rows},
    ).all()


def mark_handled(conn: sa.Connection, message_ids: list[int]) -> None:
    conn.execute(
        sa.text("UPDATE messages SET handled_at = now() WHERE id = ANY(:ids)"),
        {"ids": message_ids},
    )


def page(
    conn: sa.Connection,
    conversation_id: int,
    rows: int,
    before: tuple[str, int] | None = None,
) -> list[sa.RowMapping]:
    """Up to `rows` of the conversation's messages, newest first, older than `before`
    (created_at, id) when given, each with its first media row's fields."""
    params: dict[str, Any] = {"c": conversation_id, "n": rows}
    keyset = ""
    if before is not None:
        keyset = " AND (m.created_at, m.id) < (CAST(:b_at AS timestamptz), :b_id)"
        params |= {"b_at": before[0], "b_id": before[1]}
    return (
        conn.execute(
            sa.text(
                "SELECT m.id, m.direction, m.sender_type, m.operator, m.message_type, m.body,"
                " m.status, m.status_reason, m.error_code, m.error_title, m.created_at,"
                " m.sent_at, m.delivered_at, m.read_at, m.failed_at, m.campaign_run_id,"
                " md.id AS media_id, md.media_type, md.mime_type, md.status AS media_status,"
                " md.s3_bucket, md.s3_key, md.size_bytes"
                " FROM messages m LEFT JOIN LATERAL (SELECT * FROM media"
                "   WHERE media.message_id = m.id ORDER BY media.id LIMIT 1) md ON true"
                f" WHERE m.conversation_id = :c{keyset}"
                " ORDER BY m.created_at DESC, m.id DESC LIMIT :n"
            ),
            params,
        )
        .mappings()
        .all()
    )
