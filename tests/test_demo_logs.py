"""A full `make demo`: its JSON summary, and no secret and no personal data in its logs.

The demo runs as `make demo` does (`waflow demo`, the whole flow: media in the sandbox,
dispatch, the sender, signed webhooks, the agent, archives), with every secret set to a
recognisable value, a database URL carrying a password, a real access token sending to the
fake Graph API, and every logger at INFO. Everything its processes wrote (its output and
the log files of the services it started) is then searched for the secrets, for the demo's
phone numbers in every spelling, for its customers' names, for the message texts and for
the WhatsApp message ids (a real wamid encodes the recipient's number).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
import sqlalchemy as sa

from pipelines.dev.demo import demo_members
from tests.fake_graph import FakeGraph
from tests.servers import serve

SECRETS = {
    "WHATSAPP_ACCESS_TOKEN": "EAAG-demo-access-token-7f3a",
    "WHATSAPP_APP_SECRET": "demo-app-secret-91c2",
    "WHATSAPP_VERIFY_TOKEN": "demo-verify-token-5d0e",
    "ADMIN_API_TOKEN": "demo-admin-token-c84b",
}
DB_PASSWORD = "demo-db-password-2e61"
# Set the root logger to INFO before the CLI runs: production runs at INFO, the CLI alone
# would show warnings only.
AT_INFO = (
    "import logging, sys; logging.basicConfig(level=logging.INFO);"
    " from pipelines.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _personal_data(engine: sa.Engine) -> dict[str, str]:
    """What the demo's data holds that no log may: each value with a name for the report."""
    found: dict[str, str] = {}
    for member in demo_members():
        # The national digits are in every spelling: +E.164, and WhatsApp's digits-only wa_id.
        found[member.msisdn.removeprefix("+1")] = f"phone {member.msisdn}"
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT body, provider_message_id FROM messages"
                " UNION ALL SELECT name, NULL FROM contacts WHERE name IS NOT NULL"
            )
        ).all()
    for text, wamid in rows:
        if text and len(text) >= 8:
            found[text] = "message text or customer name"
        if wamid:
            found[wamid] = "WhatsApp message id"
    return found


def _occurs(value: str, line: str) -> bool:
    """A text as a whole ("Customer 1" is not in "Customer 12"); digits anywhere."""
    if value.isdigit():
        return value in line
    return re.search(rf"(?<![\w-]){re.escape(value)}(?![\w-])", line) is not None


@pytest.mark.timeout(600)
def test_a_full_demo_sends_everything_and_logs_no_secret_and_no_personal_data(
    stack, make_database, repo_root, tmp_path
):
    url = sa.make_url(make_database()).set(password=DB_PASSWORD)
    database_url = url.render_as_string(hide_password=False)
    graph = FakeGraph(access_token=SECRETS["WHATSAPP_ACCESS_TOKEN"])
    state = tmp_path / "state"
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "DAGSTER_", "WHATSAPP_", "GOOGLE_")) and k != "DATABASE_URL"
    }
    with serve(graph.app()) as graph_url:
        result = subprocess.run(
            [sys.executable, "-c", AT_INFO, "--state-dir", str(state), "demo"],
            env={
                **base,
                **SECRETS,
                "APP_ENV": "development",
                "DATABASE_URL": database_url,
                "WHATSAPP_API_BASE_URL": graph_url,
            },
            cwd=repo_root,
            capture_output=True,
            text=True,
            timeout=540,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["audience"] == 50
    assert (summary["media_generated"], summary["media_failed"]) == (50, 0)
    assert summary["campaign_runs"] == 1
    assert summary["campaign_status"] == "completed"
    assert (summary["messages_queued"], summary["messages_failed"]) == (50, 0)
    assert summary["messages_skipped"] == 0
    assert (summary["messages_sent"], summary["send_failed"]) == (50, 0)
    assert summary["replies_answered"] == 3
    assert len(graph.requests) >= 50  # the campaign and the agent's replies went out for real

    logs = {"demo output": result.stdout + result.stderr}
    logs.update({str(p.relative_to(state)): p.read_text() for p in state.rglob("*.log")})
    assert "s3_sqs.log" in logs and "INFO" in logs["demo output"]

    engine = sa.create_engine(database_url)
    try:
        forbidden = {
            **{value: name for name, value in SECRETS.items()},
            DB_PASSWORD: "database password",
            **_personal_data(engine),
        }
    finally:
        engine.dispose()
    leaks = [
        f"{where}: {what}: {line.strip()[:200]}"
        for where, text in logs.items()
        for line in text.splitlines()
        for value, what in forbidden.items()
        if _occurs(value, line)
    ]
    assert leaks == []
