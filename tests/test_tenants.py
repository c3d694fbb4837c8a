"""Tokens and tenants: every route of the app, enumerated from its routes list, against no
token, a wrong one, a revoked one and another organisation's; then the right token. Two
organisations share a customer's phone number, so a route that looked across organisations
would be caught. Also the tokens' life (shown once, stored hashed, revoked at once) through
the API and the CLI, and the operator routes' lookup by phone within one organisation."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from pipelines.cli import main
from resources import breakers, campaigns, generators, operator_templates, organisations, tenants
from resources import campaign_control as control
from resources.whatsapp import WhatsAppClient
from tests import payloads as p
from webhook_app import app as app_module
from webhook_app import campaign_answers, console

ADMIN_TOKEN = "tenants-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CUSTOMER = "+16505551234"  # a customer of both organisations
ONLY_A = "+16505550000"  # a customer of the first organisation only


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Organisation:
    id: str
    phone_number_id: str
    token: str = ""
    template_id: int = 0
    campaign_id: str = ""
    contact_id: int = 0
    conversation_id: int = 0


@dataclass
class World:
    engine: sa.Engine
    a: Organisation
    b: Organisation
    revoked: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _organisation(engine: sa.Engine, name: str, phone_number_id: str, waba_id: str) -> Organisation:
    created = organisations.create_organisation(
        engine, {"name": name, "phone_number_id": phone_number_id, "waba_id": waba_id}
    )
    org = Organisation(created["id"], phone_number_id)
    org.token = tenants.create_token(engine, org.id, {"name": "operator console"})["token"]
    org.template_id = operator_templates.create_template(
        engine, {"organisation_id": org.id, "name": "hello", "body": "Hello", "parameters": []}
    )["id"]
    org.campaign_id = campaign_answers.created_campaign(
        engine,
        {
            "organisation_id": org.id,
            "name": "Spring",
            "message_type": "template",
            "template_id": org.template_id,
            "phone_number_id": phone_number_id,
        },
    )["id"]
    campaigns.import_audience(engine, org.campaign_id, f"phone,name\n{CUSTOMER},Ana\n")
    with engine.begin() as conn:
        org.contact_id = conn.execute(
            sa.text("SELECT id FROM contacts WHERE organisation_id = :o AND phone = :p"),
            {"o": org.id, "p": CUSTOMER},
        ).scalar_one()
        org.conversation_id = conn.execute(
            sa.text(
                "INSERT INTO conversations (organisation_id, contact_id, phone_number_id,"
                " last_inbound_at) VALUES (:o, :c, :p, now()) RETURNING id"
            ),
            {"o": org.id, "c": org.contact_id, "p": phone_number_id},
        ).scalar_one()
    return org


@pytest.fixture
def world(engine) -> World:
    a = _organisation(engine, "Shop", p.PHONE_NUMBER_ID, p.WABA_ID)
    b = _organisation(engine, "Other shop", "555001", "555002")
    with engine.begin() as conn:
        contact = conn.execute(
            sa.text("INSERT INTO contacts (organisation_id, phone) VALUES (:o, :p) RETURNING id"),
            {"o": a.id, "p": ONLY_A},
        ).scalar_one()
        conn.execute(
            sa.text(
                "INSERT INTO conversations (organisation_id, contact_id, last_inbound_at)"
                " VALUES (:o, :c, now())"
            ),
            {"o": a.id, "c": contact},
        )
    revoked = tenants.create_token(engine, a.id, {"name": "old"})
    tenants.revoke_token(engine, a.id, revoked["id"], {})
    return World(engine, a, b, revoked["token"])


@pytest.fixture
def client(world, stack, graph, monkeypatch) -> Iterator[TestClient]:
    monkeypatch.setenv("ADMIN_API_TOKEN", ADMIN_TOKEN)
    graph.set_templates(p.WABA_ID, [])
    app = Starlette(
        routes=app_module.routes,
        lifespan=app_module.lifespan,
        exception_handlers=app_module.exception_handlers,
    )
    app.state.whatsapp_client = WhatsAppClient(
        "test-token", p.PHONE_NUMBER_ID, graph.url, "v25.0", 5.0, 8
    )
    with TestClient(app) as test_client:
        yield test_client
    app.state.whatsapp_client.close()


# -- Every route, one case each --------------------------------------------------------------

Request = tuple[str, dict[str, Any]]  # the URL, and the keyword arguments of the call


@dataclass(frozen=True)
class Case:
    """`organisation`: the first organisation's token works, the second's is 404;
    `platform`: only ADMIN_API_TOKEN works, any organisation's token is 403.
    `request` builds the call on the first organisation's objects (preparing the state in
    which it succeeds), `ok` is its answer; `foreign` checks the second organisation's
    answer where the route names nothing of the first's."""

    access: str
    request: Callable[[World], Request]
    ok: int = 200
    foreign: Callable[[Any, World], None] | None = None


