"""Conversations as operators see them: the inbox list, a transcript, and the operator's
moves (takeover, handback, dismissing the "needs a human" flag), each recorded with who
made it; and one conversation as the side that writes in it uses it: opened or moved on by
an inbound message (`on_inbound`), loaded with its customer to answer (`load`, `find`).

The agent raises `needs_human` when it hands a conversation over; the flag stays until an
operator takes the conversation over or dismisses it, so nothing waiting for a person drops
out of the inbox by itself. Every query here is scoped to one organisation (None: the
platform admin, every organisation), and a conversation of another organisation is
`NotFound`, as one that does not exist.

Lists are paged by keyset (an opaque `next`/`older` cursor), never by offset, so a page
stays correct while messages arrive.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import sqlalchemy as sa

from resources import consent, conversation_messages
from resources.errors import InvalidInput, NotFound

SERVICE_WINDOW = timedelta(hours=24)
MAX_PAGE = 200

# The customer's business-initiated replies: what answers a customer message.
_ANSWERS = "('ai', 'operator', 'system')"


@dataclass(frozen=True)
class Operator:
    """Who acts: the name given (the console's sign-in, the API's `operator`), else the
    token's owner; `token_id` is the organisation token used (None: the platform admin)."""

    name: str
    token_id: int | None = None


@dataclass(frozen=True)
class Filters:
    needs_human: bool | None = None
    taken_over: bool | None = None
    open_window: bool | None = None
    q: str | None = None


Presign = Callable[[str, str], str]  # (bucket, key) → a short-lived URL


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _encode(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps([_iso(v) for v in values]).encode()).decode()


def _decode(cursor: str, field: str, length: int) -> list[Any]:
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        if isinstance(values, list) and len(values) == length:
            return values
    except ValueError:
        pass
    raise InvalidInput([{"field": field, "error": "not a cursor this API gave out"}])


def page_size(value: Any) -> int:
    try:
        limit = int(value)
    except (TypeError, ValueError):
        limit = 0
    if not 1 <= limit <= MAX_PAGE:
        raise InvalidInput([{"field": "limit", "error": f"must be a number from 1 to {MAX_PAGE}"}])
    return limit


_ORDER = "needs_human DESC, sort_at DESC, id DESC"


def _summaries(conn: sa.Connection, where: list[str], params: dict[str, Any], limit: int):
    """The conversations matching `where`, in inbox order, at most `limit`: the page is
    chosen first (the inbox index), and only its rows look up their last message and
    unanswered count."""
    sql = f"""
WITH page AS (
    SELECT v.id, v.organisation_id::text AS organisation_id, v.contact_id, c.name, c.phone,
           c.wa_user_id AS user_id, v.needs_human, v.needs_human_at, v.human_takeover,
           v.takeover_by, v.last_inbound_at,
           coalesce(v.last_message_at, v.created_at) AS sort_at
    FROM conversations v JOIN contacts c ON c.id = v.contact_id
    WHERE {" AND ".join(where)}
    ORDER BY v.needs_human DESC, coalesce(v.last_message_at, v.created_at) DESC, v.id DESC
    LIMIT :n
)
SELECT page.*, now() AS now, page.last_inbound_at + interval '24 hours' AS window_ends_at,
       last.body AS last_body, last.message_type AS last_type,
       last.sender_type AS last_sender, last.created_at AS last_at,
       (SELECT count(*) FROM messages u
         WHERE u.conversation_id = page.id AND u.direction = 'inbound'
           AND u.created_at > coalesce((SELECT max(a.created_at) FROM messages a
                WHERE a.conversation_id = page.id AND a.sender_type IN {_ANSWERS}),
                '-infinity')) AS unanswered
FROM page LEFT JOIN LATERAL (
    SELECT body, message_type, sender_type, created_at FROM messages
    WHERE conversation_id = page.id ORDER BY created_at DESC, id DESC LIMIT 1
) last ON true
ORDER BY {_ORDER}
"""
    return conn.execute(sa.text(sql), {**params, "n": limit}).mappings().all()


def _summary(row: sa.RowMapping) -> dict[str, Any]:
    window_ends = row["window_ends_at"]
    return {
        "id": row["id"],
        "organisation_id": row["organisation_id"],
        "contact_id": row["contact_id"],
        "name": row["name"],
        "phone": row["phone"],
        "user_id": row["user_id"],
        "needs_human": row["needs_human"],
        "needs_human_at": _iso(row["needs_human_at"]),
        "taken_over": row["human_takeover"],
        "taken_over_by": row["takeover_by"] if row["human_takeover"] else None,
        "last_inbound_at": _iso(row["last_inbound_at"]),
        "window_ends_at": _iso(window_ends),
        "window_open": window_ends is not None and window_ends > row["now"],
        "last_message": None
        if row["last_at"] is None
        else {
            "body": row["last_body"],
            "type": row["last_type"],
            "sender": row["last_sender"],
            "at": _iso(row["last_at"]),
        },
        "unanswered": row["unanswered"],
    }


