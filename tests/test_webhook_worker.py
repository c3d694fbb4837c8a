"""`waflow webhook-worker` as deployed: its own process beside the app, woken by the inbox
trigger, visible to the app's /health while it runs and gone once it stops."""

import asyncio
import os
import signal
import subprocess
import sys

import sqlalchemy as sa
from starlette.testclient import TestClient

from tests import payloads as p
from tests.webhook_support import add_organisation, post, scalar, wait_until
from webhook_app.app import app
from webhook_app.workers import start


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


def test_the_workers_stop_even_when_told_to_as_their_events_fire(engine, database_url):
    """A stop that lands in the same tick as a wake-up must not be swallowed (a loop waiting
    on `asyncio.wait_for` in Python 3.11 would return the wake-up and loop on for ever)."""

    async def start_and_stop() -> dict[str, bool]:
        workers = await start(engine, database_url)
        await asyncio.sleep(1.0)  # let every loop finish its first pass and wait
        for event in (workers.inbox_ready, workers.turns_ready, workers.media_ready):
            event.set()
        async with asyncio.timeout(30):
            await workers.stop()
        return workers.loops_alive()

    assert not any(asyncio.run(start_and_stop()).values())