def _csv(text: str) -> dict[str, Any]:
    return {"content": text, "headers": {"Content-Type": "text/csv"}}


def _campaign(w: World, suffix: str, status: str | None = None) -> Request:
    with w.engine.begin() as conn:
        for step in {
            None: [],
            "approved": ["approved"],
            "asset_generated": ["approved", "asset_generated"],
        }[status]:
            campaigns.set_campaign_status(conn, w.a.campaign_id, step)
    return f"/api/campaigns/{w.a.campaign_id}/{suffix}", {}


def _paused(w: World, suffix: str) -> Request:
    _campaign(w, suffix, "approved")
    control.pause(w.engine, w.a.campaign_id, {})
    return f"/api/campaigns/{w.a.campaign_id}/{suffix}", {}


def _breaker(w: World) -> Request:
    with w.engine.begin() as conn:
        opened, _ = breakers.trip(conn, "app", "app", 190, "token expired", "operator", 0)
    return f"/api/breakers/{opened.id}/reset", {"json": {"by": "ops"}}


def _token_of_a(w: World) -> Request:
    made = tenants.create_token(w.engine, w.a.id, {"name": "to revoke"})
    return f"/api/organisations/{w.a.id}/tokens/{made['id']}", {}


def _operator(w: World, path: str, **body: Any) -> Request:
    return path, {"json": {"phone": CUSTOMER, "organisation_id": w.a.id, **body}}


def _only_b(response: Any, w: World) -> None:
    assert response.status_code == 200
    assert [o["id"] for o in response.json()] == [w.b.id]


def _only_b_conversations(response: Any, w: World) -> None:
    assert response.status_code == 200
    assert [c["id"] for c in response.json()["conversations"]] == [w.b.conversation_id]


GENERATOR = (
    "def generate_asset(attributes, name, msisdn, temp_dir):\n"
    "    open('a.txt', 'w').write('hi')\n"
    "    return {'text': 'a.txt'}\n"
)


def _generator(w: World, suffix: str) -> Request:
    version = generators.publish(w.engine, w.a.template_id, GENERATOR).version
    return f"/api/templates/{w.a.template_id}/generators/{version}{suffix}", {}


