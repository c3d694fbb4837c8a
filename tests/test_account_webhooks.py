"""Meta's account-level webhooks through the real app, its inbox workers and the real
database: `phone_number_quality_update` and `business_capability_update` set the
organisation's messaging limit and a number's throughput, `account_update` records bans,
restrictions and violations and holds sending with the account circuit breaker. Every
sample below is in the shape of Meta's webhook references."""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Any

import pytest
import sqlalchemy as sa

from resources import breakers, campaigns
from tests import sending
from tests.webhook_support import ADMIN, post, rows, scalar, wait_until, webhook_client

WABA = "102290129340398"
DISPLAY = "15550783881"


@pytest.fixture(autouse=True)
def one_worker(monkeypatch):
    monkeypatch.setenv("WEBHOOK_WORKERS", "1")


def meta(field: str, value: dict[str, Any], at: int, waba: str = WABA) -> dict[str, Any]:
    """One account-level change as Meta sends it: the WABA in entry.id, its time."""
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": waba, "time": at, "changes": [{"value": value, "field": field}]}],
    }


def quality(at: int, **value: Any) -> dict[str, Any]:
    return meta("phone_number_quality_update", {"display_phone_number": DISPLAY, **value}, at)


def account_update(at: int, **value: Any) -> dict[str, Any]:
    return meta("account_update", value, at)


def organisation(engine, limit: int | None = 250, phone: str = "106540352242922") -> str:
    with engine.begin() as conn:
        org = campaigns.create_organisation(conn, "Shop", limit)
        campaigns.add_phone_number(conn, org, phone)
        conn.execute(
            sa.text("UPDATE organisations SET waba_id = :w WHERE id = :o"), {"w": WABA, "o": org}
        )
        conn.execute(
            sa.text("UPDATE phone_numbers SET display_phone = '+1 555-078-3881'"),
        )
    return str(org)


def counters(engine) -> Counter:
    total: Counter = Counter()
    for (row,) in rows(engine, "SELECT counters FROM webhook_workers"):
        total.update(row or {})
    return total


def deliver(client, engine, *payloads: dict[str, Any]) -> Counter:
    """Post each payload and wait until the workers have applied every event so far."""
    before = scalar(engine, "SELECT count(*) FROM webhook_inbox")
    for payload in payloads:
        assert post(client, payload).status_code == 200
    expected = before + len(payloads)

    def done() -> Counter | None:
        seen = counters(engine)
        return seen if seen["events"] == expected else None

    tally = wait_until(done)
    assert not scalar(engine, "SELECT count(*) FROM webhook_inbox WHERE error IS NOT NULL")
    return tally


def limit_of(engine) -> tuple[int | None, str | None]:
    row = rows(engine, "SELECT messaging_limit, messaging_limit_source FROM organisations")[0]
    return row.messaging_limit, row.messaging_limit_source


def events(engine, kind: str | None = None) -> list[sa.Row]:
    return rows(
        engine,
        "SELECT kind, source, event, old_value, new_value, applied, note, detail, occurred_at,"
        " breaker_id, organisation_id FROM account_events"
        " WHERE source = 'webhook' AND (CAST(:k AS text) IS NULL OR kind = :k) ORDER BY id",
        k=kind,
    )


def test_limit_changes_with_and_without_old_limit_and_a_throughput_upgrade(engine):
    organisation(engine)
    t0 = int(time.time()) - 600
    with webhook_client() as client:
        # A limit change as Meta sends it today: no old_limit, the portfolio's limit only.
        deliver(
            client,
            engine,
            quality(t0, event="UPGRADE", max_daily_conversations_per_business="TIER_2K"),
        )
        assert limit_of(engine) == (2000, "webhook")
        # While Meta still sends them: old_limit and current_limit beside the new field.
        deliver(
            client,
            engine,
            quality(
                t0 + 10,
                event="UPGRADE",
                old_limit="TIER_2K",
                current_limit="TIER_10K",
                max_daily_conversations_per_business="TIER_10K",
            ),
        )
        assert limit_of(engine) == (10000, "webhook")
        # Meta's own example: a throughput upgrade, whose TIER_UNLIMITED is the throughput.
        tally = deliver(
            client,
            engine,
            quality(t0 + 20, event="THROUGHPUT_UPGRADE", current_limit="TIER_UNLIMITED"),
        )
    assert limit_of(engine) == (10000, "webhook")
    number = rows(engine, "SELECT messages_per_second, throughput_level FROM phone_numbers")[0]
    assert (number.messages_per_second, number.throughput_level) == (1000, "HIGH")
    recorded = events(engine)
    assert [(e.kind, e.event, e.old_value, e.new_value, e.applied) for e in recorded] == [
        ("messaging_limit", "UPGRADE", "250", "2000", True),
        ("messaging_limit", "UPGRADE", "2000", "10000", True),
        ("throughput", "THROUGHPUT_UPGRADE", "80", "1000", True),
    ]
    assert "old_limit" not in recorded[0].detail and recorded[1].detail["old_limit"] == "TIER_2K"
    assert [e.occurred_at.timestamp() for e in recorded] == [t0, t0 + 10, t0 + 20]
    assert tally["account_events_applied"] == 3


