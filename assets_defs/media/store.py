"""The media capability's reads and writes: claiming members, recording outcomes, and the
campaign's moves `approved → asset_generation → asset_generated | failed`.

Every move is set-based SQL guarded by the source state of `resources/status.py`, so two
runs, a sensor and an operator can act at once without a member being done twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from psycopg2.extras import execute_values

from resources import media_ready
from resources.campaigns import current_status, set_campaign_status, set_campaigns_status
from resources.sandbox.pool import Generator
from resources.status import member_sources

# Members whose media exist, at this stage or any later one.
GENERATED = ("asset_generated", "ready_to_send")


@dataclass(frozen=True)
class ClaimedMember:
    id: UUID
    name: str | None
    msisdn: str
    attributes: dict[str, Any]


@dataclass(frozen=True)
class MemberResult:
    id: UUID
    status: str  # asset_generated | failed
    keys: dict[str, str]
    version: int | None
    attempts: int
    error: str | None = None


def active_generator(conn: sa.Connection, campaign_id: str) -> Generator | None:
    row = conn.execute(
        sa.text(
            "SELECT g.template_id, g.version, g.file_name, g.file_content AS source"
            " FROM campaigns c JOIN asset_generate_files g"
            " ON g.template_id = c.template_id AND g.is_active WHERE c.id = :c"
        ),
        {"c": campaign_id},
    ).one_or_none()
    return Generator(**row._mapping) if row else None


def start_generation(conn: sa.Connection, campaign_id: str) -> None:
    """`approved → asset_generation` (a campaign the sensor moved, or resumed, is there already)."""
    if current_status(conn, campaign_id) == "approved":
        set_campaign_status(conn, campaign_id, "asset_generation")
        conn.execute(
            sa.text("UPDATE campaigns SET asset_generation_started_at = now() WHERE id = :c"),
            {"c": campaign_id},
        )
    conn.execute(
        sa.text(
            "UPDATE campaigns SET asset_generation_status = 'running'"
            " WHERE id = :c AND status = 'asset_generation'"
        ),
        {"c": campaign_id},
    )


def approve_without_media(conn: sa.Connection, limit: int) -> list[UUID]:
    """Approved campaigns whose template has no active generator need no media:
    `approved → asset_generated`, members left `pending` for dispatch."""
    return set_campaigns_status(
        conn, _approved(conn, limit, with_generator=False), "asset_generated"
    )


def begin_generation(conn: sa.Connection, limit: int) -> list[tuple[UUID, datetime]]:
    """Approved campaigns with an active generator: `approved → asset_generation`.

    Returns each campaign with the time its generation began, which names its run.
    """
    started = set_campaigns_status(
        conn, _approved(conn, limit, with_generator=True), "asset_generation"
    )
    rows = conn.execute(
        sa.text(
            "UPDATE campaigns SET asset_generation_status = 'pending',"
            " asset_generation_started_at = now(), asset_generation_completed_at = NULL"
            " WHERE id = ANY(:ids) RETURNING id, asset_generation_started_at"
        ),
        {"ids": started},
    )
    return [(row.id, row.asset_generation_started_at) for row in rows]


def _approved(conn: sa.Connection, limit: int, with_generator: bool) -> list[UUID]:
    """Up to `limit` approved campaigns whose template has (or has not) an active generator,
    oldest change first, locked for this transaction; those another one holds are skipped."""
    return list(
        conn.execute(
            sa.text(
                "SELECT c.id FROM campaigns c WHERE c.status = 'approved'"
                " AND EXISTS (SELECT 1 FROM asset_generate_files g"
                "   WHERE g.template_id = c.template_id AND g.is_active) = :generator"
                " ORDER BY c.updated_at LIMIT :n FOR UPDATE SKIP LOCKED"
            ),
            {"n": limit, "generator": with_generator},
        ).scalars()
    )


def campaigns_generating(
    conn: sa.Connection, idle_seconds: float, limit: int
) -> list[tuple[UUID, datetime | None]]:
    """Campaigns in `asset_generation` untouched for `idle_seconds` (candidates for recovery),
    with the time their generation began."""
    rows = conn.execute(
        sa.text(
            "SELECT id, asset_generation_started_at FROM campaigns"
            " WHERE status = 'asset_generation'"
            " AND updated_at < now() - make_interval(secs => :s)"
            " ORDER BY updated_at LIMIT :n"
        ),
        {"s": idle_seconds, "n": limit},
    )
    return [(row.id, row.asset_generation_started_at) for row in rows]


def fail_generation(conn: sa.Connection, campaign_id: str, reason: str) -> None:
    set_campaign_status(conn, campaign_id, "failed", reason)
    conn.execute(
        sa.text(
            "UPDATE campaigns SET asset_generation_status = 'failed',"
            " asset_generation_completed_at = now() WHERE id = :c"
        ),
        {"c": campaign_id},
    )


def campaigns_with_stuck_members(conn: sa.Connection, minutes: float) -> list[UUID]:
    return list(
        conn.execute(
            sa.text(
                "SELECT DISTINCT campaign_id FROM campaign_audience"
                " WHERE status = 'asset_generating'"
                " AND status_changed_at < now() - make_interval(secs => :m * 60)"
            ),
            {"m": minutes},
        ).scalars()
    )


def reset_stuck_members(
    conn: sa.Connection, campaign_id: UUID, minutes: float, live_run_ids: list[str]
) -> int:
    """`asset_generating → pending` for members claimed more than `minutes` ago by a run
    that is not alive."""
    return conn.execute(
        sa.text(
            "UPDATE campaign_audience SET status = 'pending', status_changed_at = now(),"
            " claimed_by_run = NULL"
            " WHERE campaign_id = :c AND status = 'asset_generating'"
            " AND status_changed_at < now() - make_interval(secs => :m * 60)"
            " AND (claimed_by_run IS NULL OR claimed_by_run <> ALL(:live))"
        ),
        {"c": campaign_id, "m": minutes, "live": live_run_ids},
    ).rowcount


def release_claims(conn: sa.Connection, campaign_id: str, live_run_ids: list[str]) -> int:
    """Return to `pending` the members claimed by runs that are no longer alive; the claims
    of live runs (this one, its siblings) are theirs."""
    return conn.execute(
        sa.text(
            "UPDATE campaign_audience SET status = 'pending', status_changed_at = now(),"
            " claimed_by_run = NULL"
            " WHERE campaign_id = :c AND status = 'asset_generating'"
            " AND (claimed_by_run IS NULL OR claimed_by_run <> ALL(:live))"
        ),
        {"c": campaign_id, "live": live_run_ids},
    ).rowcount


def claim_members(
    conn: sa.Connection, campaign_id: str, limit: int, run_id: str
) -> list[ClaimedMember]:
    """Move up to `limit` pending members to `asset_generating`, claimed by `run_id`, and
    return them.

    SKIP LOCKED lets concurrent claimers take disjoint sets; the campaign must still be in
    `asset_generation`, so pausing or cancelling it stops the run at its next claim.
    """
    rows = conn.execute(
        sa.text(
            "UPDATE campaign_audience SET status = 'asset_generating', status_changed_at = now(),"
            " claimed_by_run = :run"
            " WHERE id IN (SELECT a.id FROM campaign_audience a JOIN campaigns c"
            "   ON c.id = a.campaign_id AND c.status = 'asset_generation'"
            "   WHERE a.campaign_id = :c AND a.status = ANY(:sources)"
            "   LIMIT :n FOR UPDATE OF a SKIP LOCKED)"
            " RETURNING id, name, msisdn, attributes"
        ),
        {
            "c": campaign_id,
            "n": limit,
            "run": run_id,
            "sources": member_sources("asset_generating"),
        },
    )
    return [ClaimedMember(**row._mapping) for row in rows]


def record_results(conn: sa.Connection, campaign_id: str, results: list[MemberResult]) -> None:
    """Store a batch of outcomes in one statement; a member no longer claimed is left alone.
    The campaign's dispatch run, if one is waiting, is told to look (on commit)."""
    if not results:
        return
    cursor = conn.connection.dbapi_connection.cursor()
    execute_values(
        cursor,
        "UPDATE campaign_audience a SET status = v.status, generated_asset_urls = v.keys::jsonb,"
        " generator_version = v.version::integer, attempts = a.attempts + v.attempts::integer,"
        " last_error = v.error, status_changed_at = now()"
        " FROM (VALUES %s) AS v (id, status, keys, version, attempts, error)"
        " WHERE a.id = v.id::uuid AND a.status = 'asset_generating'",
        [
            (str(r.id), r.status, json.dumps(r.keys), r.version, r.attempts, r.error)
            for r in results
        ],
        page_size=1000,
    )
    if any(r.status == "asset_generated" for r in results):
        media_ready.notify(conn, campaign_id)


