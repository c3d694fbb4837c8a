"""The operator's control over sending, for the operator API and the CLI: pausing,
resuming and cancelling a campaign, retrying its failed rows, and resetting circuit
breakers.

Each is one transaction on the database; the parts that do the work notice it there:
- a media run stops claiming members (`asset_generation` is no longer the status);
- a dispatch run stops at its next page, and its run waits as `paused`;
- the sender's claim holds a paused campaign's rows instead of sending them (their
  payloads leave the queue, nothing is lost) and finds a cancelled campaign's rows
  `cancelled`, so their payloads are dropped unsent;
- on resume, the campaign-run sensor launches the paused runs again, and the sender
  re-queues the held rows (`pipelines/sender/release.py`), each of which is still sent once.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

import sqlalchemy as sa

from resources import breakers, campaign_runs, campaigns, messages
from resources.campaign_runs import campaign_progress
from resources.errors import Conflict, InvalidInput, NotFound
from resources.fields import is_id

PAUSABLE = ("approved", "asset_generation", "asset_generated", "ready_to_launch", "running")
# Where a paused campaign goes back to: media generation restarts from `approved` (the
# media sensor then requests a new run for the members not yet done).
RESUMES_TO = {"asset_generation": "approved"}
RETRYABLE_CAMPAIGNS = ("ready_to_launch", "running", "completed", "paused")


def _locked_status(conn: sa.Connection, campaign_id: UUID) -> str:
    status = campaigns.current_status(conn, campaign_id, lock=True)
    if status is None:
        raise NotFound(f"campaign {campaign_id} does not exist")
    return status


def _actor(data: dict[str, Any]) -> str:
    by = data.get("by")
    if by is not None and (not isinstance(by, str) or not by.strip()):
        raise InvalidInput([{"field": "by", "error": "must be a non-empty string"}])
    return (by or "operator").strip()[:200]


def pause(engine: sa.Engine, campaign_id: UUID, data: dict[str, Any]) -> dict[str, Any]:
    """No new media, no new dispatch, and nothing more sent until it resumes."""
    by = _actor(data)
    with engine.begin() as conn:
        status = _locked_status(conn, campaign_id)
        if status not in PAUSABLE:
            raise Conflict(f"campaign {campaign_id} is {status}; only an active campaign pauses")
        campaigns.set_campaign_status(conn, campaign_id, "paused", f"paused by {by}")
        campaigns.set_paused_from(conn, campaign_id, status)
        campaign_runs.pause_runs(conn, campaign_id)
    return campaign_progress(engine, campaign_id)


def resume(engine: sa.Engine, campaign_id: UUID, data: dict[str, Any]) -> dict[str, Any]:
    """Back where it was paused; its paused runs are launched again and its held rows
    re-queued, each row still sent once."""
    by = _actor(data)
    with engine.begin() as conn:
        status = _locked_status(conn, campaign_id)
        if status != "paused":
            raise Conflict(f"campaign {campaign_id} is {status}, not paused")
        paused_from = campaigns.paused_from(conn, campaign_id)
        target = RESUMES_TO.get(paused_from, paused_from or "approved")
        campaigns.set_campaign_status(conn, campaign_id, target, f"resumed by {by}")
        campaigns.set_paused_from(conn, campaign_id, None)
        campaign_runs.resume_runs(conn, campaign_id)
    return campaign_progress(engine, campaign_id)


def cancel(engine: sa.Engine, campaign_id: UUID, data: dict[str, Any]) -> dict[str, Any]:
    """End the campaign: its unsent rows end `cancelled` (with the time and who), and its
    payloads still on the queue are dropped unsent when they come up."""
    by = _actor(data)
    reason = f"cancelled by {by}" + (f": {data['reason']}" if data.get("reason") else "")
    with engine.begin() as conn:
        status = _locked_status(conn, campaign_id)
        if status in ("completed", "cancelled"):
            raise Conflict(f"campaign {campaign_id} is already {status}")
        campaigns.set_campaign_status(conn, campaign_id, "cancelled", reason[:1000])
        cancelled = messages.cancel_unsent(conn, campaign_id, reason[:1000])
        campaign_runs.cancel_runs(conn, campaign_id, reason[:1000])
    return {**campaign_progress(engine, campaign_id), "messages_cancelled": cancelled}


def retry_failed(engine: sa.Engine, campaign_id: UUID, data: dict[str, Any]) -> dict[str, Any]:
    """Queue again the failed rows WhatsApp never accepted whose error could pass (a
    retryable or account-level one), unless the contact has since opted out. The sender
    re-queues them; a permanent recipient error is never retried."""
    by = _actor(data)
    run_id = data.get("campaign_run_id")
    if run_id is not None and not is_id(run_id):
        raise InvalidInput([{"field": "campaign_run_id", "error": "must be an integer"}])
    with engine.begin() as conn:
        status = _locked_status(conn, campaign_id)
        if status not in RETRYABLE_CAMPAIGNS:
            raise Conflict(f"campaign {campaign_id} is {status}; its rows cannot be retried")
        retried = messages.retry_failed(conn, campaign_id, run_id, f"retry requested by {by}")
        runs = sorted(set(retried))
        if runs:
            campaign_runs.reopen_runs(conn, runs)
            if status == "completed":
                campaigns.set_campaign_status(conn, campaign_id, "running", f"retry by {by}")
        not_retried = messages.failed_count(conn, campaign_id, run_id)
    return {
        **campaign_progress(engine, campaign_id),
        "retried": len(retried),
        "not_retried": not_retried,
    }


def list_breakers(engine: sa.Engine, include_closed: Any = 0) -> list[dict[str, Any]]:
    """Open circuit breakers (and the `include_closed` most recently closed), each with
    the messages it holds."""
    try:
        include_closed = int(include_closed)
    except (TypeError, ValueError):
        raise InvalidInput([{"field": "include_closed", "error": "must be a number"}]) from None
    if not 0 <= include_closed <= 500:
        raise InvalidInput([{"field": "include_closed", "error": "must be between 0 and 500"}])
    with engine.connect() as conn:
        return breakers.listing(conn, include_closed)


def reset_breaker(engine: sa.Engine, breaker_id: int, data: dict[str, Any]) -> dict[str, Any]:
    """Close a breaker once its cause is fixed (a new token, an account reinstated, a
    template approved again); the sender re-queues what it held within seconds. If the
    cause is still there, the next send opens it again."""
    by = _actor(data)
    reason = data.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise InvalidInput([{"field": "reason", "error": "must be a string"}])
    with engine.begin() as conn:
        if not breakers.close(conn, breaker_id, by, reason):
            closed = conn.execute(
                sa.text("SELECT closed_at FROM circuit_breakers WHERE id = :id"),
                {"id": breaker_id},
            ).one_or_none()
            if closed is None:
                raise NotFound(f"circuit breaker {breaker_id} does not exist")
            raise Conflict(f"circuit breaker {breaker_id} is already closed")
    with engine.connect() as conn:
        [found] = [b for b in breakers.listing(conn, 500) if b["id"] == breaker_id]
    return found
