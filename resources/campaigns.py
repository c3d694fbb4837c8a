"""Campaigns and their audiences: typed data access for them (and for the organisations,
templates and generators they are made from), the one place that writes a campaign's
status (`set_campaign_status`, along the moves of `resources.status`), and what an operator
does to a campaign before it runs: create it, import and list its audience, check its
readiness and approve it.

Bad input raises `InvalidInput` listing every problem, a missing campaign `NotFound`, a
refused status change `Conflict`."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from psycopg2.extras import execute_values

from resources import contact_csv, recurrence
from resources import templates as meta_templates
from resources.audience import FIRST_MEMBER
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
from resources.phone import stored_form
from resources.queue_message import MESSAGE_TYPES, CampaignSpec
from resources.readiness import NotReady, Report
from resources.readiness import check as check_readiness
from resources.settings import is_production
from resources.status import MEMBER_MOVES, campaign_sources, member_sources


class InvalidTransition(RuntimeError):
    """A status change the status machine does not allow from the row's current status."""


@dataclass(frozen=True)
class Member:
    msisdn: str
    name: str | None = None
    attributes: dict[str, Any] | None = None


@dataclass(frozen=True)
class Campaign:
    id: UUID
    organisation_id: UUID
    name: str
    status: str
    recurrence: str
    message_type: str
    template_id: int | None
    start_at: datetime
    end_at: datetime | None


@dataclass(frozen=True)
class Schedule:
    """When a campaign's occurrences fall, and its status now."""

    id: UUID
    status: str
    recurrence: str
    start_at: datetime
    end_at: datetime | None


def create_organisation(conn: sa.Connection, name: str, messaging_limit: int | None = 250) -> UUID:
    return conn.execute(
        sa.text("INSERT INTO organisations (name, messaging_limit) VALUES (:n, :l) RETURNING id"),
        {"n": name, "l": messaging_limit},
    ).scalar_one()


def add_phone_number(
    conn: sa.Connection, organisation_id: UUID, phone_number_id: str, messages_per_second: int = 80
) -> bool:
    """Register the phone number for the organisation; False if some organisation (this one
    or another) already holds it, which is left as it is."""
    added = conn.execute(
        sa.text(
            "INSERT INTO phone_numbers (phone_number_id, organisation_id, messages_per_second)"
            " VALUES (:p, :o, :r) ON CONFLICT (phone_number_id) DO NOTHING RETURNING 1"
        ),
        {"p": phone_number_id, "o": organisation_id, "r": messages_per_second},
    ).first()
    return added is not None


def create_template(
    conn: sa.Connection,
    organisation_id: UUID,
    name: str,
    *,
    language: str = "en",
    message_type: str = "text",
    body: str | None = None,
    parameters: list[dict[str, str]] | None = None,
    category: str = "marketing",
) -> int:
    return conn.execute(
        sa.text(
            "INSERT INTO templates (organisation_id, name, language, message_type, body, parameters, category)"
            " VALUES (:o, :n, :l, :t, :b, CAST(:p AS jsonb), :c) RETURNING id"
        ),
        {
            "o": organisation_id,
            "n": name,
            "l": language,
            "t": message_type,
            "b": body,
            "p": json.dumps(parameters or []),
            "c": category,
        },
    ).scalar_one()


def add_generator(
    conn: sa.Connection, template_id: int, file_name: str, source: str, description: str = ""
) -> int:
    """Store a new generator version for the template and make it the only active one."""
    conn.execute(
        sa.text(
            "UPDATE asset_generate_files SET is_active = false WHERE template_id = :t AND is_active"
        ),
        {"t": template_id},
    )
    return conn.execute(
        sa.text(
            "INSERT INTO asset_generate_files (template_id, file_name, file_content, description, version)"
            " SELECT :t, :f, :s, :d, COALESCE(MAX(version), 0) + 1 FROM asset_generate_files"
            " WHERE template_id = :t RETURNING version"
        ),
        {"t": template_id, "f": file_name, "s": source, "d": description},
    ).scalar_one()


