"""The conversation API: the inbox list with its filters and keyset pages, a transcript
with every sender and a short-lived link to inbound media, and the operator's moves, each
recorded with who made it. Driven through the webhook, the worker and the agent, as an
operator would meet it."""

from __future__ import annotations

import urllib.parse
import urllib.request
from typing import Any

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from resources import operator_templates
from tests import payloads as p
from tests.webhook_support import (
    ADMIN,
    add_organisation,
    fake_graph,
    post,
    rows,
    scalar,
    wait_until,
    webhook_client,
)
from webhook_app.agent import HANDOFF_REPLY

ANA = "16505551234"
HOSTILE = "16505559999"  # whose profile name is a script
SCRIPT = "<script>alert(1)</script>"
PNG = b"\x89PNG\r\n\x1a\n" + b"receipt" * 10


@pytest.fixture
def zero_buffer(monkeypatch):
    monkeypatch.setenv("AGENT_BUFFER_SECONDS", "0")
    monkeypatch.setenv("WEBHOOK_WORKERS", "1")


def _list(client, **params: Any) -> dict[str, Any]:
    answer = client.get("/api/v1/conversations", params=params, headers=ADMIN)
    assert answer.status_code == 200, answer.text
    return answer.json()


def _ids(client, **params: Any) -> list[int]:
    return [c["id"] for c in _list(client, **params)["conversations"]]


def _call(client, route: str, **body: Any) -> Any:
    return client.post(f"/api/v1/{route}", json=body, headers=ADMIN)


