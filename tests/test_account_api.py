"""An organisation's WhatsApp account through the operator API and the CLI, against the real
database: its WABA id (409 when another organisation holds it), every messaging limit tier
WhatsApp uses with the history of each change, its numbers' display numbers and state."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from pipelines.cli import main
from tests.webhook_support import ADMIN, rows, scalar
from webhook_app.app import app

WABA = "102290129340398"
OTHER_WABA = "524126980791429"
UNKNOWN_ORG = "6f1d3c1e-0a4b-4a5e-9d59-1e9b1d2c3a4b"


@pytest.fixture
def client(database_url, stack, monkeypatch):
    monkeypatch.setenv("ADMIN_API_TOKEN", "dev-admin-token")
    with TestClient(app) as test_client:
        yield test_client


def create(client, **body):
    return client.post("/api/organisations", json={"name": "Shop", **body}, headers=ADMIN)


def patch(client, org: str, **body):
    return client.patch(f"/api/organisations/{org}", json=body, headers=ADMIN)


def history(client, org: str, **query) -> list[dict]:
    response = client.get(f"/api/organisations/{org}/account-events", params=query, headers=ADMIN)
    assert response.status_code == 200, response.text
    return response.json()


def test_an_organisation_knows_its_waba_and_a_taken_one_is_a_409(client, engine):
    created = create(client, waba_id=WABA, phone_number_id="555000")
    assert created.status_code == 201, created.text
    shop = created.json()
    assert (shop["waba_id"], shop["messaging_limit"]) == (WABA, 250)
    assert shop["account"]["status"] == "ok" and shop["account"]["breaker"] is None

    copycat = create(client, name="Copycat", waba_id=WABA)
    assert copycat.status_code == 409
    assert WABA in copycat.json()["detail"] and shop["id"] in copycat.json()["detail"]
    assert scalar(engine, "SELECT count(*) FROM organisations") == 1

    bare = create(client, name="Bare").json()
    assert bare["waba_id"] is None
    taken = patch(client, bare["id"], waba_id=WABA)
    assert taken.status_code == 409 and "nothing was changed" in taken.json()["detail"]
    moved = patch(client, bare["id"], waba_id=OTHER_WABA)
    assert moved.status_code == 200 and moved.json()["waba_id"] == OTHER_WABA
    # The organisation's own WABA id again is no conflict; null clears it.
    assert patch(client, bare["id"], waba_id=OTHER_WABA).status_code == 200
    assert patch(client, bare["id"], waba_id=None).json()["waba_id"] is None
    listed = client.get("/api/organisations", headers=ADMIN).json()
    assert [(o["name"], o["waba_id"]) for o in listed] == [("Shop", WABA), ("Bare", None)]

    bad = patch(client, shop["id"], waba_id="waba-1", colour="blue")
    assert bad.status_code == 422
    assert {e["field"] for e in bad.json()["errors"]} == {"waba_id", "colour"}
    assert patch(client, shop["id"]).status_code == 422  # nothing to change
    assert patch(client, UNKNOWN_ORG, waba_id=WABA).status_code == 404
    assert (
        client.patch(f"/api/organisations/{shop['id']}", json={"waba_id": WABA}).status_code == 401
    )
    assert scalar(engine, "SELECT waba_id FROM organisations WHERE name = 'Shop'") == WABA


@pytest.mark.parametrize("limit", [50, 250, 1000, 2000, 10000, 100000, None])
def test_every_messaging_limit_tier_whatsapp_uses_is_accepted(client, engine, limit):
    org = create(client, messaging_limit=limit)
    assert org.status_code == 201, org.text
    assert org.json()["messaging_limit"] == limit
    assert org.json()["messaging_limit_source"] == "operator"
    assert scalar(engine, "SELECT messaging_limit FROM organisations") == limit


def test_the_messaging_limit_refuses_what_is_not_a_tier_and_keeps_a_history(client, engine):
    org = create(client).json()["id"]
    for wrong in (300, 0, -1, True, "2000", 2000.0):
        refused = patch(client, org, messaging_limit=wrong)
        assert refused.status_code == 422, wrong
        [error] = refused.json()["errors"]
        assert error["field"] == "messaging_limit" and "50, 250, 1000, 2000" in error["error"]
    assert create(client, name="Odd", messaging_limit=500).status_code == 422

    raised = patch(client, org, messaging_limit=2000, by="ops@shop.example", reason="verified")
    assert raised.status_code == 200, raised.text
    assert raised.json()["messaging_limit"] == 2000
    assert raised.json()["messaging_limit_source"] == "operator"
    assert patch(client, org, messaging_limit=None).json()["messaging_limit"] is None
    assert patch(client, org, messaging_limit=None).status_code == 200  # unchanged: no event

    events = history(client, org, kind="messaging_limit")
    assert [(e["source"], e["old_value"], e["new_value"], e["actor"]) for e in events] == [
        ("operator", "2000", "unlimited", "operator"),
        ("operator", "250", "2000", "ops@shop.example"),
        ("operator", None, "250", None),
    ]
    assert events[1]["reason"] == "verified" and all(e["applied"] for e in events)
    assert events[2]["note"] == "organisation created with the default limit"
    assert history(client, org, limit=1) == events[:1]
    assert (
        client.get(
            f"/api/organisations/{org}/account-events", params={"kind": "mood"}, headers=ADMIN
        ).status_code
        == 422
    )
    assert (
        client.get(f"/api/organisations/{UNKNOWN_ORG}/account-events", headers=ADMIN).status_code
        == 404
    )
    # The database holds the same tiers.
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(sa.text("UPDATE organisations SET messaging_limit = 500"))


def test_a_number_shows_its_display_number_and_state(client, engine):
    shop = create(client, phone_number_id="555000").json()
    other = create(client, name="Other", phone_number_id="555001").json()
    changed = patch(
        client,
        shop["id"],
        phone_numbers=[{"phone_number_id": "555000", "display_phone": "+1 555-555-0100"}],
    )
    assert changed.status_code == 200, changed.text
    [number] = changed.json()["phone_numbers"]
    assert number == {
        "phone_number_id": "555000",
        "display_phone": "+1 555-555-0100",
        "messages_per_second": 80,
        "throughput_level": None,
        "quality_rating": None,
        "name_status": None,
        "verified_name": None,
        "status_read_at": None,
        "status_error": None,
    }
    # Another organisation's number, or something that is not a phone number: refused whole.
    refused = patch(
        client,
        shop["id"],
        messaging_limit=1000,
        phone_numbers=[{"phone_number_id": "555001", "display_phone": "+1 555-555-0101"}],
    )
    assert refused.status_code == 422
    assert refused.json()["errors"][0]["field"] == "phone_numbers[0].phone_number_id"
    assert (
        patch(
            client,
            shop["id"],
            phone_numbers=[{"phone_number_id": "555000", "display_phone": "call me"}],
        ).status_code
        == 422
    )
    assert (
        scalar(engine, "SELECT messaging_limit FROM organisations WHERE id = :o", o=shop["id"])
        == 250
    )
    assert (
        rows(engine, "SELECT display_phone FROM phone_numbers WHERE phone_number_id = '555001'")[
            0
        ].display_phone
        is None
    )
    assert other["phone_numbers"][0]["display_phone"] is None


def run_cli(capsys, *argv: str):
    code = main(["campaigns", *argv])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else None, err


def test_the_cli_sets_the_waba_id_the_limit_and_a_display_number(capsys, database_url, stack):
    _, org, _ = run_cli(
        capsys,
        "create-organisation",
        "--name",
        "Shop",
        "--phone-number-id",
        "555000",
        "--waba-id",
        WABA,
        "--messaging-limit",
        "1000",
    )
    assert (org["waba_id"], org["messaging_limit"]) == (WABA, 1000)
    code, changed, _ = run_cli(
        capsys,
        "update-organisation",
        org["id"],
        "--messaging-limit",
        "unlimited",
        "--waba-id",
        OTHER_WABA,
        "--display-phone",
        "555000=+1 555-555-0100",
        "--by",
        "ops",
        "--reason",
        "Meta raised it",
    )
    assert code == 0
    assert (changed["waba_id"], changed["messaging_limit"]) == (OTHER_WABA, None)
    assert changed["phone_numbers"][0]["display_phone"] == "+1 555-555-0100"
    _, events, _ = run_cli(capsys, "account-events", org["id"], "--kind", "messaging_limit")
    assert [(e["new_value"], e["actor"], e["reason"]) for e in events] == [
        ("unlimited", "ops", "Meta raised it"),
        ("1000", None, None),
    ]
    code, out, err = run_cli(capsys, "update-organisation", org["id"], "--messaging-limit", "300")
    assert code == 1 and out is None and "messaging_limit" in err
    # Dev mode (no access token): nothing can be read from Meta, and nothing is.
    assert run_cli(capsys, "refresh-numbers")[1] == []
