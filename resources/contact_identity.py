"""A customer who changes their WhatsApp number stays one customer.

WhatsApp says so with a `system` message of type `user_changed_number` from the old number,
naming the new one. The contact takes the new number; if the organisation already has a
contact with it (the customer wrote from the new number before the notice arrived, or was
imported with it), the old contact is merged into that one: its messages, conversation,
consent history and campaign memberships move over, and the old row goes. Every change is
a `contact_events` row, so the contact's history says what happened and when.

The caller applies a change once per system message (its wamid is stored once), and the
contacts involved are locked in id order, so two workers applying notices at once for the
same customer neither deadlock nor interleave.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NumberChange:
    """What `change_number` did: the contact that now holds the new number, and the contact
    merged into it (None when the number simply moved)."""

    contact_id: int
    merged_contact_id: int | None


def change_number(
    conn: sa.Connection,
    organisation_id: UUID,
    contact_id: int,
    new_phone: str,
    message_id: int | None = None,
    occurred_at: datetime | None = None,
) -> NumberChange:
    """Give `contact_id` the number `new_phone` (E.164), merging it into the organisation's
    contact that already has that number; a contact that already has it changes nothing.

    A contact created with the new number by another transaction between the lock and the
    update (the customer's first message from it) makes the update fail on the unique key:
    the change is then tried once more, and merges."""
    try:
        with conn.begin_nested():
            return _change_number(
                conn, organisation_id, contact_id, new_phone, message_id, occurred_at
            )
    except sa.exc.IntegrityError:
        return _change_number(conn, organisation_id, contact_id, new_phone, message_id, occurred_at)


def _change_number(
    conn: sa.Connection,
    organisation_id: UUID,
    contact_id: int,
    new_phone: str,
    message_id: int | None,
    occurred_at: datetime | None,
) -> NumberChange:
    locked = conn.execute(
        sa.text(
            "SELECT id, phone FROM contacts WHERE organisation_id = :o"
            " AND (id = :c OR phone = :p) ORDER BY id FOR UPDATE"
        ),
        {"o": organisation_id, "c": contact_id, "p": new_phone},
    ).all()
    old_phone = next(row.phone for row in locked if row.id == contact_id)
    holder = next((row.id for row in locked if row.phone == new_phone), None)
    if holder == contact_id:
        return NumberChange(contact_id, None)
    event = {"old": old_phone, "new": new_phone, "m": message_id, "at": occurred_at}
    if holder is None:
        conn.execute(
            sa.text("UPDATE contacts SET phone = :p WHERE id = :c"),
            {"p": new_phone, "c": contact_id},
        )
        _record(conn, contact_id, "number_changed", None, event)
        _follow_in_campaigns(conn, contact_id, new_phone)
        log.info("contact %s changed number", contact_id)
        return NumberChange(contact_id, None)
    _merge(conn, contact_id, holder)
    _follow_in_campaigns(conn, holder, new_phone)
    _record(conn, holder, "merged", contact_id, event)
    log.info("contact %s changed number and was merged into contact %s", contact_id, holder)
    return NumberChange(holder, contact_id)


def history(conn: sa.Connection, contact_id: int, limit: int = 50) -> list[dict[str, Any]]:
    """The contact's identity changes, newest first."""
    return [
        dict(row)
        for row in conn.execute(
            sa.text(
                "SELECT kind, old_phone, new_phone, merged_contact_id, message_id, occurred_at,"
                " recorded_at FROM contact_events WHERE contact_id = :c"
                " ORDER BY occurred_at DESC, id DESC LIMIT :n"
            ),
            {"c": contact_id, "n": limit},
        ).mappings()
    ]


def _record(
    conn: sa.Connection, contact_id: int, kind: str, merged: int | None, event: dict[str, Any]
) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO contact_events"
            " (contact_id, kind, old_phone, new_phone, merged_contact_id, message_id, occurred_at)"
            " VALUES (:c, :kind, :old, :new, :merged, :m, coalesce(:at, now()))"
        ),
        {"c": contact_id, "kind": kind, "merged": merged, **event},
    )


def _merge(conn: sa.Connection, source: int, target: int) -> None:
    """Everything `source` has moves to `target`, then `source` goes."""
    params = {"s": source, "t": target}
    _merge_conversations(conn, source, target)
    conn.execute(sa.text("UPDATE messages SET contact_id = :t WHERE contact_id = :s"), params)
    conn.execute(
        sa.text("UPDATE campaign_audience SET contact_id = :t WHERE contact_id = :s"), params
    )
    conn.execute(sa.text("UPDATE contact_events SET contact_id = :t WHERE contact_id = :s"), params)
    _merge_consent(conn, source, target)
    # The target keeps its own identity and fills in what it lacked from the source; the
    # source's user id is released first (it is unique per organisation).
    kept = conn.execute(
        sa.text(
            "DELETE FROM contacts WHERE id = :s RETURNING wa_user_id, name, attributes, created_at"
        ),
        params,
    ).one()
    conn.execute(
        sa.text(
            "UPDATE contacts SET wa_user_id = coalesce(wa_user_id, :u), name = coalesce(name, :n),"
            " attributes = CAST(:a AS jsonb) || attributes,"
            " created_at = least(created_at, :since) WHERE id = :t"
        ),
        {
            **params,
            "u": kept.wa_user_id,
            "n": kept.name,
            "a": json.dumps(kept.attributes),
            "since": kept.created_at,
        },
    )


