"""A campaign's media generation: its moves `approved → asset_generation → asset_generated |
failed` (through `set_campaign_status`), decided from where its members stand (their claims
and results are `resources/audience.py`'s), and the `asset_generation_*` and
`asset_failure_ratio` columns that record it. The media capability (`assets_defs/media`)
calls these.

Every move is set-based SQL guarded by the source state of `resources/status.py`, so two
runs, a sensor and an operator can act at once without a campaign being moved twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import sqlalchemy as sa

from resources import audience, media_ready, messages
from resources.campaigns import current_status, set_campaign_status, set_campaigns_status
from resources.sandbox.pool import Generator


def active_generator(conn: sa.Connection, campaign_id: UUID) -> Generator | None:
    row = conn.execute(
        sa.text(
            "SELECT g.template_id, g.version, g.file_name, g.file_content AS source"
            " FROM campaigns c JOIN asset_generate_files g"
            " ON g.template_id = c.template_id AND g.is_active WHERE c.id = :c"
        ),
        {"c": campaign_id},
    ).one_or_none()
    return Generator(**row._mapping) if row else None


def start_generation(conn: sa.Connection, campaign_id: UUID) -> None:
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


def fail_generation(conn: sa.Connection, campaign_id: UUID, reason: str) -> None:
    set_campaign_status(conn, campaign_id, "failed", reason)
    conn.execute(
        sa.text(
            "UPDATE campaigns SET asset_generation_status = 'failed',"
            " asset_generation_completed_at = now() WHERE id = :c"
        ),
        {"c": campaign_id},
    )


@dataclass(frozen=True)
class Completion:
    status: str
    failure_ratio: float | None = None
    reason: str | None = None


def complete(conn: sa.Connection, campaign_id: UUID, failure_threshold: float) -> Completion:
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
    tally = audience.media_tally(conn, campaign_id)
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


def fail_if_certain(conn: sa.Connection, campaign_id: UUID, failure_threshold: float) -> bool:
    """Fail the campaign's generation as soon as its failure ratio is sure to end above the
    threshold: more of all its members have failed than the threshold allows, whatever the
    rest do. Its dispatch run and the sender then stop the rest as a pause would (what was
    already sent stays sent, and the reason says how much). Whether it failed now."""
    if current_status(conn, campaign_id) != "asset_generation":
        return False
    tally = audience.media_tally(conn, campaign_id)
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
    conn: sa.Connection, campaign_id: UUID, failed: int, of: int, failure_threshold: float
) -> str:
    sent = messages.sent_count(conn, campaign_id)
    reason = (
        f"{failed} of {of} members ({failed / of:.1%}) failed media generation,"
        f" above the {failure_threshold:.0%} threshold"
    )
    if sent:
        reason += f"; {sent} message(s) had already been sent, the rest are held"
    return reason
