"""A contact's consent: two facts, each with the history of how it came to be.

- `campaigns` (the contact's `opted_out`): no campaign message of any category. Set by STOP
  words, a CSV import, the API or an operator; lifted by START, the API or an operator.
- `marketing` (`marketing_opted_out`): no marketing message. Set by WhatsApp itself (the
  `user_preferences` webhook, error 131050 on a send), the API or an operator; lifted by
  the customer's `resume` or an explicit API call.

Every change is a `consent_events` row (what, source, who, why, when); the contact's
columns hold the newest event's value of each scope, so events that arrive out of order
(webhooks do) still leave the contact with the newest fact. Marketing campaigns skip both
facts, utility and authentication ones only `campaigns`: `blocks()` says so in one place,
and the dispatch and the sender's claim follow it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from psycopg2.extras import execute_values

from resources import contact_csv, contact_identity, messages
from resources.errors import InvalidInput, NotFound
from resources.fields import as_uuid
from resources.organisations import require_organisation
from resources.phone import InvalidPhoneNumber, to_e164

log = logging.getLogger(__name__)

SCOPES = ("campaigns", "marketing")
SOURCES = ("keyword", "user_preferences", "error_131050", "csv", "api", "operator")
CATEGORIES = ("marketing", "utility", "authentication")
_COLUMNS = {"campaigns": "opted_out", "marketing": "marketing_opted_out"}
_CHUNK = 10_000


@dataclass(frozen=True)
class Change:
    """One consent change. `occurred_at` is when the source says it happened (a webhook's
    timestamp); left out, it is now, and a change that changes nothing is not recorded."""

    contact_id: int
    scope: str
    opted_out: bool
    source: str
    occurred_at: datetime | None = None
    actor: str | None = None
    reason: str | None = None
    message_id: int | None = None

    def __post_init__(self) -> None:
        _check(self.scope, self.source)


def _check(scope: str, source: str) -> None:
    if scope not in SCOPES:
        raise ValueError(f"consent scope must be one of {', '.join(SCOPES)}")
    if source not in SOURCES:
        raise ValueError(f"consent source must be one of {', '.join(SOURCES)}")


def blocks(category: str | None, opted_out: bool, marketing_opted_out: bool) -> str | None:
    """Why a campaign message of `category` may not go to this contact, or None."""
    if opted_out:
        return "contact opted out of campaign messages"
    if marketing_opted_out and category in (None, "marketing"):
        return "contact opted out of marketing messages"
    return None


def record(conn: sa.Connection, change: Change) -> bool:
    """Record `change` and bring the contact's fact up to date; True when the fact changed."""
    column = _COLUMNS[change.scope]
    if change.occurred_at is None:
        current = conn.execute(
            sa.text(f"SELECT {column} FROM contacts WHERE id = :c FOR UPDATE"),
            {"c": change.contact_id},
        ).scalar_one_or_none()
        if current is None or current == change.opted_out:
            return False
    inserted = conn.execute(
        sa.text(
            "INSERT INTO consent_events (contact_id, scope, opted_out, source, actor, reason,"
            " message_id, occurred_at)"
            " VALUES (:c, :scope, :v, :source, :actor, :reason, :m, COALESCE(:at, now()))"
            " ON CONFLICT DO NOTHING RETURNING id"
        ),
        {
            "c": change.contact_id,
            "scope": change.scope,
            "v": change.opted_out,
            "source": change.source,
            "actor": change.actor,
            "reason": change.reason,
            "m": change.message_id,
            "at": change.occurred_at,
        },
    ).scalar_one_or_none()
    if inserted is None:  # the same webhook event, delivered again
        return False
    return (
        conn.execute(
            sa.text(
                f"UPDATE contacts c SET {column} = e.opted_out,"
                f" {column}_at = CASE WHEN e.opted_out THEN e.occurred_at END"
                " FROM (SELECT opted_out, occurred_at FROM consent_events"
                "   WHERE contact_id = :c AND scope = :scope"
                "   ORDER BY occurred_at DESC, id DESC LIMIT 1) e"
                f" WHERE c.id = :c AND c.{column} IS DISTINCT FROM e.opted_out RETURNING c.id"
            ),
            {"c": change.contact_id, "scope": change.scope},
        ).first()
        is not None
    )