GENERATORS = "/api/templates/{template_id:int}/generators"
ORG = "/api/organisations/{organisation_id:uuid}"
CAMPAIGN = "/api/campaigns/{campaign_id:uuid}"
CASES: dict[tuple[str, str], Case] = {
    ("POST", "/api/v1/takeover"): Case(
        "organisation", lambda w: _operator(w, "/api/v1/takeover", operator="Bo")
    ),
    ("POST", "/api/v1/handback"): Case("organisation", lambda w: _operator(w, "/api/v1/handback")),
    ("POST", "/api/v1/operator-message"): Case(
        "organisation", lambda w: _operator(w, "/api/v1/operator-message", message="Hi")
    ),
    ("POST", "/api/v1/dismiss"): Case("organisation", lambda w: _operator(w, "/api/v1/dismiss")),
    ("GET", "/api/v1/conversations"): Case(
        "organisation", lambda w: ("/api/v1/conversations", {}), foreign=_only_b_conversations
    ),
    ("GET", "/api/v1/conversations/{conversation_id:int}/messages"): Case(
        "organisation", lambda w: (f"/api/v1/conversations/{w.a.conversation_id}/messages", {})
    ),
    ("POST", "/api/organisations"): Case(
        "platform", lambda w: ("/api/organisations", {"json": {"name": "New"}}), 201
    ),
    ("GET", "/api/organisations"): Case(
        "organisation", lambda w: ("/api/organisations", {}), foreign=_only_b
    ),
    ("PATCH", ORG): Case(
        "platform",
        lambda w: (f"/api/organisations/{w.a.id}", {"json": {"messaging_limit": 2000}}),
    ),
    ("POST", ORG + "/tokens"): Case(
        "platform",
        lambda w: (f"/api/organisations/{w.a.id}/tokens", {"json": {"name": "ci"}}),
        201,
    ),
    ("GET", ORG + "/tokens"): Case(
        "platform", lambda w: (f"/api/organisations/{w.a.id}/tokens", {})
    ),
    ("DELETE", ORG + "/tokens/{token_id:int}"): Case("platform", _token_of_a),
    ("GET", ORG + "/account-events"): Case(
        "organisation", lambda w: (f"/api/organisations/{w.a.id}/account-events", {})
    ),
    ("POST", ORG + "/templates/sync"): Case(
        "organisation", lambda w: (f"/api/organisations/{w.a.id}/templates/sync", {})
    ),
    ("POST", ORG + "/contacts"): Case(
        "organisation",
        lambda w: (f"/api/organisations/{w.a.id}/contacts", _csv("phone,name\n+12025550100,Cy\n")),
    ),
    ("GET", ORG + "/contacts"): Case(
        "organisation",
        lambda w: (f"/api/organisations/{w.a.id}/contacts", {"params": {"phone": CUSTOMER}}),
    ),
    ("POST", ORG + "/contacts/{contact_id:int}/consent"): Case(
        "organisation",
        lambda w: (
            f"/api/organisations/{w.a.id}/contacts/{w.a.contact_id}/consent",
            {
                "json": {
                    "scope": "campaigns",
                    "opted_out": True,
                    "by": "Bo",
                    "reason": "asked by phone",
                }
            },
        ),
    ),
    ("GET", "/api/templates"): Case(
        "organisation", lambda w: ("/api/templates", {"params": {"organisation_id": w.a.id}})
    ),
    ("POST", "/api/templates"): Case(
        "organisation",
        lambda w: (
            "/api/templates",
            {"json": {"organisation_id": w.a.id, "name": "bye", "parameters": []}},
        ),
        201,
    ),
    ("GET", "/api/templates/{template_id:int}"): Case(
        "organisation", lambda w: (f"/api/templates/{w.a.template_id}", {})
    ),
    ("PATCH", "/api/templates/{template_id:int}"): Case(
        "organisation",
        lambda w: (f"/api/templates/{w.a.template_id}", {"json": {"body": "Hello again"}}),
    ),
    ("POST", "/api/campaigns"): Case(
        "organisation",
        lambda w: (
            "/api/campaigns",
            {
                "json": {
                    "organisation_id": w.a.id,
                    "name": "Summer",
                    "message_type": "template",
                    "template_id": w.a.template_id,
                }
            },
        ),
        201,
    ),
    ("GET", "/api/campaigns/sqs-status"): Case(
        "platform", lambda w: ("/api/campaigns/sqs-status", {})
    ),
    ("POST", CAMPAIGN + "/audience"): Case(
        "organisation",
        lambda w: (
            f"/api/campaigns/{w.a.campaign_id}/audience",
            _csv("phone,name\n+12025550101,Bo\n"),
        ),
    ),
    ("GET", CAMPAIGN + "/audience"): Case("organisation", lambda w: _campaign(w, "audience")),
    ("POST", CAMPAIGN + "/approve"): Case("organisation", lambda w: _campaign(w, "approve")),
    ("GET", CAMPAIGN + "/readiness"): Case("organisation", lambda w: _campaign(w, "readiness")),
    ("GET", CAMPAIGN + "/status"): Case("organisation", lambda w: _campaign(w, "status")),
    ("POST", CAMPAIGN + "/process-messages"): Case(
        "organisation", lambda w: _campaign(w, "process-messages", "asset_generated"), 202
    ),
    ("POST", CAMPAIGN + "/pause"): Case(
        "organisation", lambda w: _campaign(w, "pause", "approved")
    ),
    ("POST", CAMPAIGN + "/resume"): Case("organisation", lambda w: _paused(w, "resume")),
    ("POST", CAMPAIGN + "/cancel"): Case("organisation", lambda w: _campaign(w, "cancel")),
    ("POST", CAMPAIGN + "/retry-failed"): Case(
        "organisation", lambda w: _paused(w, "retry-failed")
    ),
    ("POST", GENERATORS): Case(
        "organisation",
        lambda w: (f"/api/templates/{w.a.template_id}/generators", {"json": {"source": GENERATOR}}),
        201,
    ),
    ("GET", GENERATORS): Case(
        "organisation", lambda w: (f"/api/templates/{w.a.template_id}/generators", {})
    ),
    ("GET", GENERATORS + "/{version:int}"): Case("organisation", lambda w: _generator(w, "")),
    ("POST", GENERATORS + "/{version:int}/activate"): Case(
        "organisation", lambda w: _generator(w, "/activate")
    ),
    ("POST", GENERATORS + "/preview"): Case(
        "organisation",
        lambda w: (
            f"/api/templates/{w.a.template_id}/generators/preview",
            {"json": {"source": GENERATOR}},
        ),
    ),
    ("GET", "/api/breakers"): Case("platform", lambda w: ("/api/breakers", {})),
    ("POST", "/api/breakers/{breaker_id:int}/reset"): Case("platform", _breaker),
    ("POST", "/api/webhooks/redrive"): Case(
        "platform", lambda w: ("/api/webhooks/redrive", {"json": {"since": "2026-01-01"}})
    ),
}
# Not behind a bearer token, by design: Meta signs what it posts (403 otherwise) and proves
# the subscription with the verify token; load balancers probe health and counters; the
# OpenAPI document describes the routes and holds no data.
OPEN = {
    ("POST", "/webhook"),
    ("GET", "/webhook"),
    ("GET", "/health"),
    ("GET", "/stats"),
    ("GET", "/api/openapi.json"),
}