@dataclass(frozen=True)
class Completion:
    status: str
    failure_ratio: float | None = None
    reason: str | None = None


def complete(conn: sa.Connection, campaign_id: str, failure_threshold: float) -> Completion:
    """Close the campaign's generation once no member is left to generate.

    Without an active generator the members left `pending` need no media (the contract with
    dispatch). Above the failure threshold the campaign goes to `failed` with the reason.
    """
    status = current_status(conn, campaign_id)
    if status == "failed":  # failed early, its threshold crossed while members were left
        ratio, reason = conn.execute(
            sa.text("SELECT asset_failure_ratio, status_reason FROM campaigns WHERE id = :c"),
            {"c": campaign_id},
        ).one()
        return Completion(status, ratio, reason)
    if status not in ("approved", "asset_generation"):  # paused, cancelled: not ours to move
        return Completion(status or "missing")
    tally = media_tally(conn, campaign_id)
    if tally.left and active_generator(conn, campaign_id) is not None:
        return Completion(status)
    ratio = tally.failed / tally.finished if tally.finished else 0.0
    if ratio > failure_threshold:
        target = "failed"
        reason = _over_threshold(conn, campaign_id, tally.failed, tally.finished, failure_threshold)
    else:
        target, reason = "asset_generated", None
    set_campaign_status(conn, campaign_id, target, reason)
    media_ready.notify(conn, campaign_id)
    conn.execute(
        sa.text(
            "UPDATE campaigns SET asset_generation_status = :g, asset_failure_ratio = :r,"
            " asset_generation_completed_at = now() WHERE id = :c"
        ),
        {
            "g": "failed" if target == "failed" else "completed",
            "r": ratio,
            "c": campaign_id,
        },
    )
    return Completion(target, ratio, reason)