def state(conn: sa.Connection, contact_id: int, history: int = 50) -> dict[str, Any]:
    """The contact's two facts and its newest `history` consent events, newest first."""
    opted_out, marketing_opted_out = conn.execute(
        sa.text("SELECT opted_out, marketing_opted_out FROM contacts WHERE id = :c"),
        {"c": contact_id},
    ).one()
    events = conn.execute(
        sa.text(
            "SELECT scope, opted_out, source, actor, reason, message_id, occurred_at, recorded_at"
            " FROM consent_events WHERE contact_id = :c"
            " ORDER BY occurred_at DESC, id DESC LIMIT :n"
        ),
        {"c": contact_id, "n": history},
    ).mappings()
    return {
        "opted_out": opted_out,
        "marketing_opted_out": marketing_opted_out,
        "consent_history": [dict(e) for e in events],
    }


def record_many(
    conn: sa.Connection,
    contact_ids: list[int],
    scope: str,
    opted_out: bool,
    source: str,
    actor: str | None = None,
    reason: str | None = None,
) -> list[int]:
    """`record()` for many contacts at once, as of now: the contacts whose fact changed.

    A contact already in that state gets no event (as with `record()` without
    `occurred_at`); the others get one each, set-based, and their fact follows the newest.
    """
    _check(scope, source)
    column = _COLUMNS[scope]
    changed: list[int] = []
    for start in range(0, len(contact_ids), _CHUNK):
        chunk = sorted(set(contact_ids[start : start + _CHUNK]))
        to_change = (
            conn.execute(
                sa.text(
                    f"SELECT id FROM contacts WHERE id = ANY(:ids) AND {column} <> :v"
                    " ORDER BY id FOR UPDATE"
                ),
                {"ids": chunk, "v": opted_out},
            )
            .scalars()
            .all()
        )
        if not to_change:
            continue
        conn.execute(
            sa.text(
                "INSERT INTO consent_events (contact_id, scope, opted_out, source, actor, reason,"
                " occurred_at) SELECT c, :scope, :v, :source, :actor, :reason, now()"
                " FROM unnest(CAST(:ids AS bigint[])) c"
            ),
            {
                "ids": to_change,
                "scope": scope,
                "v": opted_out,
                "source": source,
                "actor": actor,
                "reason": reason,
            },
        )
        changed += conn.execute(
            sa.text(
                f"UPDATE contacts c SET {column} = e.opted_out,"
                f" {column}_at = CASE WHEN e.opted_out THEN e.occurred_at END"
                " FROM (SELECT DISTINCT ON (contact_id) contact_id, opted_out, occurred_at"
                "   FROM consent_events WHERE contact_id = ANY(:ids) AND scope = :scope"
                "   ORDER BY contact_id, occurred_at DESC, id DESC) e"
                f" WHERE c.id = e.contact_id AND c.{column} IS DISTINCT FROM e.opted_out"
                " RETURNING c.id"
            ),
            {"ids": to_change, "scope": scope},
        ).scalars()
    return changed


def upsert_contact(
    conn: sa.Connection,
    organisation_id: UUID | str,
    phone: str | None,
    user_id: str | None,
    name: str | None = None,
) -> int:
    """The organisation's contact with this phone (E.164) or business-scoped user id,
    created if there is none; identifiers and name it lacked are filled in."""
    if phone is None and user_id is None:
        raise ValueError("a contact needs a phone number or a user id")
    params = {"o": organisation_id, "p": phone, "u": user_id}
    for _ in range(2):
        found = conn.execute(
            sa.text(
                "SELECT id FROM contacts WHERE organisation_id = :o"
                " AND (phone = :p OR wa_user_id = :u)"
                " ORDER BY (phone = :p) IS TRUE DESC LIMIT 1 FOR UPDATE"
            ),
            params,
        ).scalar_one_or_none()
        if found is not None:
            conn.execute(
                sa.text(
                    "UPDATE contacts SET phone = coalesce(phone, :p),"
                    " wa_user_id = coalesce(wa_user_id, :u), name = coalesce(name, :n)"
                    " WHERE id = :id AND (phone IS NULL AND :p IS NOT NULL"
                    " OR wa_user_id IS NULL AND :u IS NOT NULL OR name IS NULL AND :n IS NOT NULL)"
                ),
                {**params, "n": name, "id": found},
            )
            return found
        created = conn.execute(
            sa.text(
                "INSERT INTO contacts (organisation_id, phone, wa_user_id, name)"
                " VALUES (:o, :p, :u, :n) ON CONFLICT DO NOTHING RETURNING id"
            ),
            {**params, "n": name},
        ).scalar_one_or_none()
        if created is not None:
            return created
    raise RuntimeError("contact vanished while it was being created")


