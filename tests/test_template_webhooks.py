"""Template webhooks (`message_template_status_update`, `template_category_update`,
`message_template_quality_update`) through the real app and its inbox workers, against the
real database: applied once, out of order by their times, waiting for templates we do not
know, and PAUSED holding a template's sends in the sender until APPROVED closes its breaker."""

from __future__ import annotations

import logging
import time
from collections import Counter

import pytest
import sqlalchemy as sa

from resources import breakers, campaigns, operator_templates, templates
from resources.campaigns import campaign_spec
from resources.whatsapp import WhatsAppClient
from tests import template_payloads as tp
from tests.sending import client_for, enqueue, make_run, payload, start, statuses, wait_for
from tests.webhook_support import (
    add_organisation,
    inbox_drained,
    post,
    rows,
    scalar,
    wait_until,
    webhook_client,
)

WABA_ID = tp.WABA_ID


@pytest.fixture(autouse=True)
def one_worker(monkeypatch):
    monkeypatch.setenv("WEBHOOK_WORKERS", "1")


def with_waba(engine, organisation_id, waba_id: str = WABA_ID) -> str:
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE organisations SET waba_id = :w WHERE id = :o"),
            {"w": waba_id, "o": organisation_id},
        )
    return str(organisation_id)


def shop(engine) -> str:
    return with_waba(engine, add_organisation(engine))


def processed(engine) -> bool:
    return inbox_drained(engine) and not scalar(
        engine, "SELECT count(*) FROM webhook_inbox WHERE error IS NOT NULL"
    )


def deliver(client, engine, *payloads) -> None:
    """Post each webhook and wait until the workers applied it, in this order."""
    for one in payloads:
        assert post(client, one).status_code == 200
        wait_until(lambda: processed(engine))


def template(engine, organisation_id: str, name: str, language: str = "en_US") -> sa.Row:
    return rows(
        engine,
        "SELECT * FROM templates WHERE organisation_id = :o AND name = :n AND language = :l",
        o=organisation_id,
        n=name,
        l=language,
    )[0]


def events(engine, name: str) -> list[sa.Row]:
    return rows(
        engine,
        "SELECT field, value, kind, outcome, template_id, occurred_at, reason, detail"
        " FROM template_events WHERE name = :n ORDER BY occurred_at, id",
        n=name,
    )


def open_template_breakers(engine) -> list[breakers.Breaker]:
    with engine.connect() as conn:
        return [b for b in breakers.open_breakers(conn) if b.scope == "template"]


def local_template(engine, organisation_id: str, name: str, language: str = "en_US") -> int:
    with engine.begin() as conn:
        return campaigns.create_template(conn, organisation_id, name, language=language)


def sync(engine, graph, organisation_id: str) -> templates.SyncResult:
    client = WhatsAppClient("test-token", "1234", graph.url, "v25.0", 10.0, 8)
    try:
        return templates.sync_organisation(engine, client, organisation_id)
    finally:
        client.close()


def test_status_category_and_quality_reach_the_template_once(engine):
    organisation = shop(engine)
    template_id = local_template(engine, organisation, "order_update")
    with engine.begin() as conn:
        campaign = campaigns.create_campaign(
            conn, organisation, "Orders", message_type="template", template_id=template_id
        )
    t0 = int(time.time()) - 300
    category = tp.category_update("order_update", at=t0, previous="UTILITY", new="UTILITY")
    with webhook_client() as client:
        deliver(
            client,
            engine,
            tp.quality_update("order_update", at=t0 + 10, previous="GREEN", new="YELLOW"),
            tp.category_update("order_update", at=t0 + 20, previous="UTILITY", new="MARKETING"),
            tp.status_update("REJECTED", "order_update", at=t0 + 30, reason="INCORRECT_CATEGORY"),
            tp.impending_category_update("order_update", at=t0 + 40, correct="UTILITY"),
            tp.status_update("FLAGGED", "order_update", at=t0 + 50),
            # Redelivered: recorded once, changes nothing.
            tp.quality_update("order_update", at=t0 + 10, previous="GREEN", new="YELLOW"),
            category,
        )

    found = template(engine, organisation, "order_update")
    assert (found.status, found.status_reason) == ("REJECTED", "INCORRECT_CATEGORY")
    assert (found.category, found.quality_score) == ("marketing", "YELLOW")
    assert found.meta_template_id == "1689556908129832"
    assert [(e.field, e.value, e.outcome) for e in events(engine, "order_update")] == [
        ("template_category_update", "UTILITY", "stale"),  # older than the one applied
        ("message_template_quality_update", "YELLOW", "applied"),
        ("template_category_update", "MARKETING", "applied"),
        ("message_template_status_update", "REJECTED", "applied"),
        ("template_category_update", "UTILITY", "noted"),  # announced for tomorrow
        ("message_template_status_update", "FLAGGED", "noted"),
    ]
    # The next dispatch follows the marketing consent rules.
    with engine.connect() as conn:
        assert campaign_spec(conn, campaign, "1234").category == "marketing"