def test_an_unknown_tier_is_kept_logged_and_changes_nothing(engine, caplog):
    organisation(engine)
    caplog.set_level(logging.INFO)
    at = int(time.time()) - 60
    with webhook_client() as client:
        tally = deliver(
            client,
            engine,
            quality(at, event="UPGRADE", max_daily_conversations_per_business="TIER_5K"),
            quality(
                at + 1, event="ONBOARDING", max_daily_conversations_per_business="TIER_NOT_SET"
            ),
        )
    assert limit_of(engine) == (250, None)
    assert tally["account_events_ignored"] == 2 and tally["account_events_applied"] == 0
    [unknown, not_set] = events(engine)
    assert (unknown.new_value, unknown.applied) == ("TIER_5K", False)
    assert unknown.note == "unknown tier: kept, nothing changed"
    assert (not_set.new_value, not_set.applied) == ("TIER_NOT_SET", False)
    [line] = [
        r.getMessage() for r in caplog.records if "unknown messaging limit tier" in r.getMessage()
    ]
    assert "'TIER_5K'" in line and "inbox event" in line
    assert DISPLAY not in caplog.text


def test_limits_delivered_out_of_order_end_on_the_newer_and_a_redelivery_counts_once(engine):
    organisation(engine)
    t0 = int(time.time()) - 3600
    newer = quality(t0 + 60, event="UPGRADE", max_daily_conversations_per_business="TIER_10K")
    older = quality(t0, event="DOWNGRADE", max_daily_conversations_per_business="TIER_250")
    with webhook_client() as client:
        deliver(client, engine, newer)
        tally = deliver(client, engine, older, newer)
    assert limit_of(engine) == (10000, "webhook")
    assert tally["account_events_duplicate"] == 1
    recorded = events(engine)
    assert [(e.new_value, e.applied, e.occurred_at.timestamp()) for e in recorded] == [
        ("10000", True, t0 + 60),
        ("250", False, t0),
    ]
    assert recorded[1].note.startswith("older than the limit in force")


def test_an_operator_limit_set_after_a_webhook_happened_is_not_overwritten_by_it(engine):
    org = organisation(engine)
    with engine.begin() as conn:
        from resources import account

        account.set_messaging_limit(conn, org, 1000, "operator", actor="ops")
    with webhook_client() as client:
        late = quality(
            int(time.time()) - 600, event="UPGRADE", max_daily_conversations_per_business="TIER_2K"
        )
        deliver(client, engine, late)
        assert limit_of(engine) == (1000, "operator")
        history = client.get(
            f"/api/organisations/{org}/account-events",
            params={"kind": "messaging_limit"},
            headers=ADMIN,
        ).json()
    assert [(e["source"], e["new_value"], e["applied"]) for e in history] == [
        ("operator", "1000", True),
        ("webhook", "2000", False),
    ]


def test_business_capability_update_sets_the_limit_from_a_count_or_a_tier(engine):
    organisation(engine)
    t0 = int(time.time()) - 600
    with webhook_client() as client:
        # Meta's example: a count, not a tier.
        deliver(
            client,
            engine,
            meta(
                "business_capability_update",
                {"max_daily_conversations_per_business": 2000, "max_phone_numbers_per_waba": 25},
                t0,
            ),
        )
        assert limit_of(engine) == (2000, "webhook")
        deliver(
            client,
            engine,
            meta(
                "business_capability_update",
                {"max_daily_conversations_per_business": "TIER_UNLIMITED"},
                t0 + 10,
            ),
        )
        assert limit_of(engine) == (None, "webhook")
        deliver(
            client,
            engine,
            meta("business_capability_update", {"max_daily_conversation_per_phone": 250}, t0 + 20),
        )
    assert limit_of(engine) == (250, "webhook")


