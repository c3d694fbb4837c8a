"""The queue message: the SQS payload of one campaign message, built by dispatch and parsed
by the sender, in one place so that the two cannot drift apart.

Shapes (seed 3's, camelCase): a template (`templateName`, `templateLanguage`,
`templateParameters`, a list that may be empty), a text message (`messageType: "text"`,
`messageContent`) and a media message (`messageType`, `mediaUrl`, `caption`, always present).
Every payload also carries `messageId` (our `messages` row, added when it is queued),
`phoneNumberId` and `payloadVersion`: a sender refuses a version it does not read, and reads a
payload without one (queued before versions were written, or stored with its row then) as
version 1.

Building (`prepare`) checks what must hold before anything is queued: a member that fails
gets the reason stored. Parsing (`parse`) checks the payload once on receipt and translates
it into the Graph API message body; a payload that fails there is not retried: the same
bytes would fail again, so it goes to the dead-letter queue with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from resources.breakers import template_key
from resources.phone import is_e164

# The WhatsApp message types that carry one media file: a campaign of one of these sends each
# member's generated asset of that type (dispatch builds it, the sender checks it, approval
# checks the generator returns it); an operator sends any of them.
MEDIA_MESSAGE_TYPES = ("image", "video", "document", "audio")
MESSAGE_TYPES = ("template", "text", *MEDIA_MESSAGE_TYPES)
# A template's parameters: where each goes, and what it carries (media only in a header,
# and never audio).
PARAMETER_SLOTS = ("header", "body", "button")
PARAMETER_MEDIA_TYPES = ("image", "video", "document")
PARAMETER_VALUE_TYPES = ("text", *PARAMETER_MEDIA_TYPES)

# The shape this module builds and parses; a change that an older sender would misread
# takes the next number.
VERSION = 1
# SQS refuses a message (and a whole SendMessageBatch) over 256 KiB.
SQS_MAX_MESSAGE_BYTES = 256 * 1024
# The widest `messageId` a bigint can hold: the size check counts it before the row exists.
_WIDEST_MESSAGE_ID = 2**63 - 1


# Building: dispatch.


class InvalidPayload(ValueError):
    """The member cannot be sent this campaign; the message is the reason stored on the member."""


@dataclass(frozen=True)
class CampaignSpec:
    """What a run needs of its campaign and template, read once per run."""

    id: str
    organisation_id: str
    message_type: str
    phone_number_id: str
    # Consent rules its messages follow: the template's category when the run was
    # dispatched; a campaign without a template counts as marketing.
    category: str = "marketing"
    message_content: str | None = None
    media_caption: str | None = None
    template_name: str | None = None
    template_language: str | None = None
    template_parameters: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Recipient:
    """An audience member joined with its contact (absent when the number was never valid)."""

    member_id: str
    msisdn: str
    name: str | None
    attributes: dict[str, Any]
    asset_keys: dict[str, str]
    contact_id: int | None = None
    contact_name: str | None = None
    contact_attributes: dict[str, Any] = field(default_factory=dict)
    opted_out: bool = False
    marketing_opted_out: bool = False


@dataclass(frozen=True)
class Prepared:
    """`serialized` is the payload's JSON, made once: the size check, the stored row and the
    queued body all use it."""

    recipient: Recipient
    to: str
    payload: dict[str, Any]
    serialized: str


MediaUrl = Callable[[str], str]


def prepare(spec: CampaignSpec, recipient: Recipient, media_url: MediaUrl) -> Prepared:
    """The member's payload, valid and under the SQS limit, or `InvalidPayload` saying why."""
    to = recipient.msisdn  # parsed when the member was added (`phone.stored_form`)
    if not is_e164(to):
        raise InvalidPayload(f"invalid phone number: {to!r} is not an E.164 number")
    payload: dict[str, Any] = {
        "organizationId": spec.organisation_id,
        "campaignId": spec.id,
        "campaignAudienceId": recipient.member_id,
        "to": to,
        "phoneNumberId": spec.phone_number_id,
        "payloadVersion": VERSION,
        **_content(spec, recipient, media_url),
    }
    serialized = body(payload)
    size = len(with_message_id(serialized, _WIDEST_MESSAGE_ID).encode())
    if size > SQS_MAX_MESSAGE_BYTES:
        raise InvalidPayload(
            f"payload is {size:,} bytes, over the SQS limit of {SQS_MAX_MESSAGE_BYTES:,} bytes"
        )
    return Prepared(recipient, to, payload, serialized)


