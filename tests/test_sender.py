import dataclasses
import json
import math
import socket
import threading
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
import sqlalchemy as sa

from pipelines.sender.worker import TICK_SECONDS, Job, Worker
from resources import sender_store
from resources.graph_errors import ErrorClass, GraphAPIError, classify
from resources.queue_message import MalformedPayload, parse
from tests.fake_graph import Failure, _validate
from tests.sending import (
    PHONE_NUMBER_ID,
    TEST_CONFIG,
    client_for,
    dead_letters,
    drain,
    enqueue,
    make_run,
    payload,
    row,
    start,
    statuses,
    wait_for,
)


def test_queued_templates_are_sent_once_with_our_id_and_recorded(engine, sqs, graph):
    run = make_run(engine, 12)
    enqueue(sqs, [payload(run, i) for i in range(12)])
    worker = drain(engine, sqs, client_for(graph.url))
    assert worker.stats["sent"] == 12
    assert sorted(int(r["biz_opaque_callback_data"]) for r in graph.requests) == run.message_ids
    first = next(r for r in graph.requests if r["to"] == run.phones[0])
    assert first["template"]["components"][0] == {
        "type": "header",
        "parameters": [{"type": "image", "image": {"link": "https://example.com/a.jpg"}}],
    }
    assert statuses(engine, run) == {"sent": 12}
    sent = row(engine, run.message_ids[0])
    assert sent.provider_message_id.startswith("wamid.")
    assert sent.attempts == 1 and sent.sent_at is not None
    depth = sqs.depth()
    assert (depth.visible, depth.in_flight, depth.dead_letter) == (0, 0, 0)


def _body(**fields):
    base = {
        "messageId": 7,
        "phoneNumberId": "p1",
        "organizationId": "00000000-0000-0000-0000-000000000001",
        "to": "+12025550100",
    }
    return json.dumps({**base, **fields})


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"messageType": "text", "messageContent": "Hi"}, {"body": "Hi", "preview_url": False}),
        (
            {"messageType": "image", "mediaUrl": "https://x/a.jpg", "caption": "Look"},
            {"link": "https://x/a.jpg", "caption": "Look"},
        ),
        (
            {"messageType": "video", "mediaUrl": "https://x/a.mp4", "caption": ""},
            {"link": "https://x/a.mp4"},
        ),
        (
            {"messageType": "document", "mediaUrl": "https://x/a.pdf", "caption": "Terms"},
            {"link": "https://x/a.pdf", "caption": "Terms"},
        ),
        (
            {"messageType": "audio", "mediaUrl": "https://x/a.ogg", "caption": "ignored"},
            {"link": "https://x/a.ogg"},
        ),
    ],
)
def test_each_payload_shape_becomes_the_documented_graph_body(fields, expected):
    parsed = parse(_body(**fields))
    kind = fields["messageType"]
    assert parsed.graph[kind] == expected
    assert parsed.graph["biz_opaque_callback_data"] == "7"
    assert _validate({"messaging_product": "whatsapp", "to": parsed.to, **parsed.graph}) is None