# The operator console: a session cookie (opened with an operator token) instead of a bearer
# token; tests/test_console.py covers sessions, CSRF and organisation scope. Here: without a
# session nothing but the sign-in form and the static files answers, bearer token or not.
CONSOLE_OPEN = {
    ("GET", "/console/login"),
    ("POST", "/console/login"),
    ("GET", "/console/static/{name}"),
}
CONSOLE = {(method, route.path) for route in console.routes for method in route.methods - {"HEAD"}}


def _app_routes() -> set[tuple[str, str]]:
    found = set()
    for route in app_module.app.routes:
        assert isinstance(route, Route), f"{route!r}: add its routes to this test"
        found |= {(method, route.path) for method in route.methods - {"HEAD"}}
    return found


def test_every_route_of_the_app_has_a_case():
    assert _app_routes() == set(CASES) | OPEN | CONSOLE


def test_console_routes_need_a_session_not_a_bearer_token(client, world):
    examples = {
        "conversation_id": str(world.a.conversation_id),
        "action": "takeover",
        "campaign_id": world.a.campaign_id,
        "template_id": str(world.a.template_id),
        "media_id": "1",
        "name": "console.css",
    }
    for method, path in sorted(CONSOLE - CONSOLE_OPEN):
        url = re.sub(r"{(\w+)(:\w+)?}", lambda m: examples[m.group(1)], path)
        for headers in ({}, bearer(world.a.token), ADMIN):
            answer = client.request(method, url, headers=headers, follow_redirects=False)
            if method == "GET":
                assert answer.status_code == 303, (url, answer.text)
                assert answer.headers["location"].startswith("/console/login")
            else:
                assert answer.status_code == 401, (url, answer.text)