def body(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"))


def with_message_id(serialized: str, message_id: int) -> str:
    """The queued body: the serialized payload (a JSON object) with `messageId` as its last
    key, the same text as `body({**payload, "messageId": message_id})` without encoding the
    payload again."""
    return f'{serialized[:-1]},"messageId":{message_id}}}'


def _content(spec: CampaignSpec, recipient: Recipient, media_url: MediaUrl) -> dict[str, Any]:
    if spec.message_type == "template":
        return {
            "templateName": spec.template_name,
            "templateLanguage": spec.template_language,
            "templateParameters": [
                {
                    "type": parameter["type"],
                    "valueType": parameter["valueType"],
                    "value": _parameter_value(position, parameter, recipient, media_url),
                }
                for position, parameter in enumerate(spec.template_parameters, start=1)
            ],
        }
    if spec.message_type == "text":
        return {"messageType": "text", "messageContent": spec.message_content}
    if spec.message_type in MEDIA_MESSAGE_TYPES:
        return {
            "messageType": spec.message_type,
            "mediaUrl": _asset_url(spec.message_type, recipient, media_url),
            "caption": spec.media_caption or "",
        }
    raise InvalidPayload(f"unknown campaign message type {spec.message_type!r}")


def _parameter_value(
    position: int, parameter: dict[str, str], recipient: Recipient, media_url: MediaUrl
) -> str:
    """Resolve one template parameter's `source` (seed 2's build_variables_from_contact)."""
    source = parameter.get("source", "")
    where = f"template parameter {position} ({parameter.get('type')}, {source or 'no source'})"
    if source.startswith("literal:"):
        value: Any = source.removeprefix("literal:")
    elif source.startswith("asset."):
        value = _asset_url(source.removeprefix("asset."), recipient, media_url)
    elif source.startswith("contact."):
        value = contact_fields(recipient).get(source.removeprefix("contact."))
    elif source.startswith("attributes."):
        key = source.removeprefix("attributes.")
        value = recipient.attributes.get(key, recipient.contact_attributes.get(key))
    else:
        raise InvalidPayload(
            f"{where}: unknown source (expected contact.<field>, attributes.<key>, "
            "asset.<type> or literal:<text>)"
        )
    if value is None or str(value).strip() == "":
        raise InvalidPayload(f"{where} is missing for this member")
    return str(value)


def contact_fields(recipient: Recipient) -> dict[str, Any]:
    """The `contact.<field>` values a template may use."""
    name = recipient.contact_name or recipient.name
    return {
        "name": name,
        "first_name": name.split()[0] if name and name.split() else None,
        "phone": recipient.msisdn,
        **recipient.contact_attributes,
    }


def _asset_url(asset_type: str, recipient: Recipient, media_url: MediaUrl) -> str:
    key = recipient.asset_keys.get(asset_type)
    if not key:
        raise InvalidPayload(f"no generated {asset_type} asset for this member")
    return media_url(key)


# Parsing: the sender.


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
    version = data.get("payloadVersion", VERSION)
    if type(version) is not int or version != VERSION:
        raise MalformedPayload(f"payloadVersion {version!r} is not {VERSION}, the one this reads")
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
            f"messageType {kind!r} is not {', '.join(MESSAGE_TYPES[:-1])} or {MESSAGE_TYPES[-1]}"
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
        if slot not in PARAMETER_SLOTS or value_type not in PARAMETER_VALUE_TYPES:
            raise MalformedPayload(
                f"templateParameters[{index}]: type must be {'/'.join(PARAMETER_SLOTS)}"
                f" and valueType {'/'.join(PARAMETER_VALUE_TYPES)}"
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
