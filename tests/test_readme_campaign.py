"""The README's first campaign, request by request, against the app: every body it shows is
one the API accepts, so the guide cannot drift from the routes."""

import re
import textwrap
from pathlib import Path

from starlette.testclient import TestClient

from webhook_app.app import app

README = Path(__file__).resolve().parent.parent / "README.md"
AUTH = {"Authorization": "Bearer dev-admin-token"}
# Which answer's `id` each placeholder is.
KEEPS = {"/api/organisations": "ORG", "/api/templates": "TEMPLATE_ID", "/api/campaigns": "CAMPAIGN"}


def _requests() -> list[tuple[str, str, dict[str, str], str]]:
    text = README.read_text()
    section = text.split("## Your first campaign, end to end", 1)[1].split("\n## ", 1)[0]
    found = []
    for block in re.findall(r"```http\n(.*?)```", section, re.S):
        head, _, body = textwrap.dedent(block).partition("\n\n")
        request_line, *header_lines = head.strip().splitlines()
        method, path = request_line.split()
        headers = dict(line.split(": ", 1) for line in header_lines)
        found.append((method, path, headers, body))
    return found


def test_the_readmes_first_campaign_runs_as_written(stack, database_url, monkeypatch):
    monkeypatch.delenv("ADMIN_API_TOKEN", raising=False)  # the development default
    requests = _requests()
    assert [m for m, *_ in requests] == ["POST"] * 5 + ["GET", "POST", "GET"]
    kept: dict[str, str] = {}
    with TestClient(app) as client:
        for method, path, headers, body in requests:
            for name, value in kept.items():
                path, body = path.replace(f"${name}", value), body.replace(f"${name}", value)
            answer = client.request(
                method, path, content=body.encode(), headers={**AUTH, **headers}
            )
            assert answer.status_code in (200, 201), (path, answer.text)
            if method == "POST" and path in KEEPS:
                kept[KEEPS[path]] = str(answer.json()["id"])
    status = answer.json()
    assert status["status"] == "approved"