def create_campaign(
    conn: sa.Connection,
    organisation_id: UUID,
    name: str,
    *,
    message_type: str,
    template_id: int | None = None,
    message_content: str | None = None,
    media_caption: str | None = None,
    recurrence: str = "once",
    start_at: datetime | None = None,
    end_at: datetime | None = None,
    phone_number_id: str | None = None,
) -> UUID:
    return conn.execute(
        sa.text(
            "INSERT INTO campaigns (organisation_id, name, message_type, template_id, message_content,"
            " media_caption, recurrence, start_at, end_at, phone_number_id)"
            " VALUES (:o, :n, :mt, :t, :mc, :cap, :r, COALESCE(:s, now()), :e, :p) RETURNING id"
        ),
        {
            "o": organisation_id,
            "n": name,
            "mt": message_type,
            "t": template_id,
            "mc": message_content,
            "cap": media_caption,
            "r": recurrence,
            "s": start_at,
            "e": end_at,
            "p": phone_number_id,
        },
    ).scalar_one()


# An upload of at least this many members refreshes the audience table's statistics.
ANALYZE_AFTER_MEMBERS = 1000


def add_audience(conn: sa.Connection, campaign_id: UUID, members: Iterable[Member]) -> int:
    """Insert members (a repeated msisdn is ignored) and link each valid number to its contact.
    Numbers are parsed here, once: dispatch only checks their shape. Returns how many members
    were added, over every page of the insert. A large upload is analyzed at once."""
    rows = [
        (campaign_id, stored_form(m.msisdn), m.name, json.dumps(m.attributes or {}))
        for m in members
    ]
    cursor = conn.connection.dbapi_connection.cursor()
    # One row back per member inserted, from every page (`rowcount` is the last page's).
    added = execute_values(
        cursor,
        "INSERT INTO campaign_audience (campaign_id, msisdn, name, attributes)"
        " VALUES %s ON CONFLICT (campaign_id, msisdn) DO NOTHING RETURNING 1",
        [(str(c), msisdn, name, attrs) for c, msisdn, name, attrs in rows],
        template="(%s, %s, %s, %s::jsonb)",
        page_size=1000,
        fetch=True,
    )
    inserted = len(added)
    params = {"c": campaign_id}
    conn.execute(
        sa.text(
            "INSERT INTO contacts (organisation_id, phone, name)"
            " SELECT DISTINCT ON (a.msisdn) c.organisation_id, a.msisdn, a.name"
            " FROM campaign_audience a JOIN campaigns c ON c.id = a.campaign_id"
            " WHERE a.campaign_id = :c AND a.msisdn ~ '^\\+[1-9][0-9]{6,14}$'"
            " ON CONFLICT (organisation_id, phone) DO NOTHING"
        ),
        params,
    )
    conn.execute(
        sa.text(
            "UPDATE campaign_audience a SET contact_id = ct.id"
            " FROM campaigns c, contacts ct"
            " WHERE a.campaign_id = :c AND c.id = a.campaign_id AND a.contact_id IS NULL"
            " AND ct.organisation_id = c.organisation_id AND ct.phone = a.msisdn"
        ),
        params,
    )
    if inserted >= ANALYZE_AFTER_MEMBERS:
        # The planner's picture of the table before these rows says the campaign has none,
        # and plans its runs' claims and pages for none (the dispatch of 50,000 members ran
        # at about two thirds of its rate until autovacuum's next look). A table not ours
        # to analyze is skipped with a warning, not an error.
        conn.execute(sa.text("ANALYZE campaign_audience"))
    return inserted


def get_campaign(conn: sa.Connection, campaign_id: UUID) -> Campaign | None:
    row = conn.execute(
        sa.text(
            "SELECT id, organisation_id, name, status, recurrence, message_type, template_id,"
            " start_at, end_at FROM campaigns WHERE id = :id"
        ),
        {"id": campaign_id},
    ).one_or_none()
    return Campaign(**row._mapping) if row else None


