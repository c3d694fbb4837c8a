"""Queue payloads (seed 3's camelCase shapes plus `messageId` and `phoneNumberId`), checked
once on receipt, and their translation into Graph API message bodies.

A payload that fails here is not retried: the same bytes would fail again, so it goes to the
dead-letter queue with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from resources.asset_kinds import MEDIA_MESSAGE_TYPES
from resources.breakers import template_key
from resources.phone import is_e164

PARAMETER_SLOTS = frozenset({"header", "body", "button"})
PARAMETER_VALUES = frozenset({"text", "image", "video", "document"})


class MalformedPayload(ValueError):
    """The payload cannot be sent as it is; `message_id` is set when the row is known."""

    def __init__(self, reason: str, message_id: int | None = None) -> None:
        super().__init__(reason)
        self.message_id = message_id


@dataclass(frozen=True)
class Payload:
    message_id: int
    phone_number_id: str
    organisation_id: str
    to: str
    kind: str
    graph: dict[str, Any]
    # The circuit-breaker scopes the message falls in: (scope, key) pairs.
    scopes: tuple[tuple[str, str], ...] = ()

    @property
    def business_initiated(self) -> bool:
        """Templates open conversations; free-form messages only answer within 24 h."""
        return self.kind == "template"


def parse(body: str) -> Payload:
    try:
        data = json.loads(body)
    except ValueError:
        raise MalformedPayload("payload is not JSON") from None
    if not isinstance(data, dict):
        raise MalformedPayload("payload is not a JSON object")
    message_id = data.get("messageId")
    if not isinstance(message_id, int) or isinstance(message_id, bool) or message_id <= 0:
        raise MalformedPayload("messageId must be a positive integer")
    try:
        return _parse(data, message_id)
    except MalformedPayload as error:
        raise MalformedPayload(str(error), message_id) from None


def _parse(data: dict[str, Any], message_id: int) -> Payload:
    phone_number_id = _text(data, "phoneNumberId")
    organisation_id = _text(data, "organizationId")
    to = _text(data, "to")
    if not is_e164(to):
        raise MalformedPayload("to is not an E.164 number")
    kind = data.get("messageType") or ("template" if "templateName" in data else None)
    if kind == "template":
        content = _template(data)
    elif kind == "text":
        content = {"body": _text(data, "messageContent"), "preview_url": False}
    elif kind in MEDIA_MESSAGE_TYPES:
        content = _media(data, kind)
    else:
        raise MalformedPayload(
            f"messageType {kind!r} is not template, text, image, video, document or audio"
        )
    graph = {"type": kind, kind: content, "biz_opaque_callback_data": str(message_id)}
    scopes = [("app", "*"), ("account", organisation_id), ("phone_number", phone_number_id)]
    if kind == "template":
        name, language = content["name"], content["language"]["code"]
        scopes.append(("template", template_key(organisation_id, name, language)))
    return Payload(message_id, phone_number_id, organisation_id, to, kind, graph, tuple(scopes))


def _text(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        raise MalformedPayload(f"{key} must be a non-empty string")
    return value


def _media(data: dict[str, Any], kind: str) -> dict[str, Any]:
    link = _text(data, "mediaUrl")
    if not link.startswith(("https://", "http://")):
        raise MalformedPayload("mediaUrl must be an http(s) URL")
    if "caption" not in data:
        raise MalformedPayload("caption must be present for media messages (empty if none)")
    content: dict[str, Any] = {"link": link}
    caption = data["caption"]
    if caption is not None and not isinstance(caption, str):
        raise MalformedPayload("caption must be a string")
    if caption and kind != "audio":  # the Graph API refuses a caption on audio
        content["caption"] = caption
    return content


def _template(data: dict[str, Any]) -> dict[str, Any]:
    parameters = data.get("templateParameters", [])
    if not isinstance(parameters, list):
        raise MalformedPayload("templateParameters must be a list")
    slots: dict[str, list[dict[str, Any]]] = {}
    for index, parameter in enumerate(parameters):
        if not isinstance(parameter, dict):
            raise MalformedPayload(f"templateParameters[{index}] is not an object")
        slot, value_type = parameter.get("type"), parameter.get("valueType", "text")
        value = parameter.get("value")
        if slot not in PARAMETER_SLOTS or value_type not in PARAMETER_VALUES:
            raise MalformedPayload(
                f"templateParameters[{index}]: type must be header/body/button and valueType text/image/video/document"
            )
        if not isinstance(value, str) or not value:
            raise MalformedPayload(f"templateParameters[{index}].value must be a non-empty string")
        if value_type == "text":
            graph_parameter = {"type": "text", "text": value}
        else:
            graph_parameter = {"type": value_type, value_type: {"link": value}}
        slots.setdefault(slot, []).append(graph_parameter)
    components: list[dict[str, Any]] = [
        {"type": slot, "parameters": slots[slot]} for slot in ("header", "body") if slot in slots
    ]
    components += [
        {"type": "button", "sub_type": "url", "index": str(i), "parameters": [p]}
        for i, p in enumerate(slots.get("button", []))
    ]
    template: dict[str, Any] = {
        "name": _text(data, "templateName"),
        "language": {"code": data.get("templateLanguage") or "en"},
    }
    if components:
        template["components"] = components
    return template
