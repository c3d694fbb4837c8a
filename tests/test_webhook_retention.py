"""Retention of the webhook history (the scheduled Dagster job) and the redrive of events that
failed for good, from the CLI and the operator API: an inbound message for a number not yet
registered is recovered once the number is."""

import json
import os
import subprocess
import sys

import dagster as dg
import sqlalchemy as sa
from starlette.testclient import TestClient

from assets_defs.retention import webhook_retention_job
from pipelines.definitions import defs as load_defs
from tests import payloads as p
from tests.webhook_support import ADMIN, add_organisation, rows, scalar
from webhook_app import processing
from webhook_app.app import app

defs = load_defs()


def _event(conn, age_days: float, state: str) -> int:
    """An inbox event received and settled `age_days` ago, in `state`: processed, failed (for
    good), retrying (failed, waiting for its next attempt) or new."""
    processed = state in ("processed", "failed")
    error = "boom" if state in ("failed", "retrying") else None
    return conn.execute(
        sa.text(
            "INSERT INTO webhook_inbox (payload, received_at, processed_at, attempts, error)"
            " VALUES ('{}', now() - make_interval(days => :age),"
            " CASE WHEN :done THEN now() - make_interval(days => :age) END, :attempts, :error)"
            " RETURNING id"
        ),
        {"age": age_days, "done": processed, "attempts": 5 if error else 1, "error": error},
    ).scalar_one()


def _receipt(conn, wamid: str, age_days: float, applied: bool) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO message_receipts (provider_message_id, status, received_at, applied_at)"
            " VALUES (:w, 'delivered', now() - make_interval(days => :age),"
            " CASE WHEN :applied THEN now() - make_interval(days => :age) END)"
        ),
        {"w": wamid, "age": age_days, "applied": applied},
    )


def test_retention_prunes_only_what_its_rules_let_go(engine, postgres, monkeypatch):
    monkeypatch.setenv("WEBHOOK_RETENTION_DAYS", "30")
    monkeypatch.setenv("RECEIPT_RETENTION_DAYS", "7")
    with engine.begin() as conn:
        kept = {
            _event(conn, 10, "processed"),
            _event(conn, 10, "failed"),
            _event(conn, 400, "retrying"),  # still to be processed: never pruned
            _event(conn, 400, "new"),
        }
        for state in ("processed", "failed"):
            _event(conn, 31, state)
        _receipt(conn, "wamid.applied-old", 31, applied=True)
        _receipt(conn, "wamid.applied-recent", 10, applied=True)
        _receipt(conn, "wamid.unmatched-old", 8, applied=False)
        _receipt(conn, "wamid.unmatched-recent", 6, applied=False)

    result = webhook_retention_job.execute_in_process(resources={"postgres": postgres})

    assert result.success
    assert {r.id for r in rows(engine, "SELECT id FROM webhook_inbox")} == kept
    assert {r.provider_message_id for r in rows(engine, "SELECT * FROM message_receipts")} == {
        "wamid.applied-recent",
        "wamid.unmatched-recent",
    }
    assert result.output_for_node("prune_webhook_history") == {
        "events": 2,
        "applied_receipts": 1,
        "unmatched_receipts": 1,
        "unprocessed_events": 2,
        "failed_events": 1,
    }


def test_retention_runs_daily_from_the_code_location():
    schedule = defs.resolve_schedule_def("webhook_retention_schedule")
    assert schedule.job_name == webhook_retention_job.name
    assert schedule.cron_schedule == "30 4 * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


def _fail_for_good(engine) -> int:
    """An inbound message for a number no organisation has yet, closed after its attempts."""
    with engine.begin() as conn:
        event_id = conn.execute(
            sa.text("INSERT INTO webhook_inbox (payload) VALUES (CAST(:p AS jsonb)) RETURNING id"),
            {"p": json.dumps(p.inbound(p.text("is my order on its way?", wamid="wamid.LATE")))},
        ).scalar_one()
    for _ in range(processing.MAX_ATTEMPTS):
        with engine.begin() as conn:  # the backoff's wait, skipped
            conn.execute(sa.text("UPDATE webhook_inbox SET retry_at = now()"))
        processing.process_batch(engine)
    event = rows(engine, "SELECT * FROM webhook_inbox WHERE id = :id", id=event_id)[0]
    assert event.processed_at is not None and "no organisation owns" in event.error
    return event_id


def _stored(engine) -> list[sa.Row]:
    return rows(
        engine,
        "SELECT body, direction FROM messages WHERE provider_message_id = 'wamid.LATE'",
    )


def test_a_message_for_a_number_registered_later_is_recovered_by_redrive_from_the_cli(
    engine, database_url, repo_root
):
    event_id = _fail_for_good(engine)
    assert _stored(engine) == []

    def redrive(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pipelines.cli", "webhook", "redrive", *args],
            cwd=repo_root,
            env={**os.environ, "DATABASE_URL": database_url},
            capture_output=True,
            text=True,
            timeout=120,
        )

    refused = redrive("--since", "yesterday")
    assert refused.returncode == 1
    assert "since: must be an ISO date" in refused.stderr

    add_organisation(engine)  # the number is registered now
    done = redrive("--since", "2020-01-01")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["redriven"] == 1
    event = rows(engine, "SELECT * FROM webhook_inbox WHERE id = :id", id=event_id)[0]
    assert event.processed_at is None and event.attempts == 0 and event.redriven_at is not None

    assert processing.process_batch(engine)["inbound"] == 1
    assert [tuple(r) for r in _stored(engine)] == [("is my order on its way?", "inbound")]
    event = rows(engine, "SELECT * FROM webhook_inbox WHERE id = :id", id=event_id)[0]
    assert event.processed_at is not None and event.error is None
    # Redriven twice, nothing is repeated: it is processed now, not failed.
    assert json.loads(redrive("--since", "2020-01-01").stdout)["redriven"] == 0


def test_redrive_from_the_operator_api(engine, database_url):
    _fail_for_good(engine)
    with TestClient(app) as client:
        assert client.post("/api/webhooks/redrive", json={"since": "2020-01-01"}).status_code == 401
        bad = client.post("/api/webhooks/redrive", json={"since": "soon"}, headers=ADMIN)
        assert bad.status_code == 422
        assert bad.json()["errors"][0]["field"] == "since"
        missing = client.post("/api/webhooks/redrive", json={}, headers=ADMIN)
        assert missing.status_code == 422
        later = client.post(
            "/api/webhooks/redrive",
            json={"since": "2020-01-01", "until": "2020-01-02"},
            headers=ADMIN,
        )
        assert later.json()["redriven"] == 0  # the event arrived after `until`
        add_organisation(engine)
        answer = client.post("/api/webhooks/redrive", json={"since": "2020-01-01"}, headers=ADMIN)
    assert answer.status_code == 200 and answer.json()["redriven"] == 1
    processing.process_batch(engine)
    assert len(_stored(engine)) == 1
    assert scalar(engine, "SELECT count(*) FROM webhook_inbox WHERE error IS NOT NULL") == 0