def current_status(conn: sa.Connection, campaign_id: UUID, lock: bool = False) -> str | None:
    """The campaign's status now, or None if there is no such campaign; with `lock`, the
    row stays locked until the transaction ends, so the status cannot change under it."""
    return conn.execute(
        sa.text("SELECT status FROM campaigns WHERE id = :c" + (" FOR UPDATE" if lock else "")),
        {"c": campaign_id},
    ).scalar_one_or_none()


def campaign_exists(conn: sa.Connection, campaign_id: UUID) -> bool:
    return (
        conn.execute(
            sa.text("SELECT 1 FROM campaigns WHERE id = :c"), {"c": campaign_id}
        ).scalar_one_or_none()
        is not None
    )


def schedules(conn: sa.Connection, statuses: list[str], after: str, limit: int) -> list[Schedule]:
    """Up to `limit` campaigns in one of `statuses` whose id (as text) comes after `after`,
    in that order: a page of the campaigns that may have occurrences due."""
    rows = conn.execute(
        sa.text(
            "SELECT id, status, recurrence, start_at, end_at FROM campaigns"
            " WHERE status = ANY(:active) AND id::text > :after ORDER BY id::text LIMIT :limit"
        ),
        {"active": statuses, "after": after, "limit": limit},
    )
    return [Schedule(*row) for row in rows]


def locked_schedule(
    conn: sa.Connection, campaign_id: UUID
) -> tuple[str, str, datetime, datetime | None]:
    """The campaign's status, recurrence, start and end, its row locked until the
    transaction ends."""
    status, kind, start_at, end_at = conn.execute(
        sa.text(
            "SELECT status, recurrence, start_at, end_at FROM campaigns WHERE id = :c FOR UPDATE"
        ),
        {"c": campaign_id},
    ).one()
    return status, kind, start_at, end_at


def campaign_spec(
    conn: sa.Connection, campaign_id: UUID, default_phone_number_id: str
) -> CampaignSpec:
    """What every message of the campaign is made from: its content and its template's
    name, language, parameters and category (the phone number ID `default_phone_number_id`
    when the campaign names none)."""
    row = conn.execute(
        sa.text(
            "SELECT c.id::text, c.organisation_id::text, c.message_type, c.phone_number_id,"
            " c.message_content, c.media_caption, t.name, t.language, t.parameters, t.category"
            " FROM campaigns c LEFT JOIN templates t ON t.id = c.template_id WHERE c.id = :c"
        ),
        {"c": campaign_id},
    ).one()
    return CampaignSpec(
        id=row[0],
        organisation_id=row[1],
        message_type=row[2],
        phone_number_id=row[3] or default_phone_number_id,
        category=row[9] or "marketing",
        message_content=row[4],
        media_caption=row[5],
        template_name=row[6],
        template_language=row[7],
        template_parameters=row[8] or [],
    )


def paused_from(conn: sa.Connection, campaign_id: UUID) -> str | None:
    """The status a paused campaign was paused in (None when it is not paused)."""
    return conn.execute(
        sa.text("SELECT paused_from FROM campaigns WHERE id = :c"), {"c": campaign_id}
    ).scalar_one()


def set_paused_from(conn: sa.Connection, campaign_id: UUID, status: str | None) -> None:
    """Remember the status a campaign is paused in, for its resume (None once resumed)."""
    conn.execute(
        sa.text("UPDATE campaigns SET paused_from = :s WHERE id = :c"),
        {"s": status, "c": campaign_id},
    )


def set_campaign_status(
    conn: sa.Connection, campaign_id: UUID, status: str, reason: str | None = None
) -> None:
    """Move a campaign, atomically, only along an allowed edge of its status machine."""
    moved = conn.execute(
        sa.text(
            "UPDATE campaigns SET status = :s, status_reason = :r"
            " WHERE id = :id AND status = ANY(:sources) RETURNING id"
        ),
        {"s": status, "r": reason, "id": campaign_id, "sources": campaign_sources(status)},
    ).one_or_none()
    if moved is None:
        current = conn.execute(
            sa.text("SELECT status FROM campaigns WHERE id = :id"), {"id": campaign_id}
        ).scalar_one_or_none()
        raise InvalidTransition(
            f"campaign {campaign_id}: cannot move from {current or 'missing'} to {status}"
        )