def _call(client: TestClient, method: str, request: Request, headers: dict[str, str]) -> Any:
    url, kwargs = request
    kwargs = {**kwargs, "headers": {**kwargs.get("headers", {}), **headers}}
    return client.request(method, url, **kwargs)


@pytest.mark.parametrize(
    ("method", "path"), sorted(CASES), ids=[" ".join(k) for k in sorted(CASES)]
)
def test_a_route_acts_only_for_the_token_that_may_use_it(client, world, method, path):
    case = CASES[(method, path)]
    request = case.request(world)
    for headers in ({}, bearer("wrong"), bearer(tenants.TOKEN_PREFIX + "x" * 43)):
        refused = _call(client, method, request, headers)
        assert refused.status_code == 401, (headers, refused.text)
        assert refused.headers["www-authenticate"] == "Bearer"
    assert _call(client, method, request, bearer(world.revoked)).status_code == 401

    foreign = _call(client, method, request, bearer(world.b.token))
    if case.access == "platform":
        assert foreign.status_code == 403, foreign.text
        assert _call(client, method, request, bearer(world.a.token)).status_code == 403
        right = ADMIN
    elif case.foreign is not None:
        case.foreign(foreign, world)
        right = bearer(world.a.token)
    else:
        assert foreign.status_code == 404, foreign.text
        assert foreign.json()["error"] in ("not found", f"no conversation with {CUSTOMER}")
        right = bearer(world.a.token)

    # Nothing the refused calls did stands in the way of the right one.
    done = _call(client, method, request, right)
    assert done.status_code == case.ok, done.text


def test_open_routes_need_no_bearer_token_and_the_webhook_its_signature(client):
    assert client.get("/health").status_code in (200, 503)
    assert client.get("/stats").status_code == 200
    assert client.get("/api/openapi.json").status_code == 200
    assert client.post("/webhook", content=b"{}").status_code == 403
    assert client.get("/webhook", params={"hub.mode": "subscribe"}).status_code == 403


# -- Lists, lookups by phone, and a campaign's references ------------------------------------


def test_lists_hold_only_the_tokens_organisation(client, world):
    for org in (world.a, world.b):
        listed = client.get("/api/organisations", headers=bearer(org.token)).json()
        assert [o["id"] for o in listed] == [org.id]
        templates = client.get("/api/templates", headers=bearer(org.token)).json()
        assert [t["id"] for t in templates] == [org.template_id]
    everything = client.get("/api/organisations", headers=ADMIN).json()
    assert {o["id"] for o in everything} == {world.a.id, world.b.id}
    by_number = client.get(
        "/api/organisations",
        params={"phone_number_id": world.a.phone_number_id},
        headers=bearer(world.b.token),
    )
    assert by_number.json() == []


def _taken_over(engine: sa.Engine) -> dict[int, bool]:
    with engine.connect() as conn:
        return dict(conn.execute(sa.text("SELECT id, human_takeover FROM conversations")).all())


def test_operator_routes_find_the_customer_within_one_organisation(client, world):
    taken = client.post("/api/v1/takeover", json={"phone": CUSTOMER}, headers=bearer(world.b.token))
    assert taken.json() == {"status": "takeover_complete"}
    flags = _taken_over(world.engine)
    assert flags[world.b.conversation_id] is True
    assert flags[world.a.conversation_id] is False

    only_a = client.post("/api/v1/takeover", json={"phone": ONLY_A}, headers=bearer(world.b.token))
    assert only_a.status_code == 404
    assert only_a.json() == {
        "error": f"no conversation with {ONLY_A}",
        "code": "not_found",
        "detail": "no conversation with this customer",
    }

    ambiguous = client.post("/api/v1/handback", json={"phone": CUSTOMER}, headers=ADMIN)
    assert ambiguous.status_code == 400
    assert "organisation_id" in ambiguous.json()["error"]
    named = client.post(
        "/api/v1/handback", json={"phone": CUSTOMER, "organisation_id": world.b.id}, headers=ADMIN
    )
    assert named.json() == {"status": "handback_complete"}
    assert _taken_over(world.engine)[world.b.conversation_id] is False
    # One organisation's customer: the admin need not name it.
    alone = client.post("/api/v1/takeover", json={"phone": ONLY_A}, headers=ADMIN)
    assert alone.json() == {"status": "takeover_complete"}
    bad = client.post(
        "/api/v1/takeover", json={"phone": CUSTOMER, "organisation_id": "x"}, headers=ADMIN
    )
    assert bad.status_code == 400


