"""Campaign runs, planned each tick of the campaign sensor: each due occurrence of every
campaign whose media are ready or being made is recorded, and the `dispatched_batches` run of
its partition requested (which, while the media are made, sends each member as its media are
ready).

A tick reads a bounded page of campaigns (its cursor is the last campaign id seen, wrapping
around), so it stays light however many campaigns exist. Recording a run is an idempotent
insert on (campaign, run date) and every run request's key is derived from the same pair, so
racing ticks or daemons create one run and launch it once. Runs recorded elsewhere (the
operator's process-messages) are launched by the same pending-run scan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

import dagster as dg
import sqlalchemy as sa

from assets_defs.dispatch.asset import dispatched_batches
from assets_defs.partitions import campaign_partition_key
from resources import campaign_runs as runs
from resources import recurrence, settings
from resources.campaigns import InvalidTransition

CAMPAIGNS_PER_TICK = 200
RUNS_PER_TICK = 100


@dataclass
class TickPlan:
    recorded: list[runs.CampaignRun] = field(default_factory=list)
    completed: list[UUID] = field(default_factory=list)
    sent: list[UUID] = field(default_factory=list)
    to_launch: list[runs.CampaignRun] = field(default_factory=list)
    cursor: str = ""


def plan_tick(engine: sa.Engine, now: datetime, cursor: str = "") -> TickPlan:
    """Complete runs whose messages are all out, record due runs, complete campaigns whose
    end passed, and list the runs to launch."""
    plan = TickPlan()
    with engine.begin() as conn:
        plan.sent = runs.complete_runs(conn, settings.number("SENDER_STUCK_AFTER_SECONDS"))
    with engine.connect() as conn:
        campaigns = runs.active_campaigns(conn, cursor, CAMPAIGNS_PER_TICK)
    plan.cursor = str(campaigns[-1].id) if len(campaigns) == CAMPAIGNS_PER_TICK else ""
    for campaign in campaigns:
        due = recurrence.due_occurrence(
            campaign.recurrence, campaign.start_at, campaign.end_at, now
        )
        try:
            with engine.begin() as conn:
                if due is not None:
                    run = runs.record_run(conn, campaign.id, recurrence.utc_date(due))
                    plan.recorded.append(run)
                elif runs.complete_ended(conn, campaign, now):
                    plan.completed.append(campaign.id)
        except (runs.CannotRun, InvalidTransition):
            continue  # paused or cancelled since it was read: nothing to do for it now
    with engine.connect() as conn:
        plan.to_launch = runs.pending_runs(conn, RUNS_PER_TICK)
    return plan


def run_request(run: runs.CampaignRun) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=runs.run_key(run.campaign_id, run.run_date, run.resumes),
        partition_key=dg.MultiPartitionKey(
            {"campaign": campaign_partition_key(run.campaign_id), "date": run.run_date.isoformat()}
        ),
        asset_selection=[dispatched_batches.key],
        # `dispatch_campaign`: the run coordinator's limit of dispatch runs per campaign.
        tags={
            "campaign": str(run.campaign_id),
            "dispatch_campaign": str(run.campaign_id),
            "campaign_run_id": str(run.id),
        },
    )