def find_contacts(
    conn: sa.Connection, organisation_id: UUID | str, phone: str | None, user_id: str | None
) -> list[dict[str, Any]]:
    """The organisation's contacts with this phone (E.164) or business-scoped user id, each
    with its consent state and history (`describe()`)."""
    ids = conn.execute(
        sa.text(
            "SELECT id FROM contacts WHERE organisation_id = :o"
            " AND (phone = :p OR wa_user_id = :u) ORDER BY id"
        ),
        {"o": organisation_id, "p": phone, "u": user_id},
    ).scalars()
    return [describe(conn, contact_id) for contact_id in ids.all()]


def template_fields(conn: sa.Connection, contact_id: int) -> sa.Row:
    """What a template's parameters may be filled from: the contact's name, phone and
    attributes."""
    return conn.execute(
        sa.text("SELECT name, phone, attributes FROM contacts WHERE id = :c"), {"c": contact_id}
    ).one()


def describe(conn: sa.Connection, contact_id: int, history: int = 50) -> dict[str, Any]:
    """A contact's identity (and how it changed), its two facts (with when each was set) and
    its consent history."""
    row = (
        conn.execute(
            sa.text(
                "SELECT id, organisation_id, phone, wa_user_id AS user_id, name,"
                " opted_out_at, marketing_opted_out_at FROM contacts WHERE id = :c"
            ),
            {"c": contact_id},
        )
        .mappings()
        .one()
    )
    return {
        **row,
        **state(conn, contact_id, history),
        "identity_history": contact_identity.history(conn, contact_id, history),
    }


def marketing_stopped(
    conn: sa.Connection,
    message_id: int,
    occurred_at: datetime | None = None,
    reason: str | None = None,
) -> None:
    """Error 131050 on `message_id` (the recipient stopped marketing messages, said by the
    send's answer or by a failed receipt): the recipient's marketing opt-out, recorded once
    per message. A message stored without a contact row finds or creates the contact."""
    message = messages.recipient(conn, message_id)
    contact_id = message.contact_id
    if contact_id is None:
        if message.peer_phone is None and message.peer_wa_user_id is None:
            log.warning("message %s failed with 131050 but names no recipient", message_id)
            return
        contact_id = upsert_contact(
            conn, message.organisation_id, message.peer_phone, message.peer_wa_user_id
        )
    already = conn.execute(
        sa.text(
            "SELECT 1 FROM consent_events WHERE contact_id = :c AND scope = 'marketing'"
            " AND source = 'error_131050' AND message_id = :m"
        ),
        {"c": contact_id, "m": message_id},
    ).first()
    if already:
        return
    changed = record(
        conn,
        Change(
            contact_id,
            "marketing",
            True,
            "error_131050",
            occurred_at=occurred_at,
            reason=reason or "error 131050: the recipient stopped marketing messages",
            message_id=message_id,
        ),
    )
    log.info(
        "contact %s opted out of marketing: message %s failed with 131050%s",
        contact_id,
        message_id,
        "" if changed else " (no change)",
    )


# -- What an operator does: import contacts, look them up, change their consent --------


CSV_CANNOT_OPT_IN = (
    "opted_out=false not applied: the contact opted out of campaign messages and a CSV cannot"
    " opt anyone back in (the customer sends START, or the consent API is called with who and"
    " why); the rest of the line was imported"
)


