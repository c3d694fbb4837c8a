"""What an operator does to campaigns, once, for both the operator API and the CLI: create
and list organisations, templates and campaigns, import contacts and audiences, look contacts
up and change their consent (who and why), approve, follow a campaign's progress, request its
dispatch now, and look at the queue.

Every function takes plain values and returns JSON-ready dicts; bad input raises
`InvalidInput` listing every problem, a missing row `NotFound`, a refused status change
`Conflict`.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa

from resources import (
    campaign_runs,
    campaigns,
    contact_csv,
    progress,
    recurrence,
    settings,
)
from resources import templates as meta_templates
from resources.errors import Conflict, InvalidInput, NotFound
from resources.fields import (
    MAX_PAGE,
    as_uuid,
    constraint,
    phone_number_id_problems,
    required,
    timestamp,
    wrong_types,
)
from resources.queue import SQSResource
from resources.readiness import NotReady
from resources.readiness import check as check_readiness
from resources.settings import is_production

MESSAGE_TYPES = ("template", "text", "image", "video", "document", "audio")
MEMBER_STATUSES = (
    "pending",
    "asset_generating",
    "asset_generated",
    "ready_to_send",
    "failed",
    "skipped",
)


def create_campaign(engine: sa.Engine, data: dict[str, Any]) -> dict[str, Any]:
    errors = required(data, "organisation_id", "name", "message_type") + phone_number_id_problems(
        data
    )
    errors += wrong_types(
        data,
        texts=("organisation_id", "name", "message_type", "message_content", "media_caption"),
        ids=("template_id",),
    )
    message_type = data.get("message_type")
    if message_type and message_type not in MESSAGE_TYPES:
        errors.append(
            {"field": "message_type", "error": f"must be one of {', '.join(MESSAGE_TYPES)}"}
        )
    if message_type == "template":
        errors += required(data, "template_id")
    if message_type == "text":
        errors += required(data, "message_content")
    if data.get("recurrence", "once") not in recurrence.RECURRENCES:
        errors.append(
            {"field": "recurrence", "error": f"must be one of {', '.join(recurrence.RECURRENCES)}"}
        )
    start_at = timestamp(data, "start_at", errors)
    end_at = timestamp(data, "end_at", errors)
    if start_at and end_at and end_at < start_at:
        errors.append({"field": "end_at", "error": "must not be before start_at"})
    if errors:
        raise InvalidInput(errors)
    organisation = as_uuid(data["organisation_id"], "organisation_id")
    with engine.begin() as conn:
        if data.get("template_id") is not None:
            owner = conn.execute(
                sa.text("SELECT organisation_id::text FROM templates WHERE id = :t"),
                {"t": data["template_id"]},
            ).scalar_one_or_none()
            if owner != organisation:
                raise InvalidInput(
                    [{"field": "template_id", "error": "no such template in this organisation"}]
                )
        if (
            data.get("phone_number_id") not in (None, "")
            and not conn.execute(
                sa.text(
                    "SELECT 1 FROM phone_numbers WHERE phone_number_id = :p AND organisation_id = :o"
                ),
                {"p": str(data["phone_number_id"]), "o": organisation},
            ).scalar()
        ):
            raise InvalidInput(
                [{"field": "phone_number_id", "error": "no such phone number in this organisation"}]
            )
        try:
            campaign = campaigns.create_campaign(
                conn,
                organisation,
                data["name"],
                message_type=message_type,
                template_id=data.get("template_id"),
                message_content=data.get("message_content"),
                media_caption=data.get("media_caption"),
                recurrence=data.get("recurrence", "once"),
                start_at=start_at,
                end_at=end_at,
                phone_number_id=data.get("phone_number_id"),
            )
        except sa.exc.IntegrityError as error:
            raise InvalidInput([{"field": "campaign", "error": constraint(error)}]) from None
    return campaign_progress(engine, campaign)


def approve_campaign(engine: sa.Engine, campaign_id: str) -> dict[str, Any]:
    """`draft → approved`, only for a campaign that can send what it is meant to: its
    template is approvable (`_template_approvable`) and `resources.readiness` finds no
    problem, else `NotReady` lists them and nothing changes. Answers the campaign's status
    with the readiness report (`readiness`: its warnings, e.g. a check that could not be
    made)."""
    campaign_id = as_uuid(campaign_id, "campaign_id")
    with engine.begin() as conn:
        _campaign(conn, campaign_id)
        try:
            # Also locks the campaign: an audience import waits until this commits.
            campaigns.set_campaign_status(conn, campaign_id, "approved")
        except campaigns.InvalidTransition as error:
            raise Conflict(str(error)) from None
        _template_approvable(conn, campaign_id)
        report = check_readiness(conn, campaign_id, is_production())
        if report is None:
            raise NotFound(f"campaign {campaign_id} does not exist")
        if not report.ready:
            raise NotReady(report)
    return {**campaign_progress(engine, campaign_id), "readiness": report.as_dict()}


def campaign_readiness(engine: sa.Engine, campaign_id: str) -> dict[str, Any]:
    """What approval checks, now, without approving or changing anything: `ready`, every
    problem (`errors`) with its count and first members, and `warnings`."""
    campaign_id = as_uuid(campaign_id, "campaign_id")
    with engine.connect() as conn:
        report = check_readiness(conn, campaign_id, is_production())
    if report is None:
        raise NotFound(f"campaign {campaign_id} does not exist")
    return report.as_dict()


def _template_approvable(conn: sa.Connection, campaign_id: str) -> None:
    """A template campaign is approved only on a template Meta has APPROVED (in development,
    also one declared approved locally) whose parameters fit Meta's components."""
    template_id = conn.execute(
        sa.text("SELECT template_id FROM campaigns WHERE id = :c"), {"c": campaign_id}
    ).scalar_one()
    if template_id is None:
        return
    refusal = meta_templates.approval_refusal(conn, template_id, is_production())
    if refusal is None:
        return
    if refusal.kind == "conflict":
        raise Conflict("; ".join(refusal.reasons))
    raise InvalidInput([{"field": "template", "error": reason} for reason in refusal.reasons])


