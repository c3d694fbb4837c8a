"""Consent from WhatsApp itself: the `user_preferences` webhook field and error 131050 on a
failed receipt, through the real app and its inbox workers against the real database."""

from __future__ import annotations

import logging
import time
from collections import Counter

import pytest
import sqlalchemy as sa

from tests import payloads as p
from tests.webhook_support import (
    add_organisation,
    inbox_drained,
    post,
    rows,
    scalar,
    wait_until,
    webhook_client,
)

PHONE = "+16505551234"
USER_ID = "US.13491208655302741918"


@pytest.fixture(autouse=True)
def one_worker(monkeypatch):
    monkeypatch.setenv("WEBHOOK_WORKERS", "1")


def counters(engine) -> Counter:
    """The worker processes' summed tallies, from their heartbeat rows."""
    total: Counter = Counter()
    for (row,) in rows(engine, "SELECT counters FROM webhook_workers"):
        total.update(row or {})
    return total


def wait_counters(engine, **expected: int) -> Counter:
    def read():
        seen = counters(engine)
        return seen if all(seen[k] == v for k, v in expected.items()) else None

    return wait_until(read)


def contact(engine, **where: str) -> sa.Row:
    ((column, value),) = where.items()
    return rows(
        engine,
        f"SELECT id, phone, wa_user_id, name, marketing_opted_out, marketing_opted_out_at,"
        f" opted_out FROM contacts WHERE {column} = :v",
        v=value,
    )[0]


def history(engine, contact_id: int) -> list[sa.Row]:
    return rows(
        engine,
        "SELECT scope, opted_out, source, reason, message_id, occurred_at FROM consent_events"
        " WHERE contact_id = :c ORDER BY occurred_at DESC, id DESC",
        c=contact_id,
    )


def processed(engine) -> bool:
    return inbox_drained(engine) and not scalar(
        engine, "SELECT count(*) FROM webhook_inbox WHERE error IS NOT NULL"
    )


@pytest.mark.parametrize(
    ("wa_id", "user_id", "key"),
    [("16505551234", None, {"phone": PHONE}), (None, USER_ID, {"wa_user_id": USER_ID})],
    ids=["phone", "user-id-only"],
)
def test_stop_then_resume_opts_a_customer_out_of_marketing_and_back_in(engine, wa_id, user_id, key):
    add_organisation(engine)
    t0 = int(time.time()) - 60
    with webhook_client() as client:
        stop = p.preference("stop", wa_id=wa_id, user_id=user_id, at=t0)
        assert (
            post(client, p.user_preferences(stop, wa_id=wa_id, user_id=user_id)).status_code == 200
        )
        wait_until(lambda: rows(engine, "SELECT 1 FROM contacts WHERE marketing_opted_out"))
        stopped = contact(engine, **key)
        resume = p.preference(
            "resume", wa_id=wa_id, user_id=user_id, at=t0 + 10, detail="User resumed"
        )
        post(client, p.user_preferences(resume, wa_id=wa_id, user_id=user_id))
        wait_counters(engine, preferences_applied=2)
    # The customer was not known before: created from the webhook, with its profile name.
    assert (stopped.name, stopped.marketing_opted_out) == ("Ana", True)
    assert stopped.marketing_opted_out_at.timestamp() == t0
    resumed = contact(engine, **key)
    assert (resumed.marketing_opted_out, resumed.marketing_opted_out_at) == (False, None)
    assert resumed.opted_out is False  # the campaigns fact is not WhatsApp's to change
    assert (resumed.phone, resumed.wa_user_id) == (PHONE if wa_id else None, user_id)
    assert [
        (e.scope, e.opted_out, e.source, e.reason, e.occurred_at.timestamp())
        for e in history(engine, resumed.id)
    ] == [
        ("marketing", False, "user_preferences", "User resumed", t0 + 10),
        ("marketing", True, "user_preferences", "User requested to stop marketing messages", t0),
    ]
    assert scalar(engine, "SELECT count(*) FROM contacts") == 1


def test_a_stop_and_a_resume_delivered_out_of_order_end_on_the_newer(engine):
    add_organisation(engine)
    t0 = int(time.time()) - 600
    ana, bo = "16505551234", "16505550000"
    with webhook_client() as client:
        # Ana resumed after she stopped; Bo stopped after he resumed. Each pair arrives newest first.
        post(client, p.user_preferences(p.preference("resume", wa_id=ana, at=t0 + 30), wa_id=ana))
        post(client, p.user_preferences(p.preference("stop", wa_id=bo, at=t0 + 30), wa_id=bo))
        wait_until(lambda: processed(engine))
        post(client, p.user_preferences(p.preference("stop", wa_id=ana, at=t0), wa_id=ana))
        post(client, p.user_preferences(p.preference("resume", wa_id=bo, at=t0), wa_id=bo))
        wait_until(
            lambda: processed(engine) and scalar(engine, "SELECT count(*) FROM consent_events") == 4
        )
    assert contact(engine, phone="+" + ana).marketing_opted_out is False
    late_stop = contact(engine, phone="+" + bo)
    assert late_stop.marketing_opted_out is True
    assert late_stop.marketing_opted_out_at.timestamp() == t0 + 30
    for who, newest in ((ana, False), (bo, True)):
        events = history(engine, contact(engine, phone="+" + who).id)
        assert [(e.opted_out, e.occurred_at.timestamp()) for e in events] == [
            (newest, t0 + 30),
            (not newest, t0),
        ]


