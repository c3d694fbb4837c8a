"""Campaign runs: one `campaign_runs` row per occurrence, and the campaign's status around them.

The sensor, the asset and the operator API all go through these functions, so "record the
due run" and "finish a run" mean the same thing wherever they happen. The row's unique key
(campaign, run date) makes two ticks, two daemons or an operator racing the sensor harmless.

A run moves `pending → dispatching → dispatched → completed`: dispatched once every member
is queued, failed or skipped; completed once none of its messages is waiting any more
(pending, held or freshly sending). A campaign completes with its last occurrence's run,
so `completed` never hides messages still on their way. A pause moves a campaign's
unfinished runs to `paused`, and a resume back to `pending` with one more `resumes`,
which gives the relaunch a run key of its own.

An operator reads a campaign's progress through its runs (`campaign_progress`) and may
record today's run at once (`run_now`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa

from resources import messages, progress, recurrence, settings
from resources.campaigns import (
    Schedule,
    audience_counts,
    campaign_row,
    current_status,
    locked_schedule,
    require_campaign,
    schedules,
    set_campaign_status,
)
from resources.errors import Conflict, NotFound

# Campaigns whose media is ready and which may still have occurrences to send.
ACTIVE = ("asset_generated", "ready_to_launch", "running")
# A campaign whose media are being made: its run starts with its media, waits for the first
# members whose media are ready, and sends each as it comes (`assets_defs/dispatch/dispatcher.py`).
GENERATING = "asset_generation"


class CannotRun(RuntimeError):
    """The campaign cannot have a run now; the message says why."""


@dataclass(frozen=True)
class CampaignRun:
    id: int
    campaign_id: UUID
    run_date: date
    status: str
    resumes: int = 0


def run_key(campaign_id: UUID, run_date: date, resumes: int = 0) -> str:
    key = f"dispatch-{campaign_id}-{run_date.isoformat()}"
    return f"{key}-resume-{resumes}" if resumes else key


def active_campaigns(conn: sa.Connection, after: str, limit: int) -> list[Schedule]:
    """A page of the campaigns whose media are ready or being made (see `schedules`)."""
    return schedules(conn, [*ACTIVE, GENERATING], after, limit)


def record_run(conn: sa.Connection, campaign_id: UUID, run_date: date) -> CampaignRun:
    """The campaign's run for `run_date`, created if absent; the campaign leaves
    `asset_generated` for `ready_to_launch` with its first run. A campaign whose media are
    still being made may have its run already (it sends the members that are ready)."""
    status = current_status(conn, campaign_id, lock=True)
    if status is None:
        raise CannotRun(f"campaign {campaign_id} does not exist")
    if status == "approved" and _exists(conn, campaign_id, run_date):
        return get_run(conn, campaign_id, run_date)  # resumed; its media start again
    if status not in (*ACTIVE, GENERATING):
        raise CannotRun(
            f"campaign {campaign_id} is {status}; runs start once its media are being made "
            f"or ready ({', '.join((GENERATING, *ACTIVE))})"
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


def _exists(conn: sa.Connection, campaign_id: UUID, run_date: date) -> bool:
    return (
        conn.execute(
            sa.text("SELECT 1 FROM campaign_runs WHERE campaign_id = :c AND run_date = :d"),
            {"c": campaign_id, "d": run_date},
        ).first()
        is not None
    )


def run_id_of(conn: sa.Connection, campaign_id: UUID, run_date: date) -> int | None:
    """The id of the campaign's run for `run_date`, None if it has none."""
    return conn.execute(
        sa.text("SELECT id FROM campaign_runs WHERE campaign_id = :c AND run_date = :d"),
        {"c": campaign_id, "d": run_date},
    ).scalar_one_or_none()


def get_run(conn: sa.Connection, campaign_id: UUID, run_date: date) -> CampaignRun:
    row = conn.execute(
        sa.text(
            "SELECT id, campaign_id, run_date, status, resumes FROM campaign_runs"
            " WHERE campaign_id = :c AND run_date = :d"
        ),
        {"c": campaign_id, "d": run_date},
    ).one()
    return CampaignRun(*row)


