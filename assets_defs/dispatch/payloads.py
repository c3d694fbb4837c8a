"""The SQS payload of one campaign message, in seed 3's four shapes, and the checks it must pass
before anything is queued.

Shapes (camelCase): a template (`templateName`, `templateLanguage`, `templateParameters`, a
list that may be empty), a text message (`messageType: "text"`, `messageContent`) and a media
message (`messageType`, `mediaUrl`, `caption`, always present). Every payload also carries
`messageId` (our `messages` row, added when it is queued) and `phoneNumberId`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from resources.asset_kinds import MEDIA_MESSAGE_TYPES
from resources.phone import InvalidPhoneNumber, to_e164

# SQS refuses a message (and a whole SendMessageBatch) over 256 KiB.
SQS_MAX_MESSAGE_BYTES = 256 * 1024
# The widest `messageId` a bigint can hold: the size check counts it before the row exists.
_WIDEST_MESSAGE_ID = 2**63 - 1


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
    try:
        to = to_e164(recipient.msisdn)
    except InvalidPhoneNumber as error:
        raise InvalidPayload(f"invalid phone number: {error}") from None
    payload: dict[str, Any] = {
        "organizationId": spec.organisation_id,
        "campaignId": spec.id,
        "campaignAudienceId": recipient.member_id,
        "to": to,
        "phoneNumberId": spec.phone_number_id,
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
