"""The queue message, built as dispatch builds it and parsed as the sender parses it."""

import json

import pytest

from resources.queue_message import (
    MEDIA_MESSAGE_TYPES,
    VERSION,
    CampaignSpec,
    Recipient,
    parse,
    prepare,
    with_message_id,
)

ORGANISATION = "00000000-0000-0000-0000-000000000001"
RECIPIENT = Recipient(
    member_id="00000000-0000-0000-0000-0000000000aa",
    msisdn="+12025550100",
    name="Ada Lovelace",
    attributes={"offer": "20% off"},
    asset_keys={kind: f"campaigns/c/0/{kind}" for kind in ("image", "video", "document", "audio")},
)


def _spec(message_type: str, **fields) -> CampaignSpec:
    return CampaignSpec("c", ORGANISATION, message_type, "p1", **fields)


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        (_spec("text", message_content="Hi"), "text"),
        *[(_spec(kind, media_caption="Look"), kind) for kind in MEDIA_MESSAGE_TYPES],
        (
            _spec(
                "template",
                template_name="offer",
                template_language="en",
                template_parameters=[
                    {"type": "header", "valueType": "image", "source": "asset.image"},
                    {"type": "body", "valueType": "text", "source": "contact.first_name"},
                    {"type": "body", "valueType": "text", "source": "attributes.offer"},
                ],
            ),
            "template",
        ),
    ],
)
def test_what_dispatch_builds_the_sender_parses(spec, kind):
    prepared = prepare(spec, RECIPIENT, lambda key: f"https://cdn.example.com/{key}")
    body = with_message_id(prepared.serialized, 42)
    assert json.loads(body)["payloadVersion"] == VERSION

    parsed = parse(body)

    assert (parsed.message_id, parsed.to, parsed.kind) == (42, "+12025550100", kind)
    assert (parsed.phone_number_id, parsed.organisation_id) == ("p1", ORGANISATION)
    assert parsed.graph["type"] == kind and parsed.graph["biz_opaque_callback_data"] == "42"
    if kind == "template":
        header, body = parsed.graph["template"]["components"]
        assert header["parameters"] == [
            {"type": "image", "image": {"link": "https://cdn.example.com/campaigns/c/0/image"}}
        ]
        assert [p["text"] for p in body["parameters"]] == ["Ada", "20% off"]
    elif kind != "text":
        assert parsed.graph[kind]["link"] == f"https://cdn.example.com/campaigns/c/0/{kind}"


def test_a_payload_without_a_version_is_read_as_version_1():
    body = {
        "messageId": 7,
        "phoneNumberId": "p1",
        "organizationId": ORGANISATION,
        "to": "+12025550100",
        "messageType": "text",
        "messageContent": "Hi",
    }
    assert parse(json.dumps(body)) == parse(json.dumps({**body, "payloadVersion": 1}))