def import_audience(engine: sa.Engine, campaign_id: str, text: str) -> dict[str, Any]:
    """Add members to a campaign that is still a draft (numbers normalised, repeats refused).

    Counts are for the whole file, as the contacts import's: `imported` rows, of which
    `created` new members and `already_present` members the campaign already had."""
    campaign_id = as_uuid(campaign_id, "campaign_id")
    try:
        rows = contact_csv.parse(text)
    except contact_csv.InvalidCSV as error:
        raise InvalidInput(error.errors) from None
    with engine.begin() as conn:
        # An approval under way (it locks the campaign) checks every member: wait for it.
        conn.execute(sa.text("SELECT 1 FROM campaigns WHERE id = :c FOR SHARE"), {"c": campaign_id})
        campaign = _campaign(conn, campaign_id)
        if campaign.status != "draft":
            raise Conflict(
                f"campaign {campaign_id} is {campaign.status}; audiences change only while it is a draft"
            )
        added = campaigns.add_audience(
            conn, campaign_id, [campaigns.Member(r.phone, r.name, r.attributes) for r in rows]
        )
    return {"imported": len(rows), "created": added, "already_present": len(rows) - added}


def campaign_progress(engine: sa.Engine, campaign_id: str | UUID) -> dict[str, Any]:
    """The campaign with its status, its audience and message counts by status, and its
    latest runs, each with its progress (messages by stage, what the rest wait for)."""
    campaign_id = as_uuid(campaign_id, "campaign_id")
    with engine.connect() as conn:
        row = (
            conn.execute(
                sa.text(
                    "SELECT id::text, organisation_id::text, name, status, status_reason, recurrence,"
                    " start_at, end_at, message_type, template_id FROM campaigns WHERE id = :c"
                ),
                {"c": campaign_id},
            )
            .mappings()
            .one_or_none()
        )
        if row is None:
            raise NotFound(f"campaign {campaign_id} does not exist")
        run_rows = conn.execute(
            sa.text(
                "SELECT id, run_date, status, status_reason, queued, failed, skipped, dispatched_at,"
                " resumes FROM campaign_runs WHERE campaign_id = :c ORDER BY run_date DESC LIMIT 50"
            ),
            {"c": campaign_id},
        ).mappings()
        messages = conn.execute(
            sa.text(
                "SELECT m.status, count(*) FROM messages m JOIN campaign_runs r ON r.id = m.campaign_run_id"
                " WHERE r.campaign_id = :c GROUP BY m.status"
            ),
            {"c": campaign_id},
        )
        stuck = settings.number("SENDER_STUCK_AFTER_SECONDS")
        return _jsonable(
            {
                **row,
                "audience": campaigns.audience_counts(conn, campaign_id),
                "messages": dict(messages.all()),
                # Each run: its messages by stage, what the rest wait for, when it should end.
                "runs": [
                    {**r, **progress.run_progress(conn, r["id"], stuck)} for r in run_rows.all()
                ],
            }
        )


