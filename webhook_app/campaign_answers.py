"""What the operator API answers (and the CLI prints) for the campaign operations: their
results composed into one JSON document, with dates and times in ISO 8601 and ids as text."""

from __future__ import annotations

import json
from typing import Any
from uuid import UUID

import sqlalchemy as sa

from resources import campaigns
from resources.campaign_runs import campaign_progress, run_now
from resources.queue import SQSResource


def jsonable(value: Any) -> Any:
    """`value` with every date, time, UUID or other non-JSON value as its text."""
    return json.loads(
        json.dumps(value, default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v))
    )


def created_campaign(engine: sa.Engine, data: dict[str, Any]) -> dict[str, Any]:
    """The new draft, as its status route shows it."""
    return campaign_progress(engine, campaigns.create_draft(engine, data))


def approved_campaign(engine: sa.Engine, campaign_id: UUID) -> dict[str, Any]:
    """The campaign's status once approved, with the readiness report (`readiness`: its
    warnings, e.g. a check that could not be made)."""
    report = campaigns.approve(engine, campaign_id)
    return {**campaign_progress(engine, campaign_id), "readiness": report.as_dict()}


def campaign_readiness(engine: sa.Engine, campaign_id: UUID) -> dict[str, Any]:
    """What approval checks, now: `ready`, every problem (`errors`) with its count and
    first members, and `warnings`."""
    return campaigns.readiness_of(engine, campaign_id).as_dict()


def recorded_run(engine: sa.Engine, campaign_id: UUID) -> dict[str, Any]:
    """Today's run, recorded now, and the partition the campaign-run sensor launches."""
    run = run_now(engine, campaign_id)
    return {
        "campaign_id": str(run.campaign_id),
        "campaign_run_id": run.id,
        "run_date": run.run_date.isoformat(),
        "run_status": run.status,
        "partition": {"campaign": str(run.campaign_id), "date": run.run_date.isoformat()},
        "launch": "the campaign-run sensor requests this partition's run on its next tick",
    }


def queue_depth(sqs: SQSResource) -> dict[str, Any]:
    """The send queue's name, kind and counts, and its dead-letter queue's."""
    depth = sqs.depth()
    return {
        "queue": sqs.queue_name,
        "dead_letter_queue": sqs.dlq_name,
        "fifo": sqs.is_fifo,
        "visible": depth.visible,
        "in_flight": depth.in_flight,
        "delayed": depth.delayed,
        "dead_letter": depth.dead_letter,
    }