def list_conversations(
    engine: sa.Engine,
    organisation_id: str | None,
    filters: Filters = Filters(),
    limit: int = 50,
    after: str | None = None,
) -> dict[str, Any]:
    """One page of conversations, those needing a human first, then the most recently
    active; `next` is the cursor of the following page (None on the last)."""
    where = ["(CAST(:o AS uuid) IS NULL OR v.organisation_id = CAST(:o AS uuid))"]
    params: dict[str, Any] = {"o": organisation_id}
    if filters.needs_human is not None:
        where.append("v.needs_human = :needs_human")
        params["needs_human"] = filters.needs_human
    if filters.taken_over is not None:
        where.append("v.human_takeover = :taken_over")
        params["taken_over"] = filters.taken_over
    if filters.open_window is not None:
        inside = "coalesce(v.last_inbound_at > now() - interval '24 hours', false)"
        where.append(inside if filters.open_window else f"NOT {inside}")
    if filters.q:
        where.append(
            "(c.name ILIKE :like OR c.phone LIKE :digits OR c.wa_user_id = :q"
            " OR CAST(v.id AS text) = :q)"
        )
        digits = "".join(ch for ch in filters.q if ch.isdigit())
        escaped = filters.q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        params |= {
            "q": filters.q,
            "like": f"%{escaped}%",
            "digits": f"%{digits}%" if digits else "",
        }
    if after:
        flagged, sort_at, last_id = _decode(after, "after", 3)
        where.append(
            "(v.needs_human, coalesce(v.last_message_at, v.created_at), v.id)"
            " < (:c_flag, CAST(:c_at AS timestamptz), :c_id)"
        )
        params |= {"c_flag": bool(flagged), "c_at": sort_at, "c_id": int(last_id)}
    with engine.connect() as conn:
        rows = _summaries(conn, where, params, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    cursor = (
        _encode([rows[-1]["needs_human"], rows[-1]["sort_at"], rows[-1]["id"]]) if more else None
    )
    return {"conversations": [_summary(r) for r in rows], "next": cursor}


def get(conn: sa.Connection, conversation_id: int, organisation_id: str | None) -> dict[str, Any]:
    """One conversation's summary, `NotFound` outside the organisation."""
    found = _summaries(
        conn,
        ["v.id = :id", "(CAST(:o AS uuid) IS NULL OR v.organisation_id = CAST(:o AS uuid))"],
        {"id": conversation_id, "o": organisation_id},
        1,
    )
    row = found[0] if found else None
    if row is None:
        raise NotFound(f"conversation {conversation_id} does not exist")
    return _summary(row)


def transcript(
    engine: sa.Engine,
    conversation_id: int,
    organisation_id: str | None,
    presign: Presign | None,
    limit: int = 50,
    before: str | None = None,
) -> dict[str, Any]:
    """A page of the conversation's messages, oldest first, ending just before `before`
    (the newest page without it); `older` is the cursor of the page before. Every direction
    and sender, with statuses and error codes; inbound media copied to our bucket carries a
    short-lived `url`."""
    cursor = None
    if before:
        at, last_id = _decode(before, "before", 2)
        cursor = (at, int(last_id))
    with engine.connect() as conn:
        conversation = get(conn, conversation_id, organisation_id)
        rows = conversation_messages.page(conn, conversation_id, limit + 1, cursor)
    more = len(rows) > limit
    rows = list(reversed(rows[:limit]))
    older = _encode([rows[0]["created_at"], rows[0]["id"]]) if more else None
    return {
        "conversation": conversation,
        "messages": [_message(r, presign) for r in rows],
        "older": older,
    }


def _message(row: sa.RowMapping, presign: Presign | None) -> dict[str, Any]:
    media = None
    if row["media_id"] is not None:
        stored = row["media_status"] == "stored" and row["s3_key"]
        media = {
            "id": row["media_id"],
            "type": row["media_type"],
            "mime_type": row["mime_type"],
            "size": row["size_bytes"],
            "status": row["media_status"],
            "url": presign(row["s3_bucket"], row["s3_key"]) if stored and presign else None,
        }
    return {
        "id": row["id"],
        "direction": row["direction"],
        "sender": row["sender_type"],
        "operator": row["operator"],
        "campaign": row["campaign_run_id"] is not None,
        "type": row["message_type"],
        "body": row["body"],
        "status": row["status"],
        "status_reason": row["status_reason"],
        "error_code": row["error_code"],
        "error_title": row["error_title"],
        "media": media,
        **{k: _iso(row[k]) for k in ("created_at", "sent_at", "delivered_at", "read_at")},
        "failed_at": _iso(row["failed_at"]),
    }


def history(conn: sa.Connection, conversation_id: int) -> list[dict[str, Any]]:
    """The conversation's takeovers, handbacks, dismissals and handoffs, oldest first."""
    rows = conn.execute(
        sa.text(
            "SELECT kind, operator, token_id, created_at FROM conversation_events"
            " WHERE conversation_id = :c ORDER BY id"
        ),
        {"c": conversation_id},
    ).mappings()
    return [{k: _iso(v) for k, v in r.items()} for r in rows]


def _record(conn: sa.Connection, conversation_id: int, kind: str, operator: Operator) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO conversation_events (conversation_id, kind, operator, token_id)"
            " VALUES (:c, :k, :op, :t)"
        ),
        {"c": conversation_id, "k": kind, "op": operator.name, "t": operator.token_id},
    )


