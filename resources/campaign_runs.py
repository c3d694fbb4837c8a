"""Campaign runs: one `campaign_runs` row per occurrence, and the campaign's status around them.

The sensor, the asset and the operator API all go through these functions, so "record the
due run" and "finish a run" mean the same thing wherever they happen. The row's unique key
(campaign, run date) makes two ticks, two daemons or an operator racing the sensor harmless.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from uuid import UUID

import sqlalchemy as sa

from resources import recurrence
from resources.campaigns import set_campaign_status

# Campaigns whose media is ready and which may still have occurrences to send.
ACTIVE = ("asset_generated", "ready_to_launch", "running")


class CannotRun(RuntimeError):
    """The campaign cannot have a run now; the message says why."""


@dataclass(frozen=True)
class CampaignRun:
    id: int
    campaign_id: str
    run_date: date
    status: str


@dataclass(frozen=True)
class Schedule:
    id: str
    status: str
    recurrence: str
    start_at: datetime
    end_at: datetime | None


def run_key(campaign_id: str, run_date: date) -> str:
    return f"dispatch-{campaign_id}-{run_date.isoformat()}"


def active_campaigns(conn: sa.Connection, after: str, limit: int) -> list[Schedule]:
    rows = conn.execute(
        sa.text(
            "SELECT id::text, status, recurrence, start_at, end_at FROM campaigns"
            " WHERE status = ANY(:active) AND id::text > :after ORDER BY id::text LIMIT :limit"
        ),
        {"active": list(ACTIVE), "after": after, "limit": limit},
    )
    return [Schedule(*row) for row in rows]


def record_run(conn: sa.Connection, campaign_id: UUID | str, run_date: date) -> CampaignRun:
    """The campaign's run for `run_date`, created if absent; the campaign leaves
    `asset_generated` for `ready_to_launch` with its first run."""
    status = conn.execute(
        sa.text("SELECT status FROM campaigns WHERE id = :c FOR UPDATE"), {"c": campaign_id}
    ).scalar_one_or_none()
    if status is None:
        raise CannotRun(f"campaign {campaign_id} does not exist")
    if status not in ACTIVE:
        raise CannotRun(
            f"campaign {campaign_id} is {status}; runs start once its media is ready "
            f"({', '.join(ACTIVE)})"
        )
    conn.execute(
        sa.text(
            "INSERT INTO campaign_runs (campaign_id, run_date) VALUES (:c, :d)"
            " ON CONFLICT (campaign_id, run_date) DO NOTHING"
        ),
        {"c": campaign_id, "d": run_date},
    )
    if status == "asset_generated":
        set_campaign_status(conn, campaign_id, "ready_to_launch")
    return get_run(conn, campaign_id, run_date)


def get_run(conn: sa.Connection, campaign_id: UUID | str, run_date: date) -> CampaignRun:
    row = conn.execute(
        sa.text(
            "SELECT id, campaign_id::text, run_date, status FROM campaign_runs"
            " WHERE campaign_id = :c AND run_date = :d"
        ),
        {"c": campaign_id, "d": run_date},
    ).one()
    return CampaignRun(*row)


def pending_runs(conn: sa.Connection, limit: int) -> list[CampaignRun]:
    rows = conn.execute(
        sa.text(
            "SELECT id, campaign_id::text, run_date, status FROM campaign_runs"
            " WHERE status = 'pending' ORDER BY id LIMIT :limit"
        ),
        {"limit": limit},
    )
    return [CampaignRun(*row) for row in rows]


@contextmanager
def dispatch_lock(engine: sa.Engine, run_id: int) -> Iterator[None]:
    """One dispatcher per campaign run at a time, whatever launched it (a session-level
    advisory lock, released on exit or when the process dies)."""
    with engine.connect() as conn:
        key = {"run": run_id}
        held = conn.execute(
            sa.text("SELECT pg_try_advisory_lock(hashtext('dispatched_batches'), :run)"), key
        ).scalar_one()
        conn.commit()
        if not held:
            raise CannotRun(f"campaign run {run_id} is already being dispatched elsewhere")
        try:
            yield
        finally:
            conn.execute(
                sa.text("SELECT pg_advisory_unlock(hashtext('dispatched_batches'), :run)"), key
            )
            conn.commit()


def start_run(conn: sa.Connection, run: CampaignRun) -> None:
    """The run is dispatching and its campaign running; a paused or cancelled campaign refuses."""
    status = conn.execute(
        sa.text("SELECT status FROM campaigns WHERE id = :c FOR UPDATE"), {"c": run.campaign_id}
    ).scalar_one()
    if status == "ready_to_launch":
        set_campaign_status(conn, run.campaign_id, "running")
    elif status != "running":
        raise CannotRun(f"campaign {run.campaign_id} is {status}; its run {run.id} is not sent")
    conn.execute(
        sa.text(
            "UPDATE campaign_runs SET status = 'dispatching', status_reason = NULL WHERE id = :r"
        ),
        {"r": run.id},
    )


def finish_run(
    conn: sa.Connection, run: CampaignRun, queued: int, failed: int, skipped: int
) -> bool:
    """Record the run's counts; the campaign completes after its last occurrence.
    Returns whether it completed."""
    conn.execute(
        sa.text(
            "UPDATE campaign_runs SET status = 'dispatched', queued = :q, failed = :f,"
            " skipped = :s, dispatched_at = now() WHERE id = :r"
        ),
        {"q": queued, "f": failed, "s": skipped, "r": run.id},
    )
    kind, start_at, end_at = conn.execute(
        sa.text("SELECT recurrence, start_at, end_at FROM campaigns WHERE id = :c"),
        {"c": run.campaign_id},
    ).one()
    last = recurrence.last_occurrence_date(kind, start_at, end_at)
    # A one-off campaign is done after its run, even one an operator launched early.
    if kind != "once" and (last is None or run.run_date < last):
        return False
    set_campaign_status(conn, run.campaign_id, "completed", "last occurrence dispatched")
    return True


def fail_run(conn: sa.Connection, run_id: int, reason: str) -> None:
    conn.execute(
        sa.text("UPDATE campaign_runs SET status = 'failed', status_reason = :r WHERE id = :id"),
        {"r": reason[:2000], "id": run_id},
    )


def complete_ended(conn: sa.Connection, campaign: Schedule, now: datetime) -> bool:
    """Complete a campaign whose end date has passed while no run of it is in progress,
    walking the allowed edges (asset_generated → ready_to_launch → running → completed)."""
    if campaign.end_at is None or now <= campaign.end_at:
        return False
    busy = conn.execute(
        sa.text(
            "SELECT 1 FROM campaign_runs WHERE campaign_id = :c"
            " AND status IN ('pending', 'dispatching') LIMIT 1"
        ),
        {"c": campaign.id},
    ).scalar_one_or_none()
    if busy:
        return False
    status = conn.execute(
        sa.text("SELECT status FROM campaigns WHERE id = :c FOR UPDATE"), {"c": campaign.id}
    ).scalar_one()
    for step in _TO_COMPLETED.get(status, ()):
        set_campaign_status(
            conn, campaign.id, step, "end date passed" if step == "completed" else None
        )
    return status in _TO_COMPLETED


_TO_COMPLETED = {
    "asset_generated": ("ready_to_launch", "running", "completed"),
    "ready_to_launch": ("running", "completed"),
    "running": ("completed",),
}