def _lifetime(url: str) -> float:
    """Seconds a presigned link is valid for (Signature Version 4's X-Amz-Expires)."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    return float(query["X-Amz-Expires"][0])


def _conversation_of(engine, wa_id: str) -> int:
    return scalar(
        engine,
        "SELECT v.id FROM conversations v JOIN contacts c ON c.id = v.contact_id"
        " WHERE c.phone = :p",
        p=f"+{wa_id}",
    )


def test_an_operator_finds_the_flagged_customer_reads_the_transcript_and_takes_over(
    engine, s3, zero_buffer
):
    organisation = add_organisation(engine)
    model = FakeListChatModel(responses=["Thanks, we got your receipt."])
    with fake_graph() as (graph, url), webhook_client(url, model) as client:
        graph.add_media("MEDIA_RECEIPT", PNG, "image/png")
        post(client, p.inbound(p.text("Can I talk to a human please?")))
        receipt = {"mime_type": "image/png", "sha256": "x", "id": "MEDIA_RECEIPT"}
        post(
            client,
            p.inbound(
                p.message("image", {**receipt, "caption": "my receipt"}, wa_id=HOSTILE),
                name=SCRIPT,
                wa_id=HOSTILE,
            ),
        )
        wait_until(lambda: len(graph.accepted()) == 2)
        wait_until(lambda: scalar(engine, "SELECT status FROM media") == "stored")
        ana, hostile = _conversation_of(engine, ANA), _conversation_of(engine, HOSTILE)

        # The inbox: the flagged conversation first, each row with its last message.
        listed = _list(client)
        assert [c["id"] for c in listed["conversations"]] == [ana, hostile]
        first, second = listed["conversations"]
        assert (first["needs_human"], first["taken_over"], first["taken_over_by"]) == (
            True,
            True,
            "agent",
        )
        assert first["last_message"]["body"] == HANDOFF_REPLY
        assert first["last_message"]["sender"] == "ai"
        assert first["window_open"] and first["window_ends_at"] and first["unanswered"] == 0
        assert second["name"] == SCRIPT  # stored as given; the console escapes it
        assert second["needs_human"] is False

        assert _ids(client, needs_human="true") == [ana]
        assert _ids(client, needs_human="false") == [hostile]
        assert _ids(client, taken_over="true") == [ana]
        assert _ids(client, open_window="true") == [ana, hostile]
        assert _ids(client, open_window="false") == []
        assert _ids(client, q="script") == [hostile]
        assert _ids(client, q="555 9999") == [hostile]
        assert _ids(client, q="nobody") == []

        # Keyset pages: one row each, then the end.
        page = _list(client, limit=1)
        assert [c["id"] for c in page["conversations"]] == [ana]
        rest = _list(client, limit=1, after=page["next"])
        assert [c["id"] for c in rest["conversations"]] == [hostile]
        assert rest["next"] is None

        # The transcript, with the image behind a short-lived link to our copy.
        transcript = client.get(f"/api/v1/conversations/{hostile}/messages", headers=ADMIN).json()
        customer, reply = transcript["messages"]
        assert (customer["direction"], customer["sender"], customer["type"]) == (
            "inbound",
            "customer",
            "image",
        )
        assert customer["media"]["mime_type"] == "image/png"
        assert _lifetime(customer["media"]["url"]) <= 300
        with urllib.request.urlopen(customer["media"]["url"], timeout=10) as fetched:
            assert fetched.read() == PNG
        assert (reply["sender"], reply["status"], reply["body"]) == (
            "ai",
            "sent",
            "Thanks, we got your receipt.",
        )
        one = client.get(
            f"/api/v1/conversations/{hostile}/messages", params={"limit": 1}, headers=ADMIN
        ).json()
        assert [m["id"] for m in one["messages"]] == [reply["id"]]
        older = client.get(
            f"/api/v1/conversations/{hostile}/messages",
            params={"limit": 1, "before": one["older"]},
            headers=ADMIN,
        ).json()
        assert [m["id"] for m in older["messages"]] == [customer["id"]]
        assert older["older"] is None

        # Take over by conversation id: the flag goes, the operator is on the record.
        assert _call(client, "takeover", conversation_id=ana, operator="Bo").status_code == 200
        assert _ids(client, needs_human="true") == []
        sent = _call(client, "operator-message", conversation_id=ana, message="Bo here.")
        assert sent.status_code == 200, sent.text
        assert _call(client, "handback", conversation_id=ana, operator="Bo").status_code == 200

        # Asked again: flagged again; a handback leaves the flag, a dismissal lowers it.
        post(client, p.inbound(p.text("a human, please")))
        wait_until(lambda: _ids(client, needs_human="true") == [ana])
        assert _call(client, "handback", conversation_id=ana, operator="Cy").status_code == 200
        assert _ids(client, needs_human="true") == [ana]
        assert _call(client, "dismiss", phone=ANA, operator="Cy").status_code == 200
        assert _ids(client, needs_human="true") == [] and _ids(client, taken_over="true") == []

        # Outside the window only a template goes, filled from the contact.
        operator_templates.create_template(
            engine,
            {
                "organisation_id": str(organisation),
                "name": "follow_up",
                "body": "Hi {{1}}, we are here to help.",
                "parameters": [{"type": "body", "valueType": "text", "source": "contact.name"}],
            },
        )
        template_id = scalar(engine, "SELECT id FROM templates WHERE name = 'follow_up'")
        with engine.begin() as conn:
            conn.exec_driver_sql(
                "UPDATE conversations SET last_inbound_at = now() - interval '2 days'"
            )
        assert _ids(client, open_window="true") == []
        late = _call(client, "operator-message", conversation_id=ana, message="hello?")
        assert late.status_code == 409
        templated = _call(client, "operator-message", conversation_id=ana, template_id=template_id)
        assert templated.status_code == 200, templated.text
        wait_until(lambda: graph.accepted()[-1].get("type") == "template")
    assert graph.accepted()[-1]["template"]["components"] == [
        {"type": "body", "parameters": [{"type": "text", "text": "Ana"}]}
    ]
    operators = rows(
        engine,
        "SELECT body, operator FROM messages WHERE sender_type = 'operator' ORDER BY id",
    )
    assert [tuple(r) for r in operators] == [
        ("Bo here.", "platform admin"),
        ("Hi Ana, we are here to help.", "platform admin"),
    ]
    events = rows(
        engine,
        "SELECT kind, operator FROM conversation_events WHERE conversation_id = :c ORDER BY id",
        c=ana,
    )
    assert [tuple(e) for e in events] == [
        ("flagged", "agent"),
        ("takeover", "Bo"),
        ("handback", "Bo"),
        ("flagged", "agent"),
        ("handback", "Cy"),
        ("dismissed", "Cy"),
    ]


def test_bad_queries_and_names_are_refused_with_the_reason(engine):
    add_organisation(engine)
    with webhook_client() as client:
        for params, field in (
            ({"limit": "0"}, "limit"),
            ({"limit": "x"}, "limit"),
            ({"after": "not-a-cursor"}, "after"),
            ({"needs_human": "maybe"}, "needs_human"),
        ):
            answer = client.get("/api/v1/conversations", params=params, headers=ADMIN)
            assert answer.status_code == 422, params
            assert answer.json()["errors"][0]["field"] == field
        missing = client.get("/api/v1/conversations/999/messages", headers=ADMIN)
        assert missing.status_code == 404
        assert _call(client, "takeover", conversation_id="x").status_code == 400
        assert _call(client, "takeover", conversation_id=999).status_code == 404
        assert _call(client, "takeover", conversation_id=1, operator="").status_code == 400
