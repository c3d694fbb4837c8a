"""What the APIs and the webhook take: bodies capped while they stream in, CSVs within a row
limit, and bad values answered with a 4xx that names the problem, never a 500."""

from __future__ import annotations

import json
import re
import socket
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from tests import payloads as p
from tests.servers import serve
from tests.webhook_support import post, webhook_client
from webhook_app.app import app
from webhook_app.bodies import MAX_CSV_BYTES, MAX_JSON_BYTES, MAX_JSON_DEPTH

TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(database_url, stack, monkeypatch) -> Iterator[TestClient]:
    monkeypatch.setenv("ADMIN_API_TOKEN", TOKEN)
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
def organisation(client) -> str:
    response = client.post(
        "/api/organisations", json={"name": "Shop", "phone_number_id": "555000"}, headers=AUTH
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _count(engine: sa.Engine, table: str) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()


def _answer_before_the_body_ends(url: str, path: str, limit: int) -> bytes:
    """POST a chunked body past `limit` and read the answer without ever ending the body:
    it can only come if the app refused the body while it was still streaming in."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as conn:
        conn.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        chunk = b"x" * 65536
        sent = 0
        try:
            while sent <= limit:
                conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except OSError:
            pass  # the server answered and closed: what the answer says is what counts
        return _answer(conn)


def _answer(conn: socket.socket) -> bytes:
    """The response: its head, then as many bytes as its Content-Length says."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536) or b"\r\n\r\n"
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"content-length: (\d+)", head, re.IGNORECASE)
    while length and len(body) < int(length[1]):
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


@pytest.mark.parametrize(
    ("path", "limit"),
    [
        ("/api/v1/takeover", MAX_JSON_BYTES),  # the operator API
        ("/api/organisations", MAX_JSON_BYTES),  # the campaign API, JSON
        ("/api/organisations/{organisation}/contacts", MAX_CSV_BYTES),  # and CSV
    ],
)
def test_a_body_past_its_cap_is_refused_while_it_streams_in(
    database_url, stack, monkeypatch, engine, path, limit
):
    monkeypatch.setenv("ADMIN_API_TOKEN", TOKEN)
    with engine.begin() as conn:
        organisation = conn.execute(
            sa.text("INSERT INTO organisations (name) VALUES ('Shop') RETURNING id")
        ).scalar_one()
    with serve(app) as url:
        answer = _answer_before_the_body_ends(url, path.format(organisation=organisation), limit)
        declared = _answer_to_a_declared_length(url, path.format(organisation=organisation), limit)
    for refused in (answer, declared):
        assert refused.startswith(b"HTTP/1.1 413"), refused[:200]
        assert f"body larger than {limit} bytes".encode() in refused
    assert _count(engine, "contacts") == _count(engine, "conversations") == 0


