"""The operator console over HTTP: signing in and out (a wrong token, a missing CSRF token,
an expired or revoked session), hostile customer text escaped on every page, the moves on a
conversation recorded with the signed-in operator, another organisation's rows out of
reach, and the campaigns and templates views."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from resources import campaigns, generators, operator_templates, organisations, tenants
from tests import payloads as p
from tests.webhook_support import (
    add_organisation,
    post,
    rows,
    scalar,
    wait_until,
    webhook_client,
)
from webhook_app import campaign_answers

SCRIPT = "<script>alert('pwned')</script>"
ESCAPED = "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;"
GENERATOR = (
    "def generate_asset(attributes, name, msisdn, temp_dir):\n"
    "    print('made for', name)\n"
    "    return {}\n"
)


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def sign_in(client: TestClient, token: str, operator: str = "Bo") -> str:
    """Sign in through the form; the session's CSRF token."""
    form = client.get("/console/login")
    answer = client.post(
        "/console/login",
        data={"csrf": _csrf(form.text), "token": token, "operator": operator},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    inbox = client.get("/console")
    assert inbox.status_code == 200
    return _csrf(inbox.text)


@pytest.fixture
def organisation(engine):
    return add_organisation(engine)


@pytest.fixture
def token(engine, organisation) -> str:
    return tenants.create_token(engine, str(organisation), {"name": "console"})["token"]


@pytest.fixture
def client(engine, organisation, monkeypatch) -> Iterator[TestClient]:
    monkeypatch.setenv("AGENT_BUFFER_SECONDS", "0")
    monkeypatch.setenv("WEBHOOK_WORKERS", "1")
    with webhook_client() as test_client:
        yield test_client


def _hostile_conversation(client: TestClient, engine) -> int:
    post(client, p.inbound(p.text(SCRIPT), p.text("Can I talk to a human?"), name=SCRIPT))
    wait_until(lambda: scalar(engine, "SELECT needs_human FROM conversations"))
    return scalar(engine, "SELECT id FROM conversations")


def test_signing_in_needs_a_working_token_a_name_and_the_forms_csrf_token(client, engine, token):
    assert client.get("/console", follow_redirects=False).headers["location"] == "/console/login"
    form = client.get("/console/login")
    assert "csrf" in form.text
    assert form.headers["content-security-policy"].startswith("default-src 'none'")
    csrf = _csrf(form.text)

    missing = client.post("/console/login", data={"token": token, "operator": "Bo"})
    assert missing.status_code == 403
    wrong = client.post(
        "/console/login", data={"csrf": csrf, "token": "waf_wrong", "operator": "Bo"}
    )
    assert wrong.status_code == 401
    assert "not a working operator token" in wrong.text
    nameless = client.post(
        "/console/login", data={"csrf": _csrf(wrong.text), "token": token, "operator": " "}
    )
    assert nameless.status_code == 422
    assert scalar(engine, "SELECT count(*) FROM console_sessions") == 0

    answer = client.post(
        "/console/login",
        data={"csrf": _csrf(nameless.text), "token": token, "operator": "Bo"},
        follow_redirects=False,
    )
    assert answer.status_code == 303
    cookie = answer.headers["set-cookie"]
    assert "waflow_console=" in cookie and "HttpOnly" in cookie
    assert "SameSite=strict" in cookie and "Path=/console" in cookie
    # Only the secret's digest is stored, never the cookie nor the token.
    secret = client.cookies["waflow_console"]
    stored = rows(engine, "SELECT * FROM console_sessions")[0]
    assert secret.encode() not in bytes(stored.secret_sha256)
    assert token not in str(tuple(stored))
    assert stored.operator == "Bo"

    page = client.get("/console")
    signout = client.post(
        "/console/logout", data={"csrf": _csrf(page.text)}, follow_redirects=False
    )
    assert signout.headers["location"].startswith("/console/login")
    assert scalar(engine, "SELECT count(*) FROM console_sessions") == 0
    client.cookies.set("waflow_console", secret, path="/console")
    assert client.get("/console", follow_redirects=False).status_code == 303


def test_an_expired_or_revoked_session_goes_back_to_the_sign_in(client, engine, organisation):
    made = tenants.create_token(engine, str(organisation), {"name": "console"})
    sign_in(client, made["token"])
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE console_sessions SET expires_at = now() - interval '1 s'")
    expired = client.get("/console", follow_redirects=False)
    assert expired.status_code == 303 and expired.headers["location"].startswith("/console/login")
    poll = client.get("/console/inbox/rows", headers={"X-Console-Poll": "1"})
    assert poll.status_code == 401

    sign_in(client, made["token"])
    tenants.revoke_token(engine, str(organisation), made["id"], {})
    assert client.get("/console", follow_redirects=False).status_code == 303


def test_customer_text_is_escaped_and_every_move_needs_the_csrf_token(client, engine, token):
    conversation = _hostile_conversation(client, engine)
    csrf = sign_in(client, token, operator="Bo <b>")

    for url in (
        "/console",
        "/console/inbox/rows",
        f"/console/conversations/{conversation}",
        f"/console/conversations/{conversation}/messages",
    ):
        page = client.get(url)
        assert page.status_code == 200, url
        assert "<script>alert" not in page.text, url
        if "inbox" not in url and url != "/console":
            assert ESCAPED in page.text, url
    inbox = client.get("/console").text
    assert ESCAPED in inbox and "needs a human" in inbox
    assert "Bo &lt;b&gt;" in inbox

    url = f"/console/conversations/{conversation}/takeover"
    assert client.post(url, data={}).status_code == 403
    assert client.post(url, data={"csrf": "forged"}).status_code == 403
    assert scalar(engine, "SELECT takeover_by FROM conversations") == "agent"
    done = client.post(url, data={"csrf": csrf}, follow_redirects=False)
    assert done.status_code == 303
    assert scalar(engine, "SELECT takeover_by FROM conversations") == "Bo <b>"
    assert scalar(engine, "SELECT needs_human FROM conversations") is False

    reply = client.post(
        f"/console/conversations/{conversation}/reply",
        data={"csrf": csrf, "message": "Hello <i>there</i>"},
    )
    assert reply.status_code == 200
    assert "Hello &lt;i&gt;there&lt;/i&gt;" in reply.text
    assert scalar(engine, "SELECT operator FROM messages WHERE sender_type = 'operator'") == (
        "Bo <b>"
    )
    client.post(f"/console/conversations/{conversation}/handback", data={"csrf": csrf})
    events = rows(engine, "SELECT kind, operator FROM conversation_events ORDER BY id")
    assert [tuple(e) for e in events] == [
        ("flagged", "agent"),
        ("takeover", "Bo <b>"),
        ("handback", "Bo <b>"),
    ]


def test_another_organisations_conversation_campaign_and_template_are_out_of_reach(
    client, engine, token
):
    conversation = _hostile_conversation(client, engine)
    other = organisations.create_organisation(
        engine, {"name": "Other", "phone_number_id": "555001", "waba_id": "555002"}
    )
    template = operator_templates.create_template(
        engine, {"organisation_id": other["id"], "name": "theirs", "parameters": []}
    )
    campaign = campaign_answers.created_campaign(
        engine,
        {
            "organisation_id": other["id"],
            "name": "Theirs",
            "message_type": "template",
            "template_id": template["id"],
        },
    )
    other_token = tenants.create_token(engine, other["id"], {"name": "theirs"})["token"]
    csrf = sign_in(client, other_token)
    assert "No conversations here" in client.get("/console").text
    assert "No such conversation" in client.get(f"/console/conversations/{conversation}").text
    taken = client.post(f"/console/conversations/{conversation}/takeover", data={"csrf": csrf})
    assert "No such conversation" in taken.text
    assert scalar(engine, "SELECT takeover_by FROM conversations") == "agent"
    assert "Theirs" in client.get("/console/campaigns").text

    sign_in(client, token)
    csrf = _csrf(client.get("/console").text)
    assert "Theirs" not in client.get("/console/campaigns").text
    paused = client.post(f"/console/campaigns/{campaign['id']}/pause", data={"csrf": csrf})
    assert "does not exist" in paused.text
    assert "No such template" in client.get(f"/console/templates/{template['id']}").text


def test_campaigns_show_their_funnel_and_pause_resume_and_cancel(
    client, engine, organisation, token
):
    template = operator_templates.create_template(
        engine, {"organisation_id": str(organisation), "name": "promo", "parameters": []}
    )
    campaign = campaign_answers.created_campaign(
        engine,
        {
            "organisation_id": str(organisation),
            "name": "Spring <sale>",
            "message_type": "template",
            "template_id": template["id"],
        },
    )
    campaigns.import_audience(engine, campaign["id"], "phone,name\n+12025550100,Cy\n")
    with engine.begin() as conn:
        campaigns.set_campaign_status(conn, campaign["id"], "approved")
    csrf = sign_in(client, token)
    page = client.get("/console/campaigns").text
    assert "Spring &lt;sale&gt;" in page
    assert all(stage in page for stage in ("queued", "delivered", "read", "skipped"))
    base = f"/console/campaigns/{campaign['id']}"
    assert client.post(f"{base}/pause", data={}).status_code == 403
    assert "Campaign paused" in client.post(f"{base}/pause", data={"csrf": csrf}).text
    assert scalar(engine, "SELECT status FROM campaigns") == "paused"
    assert "Campaign resumed" in client.post(f"{base}/resume", data={"csrf": csrf}).text
    assert "Campaign cancelled" in client.post(f"{base}/cancel", data={"csrf": csrf}).text
    assert scalar(engine, "SELECT status FROM campaigns") == "cancelled"


def test_templates_show_generator_versions_their_source_and_a_preview(
    client, engine, organisation, token
):
    template = operator_templates.create_template(
        engine, {"organisation_id": str(organisation), "name": "card", "parameters": []}
    )
    first = generators.publish(engine, template["id"], GENERATOR, "card.py", "first <cut>")
    generators.publish(engine, template["id"], GENERATOR.replace("made", "drawn"), "card.py", "")
    csrf = sign_in(client, token)
    listing = client.get("/console/templates").text
    assert "card" in listing and "2 generator versions, v2 active" in listing
    detail = client.get(f"/console/templates/{template['id']}?version={first.version}").text
    assert "first &lt;cut&gt;" in detail and "print(&#39;made for&#39;, name)" in detail

    url = f"/console/templates/{template['id']}"
    activated = client.post(f"{url}/activate", data={"csrf": csrf, "version": first.version})
    assert f"Version {first.version} is active" in activated.text
    assert generators.list_versions(engine, template["id"])[-1].active

    rejected = client.post(
        f"{url}/preview",
        data={
            "csrf": csrf,
            "what": "draft",
            "source": "def generate_asset(:\n",
            "attributes": "{}",
        },
    )
    assert rejected.status_code == 200
    assert "failed" in rejected.text and "line 1" in rejected.text
    bad_json = client.post(
        f"{url}/preview", data={"csrf": csrf, "what": "version", "attributes": "[1"}
    )
    assert "Attributes must be a JSON object" in bad_json.text
    assert client.post(f"{url}/preview", data={"what": "draft"}).status_code == 403
