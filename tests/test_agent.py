import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import FakeListChatModel, GenericFakeChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatResult
from pydantic import Field

from tests import payloads as p
from tests.webhook_support import (
    ADMIN,
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
from webhook_app.agent import FALLBACK_REPLY, HANDOFF_REPLY, OPT_IN_REPLY, OPT_OUT_REPLY


class Recording(FakeListChatModel):
    """Fake replies, and the prompts it was given."""

    prompts: list[list[BaseMessage]] = Field(default_factory=list)

    def _call(self, messages: list[BaseMessage], *args: Any, **kwargs: Any) -> str:
        self.prompts.append(list(messages))
        return super()._call(messages, *args, **kwargs)


class Broken(BaseChatModel):
    @property
    def _llm_type(self) -> str:
        return "broken"

    def _generate(self, messages, stop=None, **_: Any) -> ChatResult:
        raise ConnectionError("model endpoint unreachable")


@pytest.fixture
def zero_buffer(monkeypatch):
    monkeypatch.setenv("AGENT_BUFFER_SECONDS", "0")
    monkeypatch.setenv("WEBHOOK_WORKERS", "1")


def _sent_texts(graph) -> list[str]:
    return [r["text"]["body"] for r in graph.requests if r.get("type") == "text"]


def _ai_rows(engine):
    return rows(
        engine,
        "SELECT sender_type, body, provider_message_id FROM messages"
        " WHERE direction = 'outbound' ORDER BY id",
    )


def _unhandled(engine) -> int:
    return scalar(
        engine, "SELECT count(*) FROM messages WHERE direction = 'inbound' AND handled_at IS NULL"
    )


def test_the_agent_answers_through_the_graph_api_and_stores_the_reply(engine, zero_buffer):
    add_organisation(engine)
    model = GenericFakeChatModel(messages=iter([AIMessage("Our shop opens at 9.")]))
    with fake_graph() as (graph, url), webhook_client(url, model) as client:
        assert post(client, p.inbound(p.text("When do you open?"))).status_code == 200
        wait_until(lambda: _sent_texts(graph))
        wait_until(lambda: _unhandled(engine) == 0)
        stats = client.get("/stats").json()
    assert graph.requests[0]["to"] == "+16505551234"
    assert _sent_texts(graph) == ["Our shop opens at 9."]
    [reply] = _ai_rows(engine)
    assert (reply.sender_type, reply.body) == ("ai", "Our shop opens at 9.")
    assert reply.provider_message_id.startswith("wamid.")
    assert stats["replies_sent"] == {"ai": 1}
    contact = rows(engine, "SELECT phone, name FROM contacts")[0]
    assert (contact.phone, contact.name) == ("+16505551234", "Ana")


def test_twenty_messages_in_two_seconds_are_one_turn_with_one_reply(engine, monkeypatch):
    monkeypatch.setenv("AGENT_BUFFER_SECONDS", "3")
    add_organisation(engine)
    model = Recording(responses=["One answer for all of it."])
    with fake_graph() as (graph, url), webhook_client(url, model) as client:
        for i in range(20):
            assert post(client, p.inbound(p.text(f"part {i}"))).status_code == 200
        # The reply is stored (the 21st row) before it is sent: wait for the send too.
        wait_until(
            lambda: (
                _unhandled(engine) == 0
                and scalar(engine, "SELECT count(*) FROM messages") == 21
                and _sent_texts(graph)
            )
        )
    assert _sent_texts(graph) == ["One answer for all of it."]
    assert len(model.prompts) == 1
    said = [m.content for m in model.prompts[0] if m.type == "human"]
    assert said == [f"part {i}" for i in range(20)]


def _inbox_in_reverse_arrival(engine, payloads: list[dict]) -> None:
    """Store the events so that the inbox applies them in the reverse of their arrival: the
    first stored (applied first) arrived last. Concurrent workers do this by chance."""
    with engine.begin() as conn:
        for seconds_ago, payload in enumerate(reversed(payloads)):
            conn.execute(
                sa.text(
                    "INSERT INTO webhook_inbox (payload, received_at) VALUES"
                    " (CAST(:p AS jsonb), now() - make_interval(secs => :ago))"
                ),
                {"p": json.dumps(payload), "ago": seconds_ago + 1},
            )


def test_a_turn_reads_the_customers_messages_in_arrival_order_whatever_order_they_were_applied(
    engine, zero_buffer
):
    add_organisation(engine)
    model = Recording(responses=["Got all of it."])
    parts = [f"part {i}" for i in range(5)]
    _inbox_in_reverse_arrival(engine, [p.inbound(p.text(part)) for part in parts])
    with fake_graph() as (graph, url), webhook_client(url, model):
        wait_until(lambda: _sent_texts(graph))
    applied = rows(engine, "SELECT body FROM messages WHERE direction = 'inbound' ORDER BY id")
    assert [r.body for r in applied] == parts[::-1]
    assert len(model.prompts) == 1
    assert [m.content for m in model.prompts[0] if m.type == "human"] == parts


def test_a_backlog_applied_late_waits_the_quiet_window_from_when_it_was_applied(engine):
    from resources import message_buffer
    from webhook_app import processing

    add_organisation(engine)
    _inbox_in_reverse_arrival(engine, [p.inbound(p.text("sent an hour ago"))])
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE webhook_inbox SET received_at = now() - interval '1 hour'"))
    assert processing.process_batch(engine)["inbound"] == 1
    assert message_buffer.claim_due(engine, window=60, max_wait=600, lease=60) == []
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE messages SET created_at = created_at - interval '61 s'"))
    assert len(message_buffer.claim_due(engine, window=60, max_wait=600, lease=60)) == 1


@pytest.mark.parametrize(
    "model",
    [Broken(), FakeListChatModel(responses=["too late"], sleep=5)],
    ids=["raising", "timing-out"],
)
def test_a_failing_model_gets_the_customer_a_fallback_and_the_turn_is_kept(
    engine, zero_buffer, monkeypatch, model
):
    monkeypatch.setenv("AGENT_MODEL_TIMEOUT_SECONDS", "0.5")
    add_organisation(engine)
    with fake_graph() as (graph, url), webhook_client(url, model) as client:
        post(client, p.inbound(p.text("Is my order shipped?")))
        wait_until(lambda: _sent_texts(graph))
        wait_until(lambda: _unhandled(engine) == 0)
        stats = worker_stats(client, turns_answered=1)
    assert _sent_texts(graph) == [FALLBACK_REPLY]
    assert [r.body for r in _ai_rows(engine)] == [FALLBACK_REPLY]
    assert stats["workers"]["fallback_replies"] == 1


def test_a_reply_that_cannot_be_sent_yet_waits_in_the_outbox_and_goes_once(
    engine, zero_buffer, monkeypatch
):
    from tests.fake_graph import Failure
    from webhook_app import outbound

    monkeypatch.setattr(outbound, "OUTBOX_RETRY_SECONDS", 0.2)
    add_organisation(engine)
    model = GenericFakeChatModel(messages=iter([AIMessage("hello")]))
    with fake_graph() as (graph, url), webhook_client(url, model) as client:
        graph.fail_next(Failure(131000, "Something went wrong", http_status=500))
        post(client, p.inbound(p.text("hi")))
        wait_until(lambda: len(graph.requests) == 2)  # refused, then sent from the outbox
        wait_until(lambda: _ai_rows(engine) and _ai_rows(engine)[0].provider_message_id)
        worker_stats(client, replies_sent_from_outbox=1)
    assert _unhandled(engine) == 0  # the turn was answered once: the reply was stored first
    assert _sent_texts(graph) == ["hello", "hello"]
    assert graph.answers == [131000, None]
    [reply] = rows(
        engine, "SELECT status, attempts, error_code FROM messages WHERE sender_type = 'ai'"
    )
    assert tuple(reply) == ("sent", 2, 131000)


def test_a_customer_asking_for_a_human_is_handed_over_and_the_agent_then_stays_silent(
    engine, zero_buffer
):
    add_organisation(engine)
    model = Recording(responses=["should not be used"])
    with fake_graph() as (graph, url), webhook_client(url, model) as client:
        post(client, p.inbound(p.text("Can I talk to a human please?")))
        wait_until(lambda: _sent_texts(graph))
        post(client, p.inbound(p.text("hello?")))
        wait_until(lambda: inbox_drained(engine) and _unhandled(engine) == 0)
    assert _sent_texts(graph) == [HANDOFF_REPLY]
    assert model.prompts == []
    flag = rows(engine, "SELECT human_takeover, takeover_by, needs_human FROM conversations")[0]
    assert (flag.human_takeover, flag.takeover_by, flag.needs_human) == (True, "agent", True)


def test_the_model_saying_it_cannot_help_hands_over(engine, zero_buffer):
    add_organisation(engine)
    model = GenericFakeChatModel(messages=iter([AIMessage("[HANDOFF]")]))
    with fake_graph() as (graph, url), webhook_client(url, model) as client:
        post(client, p.inbound(p.text("My invoice has the wrong VAT number")))
        wait_until(lambda: _sent_texts(graph))
    assert _sent_texts(graph) == [HANDOFF_REPLY]
    assert scalar(engine, "SELECT human_takeover FROM conversations") is True


def test_takeover_during_an_ai_turn_in_flight_keeps_the_agent_silent(engine, zero_buffer):
    add_organisation(engine)
    model = FakeListChatModel(responses=["late AI answer"], sleep=2)
    with fake_graph() as (graph, url), webhook_client(url, model) as client:
        post(client, p.inbound(p.text("hi")))
        wait_until(lambda: scalar(engine, "SELECT agent_lease_until FROM conversations"))
        taken = client.post("/api/v1/takeover", json={"phone": "+16505551234"}, headers=ADMIN)
        assert taken.json() == {"status": "takeover_complete"}
        wait_until(lambda: _unhandled(engine) == 0)
    assert graph.requests == []
    assert _ai_rows(engine) == []


def test_operator_messages_reach_the_customer_and_the_agents_memory(engine, zero_buffer):
    add_organisation(engine)
    model = Recording(responses=["Hi Ana, how can I help?", "Glad the refund arrived!"])
    with fake_graph() as (graph, url), webhook_client(url, model) as client:
        post(client, p.inbound(p.text("hello")))
        wait_until(lambda: len(_sent_texts(graph)) == 1)
        assert (
            client.post(
                "/api/v1/takeover", json={"phone": "16505551234"}, headers=ADMIN
            ).status_code
            == 200
        )
        post(client, p.inbound(p.text("I want my refund")))
        wait_until(lambda: inbox_drained(engine) and _unhandled(engine) == 0)
        sent = client.post(
            "/api/v1/operator-message",
            json={"phone": "+16505551234", "message": "Refund issued today, Ana."},
            headers=ADMIN,
        )
        assert sent.status_code == 200 and sent.json()["status"] == "sent"
        assert client.post(
            "/api/v1/handback", json={"phone": "+16505551234"}, headers=ADMIN
        ).json() == {"status": "handback_complete"}
        post(client, p.inbound(p.text("got it, thanks")))
        wait_until(lambda: len(_sent_texts(graph)) == 3)
    assert _sent_texts(graph) == [
        "Hi Ana, how can I help?",
        "Refund issued today, Ana.",
        "Glad the refund arrived!",
    ]
    assert len(model.prompts) == 2
    memory = [m.content for m in model.prompts[1]]
    assert "(a member of our team wrote) Refund issued today, Ana." in memory
    assert "I want my refund" in memory
    assert [r.sender_type for r in _ai_rows(engine)] == ["ai", "operator", "ai"]


def test_operator_message_errors(engine, zero_buffer):
    org = add_organisation(engine)
    with (
        fake_graph() as (graph, url),
        webhook_client(url, FakeListChatModel(responses=["ok"])) as client,
    ):
        unknown = client.post(
            "/api/v1/operator-message",
            json={"phone": "+14155550199", "message": "hi"},
            headers=ADMIN,
        )
        unauthorised = client.post(
            "/api/v1/operator-message", json={"phone": "+14155550199", "message": "hi"}
        )
        bad_phone = client.post("/api/v1/takeover", json={"phone": "not a phone"}, headers=ADMIN)
        not_json = client.post("/api/v1/handback", content=b"{", headers=ADMIN)
        post(client, p.inbound(p.text("hi")))
        wait_until(lambda: _unhandled(engine) == 0 and inbox_drained(engine))
        empty = client.post(
            "/api/v1/operator-message", json={"phone": "+16505551234"}, headers=ADMIN
        )
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE conversations SET last_inbound_at = :t"),
                {"t": datetime.now(UTC) - timedelta(hours=25)},
            )
        stale = client.post(
            "/api/v1/operator-message",
            json={"phone": "+16505551234", "message": "hi"},
            headers=ADMIN,
        )
    assert org is not None
    assert unknown.status_code == 404 and "+14155550199" in unknown.json()["error"]
    assert unauthorised.status_code == 401
    assert bad_phone.status_code == 400
    assert not_json.status_code == 400
    assert empty.status_code == 400
    assert stale.status_code == 409 and "template" in stale.json()["error"]
    assert [r for r in graph.requests if r["text"]["body"] == "hi"] == []