def test_two_status_webhooks_out_of_order_end_on_the_newer(engine):
    organisation = shop(engine)
    local_template(engine, organisation, "spring_sale")
    local_template(engine, organisation, "winter_sale")
    t0 = int(time.time()) - 600
    with webhook_client() as client:
        # The approval after the pause arrives first; the pause it ended comes late.
        deliver(
            client,
            engine,
            tp.status_update("APPROVED", "spring_sale", at=t0 + 60),
            tp.status_update("PAUSED", "spring_sale", at=t0),
        )
        assert open_template_breakers(engine) == []
        # In order, the pause opens the breaker and the approval closes it.
        deliver(client, engine, tp.status_update("PAUSED", "winter_sale", at=t0))
        [breaker] = open_template_breakers(engine)
        deliver(client, engine, tp.status_update("APPROVED", "winter_sale", at=t0 + 60))

    assert template(engine, organisation, "spring_sale").status == "APPROVED"
    assert [(e.value, e.outcome) for e in events(engine, "spring_sale")] == [
        ("PAUSED", "stale"),
        ("APPROVED", "applied"),
    ]
    assert (breaker.scope_key, breaker.error_code) == (
        breakers.template_key(organisation, "winter_sale", "en_US"),
        132015,
    )
    assert breaker.error_title == (
        "Template is paused (FIRST_PAUSE: Your WhatsApp message template has been paused)"
    )
    assert breaker.closes_by == "operator"
    with engine.connect() as conn:
        [closed] = breakers.listing(conn, include_closed=1)
    assert (closed["id"], closed["closed_by"]) == (breaker.id, "message_template_status_update")
    assert template(engine, organisation, "winter_sale").status == "APPROVED"


def test_a_status_webhook_for_a_template_we_do_not_know_waits_for_it(engine, graph):
    organisation = shop(engine)
    t0 = int(time.time()) - 120
    with webhook_client() as client:
        deliver(
            client,
            engine,
            tp.status_update("PAUSED", "spring_sale", at=t0),
            tp.status_update("APPROVED", "winter_sale", "es", at=t0),
        )
    assert [(e.outcome, e.template_id) for e in events(engine, "spring_sale")] == [
        ("pending", None)
    ]
    assert scalar(engine, "SELECT count(*) FROM templates") == 0
    assert open_template_breakers(engine) == []

    # A sync finds the template: what Meta lists now is newer than the webhook, and agrees.
    graph.set_templates(WABA_ID, [tp.meta_template("spring_sale", status="PAUSED")])
    result = sync(engine, graph, organisation)
    found = template(engine, organisation, "spring_sale")
    [event] = events(engine, "spring_sale")
    assert (event.template_id, event.outcome) == (found.id, "stale")
    assert found.status == "PAUSED" and result.breakers_opened
    # An operator creates the other one (development): the webhook applies to it.
    created = operator_templates.create_template(
        engine, {"organisation_id": organisation, "name": "winter_sale", "language": "es"}
    )
    assert created["status"] == "APPROVED"
    assert [(e.outcome, e.template_id) for e in events(engine, "winter_sale")] == [
        ("applied", created["id"])
    ]