@dataclass(frozen=True)
class Tally:
    """Where a campaign's media stand. `failed` counts media failures only: a member that
    dispatch failed (a bad template parameter) while the rest were being made had its media."""

    failed: int
    generated: int
    left: int
    members: int

    @property
    def finished(self) -> int:
        return self.failed + self.generated


def media_tally(conn: sa.Connection, campaign_id: str) -> Tally:
    row = conn.execute(
        sa.text(
            "SELECT count(*) FILTER (WHERE status = 'failed' AND dispatch_run_id IS NULL),"
            " count(*) FILTER (WHERE status = ANY(:generated)"
            "   OR (status = 'failed' AND dispatch_run_id IS NOT NULL)),"
            " count(*) FILTER (WHERE status IN ('pending', 'asset_generating')),"
            " count(*) FILTER (WHERE status <> 'skipped')"
            " FROM campaign_audience WHERE campaign_id = :c"
        ),
        {"c": campaign_id, "generated": list(GENERATED)},
    ).one()
    return Tally(*row)


def fail_if_certain(conn: sa.Connection, campaign_id: str, failure_threshold: float) -> bool:
    """Fail the campaign's generation as soon as its failure ratio is sure to end above the
    threshold: more of all its members have failed than the threshold allows, whatever the
    rest do. Its dispatch run and the sender then stop the rest as a pause would (what was
    already sent stays sent, and the reason says how much). Whether it failed now."""
    if current_status(conn, campaign_id) != "asset_generation":
        return False
    tally = media_tally(conn, campaign_id)
    if not tally.members or tally.failed / tally.members <= failure_threshold:
        return False
    fail_generation(
        conn,
        campaign_id,
        _over_threshold(conn, campaign_id, tally.failed, tally.members, failure_threshold),
    )
    # What the reason says: the share of all members already failed, a floor of the end's.
    conn.execute(
        sa.text("UPDATE campaigns SET asset_failure_ratio = :r WHERE id = :c"),
        {"r": tally.failed / tally.members, "c": campaign_id},
    )
    media_ready.notify(conn, campaign_id)
    return True


def _over_threshold(
    conn: sa.Connection, campaign_id: str, failed: int, of: int, failure_threshold: float
) -> str:
    sent = conn.execute(
        sa.text(
            "SELECT count(*) FROM messages m JOIN campaign_runs r ON r.id = m.campaign_run_id"
            " WHERE r.campaign_id = :c AND m.status IN ('sending', 'sent', 'delivered', 'read')"
        ),
        {"c": campaign_id},
    ).scalar_one()
    reason = (
        f"{failed} of {of} members ({failed / of:.1%}) failed media generation,"
        f" above the {failure_threshold:.0%} threshold"
    )
    if sent:
        reason += f"; {sent} message(s) had already been sent, the rest are held"
    return reason