def pending_runs(conn: sa.Connection, limit: int) -> list[CampaignRun]:
    rows = conn.execute(
        sa.text(
            "SELECT id, campaign_id, run_date, status, resumes FROM campaign_runs"
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


class Stopped(CannotRun):
    """The campaign is paused or cancelled: its run waits (paused) or ends (cancelled)."""

    def __init__(self, campaign_id: UUID, status: str) -> None:
        super().__init__(f"campaign {campaign_id} is {status}")
        self.status = status


def start_run(conn: sa.Connection, run: CampaignRun) -> None:
    """The run is dispatching and its campaign running (or still making its media); a
    paused, cancelled or failed campaign refuses (`Stopped`), and so does anything else
    that cannot run."""
    status = current_status(conn, run.campaign_id, lock=True)
    if status in ("paused", "cancelled", "failed"):
        stop_run(conn, run.id, status)
        raise Stopped(run.campaign_id, status)
    # Resumed while its media were being made: `approved` until the media run starts again.
    if status not in (GENERATING, "approved") and not launch(conn, run.campaign_id, status):
        raise CannotRun(f"campaign {run.campaign_id} is {status}; its run {run.id} is not sent")
    conn.execute(
        sa.text(
            "UPDATE campaign_runs SET status = 'dispatching', status_reason = NULL WHERE id = :r"
        ),
        {"r": run.id},
    )


def launch(conn: sa.Connection, campaign_id: UUID, status: str) -> bool:
    """The campaign, its media ready, is `running` (through `ready_to_launch`); whether it
    could be (it is `status`, read under its lock)."""
    if status == "asset_generated":
        set_campaign_status(conn, campaign_id, "ready_to_launch")
        status = "ready_to_launch"
    if status == "ready_to_launch":
        set_campaign_status(conn, campaign_id, "running")
        status = "running"
    return status == "running"


def launch_ready(conn: sa.Connection, campaign_id: UUID) -> None:
    """A run that sent while the media were made: the campaign is `running` once they are
    all ready (it may have been paused or failed meanwhile: then it stays so)."""
    status = current_status(conn, campaign_id, lock=True)
    launch(conn, campaign_id, status)


def stop_run(conn: sa.Connection, run_id: int, campaign_status: str) -> None:
    """A dispatch stopped by its campaign's pause, cancel or failure: the run waits
    (paused) or ends with it."""
    status = {"paused": "paused", "failed": "failed"}.get(campaign_status, "cancelled")
    conn.execute(
        sa.text(
            "UPDATE campaign_runs SET status = :s, status_reason = :why"
            " WHERE id = :r AND status IN ('pending', 'dispatching', 'paused')"
        ),
        {"s": status, "why": f"campaign {campaign_status}", "r": run_id},
    )


def finish_run(
    conn: sa.Connection, run: CampaignRun, queued: int, failed: int, skipped: int
) -> None:
    """Record the run's counts: every member is queued, failed or skipped."""
    conn.execute(
        sa.text(
            "UPDATE campaign_runs SET status = 'dispatched', queued = :q, failed = :f,"
            " skipped = :s, dispatched_at = now() WHERE id = :r AND status = 'dispatching'"
        ),
        {"q": queued, "f": failed, "s": skipped, "r": run.id},
    )


def complete_runs(conn: sa.Connection, stuck_after_seconds: float) -> list[UUID]:
    """Dispatched runs none of whose messages waits any more become `completed`, and a
    campaign with its last occurrence's run; returns the campaigns that completed.

    A row in `sending` longer than `stuck_after_seconds` no longer counts as waiting: it is
    reported as stuck instead (it is never re-sent automatically)."""
    finished = conn.execute(
        sa.text(
            "UPDATE campaign_runs r SET status = 'completed' WHERE r.status = 'dispatched'"
            " AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.campaign_run_id = r.id"
            "   AND (m.status = 'pending' OR (m.status = 'sending'"
            "     AND m.sending_at > now() - make_interval(secs => :stuck))))"
            " RETURNING r.campaign_id, r.run_date"
        ),
        {"stuck": stuck_after_seconds},
    ).all()
    completed = []
    for campaign_id, run_date in finished:
        status, kind, start_at, end_at = locked_schedule(conn, campaign_id)
        last = recurrence.last_occurrence_date(kind, start_at, end_at)
        # A one-off campaign is done after its run, even one an operator launched early.
        if status != "running" or (kind != "once" and (last is None or run_date < last)):
            continue
        busy = conn.execute(
            sa.text(
                "SELECT 1 FROM campaign_runs WHERE campaign_id = :c"
                " AND status NOT IN ('completed', 'failed', 'cancelled') LIMIT 1"
            ),
            {"c": campaign_id},
        ).first()
        if busy is None:
            set_campaign_status(conn, campaign_id, "completed", "last occurrence sent")
            completed.append(campaign_id)
    return completed


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
            " AND status IN ('pending', 'dispatching', 'dispatched', 'paused') LIMIT 1"
        ),
        {"c": campaign.id},
    ).scalar_one_or_none()
    if busy:
        return False
    status = current_status(conn, campaign.id, lock=True)
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


