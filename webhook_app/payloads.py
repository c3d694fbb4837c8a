"""The WhatsApp Business Account webhook: its envelope, checked before anything is stored,
and the event read once into frozen objects by the inbox worker that applies it.

Only the envelope is checked on the request path (`object`, `entry[].changes[].field/value`):
WhatsApp adds fields and message types over time, and those must be stored and skipped, not
refused. The worker's reading (`Event.of`) is as lenient: unknown fields are left in each
object's `raw`, which is what is stored; a part of the wrong type reads as absent, except a
`messages` list that is not a list of objects, which fails the event (kept with its error).
Delivery receipts (`statuses`) are not read here: the database reads them from the stored
event (`resources.message_receipts`).
The shapes are those of Meta's webhook references: the `messages` field and its message
types, the template fields, and the account-level `account_update`,
`phone_number_quality_update` and `business_capability_update`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from resources.account import Tier, tier
from resources.queue_message import MEDIA_MESSAGE_TYPES
from resources.templates import CATEGORY_FIELD, QUALITY_FIELD, STATUS_FIELD
from webhook_app.bodies import BodyRefused, parse_json

# What a customer may send with a media file: what we send, and stickers.
MEDIA_TYPES = (*MEDIA_MESSAGE_TYPES, "sticker")
TEMPLATE_FIELDS = frozenset({STATUS_FIELD, CATEGORY_FIELD, QUALITY_FIELD})
ACCOUNT_FIELD = "account_update"
NUMBER_QUALITY_FIELD = "phone_number_quality_update"
CAPABILITY_FIELD = "business_capability_update"


class BadPayload(ValueError):
    """The body is not a WhatsApp webhook; the message says why (it is the 400's reason)."""


def parse(body: bytes) -> dict[str, Any]:
    try:
        payload = parse_json(body)
    except BodyRefused as error:
        raise BadPayload(str(error)) from None
    problem = envelope_problem(payload)
    if problem:
        raise BadPayload(f"not a WhatsApp webhook payload: {problem}")
    return payload


def receipts_only(payload: dict[str, Any]) -> bool:
    """Whether a checked envelope holds only delivery receipts: every change is a `messages`
    change without `messages` or `errors`. That is the bulk of the traffic, and the inbox
    workers apply such events in the database without reading them (`message_receipts`)."""
    return all(
        change["field"] == "messages"
        and not change["value"].get("messages")
        and not change["value"].get("errors")
        for entry in payload["entry"]
        for change in entry["changes"]
    )


def envelope_problem(payload: Any) -> str | None:
    if not isinstance(payload, dict):
        return "the body must be a JSON object"
    if payload.get("object") != "whatsapp_business_account":
        return 'object must be "whatsapp_business_account"'
    entries = payload.get("entry")
    if not isinstance(entries, list) or not entries:
        return "entry must be a non-empty list"
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("changes"), list):
            return f"entry[{i}].changes must be a list"
        for j, change in enumerate(entry["changes"]):
            if not isinstance(change, dict) or not isinstance(change.get("field"), str):
                return f"entry[{i}].changes[{j}].field must be a string"
            if not isinstance(change.get("value"), dict):
                return f"entry[{i}].changes[{j}].value must be an object"
    return None


