"""Every API answers an error in one body: `error`, a stable `code`, `detail`, and the
fields of its kind (`errors` for invalid input)."""

from __future__ import annotations

from tests.webhook_support import ADMIN, add_organisation, webhook_client

MISSING = "00000000-0000-0000-0000-000000000999"


def test_the_campaign_generator_and_conversation_apis_answer_errors_in_one_body(engine):
    add_organisation(engine)
    with webhook_client() as client:
        answers = {
            "campaign not found": client.get(f"/api/campaigns/{MISSING}/status", headers=ADMIN),
            "campaign invalid": client.post("/api/campaigns", json={}, headers=ADMIN),
            "campaign body": client.post("/api/campaigns", content=b"{broken", headers=ADMIN),
            "generator not found": client.get("/api/templates/999/generators", headers=ADMIN),
            "conversation not found": client.post(
                "/api/v1/takeover", json={"conversation_id": 999}, headers=ADMIN
            ),
            "conversation bad": client.post(
                "/api/v1/takeover", json={"conversation_id": "x"}, headers=ADMIN
            ),
            "conversation query": client.get(
                "/api/v1/conversations", params={"limit": "x"}, headers=ADMIN
            ),
        }
    expected = {
        "campaign not found": (404, "not_found", "not found"),
        "campaign invalid": (422, "invalid_input", "invalid input"),
        "campaign body": (422, "invalid_input", "invalid input"),
        "generator not found": (404, "not_found", "not found"),
        "conversation not found": (404, "not_found", "no conversation 999"),
        "conversation bad": (400, "bad_request", "conversation_id must be a number"),
        "conversation query": (422, "invalid_input", "invalid input"),
    }
    for name, answer in answers.items():
        body = answer.json()
        assert (answer.status_code, body["code"], body["error"]) == expected[name], name
        assert isinstance(body["detail"], str) and body["detail"], name
        if body["code"] == "invalid_input":
            assert body["errors"] and all("error" in e for e in body["errors"]), name
