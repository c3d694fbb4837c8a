"""WhatsApp Cloud API webhook payloads in their documented shapes, and signed posting."""

from __future__ import annotations

import itertools
import json
import time
from typing import Any

from webhook_app.signature import DEV_APP_SECRET, sign

PHONE_NUMBER_ID = "106540352242922"
DISPLAY_PHONE = "15550783881"
WABA_ID = "102290129340398"
_ids = itertools.count(1)


def envelope(value: dict[str, Any], field: str = "messages") -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": WABA_ID, "changes": [{"value": value, "field": field}]}],
    }


def _metadata() -> dict[str, Any]:
    return {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": DISPLAY_PHONE, "phone_number_id": PHONE_NUMBER_ID},
    }


def status(
    wamid: str,
    kind: str,
    recipient: str = "16505551234",
    at: int | None = None,
    callback: str | None = None,
    error: tuple[int, str] | None = None,
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": wamid,
        "status": kind,
        "timestamp": str(at or int(time.time())),
        "recipient_id": recipient,
    }
    if kind != "failed":
        item["conversation"] = {
            "id": "CONVERSATION_ID",
            "origin": {"type": "marketing"},
        }
        item["pricing"] = {"billable": True, "pricing_model": "PMP", "category": "marketing"}
    if callback is not None:
        item["biz_opaque_callback_data"] = callback
    if error:
        code, title = error
        item["errors"] = [
            {
                "code": code,
                "title": title,
                "message": title,
                "error_data": {"details": f"{title} (details)"},
            }
        ]
    return item


def statuses(*items: dict[str, Any]) -> dict[str, Any]:
    return envelope({**_metadata(), "statuses": list(items)})