def take_over(conn: sa.Connection, conversation_id: int, operator: Operator) -> None:
    """The operator has the conversation: the agent stays silent, and the flag is cleared."""
    conn.execute(
        sa.text(
            "UPDATE conversations SET human_takeover = true, takeover_at = now(),"
            " takeover_by = :by, needs_human = false, needs_human_at = NULL WHERE id = :id"
        ),
        {"id": conversation_id, "by": operator.name},
    )
    _record(conn, conversation_id, "takeover", operator)


def hand_back(conn: sa.Connection, conversation_id: int, operator: Operator) -> None:
    """The agent answers again. A flag still up stays: handing back is not looking at it."""
    conn.execute(
        sa.text(
            "UPDATE conversations SET human_takeover = false, takeover_at = NULL,"
            " takeover_by = NULL WHERE id = :id"
        ),
        {"id": conversation_id},
    )
    _record(conn, conversation_id, "handback", operator)


def dismiss(conn: sa.Connection, conversation_id: int, operator: Operator) -> None:
    """Lower the flag without taking over; a conversation the agent had handed over (and
    so fell silent in) goes back to the agent."""
    conn.execute(
        sa.text(
            "UPDATE conversations SET needs_human = false, needs_human_at = NULL,"
            " human_takeover = CASE WHEN takeover_by = 'agent' THEN false ELSE human_takeover END,"
            " takeover_at = CASE WHEN takeover_by = 'agent' THEN NULL ELSE takeover_at END,"
            " takeover_by = CASE WHEN takeover_by = 'agent' THEN NULL ELSE takeover_by END"
            " WHERE id = :id"
        ),
        {"id": conversation_id},
    )
    _record(conn, conversation_id, "dismissed", operator)


def flag(conn: sa.Connection, conversation_id: int) -> None:
    """The agent hands over: silent until a person acts, and first in the inbox."""
    conn.execute(
        sa.text(
            "UPDATE conversations SET human_takeover = true, takeover_at = now(),"
            " takeover_by = 'agent', needs_human = true,"
            " needs_human_at = coalesce(needs_human_at, now()) WHERE id = :id"
        ),
        {"id": conversation_id},
    )
    _record(conn, conversation_id, "flagged", Operator("agent"))


# -- One conversation, as the side that writes in it uses it ---------------------------------


def on_inbound(
    conn: sa.Connection,
    organisation_id: UUID,
    contact_id: int,
    phone_number_id: str,
    sent_at: datetime | None,
    opens_window: bool,
) -> int:
    """The contact's conversation, created by its first inbound message or moved on by the
    next: the number it was sent to, when the customer last wrote (`opens_window`: a
    message from the customer, which opens the customer-service window), and its id."""
    return conn.execute(
        sa.text(
            "INSERT INTO conversations"
            " (organisation_id, contact_id, phone_number_id, last_inbound_at, last_message_at)"
            " VALUES (:o, :c, :p,"
            " CASE WHEN :opens THEN least(coalesce(:ts, now()), now()) END, now())"
            " ON CONFLICT (contact_id) DO UPDATE SET"
            " phone_number_id = EXCLUDED.phone_number_id,"
            " last_inbound_at = greatest(conversations.last_inbound_at, EXCLUDED.last_inbound_at),"
            " last_message_at = now()"
            " RETURNING id"
        ),
        {
            "o": organisation_id,
            "c": contact_id,
            "p": phone_number_id,
            "ts": sent_at,
            "opens": opens_window,
        },
    ).scalar_one()


@dataclass(frozen=True)
class Conversation:
    """One conversation with what answering in it needs: its customer's phone and user id,
    the number it goes through, whether an operator has it, the customer's campaign
    opt-out, and when the customer last wrote."""

    id: int
    organisation_id: UUID
    contact_id: int
    phone: str | None
    user_id: str | None
    phone_number_id: str | None
    human_takeover: bool
    opted_out: bool
    last_inbound_at: Any