def set_campaigns_status(
    conn: sa.Connection, campaign_ids: Iterable[UUID], status: str, reason: str | None = None
) -> list[UUID]:
    """Move each of these campaigns still in a source state of `status` (a set-based
    `set_campaign_status` for the ones a caller selected and locked); returns those moved."""
    return list(
        conn.execute(
            sa.text(
                "UPDATE campaigns SET status = :s, status_reason = :r"
                " WHERE id = ANY(:ids) AND status = ANY(:sources) RETURNING id"
            ),
            {
                "s": status,
                "r": reason,
                "ids": list(campaign_ids),
                "sources": campaign_sources(status),
            },
        ).scalars()
    )


def set_member_status(
    conn: sa.Connection, member_id: UUID, status: str, error: str | None = None
) -> bool:
    """Move one audience member along its status machine; False if it was not in a source state."""
    return (
        conn.execute(
            sa.text(
                "UPDATE campaign_audience SET status = :s, last_error = :e, status_changed_at = now()"
                " WHERE id = :id AND status = ANY(:sources) RETURNING id"
            ),
            {"s": status, "e": error, "id": member_id, "sources": member_sources(status)},
        ).one_or_none()
        is not None
    )


def audience_counts(conn: sa.Connection, campaign_id: UUID) -> dict[str, int]:
    rows = conn.execute(
        sa.text(
            "SELECT status, count(*) FROM campaign_audience WHERE campaign_id = :c GROUP BY status"
        ),
        {"c": campaign_id},
    )
    return {status: count for status, count in rows}


def campaign_row(conn: sa.Connection, campaign_id: UUID) -> dict[str, Any] | None:
    """The campaign's fields an operator reads, or None."""
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
    return dict(row) if row else None


def audience_page(
    conn: sa.Connection, campaign_id: UUID, status: str | None, limit: int, after: str
) -> list[dict[str, Any]]:
    """Up to `limit` members after the member id `after`, in id order (only those in
    `status` if given)."""
    rows = conn.execute(
        sa.text(
            "SELECT id::text, msisdn, name, attributes, status, last_error, generated_asset_urls,"
            " status_changed_at FROM campaign_audience"
            " WHERE campaign_id = :c AND id > CAST(:after AS uuid)"
            " AND (CAST(:s AS text) IS NULL OR status = :s) ORDER BY id LIMIT :n"
        ),
        {"c": campaign_id, "after": after, "s": status, "n": limit},
    ).mappings()
    return [dict(r) for r in rows]


def holds_number(conn: sa.Connection, organisation_id: UUID, phone_number_id: str) -> bool:
    """Whether the phone number ID is one of the organisation's."""
    return bool(
        conn.execute(
            sa.text(
                "SELECT 1 FROM phone_numbers WHERE phone_number_id = :p AND organisation_id = :o"
            ),
            {"p": phone_number_id, "o": organisation_id},
        ).scalar()
    )


# -- What an operator does to a campaign: create it, fill its audience, approve it ----------

MEMBER_STATUSES = tuple(MEMBER_MOVES)


def require_campaign(conn: sa.Connection, campaign_id: UUID) -> Campaign:
    """The campaign, or `NotFound`."""
    campaign = get_campaign(conn, campaign_id)
    if campaign is None:
        raise NotFound(f"campaign {campaign_id} does not exist")
    return campaign