def test_a_webhook_for_a_waba_no_organisation_holds_is_kept_and_changes_nothing(engine, caplog):
    organisation(engine)
    caplog.set_level(logging.WARNING)
    at = int(time.time()) - 60
    stranger = meta(
        "account_update",
        {"event": "DISABLED_UPDATE", "ban_info": {"waba_ban_state": "DISABLE"}},
        at,
        waba="999999999",
    )
    with webhook_client() as client:
        tally = deliver(client, engine, stranger)
    assert tally["account_events_ignored"] == 1
    [kept] = events(engine)
    assert (kept.organisation_id, kept.kind, kept.applied) == (None, "account", False)
    assert _open(engine) == []
    assert "no organisation holds WABA 999999999" in caplog.text


def test_a_throughput_upgrade_for_a_number_we_cannot_place_is_kept(engine):
    organisation(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE phone_numbers SET display_phone = NULL"))
    with webhook_client() as client:
        deliver(client, engine, quality(int(time.time()), event="THROUGHPUT_UPGRADE"))
    [kept] = events(engine)
    assert (kept.kind, kept.applied, kept.new_value) == ("throughput", False, "1000")
    assert scalar(engine, "SELECT messages_per_second FROM phone_numbers") == 80


def _open(engine) -> list[breakers.Breaker]:
    with engine.connect() as conn:
        return breakers.open_breakers(conn)


def _held(engine, run) -> int:
    return scalar(
        engine,
        "SELECT count(*) FROM messages WHERE campaign_run_id = :r AND status = 'pending'"
        " AND held_at IS NOT NULL",
        r=run.campaign_run_id,
    )


def test_a_ban_opens_the_account_breaker_shows_on_health_and_holds_the_sender_until_reinstated(
    engine, sqs, graph
):
    run = sending.make_run(engine, 20)
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE organisations SET waba_id = :w WHERE id = :o"),
            {"w": WABA, "o": run.organisation_id},
        )
    t0 = int(time.time()) - 120
    # Meta's example, with the state that stops sending.
    ban = account_update(
        t0,
        event="DISABLED_UPDATE",
        ban_info={"waba_ban_state": "DISABLE", "waba_ban_date": "April 17, 2025"},
    )
    with webhook_client() as client:
        deliver(client, engine, ban)
        [breaker] = _open(engine)
        assert (breaker.scope, breaker.scope_key) == ("account", run.organisation_id)
        assert (breaker.closes_by, breaker.error_code) == ("operator", None)
        assert "WhatsApp disabled the account" in breaker.error_title
        assert "April 17, 2025" in breaker.error_title
        for path in ("/health", "/stats"):
            shown = client.get(path).json()["sending"]
            assert shown["status"] == "held"
            assert [b["id"] for b in shown["open_breakers"]] == [breaker.id]
            [state] = shown["accounts"]
            assert (state["organisation_id"], state["waba_id"], state["status"]) == (
                run.organisation_id,
                WABA,
                "disabled",
            )
            assert state["breaker"]["id"] == breaker.id and "April 17, 2025" in state["reason"]
        [recorded] = events(engine, "ban")
        assert (recorded.new_value, recorded.applied, recorded.breaker_id) == (
            "DISABLE",
            True,
            breaker.id,
        )

        sending.enqueue(sqs, [sending.payload(run, i) for i in range(20)])
        worker, thread = sending.start(engine, sqs, sending.client_for(graph.url))
        try:
            sending.wait_for(
                lambda: _held(engine, run) == 20 and sqs.depth().visible == 0, timeout=60
            )
            assert graph.requests == []  # nothing of the organisation's left
            assert sending.statuses(engine, run) == {"pending": 20}

            deliver(
                client,
                engine,
                account_update(
                    t0 + 60, event="DISABLED_UPDATE", ban_info={"waba_ban_state": "REINSTATE"}
                ),
            )
            assert _open(engine) == []
            sending.wait_for(lambda: sending.statuses(engine, run) == {"sent": 20}, timeout=60)
        finally:
            worker.stop()
            thread.join(timeout=60)
        assert client.get("/health").json()["sending"]["accounts"] == []
    with engine.connect() as conn:
        [closed] = breakers.listing(conn, include_closed=1)
    assert closed["closed_by"] == "whatsapp" and "reinstated" in closed["close_reason"]
    assert len({int(r["biz_opaque_callback_data"]) for r in graph.accepted()}) == 20


