"""`waflow webhook-worker` as deployed: its own process beside the app, woken by the inbox
trigger, visible to the app's /health while it runs and gone once it stops."""

import os
import signal
import subprocess
import sys

import sqlalchemy as sa
from starlette.testclient import TestClient

from tests import payloads as p
from tests.webhook_support import add_organisation, post, scalar, wait_until
from webhook_app.app import app


def test_the_worker_process_applies_what_the_app_stored_and_health_follows_it(engine, repo_root):
    org = add_organisation(engine)
    with engine.begin() as conn:
        message_id = conn.execute(
            sa.text(
                "INSERT INTO messages (organisation_id, direction, sender_type, peer_phone,"
                " message_type, provider_message_id, status)"
                " VALUES (:o, 'outbound', 'campaign', '+16505551234', 'template', 'wamid.P', 'sent')"
                " RETURNING id"
            ),
            {"o": org},
        ).scalar_one()
    worker = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "webhook-worker"],
        cwd=repo_root,
        env={**os.environ, "WEBHOOK_WORKER_NICE": "0"},
    )
    try:
        with TestClient(app) as client:
            wait_until(lambda: client.get("/health").status_code == 200)
            workers = client.get("/health").json()["workers"]
            assert post(client, p.statuses(p.status("wamid.P", "read"))).status_code == 200
            wait_until(
                lambda: (
                    scalar(engine, "SELECT status FROM messages WHERE id = :id", id=message_id)
                    == "read"
                )
            )
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=30) == 0
            gone = client.get("/health")
    finally:
        if worker.poll() is None:
            worker.kill()
    assert {name.rsplit("/", 1)[1] for name in workers} >= {"inbox-0", "agent", "media"}
    assert all(workers.values())
    assert gone.status_code == 503 and gone.json()["workers"] == {}