def _merge_conversations(conn: sa.Connection, source: int, target: int) -> None:
    """One conversation per contact: the source's moves over whole if the target has none;
    otherwise its messages join the target's, which takes the later times and keeps a
    takeover of either."""
    params = {"s": source, "t": target}
    theirs = conn.execute(
        sa.text("SELECT id FROM conversations WHERE contact_id = :s FOR UPDATE"), params
    ).scalar_one_or_none()
    if theirs is None:
        return
    ours = conn.execute(
        sa.text("SELECT id FROM conversations WHERE contact_id = :t FOR UPDATE"), params
    ).scalar_one_or_none()
    if ours is None:
        conn.execute(
            sa.text("UPDATE conversations SET contact_id = :t WHERE id = :id"),
            {
                **params,
                "id": theirs,
            },
        )
        return
    ids = {"ours": ours, "theirs": theirs}
    conn.execute(
        sa.text("UPDATE messages SET conversation_id = :ours WHERE conversation_id = :theirs"), ids
    )
    conn.execute(
        sa.text(
            "UPDATE conversations o SET"
            " last_inbound_at = greatest(o.last_inbound_at, t.last_inbound_at),"
            " last_message_at = greatest(o.last_message_at, t.last_message_at),"
            " human_takeover = o.human_takeover OR t.human_takeover,"
            " takeover_at = coalesce(o.takeover_at, t.takeover_at),"
            " takeover_by = coalesce(o.takeover_by, t.takeover_by),"
            " created_at = least(o.created_at, t.created_at)"
            " FROM conversations t WHERE o.id = :ours AND t.id = :theirs"
        ),
        ids,
    )
    conn.execute(sa.text("DELETE FROM conversations WHERE id = :theirs"), ids)


def _merge_consent(conn: sa.Connection, source: int, target: int) -> None:
    """The source's consent events join the target's history (one of a pair the same webhook
    recorded on both is dropped), and each of the target's facts becomes the newest event's
    across both: the customer's last word wins, whichever number said it."""
    params = {"s": source, "t": target}
    conn.execute(
        sa.text(
            "DELETE FROM consent_events s USING consent_events t"
            " WHERE s.contact_id = :s AND t.contact_id = :t AND s.scope = t.scope"
            " AND s.opted_out = t.opted_out AND s.occurred_at = t.occurred_at"
        ),
        params,
    )
    conn.execute(sa.text("UPDATE consent_events SET contact_id = :t WHERE contact_id = :s"), params)
    for scope, column in (("campaigns", "opted_out"), ("marketing", "marketing_opted_out")):
        conn.execute(
            sa.text(
                f"UPDATE contacts c SET {column} = e.opted_out,"
                f" {column}_at = CASE WHEN e.opted_out THEN e.occurred_at END"
                " FROM (SELECT opted_out, occurred_at FROM consent_events"
                "   WHERE contact_id = :t AND scope = :scope"
                "   ORDER BY occurred_at DESC, id DESC LIMIT 1) e"
                f" WHERE c.id = :t AND c.{column} IS DISTINCT FROM e.opted_out"
            ),
            {**params, "scope": scope},
        )


def _follow_in_campaigns(conn: sa.Connection, contact_id: int, new_phone: str) -> None:
    """The contact's campaign memberships address the new number from the next send on. A
    campaign that already has a member with that number keeps that member; the contact's
    other membership there is skipped, so the customer gets one message, not two."""
    params = {"c": contact_id, "p": new_phone}
    conn.execute(
        sa.text(
            "UPDATE campaign_audience a SET status = 'skipped', status_changed_at = now(),"
            " last_error = 'the customer changed number: the member with the new number stays'"
            " WHERE a.contact_id = :c AND a.msisdn <> :p"
            " AND a.status NOT IN ('skipped', 'failed')"
            " AND EXISTS (SELECT 1 FROM campaign_audience b"
            "   WHERE b.campaign_id = a.campaign_id AND b.msisdn = :p)"
        ),
        params,
    )
    conn.execute(
        sa.text(
            "UPDATE campaign_audience a SET msisdn = :p WHERE a.contact_id = :c"
            " AND a.msisdn <> :p AND NOT EXISTS (SELECT 1 FROM campaign_audience b"
            "   WHERE b.campaign_id = a.campaign_id AND b.msisdn = :p)"
        ),
        params,
    )