def test_template_parameters_become_components():
    parsed = parse(
        _body(
            templateName="offer",
            templateLanguage="pt_BR",
            templateParameters=[
                {"type": "body", "valueType": "text", "value": "Ana"},
                {"type": "header", "valueType": "document", "value": "https://x/a.pdf"},
                {"type": "button", "valueType": "text", "value": "DEMO001"},
            ],
        )
    )
    template = parsed.graph["template"]
    assert template["language"] == {"code": "pt_BR"}
    assert template["components"] == [
        {
            "type": "header",
            "parameters": [{"type": "document", "document": {"link": "https://x/a.pdf"}}],
        },
        {"type": "body", "parameters": [{"type": "text", "text": "Ana"}]},
        {
            "type": "button",
            "sub_type": "url",
            "index": "0",
            "parameters": [{"type": "text", "text": "DEMO001"}],
        },
    ]
    assert parsed.business_initiated
    assert _validate({"messaging_product": "whatsapp", "to": parsed.to, **parsed.graph}) is None


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("not json", "not JSON"),
        ("[1]", "not a JSON object"),
        (json.dumps({"to": "+12025550100"}), "messageId"),
        (_body(messageType="text"), "messageContent"),
        (_body(messageType="sticker"), "messageType"),
        (_body(messageType="image", mediaUrl="https://x/a.jpg"), "caption"),
        (_body(messageType="image", mediaUrl="ftp://x", caption=""), "mediaUrl"),
        (_body(to="12", messageType="text", messageContent="Hi"), "to"),
        (
            _body(templateName="t", templateParameters=[{"type": "footer", "value": "x"}]),
            "templateParameters.0.: type",
        ),
        (_body(phoneNumberId="", messageType="text", messageContent="Hi"), "phoneNumberId"),
        (_body(payloadVersion=2, messageType="text", messageContent="Hi"), "payloadVersion 2"),
        (_body(payloadVersion="1", messageType="text", messageContent="Hi"), "payloadVersion"),
    ],
)
def test_malformed_payloads_are_refused_with_the_reason(body, reason):
    with pytest.raises(MalformedPayload, match=reason):
        parse(body)


def test_malformed_payloads_go_to_the_dlq_with_the_reason_and_the_worker_keeps_going(
    engine, sqs, graph
):
    run = make_run(engine, 3)
    enqueue(
        sqs,
        [
            "{broken",
            payload(run, 0),
            payload(run, 1, messageType="sticker"),
            payload(run, 2),
        ],
    )
    drain(engine, sqs, client_for(graph.url))
    assert len(graph.requests) == 2
    reasons = sorted(m["MessageAttributes"]["reason"]["StringValue"] for m in dead_letters(sqs))
    assert reasons == [
        "messageType 'sticker' is not template, text, image, video, document or audio",
        "payload is not JSON",
    ]
    bad = row(engine, run.message_ids[1])
    assert bad.status == "failed" and "sticker" in bad.error_detail
    assert statuses(engine, run) == {"sent": 2, "failed": 1}
    assert sqs.depth().visible == 0


def test_an_unexpected_error_in_a_batch_loses_nothing_and_the_lane_goes_on(engine, sqs, graph):
    run = make_run(engine, 10)
    enqueue(sqs, [payload(run, i) for i in range(10)])
    config = dataclasses.replace(TEST_CONFIG, lanes=1, visibility_seconds=1)
    worker = Worker(engine, sqs, client_for(graph.url), config)
    reserve, bugs = worker.store.reserve_slots, [RuntimeError("a bug")]

    def reserve_after_a_bug(*args):
        if bugs:
            raise bugs.pop()
        return reserve(*args)

    worker.store.reserve_slots = reserve_after_a_bug
    worker.run(drain=True)
    assert statuses(engine, run) == {"sent": 10}
    assert sorted(int(r["biz_opaque_callback_data"]) for r in graph.requests) == run.message_ids


def test_a_throughput_error_is_retried_after_a_backoff_then_sent(engine, sqs, graph):
    run = make_run(engine, 1)
    graph.fail_next(Failure(130429, "Rate limit hit"))
    enqueue(sqs, [payload(run, 0)])
    worker = drain(engine, sqs, client_for(graph.url))
    assert worker.stats["retried"] == 1 and worker.stats["sent"] == 1
    assert len(graph.requests) == 2
    sent = row(engine, run.message_ids[0])
    assert (sent.status, sent.attempts) == ("sent", 2)