def recent_runs(conn: sa.Connection, campaign_id: UUID, limit: int = 50) -> list[dict]:
    """The campaign's latest runs, newest first, with their counts."""
    rows = conn.execute(
        sa.text(
            "SELECT id, run_date, status, status_reason, queued, failed, skipped, dispatched_at,"
            " resumes FROM campaign_runs WHERE campaign_id = :c ORDER BY run_date DESC LIMIT :n"
        ),
        {"c": campaign_id, "n": limit},
    ).mappings()
    return [dict(r) for r in rows]


def pause_runs(conn: sa.Connection, campaign_id: UUID) -> None:
    """The campaign's runs not yet dispatched wait (`paused`) until it resumes."""
    conn.execute(
        sa.text(
            "UPDATE campaign_runs SET status = 'paused', status_reason = 'campaign paused'"
            " WHERE campaign_id = :c AND status IN ('pending', 'dispatching')"
        ),
        {"c": campaign_id},
    )


def resume_runs(conn: sa.Connection, campaign_id: UUID) -> None:
    """The campaign's paused runs are `pending` again, each with one more `resumes` (a run
    key of its own for the relaunch)."""
    conn.execute(
        sa.text(
            "UPDATE campaign_runs SET status = 'pending', status_reason = NULL,"
            " resumes = resumes + 1 WHERE campaign_id = :c AND status = 'paused'"
        ),
        {"c": campaign_id},
    )


def cancel_runs(conn: sa.Connection, campaign_id: UUID, reason: str) -> None:
    """The campaign's unfinished runs end `cancelled`, with the reason."""
    conn.execute(
        sa.text(
            "UPDATE campaign_runs SET status = 'cancelled', status_reason = :why"
            " WHERE campaign_id = :c AND status NOT IN ('completed', 'failed', 'cancelled')"
        ),
        {"c": campaign_id, "why": reason},
    )


def reopen_runs(conn: sa.Connection, run_ids: list[int]) -> None:
    """Completed runs whose messages are queued again are `dispatched` until they settle."""
    conn.execute(
        sa.text(
            "UPDATE campaign_runs SET status = 'dispatched'"
            " WHERE id = ANY(:ids) AND status = 'completed'"
        ),
        {"ids": run_ids},
    )


# -- What an operator reads and asks of a campaign's runs ----------------------------------


def campaign_progress(engine: sa.Engine, campaign_id: UUID) -> dict[str, Any]:
    """The campaign with its status, its audience and message counts by status, and its
    latest runs, each with its progress (messages by stage, what the rest wait for, when it
    should end)."""
    with engine.connect() as conn:
        row = campaign_row(conn, campaign_id)
        if row is None:
            raise NotFound(f"campaign {campaign_id} does not exist")
        stuck = settings.number("SENDER_STUCK_AFTER_SECONDS")
        return {
            **row,
            "audience": audience_counts(conn, campaign_id),
            "messages": messages.status_counts(conn, campaign_id),
            "runs": [
                {**r, **progress.run_progress(conn, r["id"], stuck)}
                for r in recent_runs(conn, campaign_id)
            ],
        }


def run_now(engine: sa.Engine, campaign_id: UUID, today: date | None = None) -> CampaignRun:
    """Record today's run of the campaign now (`record_run`); the campaign-run sensor
    launches its `dispatched_batches` partition on its next tick. A campaign past its end,
    or one that cannot run, is a `Conflict`."""
    run_date = today or datetime.now(UTC).date()
    with engine.begin() as conn:
        campaign = require_campaign(conn, campaign_id)
        if campaign.end_at is not None and datetime.now(UTC) > campaign.end_at:
            raise Conflict(f"campaign {campaign_id} ended at {campaign.end_at.isoformat()}")
        try:
            return record_run(conn, campaign_id, run_date)
        except CannotRun as error:
            raise Conflict(str(error)) from None