_SELECT = (
    "SELECT v.id, v.organisation_id, v.contact_id, c.phone, c.wa_user_id, v.phone_number_id,"
    " v.human_takeover, c.opted_out, v.last_inbound_at"
    " FROM conversations v JOIN contacts c ON c.id = v.contact_id"
)


def load(conn: sa.Connection, conversation_id: int, lock: bool = False) -> Conversation:
    sql = _SELECT + " WHERE v.id = :id" + (" FOR UPDATE OF v" if lock else "")
    return Conversation(*conn.execute(sa.text(sql), {"id": conversation_id}).one())


def find(
    conn: sa.Connection, phone: str | None, user_id: str | None, organisation_id: str | None
) -> list[Conversation]:
    """The conversation of the customer with this phone (E.164) or business-scoped user id
    in the organisation (one at most), or, with no organisation, in each that has one (the
    first two: enough to tell that the customer is not one organisation's)."""
    rows = conn.execute(
        sa.text(
            _SELECT + " WHERE (c.phone = :p OR c.wa_user_id = :u)"
            " AND (CAST(:o AS uuid) IS NULL OR v.organisation_id = CAST(:o AS uuid))"
            " ORDER BY v.id LIMIT 2"
        ),
        {"p": phone, "u": user_id, "o": organisation_id},
    ).all()
    return [Conversation(*row) for row in rows]


# -- Templates an operator may send outside the 24-hour window -------------------------------

_CONTACT_SOURCES = ("contact.", "attributes.", "literal:")


def sendable_templates(conn: sa.Connection, organisation_id: str) -> list[dict[str, Any]]:
    """The organisation's approved templates whose parameters all come from the contact (or
    are literal): those an operator can send to one customer without anything else."""
    rows = conn.execute(
        sa.text(
            "SELECT id, name, language, body, parameters FROM templates"
            " WHERE organisation_id = :o AND status = 'approved' ORDER BY name, language"
        ),
        {"o": organisation_id},
    ).mappings()
    return [
        dict(r)
        for r in rows
        if all(
            p.get("valueType", "text") == "text"
            and p.get("type", "body") in ("header", "body")
            and str(p.get("source", "")).startswith(_CONTACT_SOURCES)
            for p in r["parameters"]
        )
    ]


def template_message(
    conn: sa.Connection, template_id: Any, organisation_id: str, contact_id: int
) -> tuple[dict[str, Any], str]:
    """The Graph API message of one of `sendable_templates` for the contact, and the text to
    keep in the transcript; `InvalidInput` for any other template or a missing value."""
    try:
        wanted = int(template_id)
    except (TypeError, ValueError):
        raise InvalidInput([{"field": "template_id", "error": "must be a template id"}]) from None
    template = next(
        (t for t in sendable_templates(conn, organisation_id) if t["id"] == wanted), None
    )
    if template is None:
        raise InvalidInput(
            [
                {
                    "field": "template_id",
                    "error": "not an approved template of this organisation whose parameters"
                    " all come from the contact",
                }
            ]
        )
    contact = consent.template_fields(conn, contact_id)
    slots: dict[str, list[dict[str, str]]] = {}
    values = []
    for position, parameter in enumerate(template["parameters"], start=1):
        value = _contact_value(str(parameter.get("source", "")), contact)
        if not value:
            raise InvalidInput(
                [
                    {
                        "field": "template_id",
                        "error": f"parameter {position} ({parameter.get('source')}) is empty"
                        " for this customer",
                    }
                ]
            )
        values.append(value)
        slots.setdefault(parameter.get("type", "body"), []).append({"type": "text", "text": value})
    message: dict[str, Any] = {
        "type": "template",
        "template": {"name": template["name"], "language": {"code": template["language"]}},
    }
    if slots:
        message["template"]["components"] = [
            {"type": slot, "parameters": slots[slot]}
            for slot in ("header", "body")
            if slot in slots
        ]
    shown = template["body"] or f"[template {template['name']}]"
    for position, value in enumerate(values, start=1):
        shown = shown.replace(f"{{{{{position}}}}}", value)
    return message, shown


def _contact_value(source: str, contact: sa.Row) -> str | None:
    name = contact.name or ""
    if source.startswith("literal:"):
        return source.removeprefix("literal:")
    if source.startswith("contact."):
        fields = {
            **(contact.attributes or {}),
            "name": name,
            "first_name": name.split()[0] if name.split() else None,
            "phone": contact.phone,
        }
        value = fields.get(source.removeprefix("contact."))
    else:
        value = (contact.attributes or {}).get(source.removeprefix("attributes."))
    return str(value).strip() if value not in (None, "") else None
