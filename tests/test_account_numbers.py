"""Each number's status read from the Graph API (the fake one, on loopback) at the sender's
start-up and through `refresh_numbers`: throughput sets messages per second, the portfolio's
messaging limit comes along, a Graph error is logged and the sender starts all the same."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa

from pipelines.sender import service
from resources import account, campaigns
from tests.fake_graph import Failure
from tests.sending import client_for
from tests.webhook_support import rows, scalar

HIGH, STANDARD = "106540352242922", "106540352242923"


@pytest.fixture
def sender_env(monkeypatch, database_url, sqs, graph):
    """A sender configured from the environment, as `waflow sender` is, aimed at the fake."""
    for name, value in {
        "SQS_QUEUE_NAME": sqs.queue_name,
        "SQS_DLQ_NAME": sqs.dlq_name,
        "WHATSAPP_ACCESS_TOKEN": "test-token",
        "WHATSAPP_API_BASE_URL": graph.url,
        "WHATSAPP_PHONE_NUMBER_ID": HIGH,
        "SENDER_LANES": "1",
        "SENDER_WAIT_SECONDS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    return graph


def organisation(engine, *numbers: str) -> str:
    with engine.begin() as conn:
        org = campaigns.create_organisation(conn, "Shop", 250)
        for number in numbers:
            campaigns.add_phone_number(conn, org, number)
    return str(org)


def number(engine, phone_number_id: str) -> sa.Row:
    return rows(
        engine, "SELECT * FROM phone_numbers WHERE phone_number_id = :p", p=phone_number_id
    )[0]


def test_the_sender_reads_its_numbers_status_at_start_up_and_a_graph_error_does_not_stop_it(
    engine, sender_env, caplog
):
    graph = sender_env
    org = organisation(engine, HIGH, STANDARD)
    graph.add_phone_number(
        HIGH,
        display_phone_number="+1 555-078-3881",
        verified_name="Jaspers Market",
        quality_rating="YELLOW",
        name_status="AVAILABLE_WITHOUT_REVIEW",
        throughput={"level": "HIGH"},
        whatsapp_business_manager_messaging_limit="TIER_2K",
    )
    graph.fail_phone_number(
        STANDARD,
        Failure(100, "Unsupported get request. Object with ID does not exist", subcode=33),
    )
    caplog.set_level(logging.INFO)

    stats = service.run(drain=True, install_signals=False)

    assert stats is not None  # the sender ran (and drained its empty queue)
    high = number(engine, HIGH)
    assert (high.messages_per_second, high.throughput_level) == (1000, "HIGH")
    assert (high.display_phone, high.verified_name) == ("+1 555-078-3881", "Jaspers Market")
    assert (high.quality_rating, high.name_status) == ("YELLOW", "AVAILABLE_WITHOUT_REVIEW")
    assert high.status_read_at is not None and high.status_error is None
    failed = number(engine, STANDARD)
    assert failed.messages_per_second == 80 and failed.status_read_at is None
    assert failed.status_error.startswith("Graph API error 100 (HTTP 400)")
    [line] = [
        r.getMessage()
        for r in caplog.records
        if "not read" in r.getMessage() and "100" in r.getMessage()
    ]
    assert STANDARD in line
    assert "+1 555-078-3881" not in caplog.text
    # Every documented field, once per number, before anything was sent.
    assert [r["id"] for r in graph.number_requests] == [HIGH, STANDARD]
    assert set(graph.number_requests[0]["fields"].split(",")) == set(account.NUMBER_FIELDS)
    assert graph.requests == []
    # The portfolio's limit came along, recorded with its source.
    assert rows(engine, "SELECT messaging_limit, messaging_limit_source FROM organisations")[0] == (
        2000,
        "graph_api",
    )
    recorded = rows(
        engine,
        "SELECT kind, source, phone_number_id, old_value, new_value FROM account_events"
        " WHERE source = 'graph_api' ORDER BY id",
    )
    assert [tuple(r) for r in recorded] == [
        ("throughput", "graph_api", HIGH, "80", "1000"),
        ("messaging_limit", "graph_api", None, "250", "2000"),
    ]
    assert org


def test_a_refresh_records_only_changes_and_clears_an_old_error(engine, graph):
    org = organisation(engine, HIGH)
    other = organisation(engine, STANDARD)
    graph.add_phone_number(HIGH)
    graph.add_phone_number(STANDARD, throughput={"level": "HIGH"})
    client = client_for(graph.url)
    try:
        graph.fail_phone_number(HIGH, Failure(190, "Error validating access token", 401))
        [result] = account.refresh_numbers(engine, client, org)
        assert result["error"].startswith("Graph API error 190")
        graph.recover()
        first = account.refresh_numbers(engine, client, org)
        again = account.refresh_numbers(engine, client, org)
    finally:
        client.close()
    assert first[0]["changes"]["display_phone"] == [None, "+1 555-555-0100"]
    assert again == [{"phone_number_id": HIGH, "organisation_id": org, "changes": {}}]
    read = number(engine, HIGH)
    assert (read.throughput_level, read.messages_per_second, read.status_error) == (
        "STANDARD",
        80,
        None,
    )
    # Only this organisation's number was read; the other keeps what it had.
    assert {r["id"] for r in graph.number_requests} == {HIGH}
    assert number(engine, STANDARD).throughput_level is None
    # The limit was already 250: nothing to record; the read still decided it.
    assert scalar(engine, "SELECT count(*) FROM account_events WHERE source = 'graph_api'") == 0
    assert (
        rows(
            engine,
            "SELECT messaging_limit_source FROM organisations WHERE id = :o",
            o=org,
        )[0].messaging_limit_source
        == "graph_api"
    )
    assert other


def test_dev_mode_reads_nothing(engine, graph, monkeypatch, sqs, database_url, caplog):
    organisation(engine, HIGH)
    graph.add_phone_number(HIGH, throughput={"level": "HIGH"})
    monkeypatch.delenv("WHATSAPP_ACCESS_TOKEN", raising=False)
    for name, value in {
        "SQS_QUEUE_NAME": sqs.queue_name,
        "SQS_DLQ_NAME": sqs.dlq_name,
        "WHATSAPP_API_BASE_URL": graph.url,
        "SENDER_LANES": "1",
        "SENDER_WAIT_SECONDS": "1",
    }.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.WARNING)
    service.run(drain=True, install_signals=False)
    assert graph.number_requests == []
    assert number(engine, HIGH).messages_per_second == 80
    assert "not read" not in caplog.text


def test_media_ids_are_still_served_beside_phone_numbers(graph):
    graph.add_media("media-1", b"jpeg", "image/jpeg")
    graph.add_phone_number(HIGH)
    client = client_for(graph.url)
    try:
        assert client.media_url("media-1")["mime_type"] == "image/jpeg"
        assert client.get(HIGH) == {
            "id": HIGH,
            "display_phone_number": "+1 555-555-0100",
            "verified_name": "Shop",
            "quality_rating": "GREEN",
        }
        with pytest.raises(Exception, match="nonexisting field"):
            client.get(HIGH, {"fields": "throughput,favourite_colour"})
    finally:
        client.close()