def _answer_to_a_declared_length(url: str, path: str, limit: int) -> bytes:
    """A Content-Length past the cap is refused before a byte of the body is sent."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as conn:
        conn.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Length: {limit + 1}\r\n\r\n".encode()
        )
        return _answer(conn)


def test_a_csv_past_the_row_limit_is_refused_whole_by_name(client, organisation, monkeypatch):
    monkeypatch.setenv("CSV_MAX_ROWS", "3")
    rows = "phone,name\n" + "".join(f"+1202555{i:04d},C{i}\n" for i in range(4))
    refused = client.post(f"/api/organisations/{organisation}/contacts", content=rows, headers=AUTH)
    assert refused.status_code == 422
    assert refused.json()["errors"] == [
        {"line": 5, "error": "more than 3 rows (CSV_MAX_ROWS): split it"}
    ]
    three = "phone,name\n" + "".join(f"+1202555{i:04d},C{i}\n" for i in range(3))
    taken = client.post(f"/api/organisations/{organisation}/contacts", content=three, headers=AUTH)
    assert taken.status_code == 200, taken.text
    assert taken.json()["imported"] == 3


@pytest.mark.parametrize(
    ("csv", "line", "problem"),
    [
        ("phone,name\n+12025550100,a\n+12025550101," + "A" * 200_000 + "\n", 3, "not valid CSV"),
        ("phone,name\n+12025550100,a\x00b\n", 2, "NUL character"),
        ("phone,na\x00me\n+12025550100,a\n", 1, "NUL character"),
    ],
)
def test_a_csv_that_cannot_be_read_is_named_by_line(client, organisation, csv, line, problem):
    for path in (
        f"/api/organisations/{organisation}/contacts",
        f"/api/campaigns/{_draft(client, organisation)}/audience",
    ):
        response = client.post(path, content=csv.encode(), headers=AUTH)
        assert response.status_code == 422, response.text
        [error] = response.json()["errors"]
        assert error["line"] == line and problem in error["error"]


def _draft(client, organisation: str) -> str:
    template = client.post(
        "/api/templates",
        json={"organisation_id": organisation, "name": f"t{uuid.uuid4().hex}", "parameters": []},
        headers=AUTH,
    )
    assert template.status_code == 201, template.text
    campaign = client.post(
        "/api/campaigns",
        json={
            "organisation_id": organisation,
            "name": "c",
            "message_type": "template",
            "template_id": template.json()["id"],
        },
        headers=AUTH,
    )
    assert campaign.status_code == 201, campaign.text
    return campaign.json()["id"]


@pytest.mark.parametrize(
    ("route", "body", "field", "problem"),
    [
        ("/api/organisations", {"name": {"a": 1}}, "name", "must be a string"),
        ("/api/organisations", {"name": "S", "phone_number_id": []}, "phone_number_id", "string"),
        ("/api/templates", {"name": 5}, "name", "must be a string"),
        ("/api/templates", {"name": "t", "language": ["en"]}, "language", "must be a string"),
        ("/api/campaigns", {"template_id": "x"}, "template_id", "whole number"),
        ("/api/campaigns", {"template_id": True}, "template_id", "whole number"),
        ("/api/campaigns", {"name": {}}, "name", "must be a string"),
        ("/api/campaigns", {"message_type": {}}, "message_type", "must be a string"),
    ],
)
def test_a_value_of_the_wrong_type_is_a_422_naming_its_field(
    client, organisation, route, body, field, problem
):
    response = client.post(route, json={"organisation_id": organisation, **body}, headers=AUTH)
    assert response.status_code == 422, response.text
    assert any(e["field"] == field and problem in e["error"] for e in response.json()["errors"])


def test_a_huge_integer_is_named_wherever_it_is(client, organisation):
    huge = b'{"organisation_id": "%s", "name": "c", "message_type": "template", "template_id": %s}'
    for digits in (20, 5000):  # past a bigint; past what Python converts
        body = huge % (organisation.encode(), b"9" * digits)
        response = client.post("/api/campaigns", content=body, headers=AUTH)
        assert response.status_code == 422, response.text
        assert "whole number beyond" in response.json()["errors"][0]["error"]
    operator = client.post(
        "/api/v1/operator-message", content=b'{"phone": ' + b"1" * 30 + b"}", headers=AUTH
    )
    assert operator.status_code == 400 and "whole number beyond" in operator.json()["error"]
    run = client.post(
        f"/api/campaigns/{_draft(client, organisation)}/retry-failed",
        json={"campaign_run_id": 2**63},
        headers=AUTH,
    )
    assert run.status_code == 422 and "whole number beyond" in run.text
    breaker = client.post(f"/api/breakers/{10**30}/reset", json={}, headers=AUTH)
    assert breaker.status_code == 404


def _nested(depth: int) -> bytes:
    return b'{"a": ' * depth + b"1" + b"}" * depth


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 100_000])
def test_deep_nesting_is_refused_by_name(client, organisation, depth):
    campaign = client.post("/api/organisations", content=_nested(depth), headers=AUTH)
    assert campaign.status_code == 422, campaign.text
    assert f"nested deeper than {MAX_JSON_DEPTH} levels" in campaign.text
    operator = client.post("/api/v1/takeover", content=_nested(depth), headers=AUTH)
    assert operator.status_code == 400
    assert f"nested deeper than {MAX_JSON_DEPTH} levels" in operator.json()["error"]


def test_nul_in_a_json_string_is_refused_not_a_500(client):
    response = client.post("/api/organisations", content=b'{"name": "a\\u0000b"}', headers=AUTH)
    assert response.status_code == 422 and "NUL" in response.text


def test_a_signed_webhook_too_deep_or_with_a_huge_integer_is_a_400_naming_it(engine):
    value = {"messaging_product": "whatsapp", "deep": "DEEP", "time": "HUGE"}
    template = json.dumps(p.envelope(value)).encode()
    deep = template.replace(b'"DEEP"', _nested(MAX_JSON_DEPTH))
    deeper = template.replace(b'"DEEP"', _nested(10_000))
    huge = template.replace(b'"HUGE"', b"1" * 5000)
    with webhook_client() as client:
        answers = [post(client, body) for body in (deep, deeper, huge)]
    assert [a.status_code for a in answers] == [400, 400, 400]
    assert "nested deeper than" in answers[0].json()["error"]
    assert "nested deeper than" in answers[1].json()["error"]
    assert "whole number beyond" in answers[2].json()["error"]
    assert _count(engine, "webhook_inbox") == 0
