"""Webhook payloads read once into typed objects (`webhook_app.payloads`), in the shapes of
Meta's webhook references: the message types a customer sends, and the account-level
`account_update`, `phone_number_quality_update` and `business_capability_update`. A part of
the wrong type reads as absent; a `messages` value that is not a list fails the event."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from resources.account import Tier
from tests import payloads as p
from webhook_app.account_webhooks import notice_of
from webhook_app.inbound import text_of
from webhook_app.payloads import (
    AccountUpdate,
    Ban,
    CapabilityUpdate,
    Event,
    Message,
    QualityUpdate,
    Reply,
    Restriction,
    Value,
)


def _value(field: str, value: dict[str, Any]) -> Value:
    [change] = Event.of(p.envelope(value, field)).changes()
    return change.value


def test_every_inbound_type_reads_as_the_text_an_operator_sees():
    said = [text_of(Message.of(item)) for item in p.every_type()]
    assert said == [
        "hello",
        "my receipt",
        None,
        None,
        "invoice.pdf",
        None,
        "[location] Main St shop, 1 Main St (38.9, -77.03)",
        "[shared contacts] Bo Li",
        "Yes please",
        "Tuesday",
        "Not interested",
        "👍",
        None,
    ]


def test_each_message_type_is_read_into_its_own_part():
    reply, listed, button, reaction, location, contacts = (
        Message.of(item) for item in [p.every_type()[i] for i in (8, 9, 10, 11, 6, 7)]
    )
    assert reply.interactive == Reply("button_reply", "yes-1", "Yes please", None, None, None, None)
    assert (listed.interactive.id, listed.interactive.description) == ("row-2", "am")
    assert (button.button.text, button.button.payload) == ("Not interested", "STOP_PROMO")
    assert (reaction.reaction.message_id, reaction.reaction.emoji) == ("wamid.OUT1", "👍")
    assert (location.location.latitude, location.location.longitude) == (38.9, -77.03)
    assert [c.formatted_name for c in contacts.contacts] == ["Bo Li"]
    # Only the part of its own type is read.
    assert reply.button is None and reply.location is None and reply.contacts == ()
    assert button.interactive is None and button.text is None


def test_a_flow_reply_an_order_and_a_removed_reaction():
    flow = p.message(
        "interactive",
        {
            "type": "nfm_reply",
            "nfm_reply": {"name": "flow", "body": "Sent", "response_json": '{"ok": true}'},
        },
    )
    order = p.message(
        "order",
        {
            "catalog_id": "cat-1",
            "text": "by Friday",
            "product_items": [
                {"product_retailer_id": "SKU-1", "quantity": 2, "item_price": 5, "currency": "EUR"},
                "not an item",
            ],
        },
    )
    removed = p.message("reaction", {"message_id": "wamid.OUT1", "emoji": ""})
    pin = p.message("location", {"latitude": 38.9, "longitude": -77.03})
    assert text_of(Message.of(flow)) == "Sent"
    read = Message.of(order)
    assert [(i.product_retailer_id, i.quantity, i.currency) for i in read.order.items] == [
        ("SKU-1", 2, "EUR")
    ]
    assert text_of(read) == "[order] 2 x SKU-1: by Friday"
    # An empty emoji takes a reaction back: it is kept as sent, not read as absent.
    assert text_of(Message.of(removed)) == ""
    assert text_of(Message.of(pin)) == "[location] 38.9, -77.03"


@pytest.mark.parametrize(
    ("kind", "content", "extra", "said"),
    [
        ("text", {"body": 5}, {}, None),
        ("text", None, {}, None),
        ("image", {"id": "MEDIA_1", "caption": ["no"], "filename": 3}, {}, None),
        ("interactive", {"type": "button_reply", "button_reply": "Yes"}, {}, None),
        ("interactive", {"type": ["button_reply"]}, {}, None),
        ("button", {"text": 1, "payload": "STOP"}, {}, "STOP"),
        ("reaction", {"emoji": 1}, {}, None),
        (
            "location",
            {"latitude": "38.9", "longitude": True, "name": 7},
            {},
            "[location] None, None",
        ),
        ("contacts", None, {"contacts": ["Bo Li", {"name": "Bo Li"}]}, "[shared contacts] "),
        ("contacts", None, {"contacts": {"name": {"formatted_name": "Bo"}}}, "[shared contacts] "),
        ("order", {"product_items": {"SKU-1": 2}, "text": 3}, {}, "[order] no items"),
        ("system", "changed", {}, None),
    ],
)
def test_a_part_of_the_wrong_type_reads_as_absent(kind, content, extra, said):
    assert text_of(Message.of(p.message(kind, content, **extra))) == said


def test_a_messages_value_that_is_not_a_list_fails_the_event():
    with pytest.raises(ValueError, match="messages must be a list"):
        Event.of(p.envelope({"messages": {"id": "wamid.1"}}))
    with pytest.raises(ValueError, match="not an object"):
        Event.of(p.inbound("wamid.1"))


def test_account_update_reads_ban_restrictions_and_violation():
    ban = _value(
        "account_update",
        {
            "event": "DISABLED_UPDATE",
            "ban_info": {"waba_ban_state": "DISABLE", "waba_ban_date": "October 9, 2023"},
        },
    )
    assert ban.account == AccountUpdate(
        "DISABLED_UPDATE", Ban("DISABLE", "October 9, 2023"), (), None
    )
    assert ban.quality is None and ban.capability is None and ban.template is None
    restricted = _value(
        "account_update",
        {
            "event": "ACCOUNT_RESTRICTION",
            "restriction_info": [
                {
                    "restriction_type": "RESTRICTED_BIZ_INITIATED_MESSAGING",
                    "expiration": 1641330498,
                },
                {"restriction_type": "RESTRICTED_ADD_PHONE_NUMBER_ACTION", "remediation": "Wait"},
            ],
        },
    )
    assert restricted.account.restrictions == (
        Restriction(
            "RESTRICTED_BIZ_INITIATED_MESSAGING", datetime.fromtimestamp(1641330498, UTC), None
        ),
        Restriction("RESTRICTED_ADD_PHONE_NUMBER_ACTION", None, "Wait"),
    )
    violation = _value(
        "account_update",
        {"event": "ACCOUNT_VIOLATION", "violation_info": {"violation_type": "SCAM"}},
    )
    assert violation.account.violation_type == "SCAM"


def test_a_malformed_account_update_reads_as_absent_and_is_recorded_only():
    value = _value(
        "account_update",
        {
            "event": "DISABLED_UPDATE",
            "ban_info": "DISABLE",
            "restriction_info": [
                "RESTRICTED_BIZ_INITIATED_MESSAGING",
                {"restriction_type": 7},
                {"restriction_type": "RESTRICTED_ADD_PHONE_NUMBER_ACTION", "expiration": "soon"},
            ],
            "violation_info": ["SCAM"],
        },
    )
    assert value.account == AccountUpdate(
        "DISABLED_UPDATE",
        None,
        (Restriction("RESTRICTED_ADD_PHONE_NUMBER_ACTION", None, None),),
        None,
    )
    notice = notice_of(value.account)
    assert (notice.kind, notice.stops_sending) == ("account", False)
    assert notice.summary == "account_update DISABLED_UPDATE with ban state (missing)"
    unnamed = _value("account_update", {"event": 12, "restriction_info": "all"})
    assert unnamed.account == AccountUpdate(None, None, (), None)
    assert notice_of(unnamed.account).event == "(missing)"


def test_quality_update_reads_its_limits_as_tiers():
    value = _value(
        "phone_number_quality_update",
        {
            "display_phone_number": "15550783881",
            "event": "UPGRADE",
            "old_limit": "TIER_2K",
            "current_limit": "TIER_10K",
            "max_daily_conversations_per_business": "TIER_10K",
        },
    )
    assert value.quality == QualityUpdate(
        "15550783881",
        "UPGRADE",
        Tier("TIER_10K", True, True, 10000),
        Tier("TIER_10K", True, True, 10000),
        Tier("TIER_2K", True, True, 2000),
    )
    upgrade = _value(
        "phone_number_quality_update",
        {"display_phone_number": 15550783881, "event": ["X"], "current_limit": "TIER_UNLIMITED"},
    )
    assert upgrade.quality == QualityUpdate(
        None, None, None, Tier("TIER_UNLIMITED", True, True, None), None
    )
    odd = _value("phone_number_quality_update", {"max_daily_conversations_per_business": {}})
    assert odd.quality.max_daily_conversations_per_business == Tier("(a dict)", False)


def test_capability_update_reads_counts_and_tiers():
    value = _value(
        "business_capability_update",
        {
            "max_daily_conversation_per_phone": -1,
            "max_daily_conversations_per_business": "TIER_UNLIMITED",
            "max_phone_numbers_per_business": 2,
            "max_phone_numbers_per_waba": True,
        },
    )
    assert value.capability == CapabilityUpdate(
        Tier("TIER_UNLIMITED", True, True, None), Tier("-1", True, True, None), 2, None
    )
    assert _value("business_capability_update", {}).capability == CapabilityUpdate(
        None, None, None, None
    )
    # The value as sent is what is recorded.
    assert value.raw["max_phone_numbers_per_waba"] is True