def test_a_redelivered_preference_is_recorded_once(engine):
    add_organisation(engine)
    payload = p.user_preferences(p.preference("stop", at=int(time.time()) - 5))
    with webhook_client() as client:
        for _ in range(3):
            assert post(client, payload).status_code == 200
        tally = wait_counters(engine, events=3)
    assert (tally["preferences_applied"], tally["preferences_unchanged"]) == (1, 2)
    assert scalar(engine, "SELECT count(*) FROM consent_events") == 1
    assert contact(engine, phone=PHONE).marketing_opted_out is True


@pytest.mark.parametrize(
    ("item", "named"),
    [
        (p.preference("pause"), "unknown value 'pause'"),
        (
            p.preference("stop", category="promotional_calls"),
            "unknown category 'promotional_calls'",
        ),
        (p.preference("stop", category="16505551234"), "unknown category (a str, not shown)"),
        (p.preference("stop", wa_id=None), "names no customer"),
    ],
    ids=["value", "category", "category-with-digits", "no-customer"],
)
def test_an_item_not_understood_is_kept_logged_without_personal_data_and_changes_nothing(
    engine, caplog, item, named
):
    add_organisation(engine)
    caplog.set_level(logging.INFO)
    payload = p.user_preferences(item, wa_id=None, user_id=USER_ID)
    with webhook_client() as client:
        assert post(client, payload).status_code == 200
        tally = wait_counters(engine, events=1)
    assert tally["preferences_ignored"] == 1 and tally["preferences_applied"] == 0
    stored = rows(engine, "SELECT id, payload, processed_at, error FROM webhook_inbox")
    assert len(stored) == 1
    assert stored[0].payload == payload and stored[0].processed_at and stored[0].error is None
    assert scalar(engine, "SELECT count(*) FROM contacts") == 0
    assert scalar(engine, "SELECT count(*) FROM consent_events") == 0
    [line] = [r.getMessage() for r in caplog.records if "user_preferences" in r.getMessage()]
    assert named in line and f"inbox event {stored[0].id}" in line
    for personal in ("16505551234", USER_ID, "Ana"):
        assert personal not in caplog.text


def _campaign_message(engine, org, wamid, contact_id=None, phone=PHONE) -> int:
    with engine.begin() as conn:
        return conn.execute(
            sa.text(
                "INSERT INTO messages (organisation_id, contact_id, direction, sender_type,"
                " peer_phone, message_type, provider_message_id, status)"
                " VALUES (:o, :c, 'outbound', 'campaign', :phone, 'template', :w, 'sent')"
                " RETURNING id"
            ),
            {"o": org, "c": contact_id, "phone": phone, "w": wamid},
        ).scalar_one()


def _failed(wamid: str, code: int = 131050):
    return p.statuses(p.status(wamid, "failed", error=(code, "Unable to deliver the message")))


def test_error_131050_on_a_failed_receipt_opts_the_contact_out_of_marketing_once(engine, caplog):
    org = add_organisation(engine)
    caplog.set_level(logging.INFO)
    with engine.begin() as conn:
        ana = conn.execute(
            sa.text(
                "INSERT INTO contacts (organisation_id, phone, name) VALUES (:o, :p, 'Ana')"
                " RETURNING id"
            ),
            {"o": org, "p": PHONE},
        ).scalar_one()
    first = _campaign_message(engine, org, "wamid.M1", ana)
    other = _campaign_message(engine, org, "wamid.M2", phone="+16505550000")  # no contact row
    undeliverable = _campaign_message(engine, org, "wamid.M3", ana)
    with webhook_client() as client:
        for _ in range(2):  # WhatsApp redelivers
            post(client, _failed("wamid.M1"))
        post(client, _failed("wamid.M2"))
        post(client, _failed("wamid.M3", code=131026))
        wait_until(
            lambda: (
                processed(engine)
                and scalar(engine, "SELECT count(*) FROM messages WHERE status = 'failed'") == 3
            )
        )
    assert contact(engine, phone=PHONE).marketing_opted_out is True
    assert contact(engine, phone=PHONE).opted_out is False
    [event] = history(engine, ana)
    assert (event.scope, event.opted_out, event.source, event.message_id) == (
        "marketing",
        True,
        "error_131050",
        first,
    )
    # A message without a contact row opts out the contact it was sent to (created now).
    bo = contact(engine, phone="+16505550000")
    assert bo.marketing_opted_out is True
    assert [e.message_id for e in history(engine, bo.id)] == [other]
    assert undeliverable not in {
        r.message_id for r in rows(engine, "SELECT message_id FROM consent_events")
    }
    assert "16505551234" not in caplog.text and "16505550000" not in caplog.text


def test_a_131050_receipt_that_arrives_before_its_wamid_opts_out_when_it_is_applied(engine):
    org = add_organisation(engine)
    message = _campaign_message(engine, org, None)
    with webhook_client() as client:
        post(client, _failed("wamid.EARLY"))
        wait_until(lambda: processed(engine))
        assert scalar(engine, "SELECT count(*) FROM consent_events") == 0
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE messages SET provider_message_id = 'wamid.EARLY' WHERE id = :m"),
                {"m": message},
            )
        wait_until(lambda: scalar(engine, "SELECT marketing_opted_out FROM contacts"))
    assert [(e.source, e.message_id) for e in history(engine, contact(engine, phone=PHONE).id)] == [
        ("error_131050", message)
    ]