def test_retryable_errors_fail_the_row_after_three_attempts_and_leave_it_to_the_dlq(
    engine, sqs, graph
):
    run = make_run(engine, 1)
    graph.fail_sequence(
        [
            Failure(131000, "Something went wrong", http_status=500),
            Failure(133004, "Server temporarily unavailable", http_status=503),
            Failure(131056, "Pair rate limit hit"),
        ]
    )
    enqueue(sqs, [payload(run, 0)])
    drain(engine, sqs, client_for(graph.url))
    assert len(graph.requests) == 3
    failed = row(engine, run.message_ids[0])
    assert (failed.status, failed.attempts, failed.error_code) == ("failed", 3, 131056)
    assert failed.error_title == "Pair rate limit hit"
    [dead] = dead_letters(sqs)
    assert "failed after 3 attempts: 131056" in dead["MessageAttributes"]["reason"]["StringValue"]


def test_a_connection_that_cannot_be_made_is_retried_like_a_5xx(engine, sqs):
    run = make_run(engine, 1)
    enqueue(sqs, [payload(run, 0)])
    drain(engine, sqs, client_for("http://127.0.0.1:9"), retry_base_seconds=0)
    failed = row(engine, run.message_ids[0])
    assert (failed.status, failed.attempts) == ("failed", 3)
    assert failed.error_title == "network: ConnectError"
    assert len(dead_letters(sqs)) == 1


@pytest.mark.parametrize(
    ("code", "title"),
    [
        (131026, "Message undeliverable"),
        (100, "Invalid parameter"),
        (131051, "Unsupported message type"),
        (131030, "Recipient phone number not in allowed list"),
    ],
)
def test_permanent_errors_fail_at_once_with_code_and_title(engine, sqs, graph, code, title):
    run = make_run(engine, 1)
    graph.fail_next(Failure(code, title))
    enqueue(sqs, [payload(run, 0)])
    drain(engine, sqs, client_for(graph.url))
    assert len(graph.requests) == 1
    failed = row(engine, run.message_ids[0])
    assert (failed.status, failed.error_code, failed.error_title) == ("failed", code, title)
    assert failed.failed_at is not None
    depth = sqs.depth()
    assert (depth.visible, depth.in_flight, depth.dead_letter) == (0, 0, 0)


@pytest.mark.parametrize(
    ("code", "http_status", "expected"),
    [
        (130429, 400, ErrorClass.RETRYABLE),
        (131056, 400, ErrorClass.RETRYABLE),
        (131000, 500, ErrorClass.RETRYABLE),
        (133004, 503, ErrorClass.RETRYABLE),
        (131047, 400, ErrorClass.PERMANENT),
        (131051, 400, ErrorClass.PERMANENT),
        (132007, 400, ErrorClass.PERMANENT),
        (132012, 400, ErrorClass.PERMANENT),
        (131050, 400, ErrorClass.PERMANENT),
        (100, 400, ErrorClass.PERMANENT),
        (132000, 400, ErrorClass.BREAKER),
        (132015, 400, ErrorClass.BREAKER),
        (132016, 400, ErrorClass.BREAKER),
        (190, 401, ErrorClass.BREAKER),
        (368, 403, ErrorClass.BREAKER),
        (131031, 400, ErrorClass.BREAKER),
        (131048, 400, ErrorClass.BREAKER),
        (250, 403, ErrorClass.BREAKER),
        (999999, 503, ErrorClass.RETRYABLE),
        (999999, 429, ErrorClass.RETRYABLE),
        (999999, 400, ErrorClass.PERMANENT),
    ],
)
def test_errors_are_classified_by_graph_code_not_http_status(code, http_status, expected):
    assert classify(GraphAPIError(http_status, code, "title")).kind is expected


def _send_error(base_url: str) -> Exception:
    with pytest.raises(Exception) as raised:
        client = client_for(base_url)
        try:
            client.send("+12025550100", {"type": "text", "text": {"body": "hi"}})
        finally:
            client.close()
    return raised.value


