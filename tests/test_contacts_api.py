"""Contacts, consent and organisations through the operator API, against the real database:
the CSV import that can opt out but never back in, the contacts lookup with its consent
history, the explicit consent call (who and why), the organisations list and its 409."""

from __future__ import annotations

import time

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from resources.consent import CSV_CANNOT_OPT_IN
from tests import payloads as p
from tests.webhook_support import ADMIN, post, rows, scalar, wait_until, webhook_client
from webhook_app.app import app

CSV = {**ADMIN, "Content-Type": "text/csv"}
ANA, BO, CY = "+12025550100", "+12025550101", "+12025550102"
UNKNOWN_ORG = "6f1d3c1e-0a4b-4a5e-9d59-1e9b1d2c3a4b"


@pytest.fixture
def client(database_url, stack, monkeypatch):
    monkeypatch.setenv("ADMIN_API_TOKEN", "dev-admin-token")
    with TestClient(app) as test_client:
        yield test_client


def organisation(client, name="Shop", phone_number_id=p.PHONE_NUMBER_ID) -> str:
    response = client.post(
        "/api/organisations",
        json={"name": name, "phone_number_id": phone_number_id},
        headers=ADMIN,
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def upload(client, org: str, text: str):
    return client.post(f"/api/organisations/{org}/contacts", content=text, headers=CSV)


def consent_of(engine) -> dict[str, tuple[bool, int]]:
    """phone → (opted_out, number of consent events)."""
    return {
        r.phone: (r.opted_out, r.events)
        for r in rows(
            engine,
            "SELECT c.phone, c.opted_out, count(e.id) AS events FROM contacts c"
            " LEFT JOIN consent_events e ON e.contact_id = c.id GROUP BY c.id",
        )
    }


def test_a_csv_opts_contacts_out_but_never_back_in(client, engine):
    org = organisation(client)
    first = upload(client, org, f"phone,name,opted_out\n{ANA},Ana,true\n{BO},Bo,false\n{CY},Cy,\n")
    assert first.json() == {
        "imported": 3,
        "created": 3,
        "updated": 0,
        "opted_out": 1,
        "not_applied": [],
    }
    assert consent_of(engine) == {ANA: (True, 1), BO: (False, 0), CY: (False, 0)}
    [event] = rows(engine, "SELECT scope, opted_out, source, actor FROM consent_events")
    assert tuple(event) == ("campaigns", True, "csv", None)

    # Re-imported without the column: names and attributes change, consent does not.
    again = upload(client, org, f"phone,name,city\n{ANA},Ana B,Lisbon\n{BO},,Porto\n")
    assert again.json() == {
        "imported": 2,
        "created": 0,
        "updated": 2,
        "opted_out": 0,
        "not_applied": [],
    }
    assert consent_of(engine) == {ANA: (True, 1), BO: (False, 0), CY: (False, 0)}
    ana = rows(engine, "SELECT name, attributes FROM contacts WHERE phone = :p", p=ANA)[0]
    assert (ana.name, ana.attributes) == ("Ana B", {"city": "Lisbon"})

    # `false` for Ana is refused and reported; the rest of her line and the file go in.
    mixed = upload(
        client,
        org,
        f"phone,name,opted_out,tier\n{BO},Bo,false,gold\n{ANA},Ana C,false,silver\n{CY},Cy,true,\n",
    )
    assert mixed.status_code == 200
    assert mixed.json() == {
        "imported": 3,
        "created": 0,
        "updated": 3,
        "opted_out": 1,
        "not_applied": [{"line": 3, "phone": ANA, "error": CSV_CANNOT_OPT_IN}],
    }
    assert consent_of(engine) == {ANA: (True, 1), BO: (False, 0), CY: (True, 1)}
    ana = rows(engine, "SELECT name, attributes FROM contacts WHERE phone = :p", p=ANA)[0]
    assert (ana.name, ana.attributes) == ("Ana C", {"city": "Lisbon", "tier": "silver"})

    # Opting out an opted-out contact again records nothing new.
    assert upload(client, org, f"phone,opted_out\n{ANA},yes\n").json()["opted_out"] == 0
    assert consent_of(engine)[ANA] == (True, 1)


def test_csv_counts_are_for_the_whole_file_and_a_bad_row_still_refuses_it_all(client, engine):
    org = organisation(client)
    lines = [f"+1202555{i:04d},c{i},{'true' if i % 2 else ''}" for i in range(2500)]
    body = "phone,name,opted_out\n" + "\n".join(lines) + "\n"
    answer = upload(client, org, body).json()
    assert answer == {
        "imported": 2500,
        "created": 2500,
        "updated": 0,
        "opted_out": 1250,
        "not_applied": [],
    }
    assert scalar(engine, "SELECT count(*) FROM consent_events WHERE source = 'csv'") == 1250
    refused = upload(client, org, "phone,opted_out\n+12025559998,true\n+12025559999,maybe\n")
    assert refused.status_code == 422
    assert refused.json()["errors"] == [
        {"line": 3, "error": "opted_out must be true or false (empty: left as it is)"}
    ]
    assert scalar(engine, "SELECT count(*) FROM contacts") == 2500


def test_the_contacts_lookup_shows_both_facts_and_the_history_newest_first(engine, monkeypatch):
    monkeypatch.setenv("WEBHOOK_WORKERS", "1")
    user_id = "US.13491208655302741918"
    t0 = int(time.time()) - 3600
    with webhook_client() as client:
        org = organisation(client)
        stop = p.preference("stop", wa_id="12025550100", at=t0)
        post(client, p.user_preferences(stop, wa_id="12025550100"))
        only_user = p.preference("stop", wa_id=None, user_id=user_id, at=t0)
        post(client, p.user_preferences(only_user, wa_id=None, user_id=user_id))
        wait_until(lambda: scalar(engine, "SELECT count(*) FROM consent_events") == 2)
        upload(client, org, f"phone,opted_out\n{ANA},true\n")
        path = f"/api/organisations/{org}/contacts"
        by_phone = client.get(path, params={"phone": ANA}, headers=ADMIN)
        # A raw `+` in a query string reads as a space: the number is still found.
        raw_plus = client.get(f"{path}?phone={ANA}", headers=ADMIN)
        by_user = client.get(path, params={"user_id": user_id}, headers=ADMIN)
        nobody = client.get(path, params={"phone": "+12025550199"}, headers=ADMIN)
        neither = client.get(path, headers=ADMIN)
        bad_phone = client.get(path, params={"phone": "12"}, headers=ADMIN)
        unknown = client.get(
            f"/api/organisations/{UNKNOWN_ORG}/contacts", params={"phone": ANA}, headers=ADMIN
        )
        unauthorised = client.get(path, params={"phone": ANA})
    assert by_phone.status_code == 200
    [ana] = by_phone.json()
    assert raw_plus.json() == by_phone.json()
    assert {
        k: ana[k] for k in ("phone", "user_id", "name", "opted_out", "marketing_opted_out")
    } == {
        "phone": ANA,
        "user_id": None,
        "name": "Ana",
        "opted_out": True,
        "marketing_opted_out": True,
    }
    assert ana["organisation_id"] == org and ana["opted_out_at"] and ana["marketing_opted_out_at"]
    assert [(e["scope"], e["opted_out"], e["source"]) for e in ana["consent_history"]] == [
        ("campaigns", True, "csv"),
        ("marketing", True, "user_preferences"),
    ]
    [user] = by_user.json()
    assert (user["phone"], user["user_id"], user["marketing_opted_out"]) == (None, user_id, True)
    assert nobody.json() == []
    assert neither.status_code == 422 and neither.json()["errors"][0]["field"] == "phone"
    assert bad_phone.status_code == 422 and "phone number" in bad_phone.json()["errors"][0]["error"]
    assert unknown.status_code == 404
    assert unauthorised.status_code == 401


def test_the_consent_call_needs_who_and_why_and_keeps_them_in_the_history(client, engine):
    org = organisation(client)
    upload(client, org, f"phone,opted_out\n{ANA},true\n")
    [ana] = client.get(
        f"/api/organisations/{org}/contacts", params={"phone": ANA}, headers=ADMIN
    ).json()
    path = f"/api/organisations/{org}/contacts/{ana['id']}/consent"

    anonymous = client.post(path, json={"scope": "campaigns", "opted_out": False}, headers=ADMIN)
    assert anonymous.status_code == 422
    assert anonymous.json()["errors"] == [
        {"field": "by", "error": "is required"},
        {"field": "reason", "error": "is required"},
    ]
    no_reason = client.post(
        path, json={"scope": "campaigns", "opted_out": False, "by": "ops@shop"}, headers=ADMIN
    )
    assert [e["field"] for e in no_reason.json()["errors"]] == ["reason"]
    garbled = client.post(
        path, json={"scope": "sms", "opted_out": "no", "by": " ", "reason": "x"}, headers=ADMIN
    )
    assert [e["field"] for e in garbled.json()["errors"]] == ["scope", "opted_out", "by"]
    assert scalar(engine, "SELECT opted_out FROM contacts") is True

    opt_in = {
        "scope": "campaigns",
        "opted_out": False,
        "by": "ops@shop",
        "reason": "customer asked by phone, ticket 4411",
    }
    answer = client.post(path, json=opt_in, headers=ADMIN)
    assert answer.status_code == 200
    body = answer.json()
    assert (body["changed"], body["opted_out"], body["marketing_opted_out"]) == (True, False, False)
    newest = body["consent_history"][0]
    assert {k: newest[k] for k in ("scope", "opted_out", "source", "actor", "reason")} == {
        "scope": "campaigns",
        "opted_out": False,
        "source": "api",
        "actor": "ops@shop",
        "reason": "customer asked by phone, ticket 4411",
    }
    assert [e["source"] for e in body["consent_history"]] == ["api", "csv"]
    # The same call again changes nothing and records nothing.
    assert client.post(path, json=opt_in, headers=ADMIN).json()["changed"] is False
    marketing = client.post(
        path,
        json={"scope": "marketing", "opted_out": True, "by": "ops@shop", "reason": "complaint"},
        headers=ADMIN,
    ).json()
    assert (marketing["opted_out"], marketing["marketing_opted_out"]) == (False, True)
    assert scalar(engine, "SELECT count(*) FROM consent_events") == 3

    other = organisation(client, "Other", "999000")
    elsewhere = client.post(
        f"/api/organisations/{other}/contacts/{ana['id']}/consent", json=opt_in, headers=ADMIN
    )
    missing = client.post(
        f"/api/organisations/{org}/contacts/999999/consent", json=opt_in, headers=ADMIN
    )
    assert (elsewhere.status_code, missing.status_code) == (404, 404)
    assert client.post(path, json=opt_in).status_code == 401


def test_organisations_are_listed_and_a_taken_phone_number_id_is_a_409(client, engine):
    shop = organisation(client, "Shop", "555000")
    other = client.post("/api/organisations", json={"name": "Bare"}, headers=ADMIN).json()
    taken = client.post(
        "/api/organisations", json={"name": "Copycat", "phone_number_id": "555000"}, headers=ADMIN
    )
    assert taken.status_code == 409
    assert "555000" in taken.json()["detail"] and shop in taken.json()["detail"]
    assert scalar(engine, "SELECT count(*) FROM organisations") == 2
    assert scalar(engine, "SELECT organisation_id::text FROM phone_numbers") == shop

    listed = client.get("/api/organisations", headers=ADMIN).json()
    assert [(o["id"], o["name"], o["messaging_limit"]) for o in listed] == [
        (shop, "Shop", 250),
        (other["id"], "Bare", 250),
    ]
    assert listed[0]["phone_numbers"] == [
        {
            "phone_number_id": "555000",
            "display_phone": None,
            "messages_per_second": 80,
            "throughput_level": None,
            "quality_rating": None,
            "name_status": None,
            "verified_name": None,
            "status_read_at": None,
            "status_error": None,
        }
    ]
    assert listed[1]["phone_numbers"] == []
    filtered = client.get("/api/organisations", params={"phone_number_id": "555000"}, headers=ADMIN)
    assert [o["id"] for o in filtered.json()] == [shop]
    assert (
        client.get("/api/organisations", params={"phone_number_id": "1"}, headers=ADMIN).json()
        == []
    )
    assert client.get("/api/organisations").status_code == 401
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM phone_numbers")).scalar_one() == 1