def test_every_inbound_type_is_stored_once_and_media_is_copied_to_the_bucket(
    engine, zero_buffer, s3, monkeypatch
):
    monkeypatch.setenv("S3_BUCKET", s3.bucket)
    add_organisation(engine)
    messages = p.every_type()
    payload = p.inbound(*messages)
    model = FakeListChatModel(responses=["Thanks!"] * 5)
    with fake_graph() as (graph, url), webhook_client(url, model) as client:
        graph.add_media("MEDIA_IMAGE_1", b"\xff\xd8jpeg-bytes", "image/jpeg")
        graph.add_media("MEDIA_AUDIO_1", b"OggS-voice", "audio/ogg")
        graph.add_media("MEDIA_VIDEO_1", b"mp4-bytes", "video/mp4")
        graph.add_media("MEDIA_DOC_1", b"%PDF-1.7", "application/pdf")
        graph.add_media("MEDIA_STICKER_1", b"RIFFwebp", "image/webp")
        for _ in range(3):
            assert post(client, payload).status_code == 200
        wait_until(
            lambda: scalar(engine, "SELECT count(*) FROM media WHERE status = 'stored'") == 5
        )
        wait_until(lambda: _unhandled(engine) == 0 and _sent_texts(graph))
        # A pass can fail and be retried (its event is counted each time): wait for what the
        # three deliveries hold, not for a number of passes.
        stats = worker_stats(client, duplicates_dropped=2 * len(messages))
    stored = rows(
        engine,
        "SELECT message_type, body, media FROM messages WHERE direction = 'inbound' ORDER BY id",
    )
    assert [r.message_type for r in stored] == [m["type"] for m in messages]
    bodies = {r.message_type: r.body for r in stored}
    assert bodies["image"] == "my receipt"
    assert bodies["location"].startswith("[location] Main St shop, 1 Main St")
    assert bodies["contacts"] == "[shared contacts] Bo Li"
    assert bodies["button"] == "Not interested"
    assert {r.body for r in stored if r.message_type == "interactive"} == {"Yes please", "Tuesday"}
    assert stats["inbox"] == {"pending": 0, "processed": 3, "failed": 0}
    image = next(r for r in stored if r.message_type == "image")
    assert image.media["s3_key"].startswith("inbound-media/")
    body = s3.client.get_object(Bucket=s3.bucket, Key=image.media["s3_key"])["Body"].read()
    assert body == b"\xff\xd8jpeg-bytes"
    assert scalar(engine, "SELECT count(*) FROM contacts") == 1
    assert scalar(engine, "SELECT count(*) FROM conversations") == 1
    assert len(_sent_texts(graph)) == 1