def test_a_webhook_that_arrives_while_a_sync_reads_is_applied_after_it(engine, graph):
    """The sync reads the template as APPROVED; Meta pauses it before the sync has stored
    anything, so the webhook finds no template and waits; the sync then applies it."""
    organisation = shop(engine)
    graph.template_page_size = 1
    graph.set_templates(WABA_ID, [tp.meta_template("spring_sale"), tp.meta_template("winter_sale")])
    with webhook_client() as client:

        def meta_pauses_it(waba_id: str, page: int) -> None:
            if page == 1:
                deliver(
                    client, engine, tp.status_update("PAUSED", "spring_sale", at=int(time.time()))
                )

        graph.before_template_page = meta_pauses_it
        result = sync(engine, graph, organisation)

    assert result.events_applied == 1
    assert template(engine, organisation, "spring_sale").status == "PAUSED"
    assert [e.outcome for e in events(engine, "spring_sale")] == ["applied"]
    [breaker] = open_template_breakers(engine)
    assert breaker.scope_key == breakers.template_key(organisation, "spring_sale", "en_US")


def test_a_webhook_of_a_waba_no_organisation_has_changes_nothing(engine, caplog):
    organisation = shop(engine)
    local_template(engine, organisation, "spring_sale")
    at = int(time.time())
    unnamed = tp.status_update("PAUSED", "spring_sale", at=at)
    del unnamed["entry"][0]["changes"][0]["value"]["message_template_name"]
    with caplog.at_level(logging.WARNING), webhook_client() as client:
        deliver(
            client,
            engine,
            tp.status_update("PAUSED", "spring_sale", at=at, waba_id="555555555555555"),
            unnamed,
        )
    assert template(engine, organisation, "spring_sale").status == "approved"
    assert scalar(engine, "SELECT count(*) FROM template_events") == 0
    assert scalar(engine, "SELECT count(*) FROM webhook_inbox WHERE processed_at IS NULL") == 0
    assert open_template_breakers(engine) == []
    assert "WABA '555555555555555' is no organisation's" in caplog.text
    assert "no message_template_name" in caplog.text


def test_paused_holds_the_templates_sends_and_approved_sends_them_once(engine, sqs, graph):
    run = make_run(engine, 20)
    with_waba(engine, run.organisation_id)
    graph.set_templates(WABA_ID, [tp.meta_template("offer", "en", status="PAUSED")])
    t0 = int(time.time()) - 60
    with webhook_client() as client:
        deliver(client, engine, tp.status_update("PAUSED", "offer", "en", at=t0))
        [breaker] = open_template_breakers(engine)
        enqueue(sqs, [payload(run, i) for i in range(20)])
        worker, thread = start(engine, sqs, client_for(graph.url))
        try:

            def all_held() -> bool:
                depth = sqs.depth()
                held = scalar(
                    engine,
                    "SELECT count(*) FROM messages WHERE breaker_id = :b AND held_at IS NOT NULL",
                    b=breaker.id,
                )
                return held == 20 and depth.visible + depth.in_flight == 0

            wait_for(all_held, timeout=60)
            # Held before any send met 132015: nothing of the template left.
            assert graph.requests == []
            assert statuses(engine, run) == {"pending": 20}

            graph.set_templates(WABA_ID, [tp.meta_template("offer", "en")])
            deliver(client, engine, tp.status_update("APPROVED", "offer", "en", at=t0 + 30))
            wait_for(lambda: statuses(engine, run) == {"sent": 20}, timeout=90)
        finally:
            worker.stop()
            thread.join(timeout=60)
    sent = Counter(int(r["biz_opaque_callback_data"]) for r in graph.accepted())
    assert sorted(sent) == run.message_ids and set(sent.values()) == {1}
    assert set(graph.answers) == {None}
    assert open_template_breakers(engine) == []


def test_the_fake_graph_api_refuses_templates_it_does_not_have_or_has_paused(graph):
    graph.set_templates(
        WABA_ID,
        [
            tp.meta_template("offer", "en"),
            tp.meta_template("paused_offer", "en", status="PAUSED"),
            tp.meta_template("disabled_offer", "en", status="DISABLED"),
        ],
    )
    client = client_for(graph.url)
    outcomes = []
    try:
        for name, language in [
            ("offer", "en"),
            ("offer", "pt_BR"),
            ("paused_offer", "en"),
            ("disabled_offer", "en"),
        ]:
            message = {
                "type": "template",
                "template": {"name": name, "language": {"code": language}},
            }
            try:
                client.send("+12025550100", message)
                outcomes.append(None)
            except Exception as error:
                outcomes.append((error.code, error.http_status, error.details))
    finally:
        client.close()
    assert outcomes[0] is None
    assert outcomes[1] == (132001, 404, "template name (offer) does not exist in pt_BR")
    assert outcomes[2][0] == 132015 and outcomes[3][0] == 132016