def timestamp(value: Any) -> datetime | None:
    """WhatsApp's timestamps are Unix seconds as strings."""
    try:
        return datetime.fromtimestamp(int(value), tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _id(value: Any) -> str | None:
    """An id WhatsApp sends as a string (or, in older payloads, a number); None if absent."""
    if isinstance(value, bool) or not isinstance(value, str | int) or not value:
        return None
    return str(value)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _str(value: Any) -> str | None:
    """A string as sent, empty included (an empty reaction emoji is a removed reaction)."""
    return value if isinstance(value, str) else None


def _number(value: Any) -> int | float | None:
    """A JSON number as sent (a coordinate, a quantity, a price)."""
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _count(value: Any) -> int | None:
    return value if type(value) is int else None


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _dicts(value: Any) -> tuple[dict[str, Any], ...]:
    return tuple(v for v in value if isinstance(v, dict)) if isinstance(value, list) else ()


@dataclass(frozen=True)
class Contact:
    """A `contacts[]` item: who WhatsApp says the customer is (`wa_id` and/or the
    business-scoped `user_id`) and their profile name."""

    wa_id: str | None
    user_id: str | None
    name: str | None

    @classmethod
    def of(cls, item: dict[str, Any]) -> Contact:
        profile = item.get("profile")
        name = profile.get("name") if isinstance(profile, dict) else None
        return cls(
            _id(item.get("wa_id")),
            _id(item.get("user_id")),
            name if isinstance(name, str) else None,
        )


@dataclass(frozen=True)
class System:
    """The content of a `system` message: WhatsApp's notice (a changed number names the
    customer's new `wa_id`)."""

    type: str | None
    wa_id: str | None
    body: str | None


@dataclass(frozen=True)
class Media:
    """The file of a media message, which we fetch by `id`, and what the customer wrote with
    it; `fields` are its attributes as sent (`id`, `mime_type`, `sha256`, `caption`,
    `filename`, `voice`, `animated`), which `messages.media` keeps."""

    id: str
    mime_type: str | None
    sha256: str | None
    caption: str | None
    filename: str | None
    fields: dict[str, Any]


@dataclass(frozen=True)
class Reply:
    """An `interactive` message: the customer's answer to one we sent. `type` names the
    answer's object: `button_reply` (`id`, `title`), `list_reply` (`id`, `title`,
    `description`) or `nfm_reply`, a WhatsApp Flow's (`name`, `body`, `response_json`)."""

    type: str | None
    id: str | None
    title: str | None
    description: str | None
    name: str | None
    body: str | None
    response_json: str | None

    @classmethod
    def of(cls, content: dict[str, Any]) -> Reply:
        kind = _text(content.get("type"))
        answer = _object(content.get(kind)) if kind else {}
        return cls(
            type=kind,
            id=_id(answer.get("id")),
            title=_str(answer.get("title")),
            description=_str(answer.get("description")),
            name=_str(answer.get("name")),
            body=_str(answer.get("body")),
            response_json=_str(answer.get("response_json")),
        )


@dataclass(frozen=True)
class Button:
    """A `button` message: the quick-reply button of a template tapped (its `text`, and the
    `payload` we gave it)."""

    text: str | None
    payload: str | None


@dataclass(frozen=True)
class Reaction:
    """A `reaction` message: an `emoji` on one of our messages (`message_id`); an empty
    emoji takes the reaction back."""

    message_id: str | None
    emoji: str | None


@dataclass(frozen=True)
class Location:
    """A `location` message: the coordinates, and the place's name, address and url when
    the customer picked one."""

    latitude: int | float | None
    longitude: int | float | None
    name: str | None
    address: str | None
    url: str | None


@dataclass(frozen=True)
class SharedContact:
    """One card of a `contacts` message, by its `name.formatted_name` (the rest of the card,
    phones, emails, addresses, stays in the message's `raw`)."""

    formatted_name: str | None


@dataclass(frozen=True)
class OrderItem:
    """One `product_items[]` entry of an order."""

    product_retailer_id: str | None
    quantity: int | float | None
    item_price: int | float | None
    currency: str | None


@dataclass(frozen=True)
class Order:
    """An `order` message: the catalog, the customer's note (`text`) and the items."""

    catalog_id: str | None
    text: str | None
    items: tuple[OrderItem, ...]


@dataclass(frozen=True)
class Message:
    """A `messages[]` item, a customer's inbound message. Its type's own object (`text`,
    `image`, `interactive`, …) is read into the one part of its type (`text` is a text
    message's body; the parts of other types are None); `raw` is the item."""

    id: str | None
    type: str
    sender_wa_id: str | None
    sender_user_id: str | None
    sent_at: datetime | None
    text: str | None
    media: Media | None
    interactive: Reply | None
    button: Button | None
    reaction: Reaction | None
    location: Location | None
    contacts: tuple[SharedContact, ...]
    order: Order | None
    system: System | None
    raw: dict[str, Any]

    @classmethod
    def of(cls, item: Any) -> Message:
        if not isinstance(item, dict):
            raise ValueError("a messages[] item is not an object")
        kind = str(item.get("type") or "unsupported")
        content = item.get(kind) if isinstance(item.get(kind), dict) else {}
        wamid = item.get("id")
        return cls(
            id=wamid if isinstance(wamid, str) and wamid else None,
            type=kind,
            sender_wa_id=_id(item.get("from")),
            sender_user_id=_id(item.get("from_user_id")),
            sent_at=timestamp(item.get("timestamp")),
            text=_str(content.get("body")) if kind == "text" else None,
            media=_media(kind, content),
            interactive=Reply.of(content) if kind == "interactive" else None,
            button=Button(_str(content.get("text")), _str(content.get("payload")))
            if kind == "button"
            else None,
            reaction=Reaction(_text(content.get("message_id")), _str(content.get("emoji")))
            if kind == "reaction"
            else None,
            location=_location(content) if kind == "location" else None,
            # A contacts message's object is the list of cards itself.
            contacts=tuple(
                SharedContact(_str(_object(card.get("name")).get("formatted_name")))
                for card in _dicts(item.get("contacts"))
            )
            if kind == "contacts"
            else (),
            order=_order(content) if kind == "order" else None,
            system=_system(kind, content),
            raw=item,
        )


def _media(kind: str, content: dict[str, Any]) -> Media | None:
    """The file of an image, audio, video, document or sticker; None without one."""
    media_id = _id(content.get("id"))
    if kind not in MEDIA_TYPES or media_id is None:
        return None
    keep = ("id", "mime_type", "sha256", "caption", "filename", "voice", "animated")
    return Media(
        media_id,
        _text(content.get("mime_type")),
        _text(content.get("sha256")),
        _str(content.get("caption")),
        _str(content.get("filename")),
        {k: content[k] for k in keep if k in content},
    )


def _location(content: dict[str, Any]) -> Location:
    return Location(
        latitude=_number(content.get("latitude")),
        longitude=_number(content.get("longitude")),
        name=_str(content.get("name")),
        address=_str(content.get("address")),
        url=_str(content.get("url")),
    )


def _order(content: dict[str, Any]) -> Order:
    return Order(
        _id(content.get("catalog_id")),
        _str(content.get("text")),
        tuple(
            OrderItem(
                _id(i.get("product_retailer_id")),
                _number(i.get("quantity")),
                _number(i.get("item_price")),
                _text(i.get("currency")),
            )
            for i in _dicts(content.get("product_items"))
        ),
    )


def _system(kind: str, content: dict[str, Any]) -> System | None:
    if kind != "system":
        return None
    return System(_text(content.get("type")), _id(content.get("wa_id")), _text(content.get("body")))


@dataclass(frozen=True)
class Preference:
    """A `user_preferences[]` item: the customer (`wa_id` and/or `user_id`) stops or resumes
    (`value`) a `category` of messages. Category and value are as sent: the one applying
    them says which it knows."""

    wa_id: str | None
    user_id: str | None
    category: Any
    value: Any
    sent_at: datetime | None
    detail: str | None

    @classmethod
    def of(cls, item: Any) -> Preference | None:
        """None for an item that is not an object."""
        if not isinstance(item, dict):
            return None
        detail = item.get("detail")
        return cls(
            _id(item.get("wa_id")),
            _id(item.get("user_id")),
            item.get("category"),
            item.get("value"),
            timestamp(item.get("timestamp")),
            detail if isinstance(detail, str) and detail else None,
        )


@dataclass(frozen=True)
class TemplateUpdate:
    """The value of a template field (its status, category or quality changed): the template
    it names (`message_template_name`, `_language`, `_id`) and what changed, as sent."""

    name: str | None
    language: str | None
    template_id: str | None
    event: str | None
    reason: str | None
    pause_title: str | None
    pause_description: str | None
    rejection_reason: str | None
    new_category: str | None
    previous_category: str | None
    correct_category: str | None
    category_update_at: datetime | None
    new_quality_score: str | None
    previous_quality_score: str | None

    @classmethod
    def of(cls, value: dict[str, Any]) -> TemplateUpdate:
        other, rejection = value.get("other_info"), value.get("rejection_info")
        other = other if isinstance(other, dict) else {}
        rejection = rejection if isinstance(rejection, dict) else {}
        meta_id = value.get("message_template_id")
        return cls(
            name=_text(value.get("message_template_name")),
            language=_text(value.get("message_template_language")),
            template_id=str(meta_id) if meta_id is not None else None,
            event=_text(value.get("event")),
            reason=_text(value.get("reason")),
            pause_title=_shown(other.get("title")),
            pause_description=_shown(other.get("description")),
            rejection_reason=_shown(rejection.get("reason")),
            new_category=_text(value.get("new_category")),
            previous_category=_text(value.get("previous_category")),
            correct_category=_text(value.get("correct_category")),
            category_update_at=timestamp(value.get("category_update_timestamp")),
            new_quality_score=_text(value.get("new_quality_score")),
            previous_quality_score=_text(value.get("previous_quality_score")),
        )


def _shown(value: Any) -> str | None:
    return str(value) if value else None


@dataclass(frozen=True)
class QualityUpdate:
    """The value of `phone_number_quality_update`: a number, named by its display number
    only, changed its throughput or (in earlier versions) messaging limit. `event` is as
    sent; the limits are read as Meta's tiers (`TIER_2K`, or a count): the portfolio's
    `max_daily_conversations_per_business`, `current_limit` (a limit, or on a
    THROUGHPUT_UPGRADE the throughput) and `old_limit`, the last two while Meta sends them."""

    display_phone_number: str | None
    event: str | None
    max_daily_conversations_per_business: Tier | None
    current_limit: Tier | None
    old_limit: Tier | None

    @classmethod
    def of(cls, value: dict[str, Any]) -> QualityUpdate:
        return cls(
            display_phone_number=_text(value.get("display_phone_number")),
            event=_text(value.get("event")),
            max_daily_conversations_per_business=tier(
                value.get("max_daily_conversations_per_business")
            ),
            current_limit=tier(value.get("current_limit")),
            old_limit=tier(value.get("old_limit")),
        )


@dataclass(frozen=True)
class CapabilityUpdate:
    """The value of `business_capability_update`: the portfolio's messaging limit, as a tier
    or a count (`max_daily_conversations_per_business`, or the older
    `max_daily_conversation_per_phone`, -1 = unlimited), and how many phone numbers the
    portfolio (`max_phone_numbers_per_business`) or the account (`_per_waba`) may have."""

    max_daily_conversations_per_business: Tier | None
    max_daily_conversation_per_phone: Tier | None
    max_phone_numbers_per_business: int | None
    max_phone_numbers_per_waba: int | None

    @classmethod
    def of(cls, value: dict[str, Any]) -> CapabilityUpdate:
        return cls(
            max_daily_conversations_per_business=tier(
                value.get("max_daily_conversations_per_business")
            ),
            max_daily_conversation_per_phone=tier(value.get("max_daily_conversation_per_phone")),
            max_phone_numbers_per_business=_count(value.get("max_phone_numbers_per_business")),
            max_phone_numbers_per_waba=_count(value.get("max_phone_numbers_per_waba")),
        )


@dataclass(frozen=True)
class Ban:
    """`ban_info` of a DISABLED_UPDATE: `waba_ban_state` (DISABLE, SCHEDULE_FOR_DISABLE,
    REINSTATE) and `waba_ban_date`, as sent."""

    state: str | None
    date: str | None


@dataclass(frozen=True)
class Restriction:
    """One `restriction_info[]` item of an ACCOUNT_RESTRICTION: its `restriction_type`, when
    it ends (`expiration`, Unix seconds) and what to do about it, if said."""

    type: str
    expires_at: datetime | None
    remediation: str | None


@dataclass(frozen=True)
class AccountUpdate:
    """The value of `account_update`: its `event`, and the part that event carries
    (`ban_info`, `restriction_info`, `violation_info.violation_type`); the parts of the
    events we only record (partner, pricing, location…) stay in the value's `raw`."""

    event: str | None
    ban: Ban | None
    restrictions: tuple[Restriction, ...]
    violation_type: str | None

    @classmethod
    def of(cls, value: dict[str, Any]) -> AccountUpdate:
        ban = value.get("ban_info")
        return cls(
            event=_text(value.get("event")),
            ban=Ban(_str(ban.get("waba_ban_state")), _text(ban.get("waba_ban_date")))
            if isinstance(ban, dict)
            else None,
            restrictions=tuple(
                Restriction(
                    item["restriction_type"],
                    timestamp(item.get("expiration")) if item.get("expiration") else None,
                    _text(item.get("remediation")),
                )
                for item in _dicts(value.get("restriction_info"))
                if isinstance(item.get("restriction_type"), str)
            ),
            violation_type=_text(_object(value.get("violation_info")).get("violation_type")),
        )


@dataclass(frozen=True)
class Value:
    """A change's `value`. The parts the messaging fields share are read here (`metadata`,
    `contacts`, `messages`, `errors`, `user_preferences`; `preferences` is None when that is
    not a list), and the field's own object: a template field's `template`,
    `account` (account_update), `quality` (phone_number_quality_update), `capability`
    (business_capability_update). `raw` is the value as sent, which is what is recorded."""

    phone_number_id: str | None
    contacts: tuple[Contact, ...]
    messages: tuple[Message, ...]
    errors: tuple[dict[str, Any], ...]
    preferences: tuple[Preference | None, ...] | None
    template: TemplateUpdate | None
    account: AccountUpdate | None
    quality: QualityUpdate | None
    capability: CapabilityUpdate | None
    raw: dict[str, Any]

    @classmethod
    def of(cls, field: str, value: dict[str, Any]) -> Value:
        metadata = value.get("metadata")
        messages = value.get("messages") if field == "messages" else None
        if messages and not isinstance(messages, list):
            raise ValueError("messages must be a list")
        preferences = value.get("user_preferences")
        return cls(
            phone_number_id=_id(metadata.get("phone_number_id"))
            if isinstance(metadata, dict)
            else None,
            contacts=tuple(Contact.of(c) for c in _dicts(value.get("contacts"))),
            messages=tuple(Message.of(m) for m in messages or ()),
            errors=_dicts(value.get("errors")),
            preferences=tuple(Preference.of(p) for p in preferences)
            if isinstance(preferences, list)
            else None,
            template=TemplateUpdate.of(value) if field in TEMPLATE_FIELDS else None,
            account=AccountUpdate.of(value) if field == ACCOUNT_FIELD else None,
            quality=QualityUpdate.of(value) if field == NUMBER_QUALITY_FIELD else None,
            capability=CapabilityUpdate.of(value) if field == CAPABILITY_FIELD else None,
            raw=value,
        )


@dataclass(frozen=True)
class Change:
    field: str
    value: Value


@dataclass(frozen=True)
class Entry:
    """An `entry[]` item: the WhatsApp Business account it concerns (`id`, the WABA id), when
    (`time`, which account and template changes carry no other), and its changes."""

    waba_id: str | None
    time: datetime | None
    changes: tuple[Change, ...]


@dataclass(frozen=True)
class Event:
    """One stored webhook event, read."""

    entries: tuple[Entry, ...]

    @classmethod
    def of(cls, payload: Any) -> Event:
        """`ValueError` when it is not a webhook event, or its messages cannot be read."""
        problem = envelope_problem(payload)
        if problem:
            raise ValueError(f"not a WhatsApp webhook payload: {problem}")
        return cls(
            tuple(
                Entry(
                    _id(entry.get("id")),
                    timestamp(entry.get("time")),
                    tuple(
                        Change(c["field"], Value.of(c["field"], c["value"]))
                        for c in entry["changes"]
                    ),
                )
                for entry in payload["entry"]
            )
        )

    def changes(self) -> list[Change]:
        """Every change of every entry, in order."""
        return [change for entry in self.entries for change in entry.changes]
