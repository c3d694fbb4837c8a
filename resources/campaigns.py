"""Typed data access for organisations, templates, generators, campaigns and audiences."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from psycopg2.extras import execute_values

from resources.status import campaign_sources, member_sources


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


def add_audience(conn: sa.Connection, campaign_id: UUID, members: Iterable[Member]) -> int:
    """Insert members (a repeated msisdn is ignored) and link each valid number to its contact.
    Returns how many members were added, over every page of the insert."""
    rows = [(campaign_id, m.msisdn, m.name, json.dumps(m.attributes or {})) for m in members]
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
    return inserted


def get_campaign(conn: sa.Connection, campaign_id: UUID | str) -> Campaign | None:
    row = conn.execute(
        sa.text(
            "SELECT id, organisation_id, name, status, recurrence, message_type, template_id,"
            " start_at, end_at FROM campaigns WHERE id = :id"
        ),
        {"id": campaign_id},
    ).one_or_none()
    return Campaign(**row._mapping) if row else None


def current_status(conn: sa.Connection, campaign_id: UUID | str) -> str | None:
    """The campaign's status now, or None if there is no such campaign."""
    return conn.execute(
        sa.text("SELECT status FROM campaigns WHERE id = :c"), {"c": campaign_id}
    ).scalar_one_or_none()


def set_campaign_status(
    conn: sa.Connection, campaign_id: UUID | str, status: str, reason: str | None = None
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
    conn: sa.Connection, member_id: UUID | str, status: str, error: str | None = None
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


def audience_counts(conn: sa.Connection, campaign_id: UUID | str) -> dict[str, int]:
    rows = conn.execute(
        sa.text(
            "SELECT status, count(*) FROM campaign_audience WHERE campaign_id = :c GROUP BY status"
        ),
        {"c": campaign_id},
    )
    return {status: count for status, count in rows}
