import json
import threading

import sqlalchemy as sa

from pipelines.dev.local_stack import EmbeddedPostgres
from tests import payloads as p
from tests.webhook_support import (
    add_organisation,
    inbox_drained,
    post,
    rows,
    scalar,
    wait_until,
    webhook_client,
    worker_stats,
)
from webhook_app import processing


def _outbound(engine, org, wamid=None, status="sent"):
    with engine.begin() as conn:
        return conn.execute(
            sa.text(
                "INSERT INTO messages (organisation_id, direction, sender_type, peer_phone,"
                " message_type, provider_message_id, status)"
                " VALUES (:o, 'outbound', 'campaign', '+16505551234', 'template', :w, :s)"
                " RETURNING id"
            ),
            {"o": org, "w": wamid, "s": status},
        ).scalar_one()


def _message(engine, message_id):
    return rows(engine, "SELECT * FROM messages WHERE id = :id", id=message_id)[0]


def _store(engine, payload, receipts_only=False):
    """An event in the inbox, no worker running: marked as the app marks it, or not, as are
    events stored before the mark existed."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO webhook_inbox (payload, receipts_only) VALUES (CAST(:p AS jsonb), :r)"
            ),
            {"p": json.dumps(payload), "r": receipts_only},
        )


def test_the_verification_handshake_echoes_the_challenge_only_for_the_right_token(database_url):
    with webhook_client() as client:
        ok = client.get(
            "/webhook",
            params={
                "hub.mode": "subscribe",
                "hub.verify_token": "dev-verify-token",
                "hub.challenge": "1158201444",
            },
        )
        wrong = client.get(
            "/webhook",
            params={"hub.mode": "subscribe", "hub.verify_token": "nope", "hub.challenge": "1"},
        )
    assert (ok.status_code, ok.text) == (200, "1158201444")
    assert wrong.status_code == 403


def test_unsigned_wrongly_signed_and_foreign_signed_bodies_are_refused_and_not_stored(engine):
    body = json.dumps(p.statuses(p.status("wamid.A", "delivered"))).encode()
    with webhook_client() as client:
        missing = client.post("/webhook", content=body)
        wrong = client.post(
            "/webhook", content=body, headers={"X-Hub-Signature-256": "sha256=00ff"}
        )
        _, foreign_headers = p.signed(body, secret="someone-elses-secret")
        foreign = client.post("/webhook", content=body, headers=foreign_headers)
    assert [r.status_code for r in (missing, wrong, foreign)] == [403, 403, 403]
    assert "missing" in missing.json()["error"]
    assert "does not match" in foreign.json()["error"]
    assert scalar(engine, "SELECT count(*) FROM webhook_inbox") == 0


def test_a_body_over_4_mib_is_refused_with_413(engine):
    big = {"object": "whatsapp_business_account", "entry": [], "pad": "x" * (5 * 1024 * 1024)}
    with webhook_client() as client:
        declared = post(client, big)
        body, headers = p.signed(big)

        def chunks():
            for i in range(0, len(body), 65536):
                yield body[i : i + 65536]

        streamed = client.post("/webhook", content=chunks(), headers=headers)
    assert declared.status_code == 413
    assert streamed.status_code == 413
    assert scalar(engine, "SELECT count(*) FROM webhook_inbox") == 0


def test_bad_bodies_get_400_with_the_reason(engine):
    with webhook_client() as client:
        utf8 = post(client, b'{"object": "whatsapp_business_account", "x": "\xff\xfe"}')
        not_json = post(client, b'{"object": ')
        nan = post(client, b'{"object": "whatsapp_business_account", "entry": NaN}')
        foreign = post(client, {"object": "page", "entry": []})
        no_changes = post(client, {"object": "whatsapp_business_account", "entry": [{"id": "1"}]})
        nul = post(
            client,
            b'{"object": "whatsapp_business_account", "entry": [{"changes": [{"field": "messages", "value": {"x": "\\u0000"}}]}]}',
        )
    assert utf8.status_code == 400 and "UTF-8" in utf8.json()["error"]
    assert not_json.status_code == 400 and "not JSON" in not_json.json()["error"]
    assert nan.status_code == 400 and "NaN" in nan.json()["error"]
    assert foreign.status_code == 400 and "whatsapp_business_account" in foreign.json()["error"]
    assert no_changes.status_code == 400 and "changes" in no_changes.json()["error"]
    assert nul.status_code == 400 and "cannot store" in nul.json()["error"]
    assert scalar(engine, "SELECT count(*) FROM webhook_inbox") == 0


def test_an_event_is_stored_before_its_200_and_processed_in_the_background(engine):
    org = add_organisation(engine)
    message_id = _outbound(engine, org, "wamid.STORED")
    with webhook_client() as client:
        response = post(client, p.statuses(p.status("wamid.STORED", "delivered")))
        assert response.status_code == 200
        assert scalar(engine, "SELECT count(*) FROM webhook_inbox") == 1
        wait_until(lambda: _message(engine, message_id).status == "delivered")
        health = client.get("/health").json()
    assert health["workers"] and all(health["workers"].values())
    assert health["inbox"]["backlog"] == 0


def test_unknown_fields_and_message_types_are_stored_and_skipped_not_refused(engine):
    add_organisation(engine)
    payload = p.inbound(p.message("hologram", {"id": "H1"}, future_field={"x": 1}))
    payload["entry"][0]["changes"].append({"field": "account_alerts", "value": {"alert": "x"}})
    payload["entry"][0]["brand_new"] = True
    with webhook_client() as client:
        assert post(client, payload).status_code == 200
        wait_until(lambda: inbox_drained(engine))
    stored = rows(engine, "SELECT message_type, payload FROM messages WHERE direction = 'inbound'")
    assert [(r.message_type, r.payload["future_field"]) for r in stored] == [("hologram", {"x": 1})]
    assert scalar(engine, "SELECT count(*) FROM webhook_inbox WHERE error IS NOT NULL") == 0


def test_while_the_database_is_down_the_answer_is_503_and_nothing_is_acknowledged(
    tmp_path, monkeypatch
):
    server = EmbeddedPostgres(tmp_path / "pg")
    server.start()
    # Its own server, not the session's stack, which is what sets development otherwise.
    monkeypatch.setenv("APP_ENV", "development")
    monkeypatch.setenv("DATABASE_URL", server.url("postgres"))
    engine = sa.create_engine(server.url("postgres"))
    try:
        with webhook_client() as client:
            assert post(client, p.statuses(p.status("wamid.UP", "sent"))).status_code == 200
            server.stop()
            down = post(client, p.statuses(p.status("wamid.DOWN", "sent")))
            assert down.status_code == 503
            server.start()
            assert post(client, p.statuses(p.status("wamid.BACK", "sent"))).status_code == 200
        stored = rows(engine, "SELECT payload FROM webhook_inbox ORDER BY id")
        ids = [r.payload["entry"][0]["changes"][0]["value"]["statuses"][0]["id"] for r in stored]
        assert ids == ["wamid.UP", "wamid.BACK"]
    finally:
        engine.dispose()
        server.stop()


def test_the_same_status_five_times_applies_once(engine):
    org = add_organisation(engine)
    message_id = _outbound(engine, org, "wamid.DUP")
    event = p.statuses(p.status("wamid.DUP", "delivered", at=1_700_000_000))
    with webhook_client() as client:
        assert [post(client, event).status_code for _ in range(5)] == [200] * 5
        wait_until(lambda: inbox_drained(engine))
        stats = worker_stats(client, events_processed=5)
    message = _message(engine, message_id)
    assert message.status == "delivered"
    assert message.delivered_at.timestamp() == 1_700_000_000
    assert scalar(engine, "SELECT count(*) FROM message_receipts") == 1
    assert stats["workers"]["duplicates_dropped"] == 4
    assert stats["inbox"]["processed"] == 5


def test_read_before_delivered_never_goes_backwards_and_keeps_each_time(engine):
    org = add_organisation(engine)
    message_id = _outbound(engine, org, "wamid.ORDER")
    with webhook_client() as client:
        post(client, p.statuses(p.status("wamid.ORDER", "read", at=1_700_000_200)))
        wait_until(lambda: _message(engine, message_id).status == "read")
        post(client, p.statuses(p.status("wamid.ORDER", "delivered", at=1_700_000_100)))
        post(client, p.statuses(p.status("wamid.ORDER", "sent", at=1_700_000_050)))
        wait_until(lambda: inbox_drained(engine))
    message = _message(engine, message_id)
    assert message.status == "read"
    assert message.delivered_at.timestamp() == 1_700_000_100
    assert message.read_at.timestamp() == 1_700_000_200
    assert message.sent_at.timestamp() == 1_700_000_050


def test_failed_is_final_and_keeps_the_providers_error(engine):
    org = add_organisation(engine)
    message_id = _outbound(engine, org, "wamid.FAIL")
    with webhook_client() as client:
        post(
            client,
            p.statuses(p.status("wamid.FAIL", "failed", error=(131026, "Message undeliverable"))),
        )
        wait_until(lambda: _message(engine, message_id).status == "failed")
        post(client, p.statuses(p.status("wamid.FAIL", "read")))
        wait_until(lambda: inbox_drained(engine))
    message = _message(engine, message_id)
    assert (message.status, message.error_code) == ("failed", 131026)
    assert message.error_title.startswith("Message undeliverable")
    assert message.read_at is not None


def test_a_receipt_for_an_unknown_wamid_waits_until_the_wamid_appears(engine):
    org = add_organisation(engine)
    message_id = _outbound(engine, org, None, status="sending")
    with webhook_client() as client:
        post(client, p.statuses(p.status("wamid.LATE", "delivered")))
        wait_until(lambda: inbox_drained(engine))
        waiting = rows(engine, "SELECT applied_at FROM message_receipts")
        assert [r.applied_at for r in waiting] == [None]
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE messages SET provider_message_id = 'wamid.LATE', status = 'sent' WHERE id = :id"
                ),
                {"id": message_id},
            )
        wait_until(lambda: _message(engine, message_id).status == "delivered")
    assert scalar(engine, "SELECT count(*) FROM message_receipts WHERE applied_at IS NULL") == 0


def test_a_receipt_finds_its_message_by_biz_opaque_callback_data(engine):
    org = add_organisation(engine)
    message_id = _outbound(engine, org, None, status="sending")
    with webhook_client() as client:
        post(client, p.statuses(p.status("wamid.CB", "sent", callback=str(message_id))))
        wait_until(lambda: _message(engine, message_id).status == "sent")
    assert _message(engine, message_id).provider_message_id == "wamid.CB"


def test_several_entries_and_changes_in_one_post_are_all_applied(engine):
    org = add_organisation(engine)
    ids = [_outbound(engine, org, f"wamid.M{i}") for i in range(4)]
    payload = p.statuses(p.status("wamid.M0", "delivered"), p.status("wamid.M1", "read"))
    payload["entry"][0]["changes"].append(
        p.statuses(p.status("wamid.M2", "delivered"))["entry"][0]["changes"][0]
    )
    payload["entry"].append(p.statuses(p.status("wamid.M3", "read"))["entry"][0])
    with webhook_client() as client:
        assert post(client, payload).status_code == 200
        wait_until(lambda: inbox_drained(engine))
    assert [_message(engine, i).status for i in ids] == ["delivered", "read", "delivered", "read"]


def test_several_workers_share_the_inbox_without_doing_an_event_twice(engine):
    org = add_organisation(engine)
    for i in range(60):
        _outbound(engine, org, f"wamid.W{i}")
    for i in range(60):
        _store(engine, p.statuses(p.status(f"wamid.W{i}", "delivered")))
    tallies = []

    def work():
        while True:
            tally = processing.process_batch(engine, limit=7)
            if not tally["events"]:
                return
            tallies.append(tally)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(t["events"] for t in tallies) == 60
    assert sum(t["receipts"] for t in tallies) == 60
    assert scalar(engine, "SELECT max(attempts) FROM webhook_inbox") == 1
    assert scalar(engine, "SELECT count(*) FROM messages WHERE status = 'delivered'") == 60


def test_unprocessed_events_are_picked_up_after_a_restart(engine):
    org = add_organisation(engine)
    message_id = _outbound(engine, org, "wamid.RESTART")
    _store(engine, p.statuses(p.status("wamid.RESTART", "read")))
    with webhook_client():
        wait_until(lambda: _message(engine, message_id).status == "read")


def test_an_event_that_keeps_failing_is_retried_then_closed_with_its_error(engine):
    _store(engine, p.inbound(p.text("hi")))
    tally = processing.process_batch(engine)
    assert tally["failed"] == 1
    row = rows(engine, "SELECT * FROM webhook_inbox")[0]
    assert row.processed_at is None and row.retry_at is not None
    assert "no organisation owns" in row.error
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE webhook_inbox SET attempts = 4, retry_at = now()"))
    processing.process_batch(engine)
    row = rows(engine, "SELECT * FROM webhook_inbox")[0]
    assert row.processed_at is not None and "no organisation owns" in row.error


def test_an_event_that_cannot_be_read_fails_alone_and_the_rest_of_its_batch_is_applied(engine):
    org = add_organisation(engine)
    message_id = _outbound(engine, org, "wamid.BESIDE")
    unreadable = [
        {"object": "whatsapp_business_account", "entry": "not a list"},
        p.envelope({"messages": {"not": "a list"}}),
        p.envelope({"messages": ["not an object"]}),
    ]
    for payload in [*unreadable, p.statuses(p.status("wamid.BESIDE", "read"))]:
        _store(engine, payload)
    tally = processing.process_batch(engine)
    assert (tally["events"], tally["failed"], tally["receipts"]) == (4, 3, 1)
    assert _message(engine, message_id).status == "read"
    errors = [r.error for r in rows(engine, "SELECT error FROM webhook_inbox ORDER BY id")]
    assert errors[3] is None
    assert "entry must be a non-empty list" in errors[0]
    assert all("messages" in e for e in errors[1:3])


def test_the_app_marks_the_events_that_hold_only_receipts(engine):
    add_organisation(engine)
    with_a_message = p.statuses(p.status("wamid.MIXED", "read"))
    with_a_message["entry"].append(p.inbound(p.text("hello"))["entry"][0])
    sent = {
        "receipts": p.statuses(p.status("wamid.ONLY", "read")),
        "inbound": p.inbound(p.text("hi")),
        "mixed": with_a_message,
        "errors": p.with_errors(p.statuses(p.status("wamid.E", "sent")), p.provider_error()),
        "template": p.envelope({"event": "APPROVED"}, field="message_template_status_update"),
    }
    with webhook_client() as client:
        for payload in sent.values():
            assert post(client, payload).status_code == 200
        wait_until(lambda: inbox_drained(engine))
    inbox = rows(engine, "SELECT id, receipts_only FROM webhook_inbox ORDER BY id")
    assert dict(zip(sent, [r.receipts_only for r in inbox], strict=True)) == {
        "receipts": True,
        "inbound": False,
        "mixed": False,
        "errors": False,
        "template": False,
    }
    # Each receipt names the event it was read from, in a batch or one by one.
    event = dict(zip(sent, [r.id for r in inbox], strict=True))
    recorded = rows(engine, "SELECT provider_message_id, event_id FROM message_receipts ORDER BY 1")
    assert [tuple(r) for r in recorded] == [
        ("wamid.E", event["errors"]),
        ("wamid.MIXED", event["mixed"]),
        ("wamid.ONLY", event["receipts"]),
    ]
    assert scalar(engine, "SELECT count(*) FROM messages WHERE direction = 'inbound'") == 2


def test_a_receipt_part_of_the_wrong_type_reads_as_absent(engine):
    org = add_organisation(engine)
    late = _outbound(engine, org, "wamid.LATE_TS")
    failed = _outbound(engine, org, "wamid.CODE")
    odd = [
        {**p.status("wamid.LATE_TS", "delivered"), "timestamp": "soon"},
        {**p.status("wamid.CODE", "failed"), "errors": [{"code": "131026", "title": "Gone"}]},
        {**p.status("wamid.NUMBER_ID", "read"), "id": 12345},
        p.status("wamid.DELETED", "deleted"),
        {**p.status("wamid.CALLBACK", "sent"), "biz_opaque_callback_data": "12abc"},
        "not an object",
    ]
    payload = p.statuses(*odd)
    payload["entry"][0]["changes"].append(
        {"field": "messages", "value": {"statuses": p.status("wamid.NOT_A_LIST", "read")}}
    )
    _store(engine, payload, receipts_only=True)
    tally = processing.process_batch(engine)
    assert (tally["events"], tally["failed"], tally["receipts"]) == (1, 0, 3)
    recorded = rows(
        engine,
        "SELECT provider_message_id AS wamid, status, provider_ts, error_code, error_title"
        " FROM message_receipts ORDER BY 1",
    )
    assert [tuple(r) for r in recorded] == [
        ("wamid.CALLBACK", "sent", recorded[0].provider_ts, None, None),
        ("wamid.CODE", "failed", recorded[1].provider_ts, None, "Gone"),
        ("wamid.LATE_TS", "delivered", None, None, None),
    ]
    assert (_message(engine, late).status, _message(engine, late).delivered_at) == (
        "delivered",
        None,
    )
    assert (_message(engine, failed).status, _message(engine, failed).error_title) == (
        "failed",
        "Gone",
    )


def test_callbacks_in_one_batch_give_each_message_its_wamid_once(engine):
    org = add_organisation(engine)
    waiting = [_outbound(engine, org, None, status="sending") for _ in range(3)]
    taken = _outbound(engine, org, "wamid.TAKEN")
    for i, message_id in enumerate(waiting):
        _store(
            engine,
            p.statuses(
                p.status(f"wamid.CB{i}", "sent", callback=str(message_id)),
                p.status(f"wamid.CB{i}", "delivered", callback=str(message_id)),
            ),
            receipts_only=True,
        )
    # A receipt naming a message that already has another wamid leaves it alone.
    _store(
        engine, p.statuses(p.status("wamid.OTHER", "read", callback=str(taken))), receipts_only=True
    )
    tally = processing.process_batch(engine)
    assert (tally["events"], tally["receipts"]) == (4, 7)
    assert [
        (_message(engine, m).provider_message_id, _message(engine, m).status) for m in waiting
    ] == [(f"wamid.CB{i}", "delivered") for i in range(3)]
    assert (_message(engine, taken).provider_message_id, _message(engine, taken).status) == (
        "wamid.TAKEN",
        "sent",
    )


def test_a_batch_of_receipts_that_fails_is_applied_one_by_one_and_only_the_bad_event_fails(
    engine,
):
    org = add_organisation(engine)
    good = [_outbound(engine, org, f"wamid.GOOD{i}") for i in range(2)]
    with engine.begin() as conn:
        # A receipt the database refuses: the batch's statement fails as a whole.
        conn.execute(
            sa.text(
                "ALTER TABLE message_receipts ADD CONSTRAINT no_poison"
                " CHECK (provider_message_id <> 'wamid.POISON')"
            )
        )
    for wamid in ("wamid.GOOD0", "wamid.POISON", "wamid.GOOD1"):
        _store(engine, p.statuses(p.status(wamid, "read")), receipts_only=True)
    tally = processing.process_batch(engine)
    assert (tally["events"], tally["failed"], tally["receipts"]) == (3, 1, 2)
    assert [_message(engine, m).status for m in good] == ["read", "read"]
    inbox = rows(engine, "SELECT processed_at, retry_at, error FROM webhook_inbox ORDER BY id")
    assert [r.processed_at is not None for r in inbox] == [True, False, True]
    assert inbox[1].retry_at is not None and "no_poison" in inbox[1].error