def test_a_campaign_uses_only_its_organisations_template_and_numbers(client, world):
    body = {"organisation_id": world.b.id, "name": "Borrowed", "message_type": "template"}
    borrowed = client.post(
        "/api/campaigns",
        json={**body, "template_id": world.b.template_id, "phone_number_id": p.PHONE_NUMBER_ID},
        headers=bearer(world.b.token),
    )
    assert borrowed.status_code == 422
    assert borrowed.json()["errors"] == [
        {"field": "phone_number_id", "error": "no such phone number in this organisation"}
    ]
    other_template = client.post(
        "/api/campaigns",
        json={**body, "template_id": world.a.template_id},
        headers=bearer(world.b.token),
    )
    assert other_template.status_code == 422


# -- The tokens themselves -------------------------------------------------------------------


def test_a_token_is_shown_once_stored_hashed_and_revoked_at_once(client, world, engine):
    made = client.post(
        f"/api/organisations/{world.a.id}/tokens",
        json={"name": "crm sync", "by": "Ada"},
        headers=ADMIN,
    )
    assert made.status_code == 201
    token = made.json()["token"]
    assert token.startswith(tenants.TOKEN_PREFIX) and len(token) > 40
    assert made.json()["hint"] == token[:10] and made.json()["created_by"] == "Ada"
    with engine.connect() as conn:
        stored = conn.execute(
            sa.text("SELECT * FROM api_tokens WHERE id = :i"), {"i": made.json()["id"]}
        ).one()
    assert bytes(stored.token_sha256) == hashlib.sha256(token.encode()).digest()
    assert token not in json.dumps([str(v) for v in stored])

    listed = client.get(f"/api/organisations/{world.a.id}/tokens", headers=ADMIN).json()
    assert token not in json.dumps(listed) and all("token" not in t for t in listed)
    assert [t["name"] for t in listed] == ["operator console", "old", "crm sync"]
    assert client.get("/api/templates", headers=bearer(token)).status_code == 200

    revoked = client.delete(
        f"/api/organisations/{world.a.id}/tokens/{made.json()['id']}", headers=ADMIN
    )
    assert revoked.json()["revoked_by"] == "platform admin"
    assert client.get("/api/templates", headers=bearer(token)).status_code == 401
    again = client.delete(
        f"/api/organisations/{world.a.id}/tokens/{made.json()['id']}", headers=ADMIN
    )
    assert again.json()["revoked_at"] == revoked.json()["revoked_at"]
    # A token is revoked through its own organisation only.
    elsewhere = client.delete(
        f"/api/organisations/{world.b.id}/tokens/{listed[0]['id']}", headers=ADMIN
    )
    assert elsewhere.status_code == 404
    unnamed = client.post(f"/api/organisations/{world.a.id}/tokens", json={}, headers=ADMIN)
    assert unnamed.status_code == 422


def test_tokens_through_the_cli(capsys, world, monkeypatch, database_url):
    def run(*argv: str) -> Any:
        assert main(["tokens", *argv]) == 0
        return json.loads(capsys.readouterr().out)

    made = run("create", world.b.id, "--name", "nightly export")
    assert made["token"].startswith(tenants.TOKEN_PREFIX)
    assert tenants.token_owner(world.engine, made["token"]).organisation_id == world.b.id
    assert [t["name"] for t in run("list", world.b.id)] == ["operator console", "nightly export"]
    assert run("revoke", world.b.id, str(made["id"]), "--by", "Ada")["revoked_by"] == "Ada"
    assert tenants.token_owner(world.engine, made["token"]) is None
    assert main(["tokens", "list", "6f1d3c1e-0a4b-4a5e-9d59-1e9b1d2c3a4b"]) == 1
    assert "does not exist" in capsys.readouterr().err