def test_a_connection_broken_after_the_request_left_is_never_retried():
    listener = socket.create_server(("127.0.0.1", 0))

    def hang_up() -> None:  # reads the request, then closes without an answer
        connection, _ = listener.accept()
        connection.recv(65536)
        connection.close()

    threading.Thread(target=hang_up, daemon=True).start()
    with listener:
        dropped = _send_error(f"http://127.0.0.1:{listener.getsockname()[1]}")
    assert classify(dropped).kind is ErrorClass.AMBIGUOUS
    assert classify(aiohttp.SocketTimeoutError("no answer")).kind is ErrorClass.AMBIGUOUS
    refused = _send_error("http://127.0.0.1:9")
    assert classify(refused).kind is ErrorClass.RETRYABLE
    assert classify(aiohttp.ConnectionTimeoutError("no answer to SYN")).kind is ErrorClass.RETRYABLE


def test_free_form_messages_outside_the_24_hour_window_are_not_sent(engine, sqs, graph):
    run = make_run(engine, 2, message_type="text")
    with engine.begin() as conn:
        for index, hours_ago in ((0, 25), (1, 2)):
            conn.execute(
                sa.text(
                    "INSERT INTO conversations (organisation_id, contact_id, last_inbound_at)"
                    " SELECT organisation_id, contact_id, :t FROM messages WHERE id = :m"
                ),
                {"t": datetime.now(UTC) - timedelta(hours=hours_ago), "m": run.message_ids[index]},
            )
    bodies = [
        {**payload(run, i), "messageType": "text", "messageContent": "Thanks for your order"}
        for i in range(2)
    ]
    enqueue(sqs, bodies)
    drain(engine, sqs, client_for(graph.url))
    assert [r["to"] for r in graph.requests] == [run.phones[1]]
    outside = row(engine, run.message_ids[0])
    assert outside.status == "failed" and outside.error_code == 131047
    assert "24-hour" in outside.error_title and "template" in outside.error_detail
    assert row(engine, run.message_ids[1]).status == "sent"


def test_sqs_redelivering_a_sent_message_does_not_send_it_again(engine, sqs, graph):
    run = make_run(engine, 2)
    enqueue(sqs, [payload(run, 0), payload(run, 1)])
    drain(engine, sqs, client_for(graph.url))
    enqueue(sqs, [payload(run, 0), payload(run, 1)])  # the same payloads, delivered again
    worker = drain(engine, sqs, client_for(graph.url))
    assert len(graph.requests) == 2
    assert worker.stats["duplicates"] == 2 and worker.stats["sent"] == 0
    assert statuses(engine, run) == {"sent": 2}
    assert sqs.depth().visible == 0


def test_two_workers_receiving_duplicates_of_each_payload_send_each_once(engine, sqs, graph):
    run = make_run(engine, 20)
    bodies = [payload(run, i) for i in range(20)]
    enqueue(sqs, bodies + bodies)
    client = client_for(graph.url)
    first, first_thread = start(engine, sqs, client)
    second, second_thread = start(engine, sqs, client)
    wait_for(lambda: statuses(engine, run) == {"sent": 20} and sqs.depth().in_flight == 0)
    wait_for(lambda: sqs.depth().visible == 0)
    for worker, thread in ((first, first_thread), (second, second_thread)):
        worker.stop()
        thread.join(timeout=30)
    assert sorted(r["to"] for r in graph.requests) == sorted(run.phones)
    # Every second copy was recognised; SQS delivers at least once, so a copy whose
    # visibility lapsed under load may be recognised one more time.
    assert first.stats["duplicates"] + second.stats["duplicates"] >= 20


