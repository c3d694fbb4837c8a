"""Inbound customer messages → contacts, conversations, messages and pending media.

WhatsApp redelivers, so a message is stored once per wamid (the unique key decides). A
customer is identified by phone (`from` / `wa_id`) and/or by the business-scoped user id
(`from_user_id` / `user_id`); either alone is enough.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import sqlalchemy as sa

from resources import consent, contact_identity, conversation_messages, conversations, media_files
from resources.phone import InvalidPhoneNumber, to_e164
from webhook_app.payloads import MEDIA_TYPES, Contact, Message

log = logging.getLogger(__name__)

# Kinds that never start an agent turn: they are stored as handled.
SILENT_TYPES = ("reaction", "system", "ephemeral", "request_welcome")


class UnknownPhoneNumber(LookupError):
    """The webhook is for a phone number id no organisation owns."""


@dataclass(frozen=True)
class Customer:
    phone: str | None
    user_id: str | None
    name: str | None


def organisation_of(conn: sa.Connection, phone_number_id: str | None) -> UUID:
    org = conn.execute(
        sa.text("SELECT organisation_id FROM phone_numbers WHERE phone_number_id = :p"),
        {"p": phone_number_id},
    ).scalar_one_or_none()
    if org is None:
        raise UnknownPhoneNumber(
            f"webhook for phone_number_id {phone_number_id!r}, which no organisation owns"
            " (add it to phone_numbers)"
        )
    return org


def customer_of(message: Message, contacts: tuple[Contact, ...]) -> Customer:
    wa_id, user_id = message.sender_wa_id, message.sender_user_id
    profile = _profile(wa_id, user_id, contacts)
    if profile is None and len(contacts) == 1:
        profile = contacts[0]
    customer = _customer(wa_id, user_id, profile)
    if customer is None:
        raise ValueError(f"message {message.id!r} names no customer (no from, no user_id)")
    return customer


def customer_named(
    wa_id: str | None, user_id: str | None, contacts: tuple[Contact, ...]
) -> Customer | None:
    """The customer an item names by its own `wa_id` and/or `user_id` (as `user_preferences`
    items do), with the profile of the `contacts[]` entry that matches; None if it names none."""
    return _customer(wa_id, user_id, _profile(wa_id, user_id, contacts))


def _profile(
    wa_id: str | None, user_id: str | None, contacts: tuple[Contact, ...]
) -> Contact | None:
    for contact in contacts:
        if (wa_id and contact.wa_id == wa_id) or (user_id and contact.user_id == user_id):
            return contact
    return None


def _customer(wa_id: str | None, user_id: str | None, profile: Contact | None) -> Customer | None:
    """Who it is: the item's own ids first, then its profile's."""
    if profile is not None:
        wa_id, user_id = wa_id or profile.wa_id, user_id or profile.user_id
    phone = None
    if wa_id:
        try:
            phone = to_e164(wa_id)
        except InvalidPhoneNumber:
            phone = None
    if phone is None and user_id is None:
        return None
    return Customer(phone, user_id, profile.name if profile is not None else None)


def store(
    conn: sa.Connection,
    organisation_id: UUID,
    phone_number_id: str,
    message: Message,
    customer: Customer,
    received_at: datetime | None = None,
) -> int | None:
    """Store one inbound message; its id, or None when this wamid was already stored.

    `received_at` is when its webhook reached us, which orders the customer's turn;
    `created_at` stays when it was stored, which the buffer's quiet window counts from (a
    backlog applied late must not look long quiet)."""
    wamid = message.id
    if wamid is None:
        raise ValueError("inbound message without an id")
    # Decided before anything else is touched: a redelivery must not recreate what the first
    # delivery changed (the contact of a number change).
    if conversation_messages.is_stored(conn, wamid):
        return None
    kind = message.type
    contact_id = consent.upsert_contact(
        conn, organisation_id, customer.phone, customer.user_id, customer.name
    )
    conversation_id = conversations.on_inbound(
        conn,
        organisation_id,
        contact_id,
        phone_number_id,
        message.sent_at,
        # WhatsApp's notices (a changed number) are not the customer writing: they open no
        # customer-service window.
        opens_window=kind != "system",
    )
    media = message.media
    message_id = conversation_messages.store(
        conn,
        conversation_messages.Inbound(
            organisation_id=organisation_id,
            conversation_id=conversation_id,
            contact_id=contact_id,
            phone_number_id=phone_number_id,
            peer_phone=customer.phone,
            peer_wa_user_id=customer.user_id,
            message_type=kind,
            body=text_of(message),
            payload=json.dumps(message.raw),
            media=json.dumps(media.fields) if media else None,
            wamid=wamid,
            sent_at=message.sent_at,
            received_at=received_at,
            silent=kind in SILENT_TYPES,
        ),
    )
    if message_id is not None and media is not None:
        media_files.add_inbound(
            conn, organisation_id, message_id, media.id, kind, media.mime_type, media.sha256
        )
    return message_id


def text_of(message: Message) -> str | None:
    """What the customer said, as text the agent and an operator can read."""
    kind = message.type
    if kind == "text":
        return message.text
    if kind in MEDIA_TYPES:
        return (message.media.caption or message.media.filename) if message.media else None
    if message.location is not None:
        at = message.location
        place = ", ".join(part for part in (at.name, at.address) if part)
        where = f"{at.latitude}, {at.longitude}"
        return f"[location] {place} ({where})" if place else f"[location] {where}"
    if kind == "contacts":
        names = [c.formatted_name for c in message.contacts]
        return "[shared contacts] " + ", ".join(n for n in names if n)
    if message.interactive is not None:
        reply = message.interactive
        return reply.title or reply.body or reply.response_json
    if message.button is not None:
        return message.button.text or message.button.payload
    if message.reaction is not None:
        return message.reaction.emoji
    if message.order is not None:
        items = message.order.items
        listed = ", ".join(f"{i.quantity} x {i.product_retailer_id}" for i in items)
        said = f": {message.order.text}" if message.order.text else ""
        return f"[order] {listed or 'no items'}{said}"
    if message.system is not None:
        return message.system.body
    return None


def changed_number(message: Message) -> bool:
    """A `system` message saying the customer changed their WhatsApp number."""
    return message.system is not None and message.system.type == "user_changed_number"


def follow_number(
    conn: sa.Connection, organisation_id: UUID, message: Message, message_id: int
) -> Counter:
    """The customer of stored `message_id` (sent from the old number) takes the new number,
    `system.wa_id`; called once per stored notice, so a redelivered webhook does nothing."""
    wa_id = message.system.wa_id if message.system else None
    try:
        new_phone = to_e164(wa_id or "")
    except InvalidPhoneNumber:
        log.warning("number change in message %s names no valid new number: ignored", message_id)
        return Counter(number_changes_ignored=1)
    contact_id, sent_at = conversation_messages.contact_and_time(conn, message_id)
    change = contact_identity.change_number(
        conn, organisation_id, contact_id, new_phone, message_id, sent_at
    )
    return Counter(numbers_changed=1, contacts_merged=int(change.merged_contact_id is not None))
