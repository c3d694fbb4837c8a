"""Audience members as the runs move them: the media runs' claims and results, the recovery
of claims a dead run left, and dispatch's decisions and its record of what SQS holds; and
the member a generator is tried on.

Every move is set-based SQL guarded by the source states of `resources/status.py`, so two
runs, a sensor and an operator can act at once without a member being done twice. The
audience an operator uploads and reads is `resources/campaigns.py`'s.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from psycopg2.extras import execute_values

from resources import media_ready
from resources.status import member_sources

# Below every member's id: where a run's claims start.
FIRST_MEMBER = UUID(int=0)
# The one status members are claimed from: a claim reads the (campaign, status, id) index.
(CLAIMABLE,) = member_sources("asset_generating")
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


def first_member(conn: sa.Connection, campaign_id: UUID) -> dict[str, Any] | None:
    """The campaign's first member in import order (name, msisdn, attributes): the sample
    a generator is tried on."""
    row = conn.execute(
        sa.text(
            "SELECT name, msisdn, attributes FROM campaign_audience WHERE campaign_id = :c"
            " ORDER BY created_at, id LIMIT 1"
        ),
        {"c": campaign_id},
    ).one_or_none()
    return dict(row._mapping) if row else None


# -- The media runs ------------------------------------------------------------------------


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


def release_claims(conn: sa.Connection, campaign_id: UUID, live_run_ids: list[str]) -> int:
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
    conn: sa.Connection, campaign_id: UUID, limit: int, run_id: str, after: UUID = FIRST_MEMBER
) -> list[ClaimedMember]:
    """Move up to `limit` pending members with ids above `after` to `asset_generating`,
    claimed by `run_id`, and return them in id order.

    A run claims in id order, each claim after its last one: the claim reads the campaign's
    index from there instead of passing over every member already done (which made a
    campaign's claims cost the square of its size). SKIP LOCKED lets concurrent claimers
    take disjoint sets; the campaign must still be in `asset_generation`, so pausing or
    cancelling it stops the run at its next claim.
    """
    rows = conn.execute(
        sa.text(
            "UPDATE campaign_audience SET status = 'asset_generating', status_changed_at = now(),"
            " claimed_by_run = :run"
            " WHERE id IN (SELECT a.id FROM campaign_audience a JOIN campaigns c"
            "   ON c.id = a.campaign_id AND c.status = 'asset_generation'"
            "   WHERE a.campaign_id = :c AND a.status = :claimable AND a.id > :after"
            "   ORDER BY a.id LIMIT :n FOR UPDATE OF a SKIP LOCKED)"
            " RETURNING id, name, msisdn, attributes"
        ),
        {
            "c": campaign_id,
            "after": after,
            "n": limit,
            "run": run_id,
            "claimable": CLAIMABLE,
        },
    )
    return sorted((ClaimedMember(**row._mapping) for row in rows), key=lambda m: m.id)


def record_results(conn: sa.Connection, campaign_id: UUID, results: list[MemberResult]) -> None:
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


def media_tally(conn: sa.Connection, campaign_id: UUID) -> Tally:
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


def media_outcomes(conn: sa.Connection, campaign_id: UUID) -> tuple[int, int]:
    """How many members got media (from any generator version), and how many failed to."""
    generated, failed = conn.execute(
        sa.text(
            "SELECT count(*) FILTER (WHERE generator_version IS NOT NULL),"
            " count(*) FILTER (WHERE status = 'failed' AND generator_version IS NULL)"
            " FROM campaign_audience WHERE campaign_id = :c"
        ),
        {"c": campaign_id},
    ).one()
    return generated, failed


def generated_media(conn: sa.Connection, campaign_id: UUID) -> Iterator[tuple[UUID, dict]]:
    """Each member with media and the object keys recorded for them, streamed (a thousand
    rows a fetch) for a check that reads the whole audience."""
    rows = conn.execution_options(yield_per=1000).execute(
        sa.text(
            "SELECT id, generated_asset_urls FROM campaign_audience"
            " WHERE campaign_id = :c AND status = ANY(:generated)"
        ),
        {"c": campaign_id, "generated": list(GENERATED)},
    )
    yield from rows


# -- Dispatch --------------------------------------------------------------------------------


def candidate_page(
    conn: sa.Connection,
    campaign_id: UUID,
    campaign_run_id: int,
    statuses: Sequence[str],
    after: str,
    limit: int,
) -> list[sa.Row]:
    """Up to `limit` members after the member id `after`, in id order, in `statuses`, not
    yet decided by the run nor stored for it, each with its contact (id, name, attributes,
    opt-outs).

    "Not stored" is one probe of the (member, run) key per member, planned so whatever the
    statistics say: they never know a run newer than their last ANALYZE, and, expecting it
    to have one row, the planner compared each member with every row the run had stored
    (`sql/022_member_run_key.sql`). `OFFSET 0` keeps the probe from becoming a join, and
    `IS NOT DISTINCT FROM`, which no index serves, keeps it off the indexes led by the run."""
    return conn.execute(
        sa.text(
            "SELECT a.id::text, a.msisdn, a.name, a.attributes, a.generated_asset_urls,"
            " ct.id, ct.name, ct.attributes, COALESCE(ct.opted_out, false),"
            " COALESCE(ct.marketing_opted_out, false)"
            " FROM campaign_audience a LEFT JOIN contacts ct ON ct.id = a.contact_id"
            " WHERE a.campaign_id = :c AND a.id > CAST(:after AS uuid)"
            " AND a.status = ANY(:statuses)"
            " AND a.dispatch_run_id IS DISTINCT FROM :r"
            " AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.campaign_audience_id = a.id"
            "   AND m.campaign_run_id IS NOT DISTINCT FROM :r OFFSET 0)"
            " ORDER BY a.id LIMIT :n"
        ),
        {
            "c": campaign_id,
            "statuses": list(statuses),
            "r": campaign_run_id,
            "after": after,
            "n": limit,
        },
    ).all()


def decide(conn: sa.Connection, campaign_run_id: int, status: str, reasons: dict[str, str]) -> None:
    """Move members (id → reason) to `failed`/`skipped` for the run, along the status
    machine."""
    conn.execute(
        sa.text(
            "UPDATE campaign_audience a SET status = :s, last_error = v.reason,"
            " status_changed_at = now(), dispatch_run_id = :r"
            " FROM unnest(CAST(:ids AS uuid[]), CAST(:reasons AS text[])) AS v(id, reason)"
            " WHERE a.id = v.id AND a.status = ANY(:sources)"
        ),
        {
            "s": status,
            "r": campaign_run_id,
            "ids": list(reasons),
            "reasons": list(reasons.values()),
            "sources": member_sources(status),
        },
    )


def mark_queued(conn: sa.Connection, campaign_run_id: int, member_ids: list[str]) -> None:
    """The one write of each queued member: `ready_to_send` with this run, the record that
    SQS has it (a member already `ready_to_send`, from an earlier run of a recurring
    campaign, gets this run)."""
    conn.execute(
        sa.text(
            "UPDATE campaign_audience SET status = 'ready_to_send', last_error = NULL,"
            " status_changed_at = now(), dispatch_run_id = :r"
            " WHERE id = ANY(CAST(:ids AS uuid[])) AND status = ANY(:sources)"
        ),
        {
            "r": campaign_run_id,
            "ids": member_ids,
            "sources": [*member_sources("ready_to_send"), "ready_to_send"],
        },
    )


@dataclass(frozen=True)
class RunMembers:
    failed: int
    skipped: int
    eligible: int


def run_members(
    conn: sa.Connection, campaign_id: UUID, campaign_run_id: int, candidates: Sequence[str]
) -> RunMembers:
    """The members the run failed or skipped, and those it had to decide (its own, and
    those still in `candidates`)."""
    row = conn.execute(
        sa.text(
            "SELECT count(*) FILTER (WHERE dispatch_run_id = :r AND status = 'failed'),"
            " count(*) FILTER (WHERE dispatch_run_id = :r AND status = 'skipped'),"
            " count(*) FILTER (WHERE dispatch_run_id = :r OR status = ANY(:candidates))"
            " FROM campaign_audience WHERE campaign_id = :c"
        ),
        {"r": campaign_run_id, "c": campaign_id, "candidates": list(candidates)},
    ).one()
    return RunMembers(*row)