def test_the_messaging_limit_holds_new_recipients_and_counts_each_recipient_once(
    engine, sqs, graph
):
    run = make_run(engine, 3, messaging_limit=250)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO messaging_window (organisation_id, recipient, counted_at)"
                " SELECT CAST(:o AS uuid), '+1999' || n, now() FROM generate_series(1, 248) n"
            ),
            {"o": run.organisation_id},
        )
        # The third recipient was already messaged today: a second message is free.
        conn.execute(
            sa.text(
                "INSERT INTO messaging_window VALUES (CAST(:o AS uuid), :r, now() - interval '1 hour')"
            ),
            {"o": run.organisation_id, "r": run.phones[2]},
        )
    enqueue(sqs, [payload(run, i) for i in range(3)])
    worker, thread = start(engine, sqs, client_for(graph.url))
    wait_for(lambda: statuses(engine, run).get("sent") == 2 and worker.stats["held_by_limit"])
    assert statuses(engine, run) == {"sent": 2, "pending": 1}
    waiting = [
        m
        for m, p in zip(run.message_ids, run.phones, strict=True)
        if p not in {r["to"] for r in graph.requests}
    ]
    assert len(waiting) == 1
    with engine.begin() as conn:  # a day passes for the earlier recipients
        conn.execute(
            sa.text(
                "UPDATE messaging_window SET counted_at = now() - interval '25 hours'"
                " WHERE recipient LIKE '+1999%'"
            )
        )
    wait_for(lambda: statuses(engine, run) == {"sent": 3})
    worker.stop()
    thread.join(timeout=30)
    assert len(graph.requests) == 3
    assert row(engine, waiting[0]).attempts == 1  # waiting never counted as an attempt
    assert worker.stats["held_by_limit"] == 1  # held once in the database, not circling
    assert sqs.depth().dead_letter == 0


def test_throughput_slots_are_shared_by_all_workers_of_a_phone_number(engine):
    make_run(engine, 1, messages_per_second=50)
    statements = sender_store.Store(engine)
    first = statements.reserve_slots(PHONE_NUMBER_ID, 10)
    second = statements.reserve_slots(PHONE_NUMBER_ID, 10)
    assert first.spacing_seconds == pytest.approx(1 / 50)
    assert second.wait_seconds > first.wait_seconds  # the second batch starts after the first
    assert statements.reserve_slots("unregistered", 1).spacing_seconds == pytest.approx(1 / 80)
    statements.close()


def test_sends_leave_on_ticks_at_most_a_ticks_worth_of_the_limit_each(engine, sqs, graph):
    """Slots rounded up to the tick: the sends of a tick share one wake-up, and no tick
    carries more than the limit allows in it, across batches and lanes."""
    run = make_run(engine, 40, messages_per_second=80)
    worker = Worker(engine, sqs, client_for(graph.url))
    jobs = [Job(None, parse(json.dumps(payload(run, i)))) for i in range(40)]
    times = [job.send_at for batch in (jobs[:10], jobs[10:]) for job in worker._schedule(batch)]
    assert times == sorted(times)
    ticks = [round(t / TICK_SECONDS) for t in times]
    assert all(math.isclose(t, k * TICK_SECONDS) for t, k in zip(times, ticks, strict=True))
    assert max(ticks.count(k) for k in ticks) <= 80 * TICK_SECONDS
    assert times[-1] - times[0] >= 39 / 80 - TICK_SECONDS


def test_a_claim_repeated_with_its_token_finds_its_own_rows_again_and_no_others(engine):
    ids = make_run(engine, 3).message_ids
    mine, theirs = "00000000-0000-0000-0000-00000000000a", "00000000-0000-0000-0000-00000000000b"
    statements = sender_store.Store(engine)
    first = statements.claim(ids[:2], mine)  # as if its answer were lost
    again = statements.claim(ids, mine)
    assert sorted(first) == ids[:2]
    assert sorted(again) == ids  # its two rows again, and the third still pending
    assert {claimed.attempts for claimed in again.values()} == {1}  # counted once
    assert statements.claim(ids, theirs) == {}
    statements.close()


def test_dev_mode_sends_nothing_and_records_dev_ids(engine, sqs, graph):
    run = make_run(engine, 2)
    enqueue(sqs, [payload(run, i) for i in range(2)])
    drain(engine, sqs, client_for(graph.url, token=None))
    assert graph.requests == []
    assert row(engine, run.message_ids[0]).provider_message_id == (
        f"dev_{run.phones[0].lstrip('+')}_offer_{run.message_ids[0]}"
    )
    assert statuses(engine, run) == {"sent": 2}