def test_a_customer_with_only_a_business_scoped_user_id_is_stored_and_answered(engine, zero_buffer):
    add_organisation(engine)
    model = GenericFakeChatModel(messages=iter([AIMessage("Hello there")]))
    user_id = "US.13491208655302741918"
    with fake_graph() as (graph, url), webhook_client(url, model) as client:
        post(
            client,
            p.inbound(p.text("hi", wa_id=None, user_id=user_id), wa_id=None, user_id=user_id),
        )
        wait_until(lambda: graph.requests)
    assert graph.requests[0]["recipient"] == user_id and "to" not in graph.requests[0]
    contact = rows(engine, "SELECT phone, wa_user_id FROM contacts")[0]
    assert (contact.phone, contact.wa_user_id) == (None, user_id)
    reply = _ai_rows(engine)[0]
    assert reply.body == "Hello there"


def test_stop_opts_out_once_and_start_opts_back_in(engine, zero_buffer):
    add_organisation(engine)
    model = Recording(responses=["unused"])
    with fake_graph() as (graph, url), webhook_client(url, model) as client:
        post(client, p.inbound(p.text("STOP")))
        # The confirmation leaves inside the transaction that records the opt-out.
        wait_until(lambda: _sent_texts(graph) and _unhandled(engine) == 0)
        assert scalar(engine, "SELECT opted_out FROM contacts") is True
        post(client, p.inbound(p.text("stop")))
        wait_until(lambda: inbox_drained(engine) and _unhandled(engine) == 0)
        post(client, p.inbound(p.text("Start")))
        wait_until(lambda: len(_sent_texts(graph)) == 2)
    assert _sent_texts(graph) == [OPT_OUT_REPLY, OPT_IN_REPLY]
    assert scalar(engine, "SELECT opted_out FROM contacts") is False
    assert model.prompts == []
    assert [r.sender_type for r in _ai_rows(engine)] == ["system", "system"]