def test_a_restriction_of_business_initiated_messaging_holds_sending_and_a_violation_shows(engine):
    org = organisation(engine)
    t0 = int(time.time()) - 300
    until = int(time.time()) + 7 * 86400
    restriction = account_update(
        t0,
        event="ACCOUNT_RESTRICTION",
        restriction_info=[
            {"restriction_type": "RESTRICTED_BIZ_INITIATED_MESSAGING", "expiration": until},
            {"restriction_type": "RESTRICTED_ADD_PHONE_NUMBER_ACTION", "expiration": until},
        ],
    )
    violation = account_update(
        t0 + 1, event="ACCOUNT_VIOLATION", violation_info={"violation_type": "ADULT"}
    )
    with webhook_client() as client:
        deliver(client, engine, restriction, violation)
        [breaker] = _open(engine)
        assert breaker.scope_key == org
        assert "RESTRICTED_BIZ_INITIATED_MESSAGING until" in breaker.error_title
        [state] = client.get("/stats").json()["sending"]["accounts"]
        assert state["status"] == "restricted"
        assert {r["type"] for r in state["restrictions"]} == {
            "RESTRICTED_BIZ_INITIATED_MESSAGING",
            "RESTRICTED_ADD_PHONE_NUMBER_ACTION",
        }
        assert state["last_violation"]["type"] == "ADULT"
        # A reinstatement does not lift a restriction: the breaker stays for an operator.
        deliver(
            client,
            engine,
            account_update(
                t0 + 2, event="DISABLED_UPDATE", ban_info={"waba_ban_state": "REINSTATE"}
            ),
        )
        assert [b.id for b in _open(engine)] == [breaker.id]
        listed = client.get("/api/organisations", headers=ADMIN).json()
    assert listed[0]["account"]["status"] == "restricted"
    assert listed[0]["account"]["breaker"]["id"] == breaker.id
    notes = {e.kind: e.note for e in events(engine)}
    assert notes["restriction"] == f"opened circuit breaker {breaker.id} on the account"
    assert "left open: a ban did not open it" in notes["ban"]
    assert notes["violation"] is None


def test_meta_s_restriction_example_already_over_and_a_late_ban_change_nothing(engine):
    organisation(engine)
    t0 = int(time.time()) - 300
    with webhook_client() as client:
        # Meta's documented example: its expiration is long past.
        deliver(
            client,
            engine,
            account_update(
                1641330498,
                event="ACCOUNT_RESTRICTION",
                restriction_info=[
                    {
                        "restriction_type": "RESTRICTED_BIZ_INITIATED_MESSAGING",
                        "expiration": 1641330498,
                    },
                    {
                        "restriction_type": "RESTRICTED_ADD_PHONE_NUMBER_ACTION",
                        "expiration": 1641330498,
                    },
                ],
            ),
        )
        assert _open(engine) == []
        # A reinstatement, then the ban it lifted, delivered after it.
        deliver(
            client,
            engine,
            account_update(
                t0 + 60, event="DISABLED_UPDATE", ban_info={"waba_ban_state": "REINSTATE"}
            ),
            account_update(t0, event="DISABLED_UPDATE", ban_info={"waba_ban_state": "DISABLE"}),
        )
        assert _open(engine) == []
        assert client.get("/health").json()["sending"]["accounts"] == []
    [restriction, reinstated, late] = events(engine)
    assert restriction.note.startswith("already over")
    assert (reinstated.new_value, reinstated.applied) == ("REINSTATE", True)
    assert (late.new_value, late.applied) == ("DISABLE", False)
    assert late.note.startswith("older than the newest ban event")


def test_a_reinstatement_leaves_a_breaker_a_send_error_opened(engine):
    org = organisation(engine)
    with engine.begin() as conn:
        opened, _ = breakers.trip(conn, "account", org, 131031, "Account locked", "operator", 0)
    with webhook_client() as client:
        deliver(
            client,
            engine,
            account_update(
                int(time.time()), event="DISABLED_UPDATE", ban_info={"waba_ban_state": "REINSTATE"}
            ),
            account_update(int(time.time()) + 1, event="PARTNER_ADDED"),
        )
    assert [b.id for b in _open(engine)] == [opened.id]
    assert [e.kind for e in events(engine)] == ["ban", "account"]