def import_contacts(engine: sa.Engine, organisation_id: str, text: str) -> dict[str, Any]:
    """Create or update the organisation's contacts: name, attributes merged, opt-outs.

    The `opted_out` column can opt contacts out (consent source `csv`), never back in: a
    missing column or an empty cell leaves consent as it is, and `false` on a contact who
    opted out is not applied but listed in `not_applied` with its line. The counts are for
    the whole file."""
    organisation_id = as_uuid(organisation_id, "organisation_id")
    try:
        rows = contact_csv.parse(text, allow_opt_out=True)
    except contact_csv.InvalidCSV as error:
        raise InvalidInput(error.errors) from None
    with engine.begin() as conn:
        require_organisation(conn, organisation_id)
        cursor = conn.connection.dbapi_connection.cursor()
        upserted = execute_values(
            cursor,
            "INSERT INTO contacts (organisation_id, phone, name, attributes)"
            " VALUES %s ON CONFLICT (organisation_id, phone) DO UPDATE SET"
            " name = COALESCE(EXCLUDED.name, contacts.name),"
            " attributes = contacts.attributes || EXCLUDED.attributes"
            " RETURNING phone, id, (xmax = 0) AS created, opted_out",
            [(organisation_id, r.phone, r.name, json.dumps(r.attributes)) for r in rows],
            template="(%s, %s, %s, %s::jsonb)",
            page_size=1000,
            fetch=True,
        )
        contacts = {
            phone: (contact_id, created, out) for phone, contact_id, created, out in upserted
        }
        not_applied = [
            {"line": r.line, "phone": r.phone, "error": CSV_CANNOT_OPT_IN}
            for r in rows
            if r.opted_out is False and contacts[r.phone][2]
        ]
        opted_out = record_many(
            conn,
            [contacts[r.phone][0] for r in rows if r.opted_out],
            "campaigns",
            True,
            "csv",
            reason="contacts CSV import",
        )
    created = sum(1 for _, was_created, _ in contacts.values() if was_created)
    return {
        "imported": len(rows),
        "created": created,
        "updated": len(rows) - created,
        "opted_out": len(opted_out),
        "not_applied": not_applied,
    }


def look_up_contacts(
    engine: sa.Engine,
    organisation_id: str,
    phone: str | None = None,
    user_id: str | None = None,
) -> list[dict[str, Any]]:
    """The organisation's contacts with this phone (any form with its country code) or
    business-scoped user id, each with both consent facts and the history, newest first."""
    organisation_id = as_uuid(organisation_id, "organisation_id")
    if not phone and not user_id:
        raise InvalidInput([{"field": "phone", "error": "give phone (E.164) or user_id"}])
    if phone:
        try:
            phone = to_e164(phone)
        except InvalidPhoneNumber as error:
            raise InvalidInput([{"field": "phone", "error": str(error)}]) from None
    with engine.connect() as conn:
        require_organisation(conn, organisation_id)
        return find_contacts(conn, organisation_id, phone, user_id or None)


def set_consent(
    engine: sa.Engine, organisation_id: str, contact_id: int, data: dict[str, Any]
) -> dict[str, Any]:
    """An operator's explicit opt-out or opt-in (consent source `api`): who (`by`) and why
    (`reason`) are required and kept in the history. Answers the contact with its state,
    history and whether this call changed it (a call that changes nothing is not recorded)."""
    organisation_id = as_uuid(organisation_id, "organisation_id")
    errors = []
    if data.get("scope") not in SCOPES:
        errors.append({"field": "scope", "error": f"must be one of {', '.join(SCOPES)}"})
    if not isinstance(data.get("opted_out"), bool):
        errors.append({"field": "opted_out", "error": "must be true or false"})
    for name, longest in (("by", 200), ("reason", 1000)):
        value = data.get(name)
        if not isinstance(value, str) or not value.strip():
            errors.append({"field": name, "error": "is required"})
        elif len(value) > longest:
            errors.append({"field": name, "error": f"must be at most {longest} characters"})
    if errors:
        raise InvalidInput(errors)
    with engine.begin() as conn:
        require_organisation(conn, organisation_id)
        owner = conn.execute(
            sa.text("SELECT organisation_id::text FROM contacts WHERE id = :c"),
            {"c": contact_id},
        ).scalar_one_or_none()
        if owner != organisation_id:
            raise NotFound(f"contact {contact_id} does not exist in organisation {organisation_id}")
        changed = record(
            conn,
            Change(
                contact_id,
                data["scope"],
                data["opted_out"],
                "api",
                actor=data["by"].strip(),
                reason=data["reason"].strip(),
            ),
        )
        return {**describe(conn, contact_id), "changed": changed}