def test_an_unanswered_turn_survives_a_restart(engine, zero_buffer):
    add_organisation(engine)
    with webhook_client(None, Broken()) as client:
        client.app.state.workers.tasks["agent"].cancel()
        post(client, p.inbound(p.text("still there?")))
        wait_until(lambda: inbox_drained(engine))
    assert _unhandled(engine) == 1
    model = GenericFakeChatModel(messages=iter([AIMessage("Yes, here!")]))
    with fake_graph() as (graph, url), webhook_client(url, model):
        wait_until(lambda: _unhandled(engine) == 0 and _sent_texts(graph))
    assert _sent_texts(graph) == ["Yes, here!"]


def test_a_turn_ending_in_stop_gets_only_the_confirmation_and_never_the_model(engine, zero_buffer):
    add_organisation(engine)
    model = Recording(responses=["should not be used"])
    question, stop = p.text("What are your opening hours?"), p.text("STOP")
    with fake_graph() as (graph, url), webhook_client(url, model) as client:
        post(client, p.inbound(question, stop))
        wait_until(lambda: _sent_texts(graph) and _unhandled(engine) == 0)
        # Already opted out: STOP again, with another question, gets nothing at all.
        post(client, p.inbound(p.text("Can I talk to a human?"), p.text("stop")))
        wait_until(lambda: inbox_drained(engine) and _unhandled(engine) == 0)
        start = p.text("START")
        post(client, p.inbound(start))
        wait_until(lambda: len(_sent_texts(graph)) == 2)
    assert _sent_texts(graph) == [OPT_OUT_REPLY, OPT_IN_REPLY]
    assert model.prompts == []
    assert scalar(engine, "SELECT human_takeover FROM conversations") is False
    ids = {
        r.provider_message_id: r.id
        for r in rows(engine, "SELECT id, provider_message_id FROM messages")
    }
    events = rows(
        engine,
        "SELECT scope, opted_out, source, message_id FROM consent_events ORDER BY id",
    )
    assert [tuple(e) for e in events] == [
        ("campaigns", True, "keyword", ids[stop["id"]]),
        ("campaigns", False, "keyword", ids[start["id"]]),
    ]
    assert scalar(engine, "SELECT opted_out FROM contacts") is False
