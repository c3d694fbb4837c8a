"""Logs name messages and contacts by id: no phone number, message text or secret reaches
them through a database error, a refused payload, the access log or `/health`."""

from __future__ import annotations

import logging

import httpx
import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from resources import campaigns
from resources.graph_errors import GraphAPIError
from resources.phone import InvalidPhoneNumber, to_e164
from resources.postgres import create_engine
from resources.safe_errors import describe
from tests.sending import client_for, dead_letters, drain, enqueue, make_run, payload
from tests.servers import serve
from webhook_app.app import app

PHONE = "+12025550177"


def test_a_database_error_shows_neither_the_statement_values_nor_the_row(engine):
    with engine.begin() as conn:
        organisation = campaigns.create_organisation(conn, "Shop")
    insert = sa.text("INSERT INTO contacts (organisation_id, phone) VALUES (:o, :p)")
    with engine.begin() as conn:
        conn.execute(insert, {"o": organisation, "p": PHONE})
    with pytest.raises(sa.exc.IntegrityError) as refused, engine.begin() as conn:
        conn.execute(insert, {"o": organisation, "p": PHONE})
    error = refused.value
    assert "parameters hidden" in str(error)  # hide_parameters: the values are not in it
    assert PHONE in str(error)  # …but the server's DETAIL line has the row
    assert describe(error) == (
        "UniqueViolation: duplicate key value violates unique constraint"
        ' "contacts_organisation_id_phone_key"'
    )


def test_errors_that_quote_their_input_are_described_by_type():
    with pytest.raises(InvalidPhoneNumber) as refused:
        to_e164("+1202555017x7")
    assert describe(refused.value) == "InvalidPhoneNumber"
    assert describe(ValueError(f"customer {PHONE} wrote 'hello'")) == "ValueError"
    graph = GraphAPIError(400, 131026, f"Message undeliverable to {PHONE}")
    assert describe(graph) == "Graph API error 131026 (HTTP 400)"


def test_a_payload_refused_for_its_number_is_logged_without_it(engine, sqs, graph, caplog):
    run = make_run(engine, 1)
    enqueue(sqs, [payload(run, 0, to="+1202555O177", messageType="text", messageContent="Hi")])
    with caplog.at_level(logging.INFO):
        drain(engine, sqs, client_for(graph.url))
    [dead] = dead_letters(sqs)
    assert dead["MessageAttributes"]["reason"]["StringValue"] == "to is not an E.164 number"
    assert "to is not an E.164 number" in caplog.text
    assert "2025550" not in caplog.text


def test_health_names_no_database_server_or_user(database_url, stack):
    with TestClient(app) as client:
        healthy = client.get("/health")
        port = stack.postgres.port
        app.state.webhook.engine = create_engine(
            f"postgresql://secret_user:secret_pw@127.0.0.1:{port}/secret_db"
        )
        down = client.get("/health")
        app.state.webhook.engine.dispose()
    assert healthy.json()["database"] == "ok"
    assert down.status_code == 503
    assert down.json() == {"status": "unavailable", "database": "unavailable (OperationalError)"}


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_the_access_log_has_paths_without_their_queries(database_url, stack, monkeypatch):
    monkeypatch.setenv("WHATSAPP_VERIFY_TOKEN", "verify-s3cret")
    access = logging.getLogger("uvicorn.access")
    with serve(app, log_level="info") as url:
        lines = _Lines()
        access.addHandler(lines)
        try:
            handshake = httpx.get(
                f"{url}/webhook",
                params={
                    "hub.mode": "subscribe",
                    "hub.verify_token": "verify-s3cret",
                    "hub.challenge": "42",
                },
            )
            lookup = httpx.get(
                f"{url}/api/organisations/00000000-0000-0000-0000-000000000000/contacts",
                params={"phone": PHONE},
            )
        finally:
            access.removeHandler(lines)
    assert handshake.text == "42" and lookup.status_code == 401
    assert any('"GET /webhook HTTP/1.1" 200' in line for line in lines.lines), lines.lines
    assert any("/contacts HTTP/1.1" in line for line in lines.lines), lines.lines
    assert not any("s3cret" in line or "2025550177" in line for line in lines.lines)
