"""A customer who changes their WhatsApp number (`user_changed_number`) stays one customer,
and the errors WhatsApp reports beside messages are logged, counted and kept."""

import json
import threading

import sqlalchemy as sa

from resources import campaigns, consent
from tests import payloads as p
from tests.webhook_support import (
    add_organisation,
    fake_graph,
    inbox_drained,
    post,
    rows,
    scalar,
    wait_until,
    webhook_client,
    worker_stats,
)
from webhook_app import processing

OLD, NEW = "16505551234", "12195555358"


def _contacts(engine):
    return rows(engine, "SELECT id, phone, name, opted_out FROM contacts ORDER BY id")


def test_a_changed_number_merges_into_the_contact_that_has_it_and_everything_follows(
    engine, monkeypatch
):
    monkeypatch.setenv("AGENT_BUFFER_SECONDS", "0")
    org = add_organisation(engine)
    with fake_graph() as (graph, url), webhook_client(url) as client:
        post(client, p.inbound(p.text("hi from my old phone"), wa_id=OLD, name="Ana"))
        post(client, p.inbound(p.text("hi from my new phone", wa_id=NEW), wa_id=NEW, name="Ana"))
        wait_until(lambda: len(graph.requests) == 2)
        ids = {c.phone: c.id for c in _contacts(engine)}  # workers may create them in any order
        old_id, new_id = ids[f"+{OLD}"], ids[f"+{NEW}"]
        with engine.begin() as conn:
            consent.record(conn, consent.Change(old_id, "campaigns", True, "api", reason="asked"))
            campaign = campaigns.create_campaign(
                conn, org, "Spring", message_type="text", message_content="Hello"
            )
            campaigns.add_audience(conn, campaign, [campaigns.Member(f"+{OLD}", "Ana")])
        notice = p.number_changed(OLD, NEW)
        for _ in range(2):  # WhatsApp redelivers: the second changes nothing more
            post(client, notice)
        stats = worker_stats(client, events_processed=4)
        wait_until(lambda: inbox_drained(engine))
        post(client, p.inbound(p.text("still me", wa_id=NEW), wa_id=NEW))
        wait_until(lambda: len(graph.requests) == 3)
    [contact] = _contacts(engine)
    assert (contact.id, contact.phone, contact.opted_out) == (new_id, f"+{NEW}", True)
    assert scalar(engine, "SELECT count(*) FROM conversations") == 1
    conversation = scalar(engine, "SELECT id FROM conversations")
    messages = rows(engine, "SELECT contact_id, conversation_id, body FROM messages ORDER BY id")
    assert {(m.contact_id, m.conversation_id) for m in messages} == {(new_id, conversation)}
    assert sorted(m.body for m in messages if m.body and m.body.startswith("hi")) == [
        "hi from my new phone",
        "hi from my old phone",
    ]
    member = rows(engine, "SELECT contact_id, msisdn, status FROM campaign_audience")[0]
    assert (member.contact_id, member.msisdn) == (new_id, f"+{NEW}")
    with engine.connect() as conn:
        described = consent.describe(conn, new_id)
    [change] = described["identity_history"]
    assert (change["kind"], change["old_phone"], change["new_phone"]) == (
        "merged",
        f"+{OLD}",
        f"+{NEW}",
    )
    assert change["merged_contact_id"] == old_id
    assert [e["reason"] for e in described["consent_history"]] == ["asked"]
    assert (stats["workers"]["numbers_changed"], stats["workers"]["contacts_merged"]) == (1, 1)
    assert {r["to"] for r in graph.requests} == {f"+{OLD}", f"+{NEW}"}
    assert graph.requests[-1]["to"] == f"+{NEW}"


def test_a_changed_number_moves_to_the_contact_once_under_concurrent_processing(engine):
    """The same notice stored twice (a redelivery) and applied by two workers at once."""
    add_organisation(engine)
    notice = p.number_changed(OLD, NEW)
    with engine.begin() as conn:
        for _ in range(2):
            conn.execute(
                sa.text("INSERT INTO webhook_inbox (payload) VALUES (CAST(:p AS jsonb))"),
                {"p": json.dumps(notice)},
            )
    tallies = []
    workers = [
        threading.Thread(target=lambda: tallies.append(processing.process_batch(engine, limit=1)))
        for _ in range(2)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert inbox_drained(engine)
    assert sum(t["inbound"] for t in tallies) == 1
    [contact] = _contacts(engine)
    assert contact.phone == f"+{NEW}"
    events = rows(engine, "SELECT kind, old_phone, new_phone FROM contact_events")
    assert [(e.kind, e.old_phone, e.new_phone) for e in events] == [
        ("number_changed", f"+{OLD}", f"+{NEW}")
    ]
    assert scalar(engine, "SELECT count(*) FROM messages WHERE message_type = 'system'") == 1
    # A notice is not the customer writing: no customer-service window opens.
    assert scalar(engine, "SELECT last_inbound_at FROM conversations") is None
    assert scalar(engine, "SELECT count(*) FROM webhook_inbox WHERE error IS NOT NULL") == 0


def test_value_level_errors_are_logged_counted_and_kept_with_the_event(engine, caplog):
    add_organisation(engine)
    payload = p.with_errors(
        p.inbound(p.text("hello")), p.provider_error(131000), p.provider_error(130429, "Rate")
    )
    receipts_only = p.with_errors(p.statuses(p.status("wamid.UNKNOWN", "sent")), p.provider_error())
    with webhook_client() as client:
        assert post(client, payload).status_code == 200
        assert post(client, receipts_only).status_code == 200
        stats = worker_stats(client, events_processed=2)
    kept = rows(
        engine, "SELECT provider_errors FROM webhook_inbox WHERE provider_errors IS NOT NULL"
    )
    assert sorted(len(k.provider_errors) for k in kept) == [1, 2]
    assert stats["provider_errors"] == {"events": 2, "by_code": {"130429": 1, "131000": 2}}
    assert stats["workers"]["provider_errors"] == 3
    assert scalar(engine, "SELECT count(*) FROM messages WHERE direction = 'inbound'") == 1
    logged = [r.getMessage() for r in caplog.records if "WhatsApp reported error" in r.getMessage()]
    assert len(logged) == 3 and any("130429 (Rate)" in line for line in logged)
    assert not any("hello" in line or OLD in line for line in logged)