def create_draft(engine: sa.Engine, data: dict[str, Any]) -> UUID:
    """A draft campaign from an operator's fields; returns its id. Every bad field is
    listed (`InvalidInput`), and so is a template or phone number ID of another
    organisation."""
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
        if (
            data.get("template_id") is not None
            and meta_templates.organisation_of_template(conn, data["template_id"]) != organisation
        ):
            raise InvalidInput(
                [{"field": "template_id", "error": "no such template in this organisation"}]
            )
        if data.get("phone_number_id") not in (None, "") and not holds_number(
            conn, organisation, str(data["phone_number_id"])
        ):
            raise InvalidInput(
                [{"field": "phone_number_id", "error": "no such phone number in this organisation"}]
            )
        try:
            campaign = create_campaign(
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
    return campaign


def import_audience(engine: sa.Engine, campaign_id: UUID, text: str) -> dict[str, int]:
    """Add members to a campaign that is still a draft (numbers normalised, repeats refused).

    Counts are for the whole file, as the contacts import's: `imported` rows, of which
    `created` new members and `already_present` members the campaign already had."""
    try:
        rows = contact_csv.parse(text)
    except contact_csv.InvalidCSV as error:
        raise InvalidInput(error.errors) from None
    with engine.begin() as conn:
        # An approval under way (it locks the campaign) checks every member: wait for it.
        conn.execute(sa.text("SELECT 1 FROM campaigns WHERE id = :c FOR SHARE"), {"c": campaign_id})
        campaign = require_campaign(conn, campaign_id)
        if campaign.status != "draft":
            raise Conflict(
                f"campaign {campaign_id} is {campaign.status}; audiences change only while it is a draft"
            )
        added = add_audience(
            conn, campaign_id, [Member(r.phone, r.name, r.attributes) for r in rows]
        )
    return {"imported": len(rows), "created": added, "already_present": len(rows) - added}


def list_audience(
    engine: sa.Engine,
    campaign_id: UUID,
    status: str | None = None,
    limit: int = 100,
    after: str | None = None,
) -> dict[str, Any]:
    """One page of members in id order; pass `next_after` back as `after` for the next page."""
    errors = []
    if status is not None and status not in MEMBER_STATUSES:
        errors.append({"field": "status", "error": f"must be one of {', '.join(MEMBER_STATUSES)}"})
    if not 1 <= limit <= MAX_PAGE:
        errors.append({"field": "limit", "error": f"must be between 1 and {MAX_PAGE}"})
    if errors:
        raise InvalidInput(errors)
    after = as_uuid(after, "after") if after else FIRST_MEMBER
    with engine.connect() as conn:
        require_campaign(conn, campaign_id)
        items = audience_page(conn, campaign_id, status, limit, after)
    return {"items": items, "next_after": items[-1]["id"] if len(items) == limit else None}


def approve(engine: sa.Engine, campaign_id: UUID) -> Report:
    """`draft → approved`, only for a campaign that can send what it is meant to: its
    template is approvable (`_template_approvable`) and `resources.readiness` finds no
    problem, else `NotReady` lists them and nothing changes. Returns the readiness report
    (its warnings, e.g. a check that could not be made)."""
    with engine.begin() as conn:
        campaign = require_campaign(conn, campaign_id)
        try:
            # Also locks the campaign: an audience import waits until this commits.
            set_campaign_status(conn, campaign_id, "approved")
        except InvalidTransition as error:
            raise Conflict(str(error)) from None
        _template_approvable(conn, campaign.template_id)
        report = check_readiness(conn, campaign_id, is_production())
        if report is None:
            raise NotFound(f"campaign {campaign_id} does not exist")
        if not report.ready:
            raise NotReady(report)
    return report


def readiness_of(engine: sa.Engine, campaign_id: UUID) -> Report:
    """What approval checks, now, without approving or changing anything."""
    with engine.connect() as conn:
        report = check_readiness(conn, campaign_id, is_production())
    if report is None:
        raise NotFound(f"campaign {campaign_id} does not exist")
    return report


def _template_approvable(conn: sa.Connection, template_id: int | None) -> None:
    """A template campaign is approved only on a template Meta has APPROVED (in development,
    also one declared approved locally) whose parameters fit Meta's components."""
    if template_id is None:
        return
    refusal = meta_templates.approval_refusal(conn, template_id, is_production())
    if refusal is None:
        return
    if refusal.kind == "conflict":
        raise Conflict("; ".join(refusal.reasons))
    raise InvalidInput([{"field": "template", "error": reason} for reason in refusal.reasons])
