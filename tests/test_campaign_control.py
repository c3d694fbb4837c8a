"""Pause, resume, cancel and retry-failed, during dispatch and during sending, against the
real database, the local SQS server and the fake Graph API."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from assets_defs.dispatch.dispatcher import Dispatch
from assets_defs.dispatch.planner import plan_tick
from resources import campaign_control, campaign_runs, consent, errors, organisations
from resources.campaigns import Member
from resources.queue import SQSResource
from resources.storage import S3Storage
from tests import dispatch_fixtures
from tests.fake_graph import Failure
from tests.sending import (
    client_for,
    enqueue,
    make_run,
    payload,
    row,
    start,
    statuses,
    wait_for,
)
from webhook_app.app import app

TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def resources(postgres, sqs, s3):
    return {
        "postgres": postgres,
        "sqs": SQSResource(**sqs.model_dump()),
        "s3": S3Storage(**s3.model_dump()),
    }


def _running(engine, run) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE campaigns SET status = 'running' WHERE id = :c"),
            {"c": run.campaign_id},
        )


def _quiet(engine, sqs, run) -> bool:
    """Nothing in flight: no row being sent, no payload on the queue."""
    depth = sqs.depth()
    return "sending" not in statuses(engine, run) and depth.visible + depth.in_flight == 0


def _sent_once(graph, run, count: int) -> None:
    sent = Counter(int(r["biz_opaque_callback_data"]) for r in graph.accepted())
    assert len(sent) == count and set(sent.values()) == {1}
    assert set(sent) <= set(run.message_ids)


def test_pause_during_sending_holds_the_rest_and_resume_sends_each_once(engine, sqs, graph):
    run = make_run(engine, 40, messages_per_second=10)
    _running(engine, run)
    enqueue(sqs, [payload(run, i) for i in range(40)])
    worker, thread = start(engine, sqs, client_for(graph.url))
    try:
        wait_for(lambda: statuses(engine, run).get("sent", 0) >= 5)
        paused = campaign_control.pause(engine, run.campaign_id, {"by": "ops@example.com"})
        assert paused["status"] == "paused"
        assert paused["status_reason"] == "paused by ops@example.com"
        wait_for(lambda: _quiet(engine, sqs, run))
        counts = statuses(engine, run)
        assert counts["sent"] < 40 and counts["sent"] + counts["pending"] == 40
        assert len(graph.requests) == counts["sent"]
        [progress] = campaign_runs.campaign_progress(engine, run.campaign_id)["runs"]
        assert progress["messages"]["held"] == counts["pending"]
        assert progress["waiting"] == [{"reason": "paused", "messages": counts["pending"]}]
        assert progress["estimated_finish_at"] is None  # until someone resumes it

        campaign_control.resume(engine, run.campaign_id, {"by": "ops@example.com"})
        with pytest.raises(errors.Conflict, match="not paused"):
            campaign_control.resume(engine, run.campaign_id, {})
        wait_for(lambda: statuses(engine, run) == {"sent": 40}, timeout=90)
    finally:
        worker.stop()
        thread.join(timeout=60)
    _sent_once(graph, run, 40)
    assert campaign_runs.campaign_progress(engine, run.campaign_id)["status"] == "running"


def test_cancel_during_sending_cancels_the_unsent_and_drops_queued_payloads(engine, sqs, graph):
    run = make_run(engine, 40, messages_per_second=10)
    _running(engine, run)
    enqueue(sqs, [payload(run, i) for i in range(40)])
    worker, thread = start(engine, sqs, client_for(graph.url))
    try:
        wait_for(lambda: statuses(engine, run).get("sent", 0) >= 5)
        answer = campaign_control.cancel(
            engine, run.campaign_id, {"by": "ops@example.com", "reason": "wrong offer"}
        )
        assert answer["status"] == "cancelled" and answer["messages_cancelled"] > 0
        wait_for(lambda: _quiet(engine, sqs, run))
    finally:
        worker.stop()
        thread.join(timeout=60)
    counts = statuses(engine, run)
    assert set(counts) == {"sent", "cancelled"} and sum(counts.values()) == 40
    assert len(graph.requests) == counts["sent"]
    cancelled = row(engine, run.message_ids[-1])
    assert cancelled.status == "cancelled" and cancelled.cancelled_at is not None
    assert cancelled.status_reason == "cancelled by ops@example.com: wrong offer"
    with pytest.raises(errors.Conflict, match="already cancelled"):
        campaign_control.cancel(engine, run.campaign_id, {})


def _hook_first_page(monkeypatch, action) -> None:
    """Pause or cancel the campaign right after dispatch stored its first page."""
    prepare = Dispatch._prepare
    pages = []

    def prepare_then_act(self, page):
        prepared = prepare(self, page)
        pages.append(len(page))
        if len(pages) == 1:
            action(self.engine, self.spec.id, {"by": "ops"})
        return prepared

    monkeypatch.setattr(Dispatch, "_prepare", prepare_then_act)


def _ready(engine, members: int) -> str:
    return str(
        dispatch_fixtures.ready_campaign(
            engine,
            [Member(f"+1650253{i:04d}", f"Customer {i}") for i in range(members)],
            message_type="text",
        )
    )


def test_pause_during_dispatch_stops_at_the_page_and_resume_dispatches_the_rest_once(
    engine, resources, sqs, monkeypatch
):
    campaign_id = _ready(engine, 1500)
    _hook_first_page(monkeypatch, campaign_control.pause)
    result = dispatch_fixtures.materialize_run(campaign_id, resources)
    metadata = result.asset_materializations_for_node("dispatched_batches")[0].metadata
    assert metadata["outcome"].value == "stopped: campaign paused"
    assert 0 < metadata["queued"].value <= 1000
    assert not result.get_asset_check_evaluations()[0].passed
    with engine.connect() as conn:
        status, resumes = conn.execute(sa.text("SELECT status, resumes FROM campaign_runs")).one()
    assert (status, resumes) == ("paused", 0)
    assert plan_tick(engine, datetime.now(UTC)).to_launch == []

    monkeypatch.undo()
    campaign_control.resume(engine, campaign_id, {"by": "ops"})
    [relaunch] = plan_tick(engine, datetime.now(UTC)).to_launch
    assert relaunch.resumes == 1
    dispatch_fixtures.materialize_run(campaign_id, resources)
    bodies = dispatch_fixtures.drain(sqs, expected=1500)
    assert len(bodies) == 1500
    assert len({b["messageId"] for b in bodies}) == 1500
    assert len({b["campaignAudienceId"] for b in bodies}) == 1500
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT status FROM campaign_runs")).scalar_one() == (
            "dispatched"
        )


def test_cancel_during_dispatch_ends_the_run_and_cancels_what_it_stored(
    engine, resources, monkeypatch
):
    campaign_id = _ready(engine, 1500)
    _hook_first_page(monkeypatch, campaign_control.cancel)
    result = dispatch_fixtures.materialize_run(campaign_id, resources)
    metadata = result.asset_materializations_for_node("dispatched_batches")[0].metadata
    assert metadata["outcome"].value == "stopped: campaign cancelled"
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT status FROM campaign_runs")).scalar_one() == (
            "cancelled"
        )
        counts = dict(
            conn.execute(sa.text("SELECT status, count(*) FROM messages GROUP BY 1")).all()
        )
    assert counts == {"cancelled": 1000}
    assert plan_tick(engine, datetime.now(UTC)).to_launch == []


def test_retry_failed_requeues_only_what_could_pass_and_sends_each_once(engine, sqs, graph):
    run = make_run(engine, 6)
    _running(engine, run)
    flaky = {run.phones[0], run.phones[1], run.phones[3]}
    graph.fail_when(
        lambda body, earlier: body["to"] in flaky,
        Failure(131000, "Something went wrong", http_status=500),
    )
    graph.fail_when(lambda body, earlier: body["to"] == run.phones[2], Failure(131026, "x"))
    enqueue(sqs, [payload(run, i) for i in range(6)])
    worker, thread = start(engine, sqs, client_for(graph.url), retry_base_seconds=0.2)
    try:
        wait_for(lambda: statuses(engine, run) == {"sent": 2, "failed": 4}, timeout=90)
        with engine.begin() as conn:  # the fourth customer has since said STOP
            consent.record(
                conn,
                consent.Change(
                    row(engine, run.message_ids[3]).contact_id, "campaigns", True, "keyword"
                ),
            )
        graph.recover()
        answer = campaign_control.retry_failed(engine, run.campaign_id, {"by": "ops"})
        assert (answer["retried"], answer["not_retried"]) == (2, 2)
        wait_for(lambda: statuses(engine, run) == {"sent": 4, "failed": 2}, timeout=60)
    finally:
        worker.stop()
        thread.join(timeout=60)
    assert row(engine, run.message_ids[2]).error_code == 131026
    assert row(engine, run.message_ids[3]).error_code == 131000
    _sent_once(graph, run, 4)
    again = campaign_control.retry_failed(engine, run.campaign_id, {})
    assert again["retried"] == 0


@pytest.fixture
def client(database_url, stack, monkeypatch):
    monkeypatch.setenv("ADMIN_API_TOKEN", TOKEN)
    with TestClient(app) as test_client:
        yield test_client


def test_the_control_routes_answer_as_the_operator_api_does(client, engine):
    run = make_run(engine, 1)
    base = f"/api/campaigns/{run.campaign_id}"
    assert client.post(f"{base}/pause").status_code == 401
    assert client.post(f"{base}/pause", headers={"Authorization": "Bearer nope"}).status_code == 401
    refused = client.post(f"{base}/pause", headers=AUTH)
    assert refused.status_code == 409 and "only an active campaign pauses" in refused.text
    _running(engine, run)
    paused = client.post(f"{base}/pause", json={"by": "ops"}, headers=AUTH)
    assert paused.status_code == 200 and paused.json()["status"] == "paused"
    assert client.post(f"{base}/resume", headers=AUTH).json()["status"] == "running"
    assert client.post(f"{base}/resume", headers=AUTH).status_code == 409
    assert client.post(f"{base}/retry-failed", json={"campaign_run_id": "x"}, headers=AUTH).json()[
        "errors"
    ] == [{"field": "campaign_run_id", "error": "must be an integer"}]
    unknown = "/api/campaigns/00000000-0000-0000-0000-000000000000/cancel"
    assert client.post(unknown, headers=AUTH).status_code == 404
    assert client.post(f"{base}/cancel", json={"by": ""}, headers=AUTH).status_code == 422
    assert client.post(f"{base}/cancel", headers=AUTH).json()["status"] == "cancelled"


def test_breakers_are_listed_and_reset_through_the_api(client, engine):
    from resources import breakers

    with engine.begin() as conn:
        opened, _ = breakers.trip(conn, "app", "*", 190, "Access token has expired", "operator", 60)
    listed = client.get("/api/breakers", headers=AUTH).json()
    assert [(b["id"], b["scope"], b["held_messages"]) for b in listed] == [(opened.id, "app", 0)]
    assert client.get("/health").json()["sending"]["status"] == "held"
    reset = client.post(
        f"/api/breakers/{opened.id}/reset", json={"by": "ops", "reason": "new token"}, headers=AUTH
    )
    assert reset.status_code == 200
    assert (reset.json()["closed_by"], reset.json()["close_reason"]) == ("ops", "new token")
    assert client.post(f"/api/breakers/{opened.id}/reset", headers=AUTH).status_code == 409
    assert client.post("/api/breakers/999999/reset", headers=AUTH).status_code == 404
    assert client.get("/api/breakers", headers=AUTH).json() == []
    assert client.get("/health").json()["sending"] == {
        "status": "ok",
        "open_breakers": [],
        "accounts": [],
    }


def test_a_campaign_held_by_its_messaging_limit_says_so_and_a_raise_lets_the_rest_go_once(
    engine, sqs, graph
):
    run = make_run(engine, 30, messaging_limit=250)
    _running(engine, run)
    with engine.begin() as conn:  # 240 recipients already counted in the last 24 h
        conn.execute(
            sa.text(
                "INSERT INTO messaging_window (organisation_id, recipient, counted_at)"
                " SELECT CAST(:o AS uuid), '+1999' || n, now() - interval '1 hour'"
                " FROM generate_series(1, 240) n"
            ),
            {"o": run.organisation_id},
        )
    enqueue(sqs, [payload(run, i) for i in range(30)])
    worker, thread = start(engine, sqs, client_for(graph.url))
    try:
        wait_for(lambda: statuses(engine, run).get("sent") == 10 and _quiet(engine, sqs, run))
        [progress] = campaign_runs.campaign_progress(engine, run.campaign_id)["runs"]
        assert progress["messages"]["sent"] == 10 and progress["messages"]["held"] == 20
        [limit] = [w for w in progress["waiting"] if w["reason"] == "messaging_limit"]
        assert (limit["messages"], limit["messaging_limit"], limit["counted_in_window"]) == (
            20,
            250,
            250,
        )
        frees_at = datetime.fromisoformat(limit["next_slot_frees_at"])
        assert datetime.now(UTC) + timedelta(hours=22) < frees_at
        assert datetime.fromisoformat(progress["estimated_finish_at"]) >= frees_at
        assert len(graph.requests) == 10

        organisations.update_organisation(
            engine,
            run.organisation_id,
            {"messaging_limit": 2000, "by": "ops", "reason": "WhatsApp granted 2K"},
        )
        wait_for(lambda: statuses(engine, run) == {"sent": 30}, timeout=60)
    finally:
        worker.stop()
        thread.join(timeout=60)
    _sent_once(graph, run, 30)
    [progress] = campaign_runs.campaign_progress(engine, run.campaign_id)["runs"]
    assert progress["waiting"] == [] and progress["estimated_finish_at"] is None
