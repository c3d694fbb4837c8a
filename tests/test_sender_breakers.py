"""Circuit breakers in the sender: errors about the token, the account, the number or a
template hold their scope instead of failing every queued row, and what was held is sent
once after the breaker closes (by a probe, or by an operator's reset)."""

from __future__ import annotations

import base64
from collections import Counter

import sqlalchemy as sa

from resources import breakers, consent
from tests.fake_graph import Failure
from tests.sending import (
    TEST_CONFIG,
    client_for,
    drain,
    enqueue,
    make_run,
    payload,
    row,
    start,
    statuses,
    wait_for,
)


def _open_breakers(engine) -> list[breakers.Breaker]:
    with engine.connect() as conn:
        return breakers.open_breakers(conn)


def _held(engine, run) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT count(*) FROM messages WHERE campaign_run_id = :r"
                " AND status = 'pending' AND held_at IS NOT NULL"
            ),
            {"r": run.campaign_run_id},
        ).scalar_one()


def _reset(engine, breaker_id: int) -> None:
    with engine.begin() as conn:
        assert breakers.close(conn, breaker_id, "test operator", "token replaced")


def _settled(engine, sqs, run, held: int) -> bool:
    depth = sqs.depth()
    return _held(engine, run) == held and depth.visible + depth.in_flight == 0


def test_an_expired_token_wastes_at_most_a_batch_per_lane_and_a_reset_sends_the_rest_once(
    engine, sqs, graph
):
    run = make_run(engine, 2000)
    graph.fail_when(
        lambda body, earlier: earlier >= 100,
        Failure(190, "Error validating access token: Session has expired", http_status=401),
    )
    enqueue(sqs, [payload(run, i) for i in range(2000)])
    worker, thread = start(engine, sqs, client_for(graph.url))
    try:
        wait_for(lambda: _settled(engine, sqs, run, 1900), timeout=180)
        wasted = len(graph.requests) - 100
        assert 1 <= wasted <= TEST_CONFIG.lanes * 10
        assert statuses(engine, run) == {"sent": 100, "pending": 1900}
        [breaker] = _open_breakers(engine)
        assert (breaker.scope, breaker.error_code, breaker.closes_by) == ("app", 190, "operator")
        held = row(engine, run.message_ids[-1])
        assert held.breaker_id == breaker.id and held.queued_at is None
        assert f"circuit breaker {breaker.id} on app open" in held.status_reason

        graph.recover()
        _reset(engine, breaker.id)
        wait_for(lambda: statuses(engine, run) == {"sent": 2000}, timeout=180)
    finally:
        worker.stop()
        thread.join(timeout=60)
    sent = Counter(int(r["biz_opaque_callback_data"]) for r in graph.accepted())
    assert sorted(sent) == run.message_ids and set(sent.values()) == {1}
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT max(attempts) FROM messages")).scalar_one() == 1


def test_a_paused_template_holds_its_campaign_while_another_keeps_sending(engine, sqs, graph):
    paused = make_run(engine, 30)
    other = make_run(engine, 30, first_number=100)
    graph.fail_when(
        lambda body, earlier: body.get("template", {}).get("name") == "offer",
        Failure(132015, "Template is paused"),
    )
    bodies = []
    for i in range(30):
        bodies += [payload(paused, i), payload(other, i, templateName="welcome")]
    enqueue(sqs, bodies)
    worker, thread = start(engine, sqs, client_for(graph.url))
    try:
        wait_for(lambda: statuses(engine, other) == {"sent": 30}, timeout=60)
        wait_for(lambda: _settled(engine, sqs, paused, 30), timeout=60)
        [breaker] = _open_breakers(engine)
        assert (breaker.scope, breaker.error_code) == ("template", 132015)
        assert breaker.scope_key == f"{paused.organisation_id}/offer/en"
        assert statuses(engine, paused) == {"pending": 30}
        offers = [r for r in graph.requests if r["template"]["name"] == "offer"]
        assert len(offers) <= TEST_CONFIG.lanes * 10

        graph.recover()
        _reset(engine, breaker.id)
        wait_for(lambda: statuses(engine, paused) == {"sent": 30}, timeout=60)
    finally:
        worker.stop()
        thread.join(timeout=60)
    sent = Counter(int(r["biz_opaque_callback_data"]) for r in graph.accepted())
    assert set(sent.values()) == {1} and len(sent) == 60


def test_a_spam_rate_limit_closes_by_itself_once_a_probe_goes_through(engine, sqs, graph):
    run = make_run(engine, 20)
    graph.fail_sequence([Failure(131048, "Spam rate limit hit")] * 2)
    enqueue(sqs, [payload(run, i) for i in range(20)])
    worker, thread = start(engine, sqs, client_for(graph.url), lanes=1)
    try:
        wait_for(lambda: statuses(engine, run) == {"sent": 20}, timeout=90)
    finally:
        worker.stop()
        thread.join(timeout=60)
    with engine.connect() as conn:
        [closed] = [b for b in breakers.listing(conn, include_closed=5)]
    assert (closed["scope"], closed["error_code"], closed["closes_by"]) == (
        "phone_number",
        131048,
        "probe",
    )
    assert closed["closed_by"] == "probe" and closed["trips"] >= 1
    sent = Counter(int(r["biz_opaque_callback_data"]) for r in graph.accepted())
    assert sorted(sent) == run.message_ids and set(sent.values()) == {1}