def list_audience(
    engine: sa.Engine,
    campaign_id: str,
    status: str | None = None,
    limit: int = 100,
    after: str | None = None,
) -> dict[str, Any]:
    """One page of members in id order; pass `next_after` back as `after` for the next page."""
    campaign_id = as_uuid(campaign_id, "campaign_id")
    errors = []
    if status is not None and status not in MEMBER_STATUSES:
        errors.append({"field": "status", "error": f"must be one of {', '.join(MEMBER_STATUSES)}"})
    if not 1 <= limit <= MAX_PAGE:
        errors.append({"field": "limit", "error": f"must be between 1 and {MAX_PAGE}"})
    if errors:
        raise InvalidInput(errors)
    after = as_uuid(after, "after") if after else "00000000-0000-0000-0000-000000000000"
    with engine.connect() as conn:
        _campaign(conn, campaign_id)
        rows = (
            conn.execute(
                sa.text(
                    "SELECT id::text, msisdn, name, attributes, status, last_error, generated_asset_urls,"
                    " status_changed_at FROM campaign_audience WHERE campaign_id = :c AND id > CAST(:after AS uuid)"
                    " AND (CAST(:s AS text) IS NULL OR status = :s) ORDER BY id LIMIT :n"
                ),
                {"c": campaign_id, "after": after, "s": status, "n": limit},
            )
            .mappings()
            .all()
        )
    items = [dict(r) for r in rows]
    return _jsonable(
        {"items": items, "next_after": items[-1]["id"] if len(items) == limit else None}
    )


def process_messages(
    engine: sa.Engine, campaign_id: str, today: date | None = None
) -> dict[str, Any]:
    """Record today's run of the campaign now; the campaign-run sensor launches its
    `dispatched_batches` partition on its next tick (within 30 s)."""
    campaign_id = as_uuid(campaign_id, "campaign_id")
    run_date = today or datetime.now(UTC).date()
    with engine.begin() as conn:
        campaign = _campaign(conn, campaign_id)
        if campaign.end_at is not None and datetime.now(UTC) > campaign.end_at:
            raise Conflict(f"campaign {campaign_id} ended at {campaign.end_at.isoformat()}")
        try:
            run = campaign_runs.record_run(conn, campaign_id, run_date)
        except campaign_runs.CannotRun as error:
            raise Conflict(str(error)) from None
    return {
        "campaign_id": campaign_id,
        "campaign_run_id": run.id,
        "run_date": run.run_date.isoformat(),
        "run_status": run.status,
        "partition": {"campaign": campaign_id, "date": run.run_date.isoformat()},
        "launch": "the campaign-run sensor requests this partition's run on its next tick",
    }


def queue_status(sqs: SQSResource) -> dict[str, Any]:
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


def _campaign(conn: sa.Connection, campaign_id: str) -> campaigns.Campaign:
    campaign = campaigns.get_campaign(conn, campaign_id)
    if campaign is None:
        raise NotFound(f"campaign {campaign_id} does not exist")
    return campaign


def _jsonable(value: Any) -> Any:
    return json.loads(
        json.dumps(value, default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v))
    )