def message(
    kind: str,
    content: dict[str, Any] | None = None,
    wa_id: str | None = "16505551234",
    user_id: str | None = None,
    wamid: str | None = None,
    at: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    item: dict[str, Any] = {
        "id": wamid or f"wamid.IN{next(_ids):06d}",
        "timestamp": str(at or int(time.time())),
        "type": kind,
    }
    item["from"] = wa_id or ""
    if user_id:
        item["from_user_id"] = user_id
    if content is not None:
        item[kind] = content
    item.update(extra)
    return item


def inbound(
    *items: dict[str, Any],
    name: str = "Ana",
    wa_id: str | None = "16505551234",
    user_id: str | None = None,
) -> dict[str, Any]:
    contact: dict[str, Any] = {"profile": {"name": name}}
    if wa_id:
        contact["wa_id"] = wa_id
    if user_id:
        contact["user_id"] = user_id
    return envelope({**_metadata(), "contacts": [contact], "messages": list(items)})


def text(body: str, **kw: Any) -> dict[str, Any]:
    return message("text", {"body": body}, **kw)


# One of every inbound type, as the Cloud API documents them.
def every_type(wa_id: str = "16505551234") -> list[dict[str, Any]]:
    media = {"mime_type": "image/jpeg", "sha256": "abc", "id": "MEDIA_IMAGE_1"}
    return [
        text("hello", wa_id=wa_id),
        message("image", {**media, "caption": "my receipt"}, wa_id=wa_id),
        message(
            "audio",
            {
                "mime_type": "audio/ogg; codecs=opus",
                "sha256": "d",
                "id": "MEDIA_AUDIO_1",
                "voice": True,
            },
            wa_id=wa_id,
        ),
        message(
            "video", {"mime_type": "video/mp4", "sha256": "e", "id": "MEDIA_VIDEO_1"}, wa_id=wa_id
        ),
        message(
            "document",
            {
                "mime_type": "application/pdf",
                "sha256": "f",
                "id": "MEDIA_DOC_1",
                "filename": "invoice.pdf",
            },
            wa_id=wa_id,
        ),
        message(
            "sticker",
            {"mime_type": "image/webp", "sha256": "g", "id": "MEDIA_STICKER_1", "animated": False},
            wa_id=wa_id,
        ),
        message(
            "location",
            {"latitude": 38.9, "longitude": -77.03, "name": "Main St shop", "address": "1 Main St"},
            wa_id=wa_id,
        ),
        message(
            "contacts",
            None,
            wa_id=wa_id,
            contacts=[
                {
                    "name": {"formatted_name": "Bo Li", "first_name": "Bo"},
                    "phones": [{"phone": "+1 650 555 0000", "type": "CELL"}],
                }
            ],
        ),
        message(
            "interactive",
            {"type": "button_reply", "button_reply": {"id": "yes-1", "title": "Yes please"}},
            wa_id=wa_id,
        ),
        message(
            "interactive",
            {
                "type": "list_reply",
                "list_reply": {"id": "row-2", "title": "Tuesday", "description": "am"},
            },
            wa_id=wa_id,
        ),
        message("button", {"payload": "STOP_PROMO", "text": "Not interested"}, wa_id=wa_id),
        message("reaction", {"message_id": "wamid.OUT1", "emoji": "👍"}, wa_id=wa_id),
        message(
            "unsupported",
            None,
            wa_id=wa_id,
            errors=[
                {"code": 131051, "title": "Message type unknown", "message": "Message type unknown"}
            ],
        ),
    ]


def signed(payload: dict[str, Any] | bytes, secret: str = DEV_APP_SECRET) -> tuple[bytes, dict]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return body, {"X-Hub-Signature-256": sign(secret, body), "Content-Type": "application/json"}


def preference(
    value: str = "stop",
    wa_id: str | None = "16505551234",
    user_id: str | None = None,
    at: int | None = None,
    category: str = "marketing_messages",
    detail: str = "User requested to stop marketing messages",
) -> dict[str, Any]:
    """One `user_preferences[]` item: the customer stopped or resumed marketing messages."""
    item: dict[str, Any] = {
        "detail": detail,
        "category": category,
        "value": value,
        "timestamp": str(at or int(time.time())),
    }
    if wa_id:
        item["wa_id"] = wa_id
    if user_id:
        item["user_id"] = user_id
    return item


def user_preferences(
    *items: dict[str, Any],
    name: str = "Ana",
    wa_id: str | None = "16505551234",
    user_id: str | None = None,
) -> dict[str, Any]:
    """The `user_preferences` webhook field, as Meta documents it."""
    contact: dict[str, Any] = {"profile": {"name": name}}
    if wa_id:
        contact["wa_id"] = wa_id
    if user_id:
        contact["user_id"] = user_id
    value = {**_metadata(), "contacts": [contact], "user_preferences": list(items)}
    return envelope(value, field="user_preferences")


def voice_note(media_id: str = "MEDIA_VOICE_1", **kw: Any) -> dict[str, Any]:
    """An `audio` message recorded in WhatsApp (`voice: true`), as Meta documents it."""
    content = {
        "mime_type": "audio/ogg; codecs=opus",
        "sha256": "h",
        "id": media_id,
        "voice": True,
    }
    return message("audio", content, **kw)


def number_changed(old: str, new: str, name: str = "Ana", **kw: Any) -> dict[str, Any]:
    """A `system` message of type `user_changed_number`: from the old number, naming the new
    one in `system.wa_id`; as documented, with no `contacts` array."""
    system = {
        "body": f"User {name} changed from {old} to {new}",
        "wa_id": new,
        "type": "user_changed_number",
    }
    item = message("system", system, wa_id=old, **kw)
    return envelope({**_metadata(), "messages": [item]})


def with_errors(payload: dict[str, Any], *errors: dict[str, Any]) -> dict[str, Any]:
    """`payload` with a value-level `errors` array beside its `messages` / `statuses`."""
    payload["entry"][0]["changes"][0]["value"]["errors"] = list(errors)
    return payload


def provider_error(code: int = 131000, title: str = "Something went wrong") -> dict[str, Any]:
    return {
        "code": code,
        "title": title,
        "message": title,
        "error_data": {"details": f"{title} (details)"},
    }
