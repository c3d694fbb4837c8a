"""Generator authoring through the operator API: publish, reject (422 with the line, nothing
stored), list, read, roll back, and preview in the real sandbox (200 also when the generator
fails or never returns; 503 when no slot frees up)."""

from __future__ import annotations

import base64
import textwrap

import pytest
from starlette.testclient import TestClient

from resources import campaigns, generators, operator_templates, organisations
from resources.sandbox.isolation import resolve
from webhook_app import campaign_answers
from webhook_app.app import app

TOKEN = "generator-api-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

CARD = textwrap.dedent(
    """
    import json, os

    def generate_asset(attributes, name, msisdn, temp_dir):
        print("offer", attributes.get("offer"))
        path = os.path.join(temp_dir, "card.json")
        with open(path, "w") as f:
            json.dump({"name": name, "msisdn": msisdn}, f)
        return {"json": path}
    """
)

needs_sandbox = pytest.mark.skipif(
    not resolve().confined, reason="this host allows no sandbox (see README: media sandbox)"
)


@pytest.fixture
def client(database_url, stack, monkeypatch):
    monkeypatch.setenv("ADMIN_API_TOKEN", TOKEN)
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def template(engine) -> int:
    organisation = organisations.create_organisation(engine, {"name": "Shop"})["id"]
    return operator_templates.create_template(
        engine, {"organisation_id": organisation, "name": "offer", "parameters": []}
    )["id"]


def versions(client, template: int) -> list[tuple[int, bool]]:
    listed = client.get(f"/api/templates/{template}/generators", headers=AUTH)
    assert listed.status_code == 200, listed.text
    return [(v["version"], v["active"]) for v in listed.json()]


def test_publish_reject_list_read_and_roll_back(client, template, monkeypatch):
    url = f"/api/templates/{template}/generators"
    body = {"source": CARD, "file_name": "offer.py", "description": "first"}
    first = client.post(url, json=body, headers=AUTH)
    assert first.status_code == 201, first.text
    assert {k: first.json()[k] for k in ("version", "active", "file_name", "description")} == {
        "version": 1,
        "active": True,
        "file_name": "offer.py",
        "description": "first",
    }
    assert "source" not in first.json()

    monkeypatch.setenv("GENERATOR_MAX_BYTES", "2000")
    for source, line, reason in (
        ("def generate_asset(attributes, name):\n    return {\n", 2, "syntax error"),
        ("import os\n\ndef generate_asset(a, b, c):\n    return {}\n", 3, "exactly four"),
        (CARD + "#" * 2000, None, "over the 2000-byte limit (GENERATOR_MAX_BYTES)"),
    ):
        refused = client.post(url, json={"source": source}, headers=AUTH)
        assert refused.status_code == 422, refused.text
        [error] = refused.json()["errors"]
        assert (error["field"], error["line"]) == ("source", line)
        assert reason in error["error"]
    missing = client.post(url, json={"file_name": "x.py"}, headers=AUTH)
    assert missing.json()["errors"] == [{"field": "source", "error": "is required"}]
    assert versions(client, template) == [(1, True)]

    second = client.post(url, json={"source": CARD.replace("offer", "deal")}, headers=AUTH)
    assert second.json()["version"] == 2 and second.json()["file_name"] == "generator.py"
    assert versions(client, template) == [(2, True), (1, False)]
    read = client.get(f"{url}/1", headers=AUTH)
    assert read.json()["source"] == CARD and read.json()["active"] is False

    back = client.post(f"{url}/1/activate", headers=AUTH)
    assert back.status_code == 200 and back.json()["active"] is True
    assert versions(client, template) == [(2, False), (1, True)]
    assert client.post(f"{url}/7/activate", headers=AUTH).status_code == 404
    assert client.get("/api/templates/999999/generators", headers=AUTH).status_code == 404
    huge = "99999999999999999999999"
    assert client.get(f"{url}/{huge}", headers=AUTH).status_code == 404
    assert client.get(f"/api/templates/{huge}/generators", headers=AUTH).status_code == 404


@needs_sandbox
def test_previews_of_a_version_a_campaigns_member_and_a_draft_that_never_returns(
    client, template, engine, monkeypatch
):
    url = f"/api/templates/{template}/generators"
    client.post(url, json={"source": CARD, "file_name": "offer.py"}, headers=AUTH)
    organisation = client.get(f"/api/templates/{template}", headers=AUTH).json()["organisation_id"]
    campaign = campaign_answers.created_campaign(
        engine,
        {
            "organisation_id": organisation,
            "name": "Spring",
            "message_type": "template",
            "template_id": template,
        },
    )["id"]
    campaigns.import_audience(engine, campaign, "phone,name,offer\n+12025550107,Ana,2 for 1\n")

    ran = client.post(f"{url}/preview", json={"version": 1, "campaign_id": campaign}, headers=AUTH)
    assert ran.status_code == 200, ran.text
    result = ran.json()
    assert result["ok"] and result["version"] == 1 and result["error"] is None
    assert result["output"] == "offer 2 for 1\n"
    [card] = result["files"]
    assert base64.b64decode(card["data"]) == b'{"name": "Ana", "msisdn": "+12025550107"}'
    assert card["thumbnail_png"] is None and card["content_type"] == "application/json"
    assert result["seconds"] > 0 and result["peak_memory_mb"] > 0

    monkeypatch.setenv("GENERATOR_PREVIEW_SECONDS", "2")
    endless = (
        "def generate_asset(attributes, name, msisdn, temp_dir):\n    while True:\n        pass\n"
    )
    stuck = client.post(f"{url}/preview", json={"source": endless}, headers=AUTH)
    assert stuck.status_code == 200, stuck.text
    assert stuck.json()["ok"] is False
    assert stuck.json()["error"] == "timed out after 2 s (wall clock); worker replaced"

    broken = client.post(
        f"{url}/preview", json={"source": "def generate_asset(a, b):\n  pass\n"}, headers=AUTH
    )
    assert broken.status_code == 200
    assert broken.json()["error"].startswith("line 1: generate_asset(a, b) must take exactly four")
    assert versions(client, template) == [(1, True)]  # a draft is never stored

    bad = client.post(f"{url}/preview", json={"member": {"msisdn": 5}}, headers=AUTH)
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "member.msisdn"
    other = client.post(
        f"{url}/preview",
        json={"campaign_id": "6f1d3c1e-0a4b-4a5e-9d59-1e9b1d2c3a4b"},
        headers=AUTH,
    )
    assert other.status_code == 404


def test_a_preview_with_every_slot_busy_answers_503(client, template, monkeypatch):
    monkeypatch.setenv("GENERATOR_PREVIEW_SECONDS", "0.2")
    slots = generators._slots()
    taken = 0
    while slots.acquire(blocking=False):
        taken += 1
    try:
        busy = client.post(
            f"/api/templates/{template}/generators/preview", json={"source": CARD}, headers=AUTH
        )
    finally:
        for _ in range(taken):
            slots.release()
    assert busy.status_code == 503
    assert busy.json() == {
        "error": "unavailable",
        "code": "unavailable",
        "detail": "every preview slot stayed busy for 0.2 s; try again",
    }