def test_a_failed_probe_waits_twice_as_long_before_the_next(engine, sqs, graph):
    run = make_run(engine, 3)
    # The first send opens the breaker, the first probe fails, the second goes through.
    graph.fail_sequence([Failure(131048, "Spam rate limit hit")] * 2)
    enqueue(sqs, [payload(run, 0)])
    worker, thread = start(engine, sqs, client_for(graph.url), lanes=1)
    try:
        wait_for(lambda: statuses(engine, run) == {"sent": 1, "pending": 2}, timeout=90)
    finally:
        worker.stop()
        thread.join(timeout=60)
    with engine.connect() as conn:
        [breaker] = breakers.listing(conn, include_closed=1)
    assert breaker["trips"] == 2 and breaker["closed_by"] == "probe"
    assert len(graph.requests) == 3


def test_a_throughput_limit_that_outlives_its_retries_holds_the_row_instead_of_failing(
    engine, sqs, graph
):
    run = make_run(engine, 1)
    graph.fail_sequence([Failure(130429, "Rate limit hit")] * 3)
    enqueue(sqs, [payload(run, 0)])
    worker, thread = start(engine, sqs, client_for(graph.url), lanes=1)
    try:
        wait_for(lambda: statuses(engine, run) == {"sent": 1}, timeout=90)
    finally:
        worker.stop()
        thread.join(timeout=60)
    with engine.connect() as conn:
        [breaker] = breakers.listing(conn, include_closed=1)
    assert (breaker["scope"], breaker["error_code"]) == ("phone_number", 130429)
    assert breaker["closed_by"] == "probe"
    assert graph.answers == [130429, 130429, 130429, None]


def test_error_131050_fails_the_row_and_records_the_marketing_opt_out(engine, sqs, graph):
    run = make_run(engine, 5)
    stopped = run.phones[3]
    graph.fail_when(
        lambda body, earlier: body["to"] == stopped,
        Failure(131050, "Unable to deliver the message: the user has stopped marketing messages"),
    )
    enqueue(sqs, [payload(run, i) for i in range(5)])
    drain(engine, sqs, client_for(graph.url))
    assert statuses(engine, run) == {"sent": 4, "failed": 1}
    failed = row(engine, run.message_ids[3])
    assert failed.error_code == 131050
    with engine.connect() as conn:
        state = consent.state(conn, failed.contact_id)
    assert state["marketing_opted_out"] is True and state["opted_out"] is False
    [event] = state["consent_history"]
    assert (event["scope"], event["source"], event["message_id"]) == (
        "marketing",
        "error_131050",
        failed.id,
    )
    assert _open_breakers(engine) == []


def test_consent_withdrawn_after_dispatch_is_checked_when_the_row_is_claimed(engine, sqs, graph):
    run = make_run(engine, 4)
    with engine.begin() as conn:
        contacts = dict(
            conn.execute(
                sa.text("SELECT id, contact_id FROM messages WHERE id = ANY(:ids)"),
                {"ids": run.message_ids},
            ).all()
        )
        # STOP after the payload was queued: no campaign message of any category.
        consent.record(
            conn, consent.Change(contacts[run.message_ids[0]], "campaigns", True, "keyword")
        )
        # Stopped marketing in WhatsApp: a marketing message is skipped, a utility one sent.
        for message_id in run.message_ids[1:3]:
            consent.record(
                conn,
                consent.Change(contacts[message_id], "marketing", True, "user_preferences"),
            )
        conn.execute(
            sa.text("UPDATE messages SET category = :c WHERE id = :id"),
            {"c": "utility", "id": run.message_ids[2]},
        )
    enqueue(sqs, [payload(run, i) for i in range(4)])
    worker = drain(engine, sqs, client_for(graph.url))
    assert worker.stats["skipped"] == 2
    assert sorted(r["to"] for r in graph.requests) == sorted([run.phones[2], run.phones[3]])
    first, second = row(engine, run.message_ids[0]), row(engine, run.message_ids[1])
    assert (first.status, first.status_reason) == (
        "skipped",
        "contact opted out of campaign messages",
    )
    assert (second.status, second.status_reason) == (
        "skipped",
        "contact opted out of marketing messages",
    )
    assert first.skipped_at is not None and first.attempts == 0
    depth = sqs.depth()
    assert (depth.visible, depth.in_flight, depth.dead_letter) == (0, 0, 0)


def test_two_dev_mode_campaigns_to_the_same_contacts_both_send(engine, sqs):
    first = make_run(engine, 5)
    second = make_run(engine, 5)  # the same numbers, the same template name
    enqueue(sqs, [payload(first, i) for i in range(5)] + [payload(second, i) for i in range(5)])
    drain(engine, sqs, client_for("http://127.0.0.1:9", token=None))
    assert statuses(engine, first) == {"sent": 5}
    assert statuses(engine, second) == {"sent": 5}


def test_a_result_the_database_refuses_for_good_fails_its_row_and_the_lane_goes_on(
    engine, sqs, graph, caplog
):
    run = make_run(engine, 2)
    # The wamid the fake answers for its first request is already taken by another row.
    taken = "wamid." + base64.b64encode(f"{run.phones[0]}:0".encode()).decode()
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO messages (organisation_id, direction, sender_type, peer_phone,"
                " message_type, provider_message_id, status)"
                " VALUES (:o, 'inbound', 'customer', :p, 'text', :w, 'received')"
            ),
            {"o": run.organisation_id, "p": run.phones[0], "w": taken},
        )
    enqueue(sqs, [payload(run, 0)])
    worker = drain(engine, sqs, client_for(graph.url))
    refused = row(engine, run.message_ids[0])
    assert (refused.status, refused.error_title) == ("failed", "result not recorded")
    assert "unique constraint" in refused.error_detail
    assert worker.stats["unrecordable"] == 1
    enqueue(sqs, [payload(run, 1)])
    drain(engine, sqs, client_for(graph.url))
    assert row(engine, run.message_ids[1]).status == "sent"
    refusals = [r for r in caplog.records if "refuses a send result for good" in r.message]
    assert len(refusals) == 1
    assert run.phones[0] not in caplog.text
