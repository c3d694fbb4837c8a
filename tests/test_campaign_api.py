"""The operator API end to end through the webhook app, against the real database and queue."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from resources.campaigns import set_campaign_status
from webhook_app.app import app

TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(database_url, stack, monkeypatch):
    monkeypatch.setenv("ADMIN_API_TOKEN", TOKEN)
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def organisation(client) -> str:
    response = client.post(
        "/api/organisations",
        json={"name": "Shop", "phone_number_id": "555000"},
        headers=AUTH,
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def make_campaign(client, organisation: str, **extra) -> str:
    template = client.post(
        "/api/templates",
        json={
            "organisation_id": organisation,
            "name": f"offer_{len(extra)}",
            "parameters": [
                {"type": "body", "valueType": "text", "source": "contact.name"},
                {"type": "body", "valueType": "text", "source": "attributes.offer"},
            ],
        },
        headers=AUTH,
    )
    assert template.status_code == 201, template.text
    response = client.post(
        "/api/campaigns",
        json={
            "organisation_id": organisation,
            "name": "Spring offer",
            "message_type": "template",
            "template_id": template.json()["id"],
            "phone_number_id": "555000",
            **extra,
        },
        headers=AUTH,
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/api/campaigns/sqs-status"),
        ("post", "/api/campaigns"),
        ("get", "/api/templates"),
        ("post", "/api/campaigns/6f1d3c1e-0a4b-4a5e-9d59-1e9b1d2c3a4b/process-messages"),
    ],
)
def test_every_campaign_route_needs_the_admin_token(client, method, path):
    assert getattr(client, method)(path).status_code == 401
    bad = {"Authorization": "Bearer nope"}
    assert getattr(client, method)(path, headers=bad).status_code == 401


def test_a_campaign_from_creation_to_a_requested_dispatch(client, organisation, engine):
    campaign = make_campaign(client, organisation)
    csv = "phone,name,offer\n+1 202 555 0100,Ada,20% off\n+12025550101,Alan,Free delivery\n"
    upload = client.post(
        f"/api/campaigns/{campaign}/audience",
        content=csv,
        headers={**AUTH, "Content-Type": "text/csv"},
    )
    assert upload.json() == {"imported": 2, "created": 2, "already_present": 0}
    assert (
        client.post(f"/api/campaigns/{campaign}/approve", headers=AUTH).json()["status"]
        == "approved"
    )
    # Not before its media is ready (the media step moves it to asset_generated).
    early = client.post(f"/api/campaigns/{campaign}/process-messages", headers=AUTH)
    assert early.status_code == 409
    assert "approved" in early.json()["detail"]
    with engine.begin() as conn:
        set_campaign_status(conn, campaign, "asset_generated")

    requested = client.post(f"/api/campaigns/{campaign}/process-messages", headers=AUTH)
    assert requested.status_code == 202
    body = requested.json()
    assert body["run_status"] == "pending"
    again = client.post(f"/api/campaigns/{campaign}/process-messages", headers=AUTH).json()
    assert again["campaign_run_id"] == body["campaign_run_id"]  # one run per date

    status = client.get(f"/api/campaigns/{campaign}/status", headers=AUTH).json()
    assert status["status"] == "ready_to_launch"
    assert status["audience"] == {"pending": 2}
    assert [r["run_date"] for r in status["runs"]] == [body["run_date"]]
    with engine.connect() as conn:
        phones = conn.execute(sa.text("SELECT msisdn FROM campaign_audience ORDER BY 1")).scalars()
        assert list(phones) == ["+12025550100", "+12025550101"]


def test_a_csv_with_bad_rows_is_refused_whole_with_one_error_per_row(client, organisation, engine):
    campaign = make_campaign(client, organisation)
    csv = (
        "phone,name,offer\n"
        "+12025550100,Ada,20% off\n"
        "12345,Short,x\n"
        "+1 202 555 0100,Ada again,y\n"
        "+12025550102,Too,many,fields\n"
    )
    response = client.post(
        f"/api/campaigns/{campaign}/audience",
        content=csv,
        headers={**AUTH, "Content-Type": "text/csv"},
    )
    assert response.status_code == 422
    errors = response.json()["errors"]
    assert [e["line"] for e in errors] == [3, 4, 5]
    assert "not a valid phone number" in errors[0]["error"]
    assert "already on line 2" in errors[1]["error"]
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM campaign_audience")).scalar_one() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM contacts")).scalar_one() == 0
    missing = client.post(
        f"/api/campaigns/{campaign}/audience", content="name\nAda\n", headers=AUTH
    )
    assert missing.status_code == 422
    assert "phone" in missing.json()["errors"][0]["error"]


def test_contacts_upload_sets_opt_outs_and_refuses_bad_flags(client, organisation, engine):
    ok = client.post(
        f"/api/organisations/{organisation}/contacts",
        content="phone,name,opted_out,city\n+12025550100,Ada,true,London\n+12025550101,Alan,no,\n",
        headers=AUTH,
    )
    assert ok.json() == {
        "imported": 2,
        "created": 2,
        "updated": 0,
        "opted_out": 1,
        "not_applied": [],
    }
    bad = client.post(
        f"/api/organisations/{organisation}/contacts",
        content="phone,opted_out\n+12025550102,maybe\n",
        headers=AUTH,
    )
    assert bad.status_code == 422
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT phone, opted_out, attributes FROM contacts ORDER BY phone")
        ).all()
    assert [tuple(r) for r in rows] == [
        ("+12025550100", True, {"city": "London"}),
        ("+12025550101", False, {}),
    ]


def test_bad_campaign_and_template_input_lists_every_problem(client, organisation):
    response = client.post(
        "/api/campaigns",
        json={
            "organisation_id": organisation,
            "message_type": "fax",
            "recurrence": "hourly",
            "start_at": "2026-05-01T09:00:00Z",
            "end_at": "yesterday",
        },
        headers=AUTH,
    )
    assert response.status_code == 422
    fields = {e["field"] for e in response.json()["errors"]}
    assert fields == {"name", "message_type", "recurrence", "end_at"}
    template = client.post(
        "/api/templates",
        json={
            "organisation_id": organisation,
            "name": "t",
            "parameters": [{"type": "body", "valueType": "text", "source": "crm.name"}],
        },
        headers=AUTH,
    )
    assert template.status_code == 422
    assert template.json()["errors"][0]["field"] == "parameters[0].source"
    assert (
        client.get(
            "/api/campaigns/6f1d3c1e-0a4b-4a5e-9d59-1e9b1d2c3a4b/status", headers=AUTH
        ).status_code
        == 404
    )


def test_templates_are_listed_and_updated(client, organisation):
    make_campaign(client, organisation)
    (template,) = client.get(
        "/api/templates", params={"organisation_id": organisation}, headers=AUTH
    ).json()
    updated = client.patch(
        f"/api/templates/{template['id']}", json={"status": "paused"}, headers=AUTH
    )
    assert updated.json()["status"] == "paused"
    refused = client.patch(f"/api/templates/{template['id']}", json={"name": "x"}, headers=AUTH)
    assert refused.status_code == 422


def test_audience_listing_filters_by_status_and_pages(client, organisation, engine):
    campaign = make_campaign(client, organisation)
    rows = "".join(f"+1202555{i:04d},M{i},x\n" for i in range(100, 105))
    client.post(
        f"/api/campaigns/{campaign}/audience", content="phone,name,offer\n" + rows, headers=AUTH
    )
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE campaign_audience SET status = 'failed', last_error = 'bad'"
                " WHERE msisdn IN ('+12025550100', '+12025550101')"
            )
        )
    first = client.get(
        f"/api/campaigns/{campaign}/audience", params={"limit": 3}, headers=AUTH
    ).json()
    second = client.get(
        f"/api/campaigns/{campaign}/audience",
        params={"limit": 3, "after": first["next_after"]},
        headers=AUTH,
    ).json()
    assert len(first["items"]) == 3 and len(second["items"]) == 2
    assert second["next_after"] is None
    seen = {i["msisdn"] for i in first["items"] + second["items"]}
    assert len(seen) == 5
    failed = client.get(
        f"/api/campaigns/{campaign}/audience", params={"status": "failed"}, headers=AUTH
    ).json()
    assert sorted(i["msisdn"] for i in failed["items"]) == ["+12025550100", "+12025550101"]
    assert (
        client.get(
            f"/api/campaigns/{campaign}/audience", params={"status": "lost"}, headers=AUTH
        ).status_code
        == 422
    )


def test_sqs_status_reports_the_queue_and_its_dead_letter_queue(client):
    response = client.get("/api/campaigns/sqs-status", headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert body["fifo"] is True
    assert {"visible", "in_flight", "dead_letter"} <= body.keys()
