"""An organisation's WhatsApp Business account as Meta sees it: the messaging limit (the
portfolio's tier), each phone number's throughput, quality rating and name status, and the
account's standing (bans, restrictions, violations).

Nobody types these in. They come from Meta's webhooks (`phone_number_quality_update`,
`business_capability_update`, `account_update`, applied by `webhook_app.account_webhooks`)
and from the Graph API (`refresh_numbers`, at the sender's start-up and from the template
sync); an operator may still set the limit. Every change is an `account_events` row: its
source, old and new value, when it happened and whether it was applied, so an operator can
see why the limit is what it is.

Facts carry their own time (a webhook's `entry[].time`, the moment of a read or of the
operator's call) and the newest wins: a limit or throughput older than the one in force is
recorded and not applied, and an account notice older than the newest of its kind changes
nothing. A ban, a deletion or a restriction on business-initiated messaging opens the
organisation's `account` circuit breaker (held until an operator resets it); a
reinstatement closes it only when that ban is what opened it.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from resources import breakers

log = logging.getLogger(__name__)

# Messaging limits (unique recipients of business-initiated messages per rolling 24 h) by
# Meta's tier names: the current list is TIER_50 … TIER_100K and TIER_UNLIMITED; TIER_1K
# is in older documents and still reported by some accounts. None = unlimited.
TIERS: dict[str, int | None] = {
    "TIER_50": 50,
    "TIER_250": 250,
    "TIER_1K": 1000,
    "TIER_2K": 2000,
    "TIER_10K": 10000,
    "TIER_100K": 100000,
    "TIER_UNLIMITED": None,
}
# The number has not sent a message yet: Meta names no limit, ours stays.
TIER_NOT_SET = "TIER_NOT_SET"
LIMITS = (50, 250, 1000, 2000, 10000, 100000)
# A number's throughput level (GET /{phone-number-id}?fields=throughput) → messages per
# second: 80 by default, 1,000 once Meta upgrades it. NOT_APPLICABLE keeps ours.
THROUGHPUT = {"STANDARD": 80, "HIGH": 1000}
HIGHER_THROUGHPUT = "HIGH"
# What a status read asks for (Meta's WhatsApp Business Phone Number API).
NUMBER_FIELDS = (
    "display_phone_number",
    "verified_name",
    "quality_rating",
    "name_status",
    "throughput",
    "whatsapp_business_manager_messaging_limit",
)
KINDS = ("messaging_limit", "throughput", "ban", "restriction", "violation", "account")
SOURCES = ("operator", "webhook", "graph_api")
# How long a policy violation (a notice, with no end of its own) is shown as the account's
# state on /health and /stats; it stays in the history for good.
VIOLATION_SHOWN_DAYS = 30
BIZ_INITIATED = "RESTRICTED_BIZ_INITIATED_MESSAGING"
# What may be quoted from a webhook in a log line: a word, never a number.
_QUOTABLE = re.compile(r"[A-Za-z_]{1,40}")


def quoted(value: Any) -> str:
    if value is None:
        return "(missing)"
    if isinstance(value, str) and _QUOTABLE.fullmatch(value):
        return repr(value)
    return f"(a {type(value).__name__}, not shown)"


def quoted_tier(label: str) -> str:
    """A tier as it may be logged: Meta's TIER_… names and small counts, nothing else."""
    if re.fullmatch(r"TIER_[A-Z0-9_]{1,20}|-?\d{1,7}", label):
        return repr(label)
    return quoted(label)


def limit_text(limit: int | None) -> str:
    return "unlimited" if limit is None else str(limit)


def is_limit(value: Any) -> bool:
    """A messaging limit an operator may set: one of Meta's tiers, or None (unlimited)."""
    return value is None or (type(value) is int and value in LIMITS)


@dataclass(frozen=True)
class Tier:
    """A messaging limit as Meta named it: `label` as sent (for the record), whether we
    `know` it, and whether it `sets` a limit (`limit`, None = unlimited)."""

    label: str
    known: bool
    sets: bool = False
    limit: int | None = None


def tier(value: Any) -> Tier | None:
    """Meta's tier (`TIER_2K`) or count (`2000`, `-1` = unlimited, as
    `business_capability_update` sends it); None when there is none."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return Tier(str(value), False)
    if isinstance(value, int) or (isinstance(value, str) and re.fullmatch(r"-?\d{1,9}", value)):
        count = int(value)
        if count == -1:
            return Tier(str(value), True, True, None)
        return Tier(str(count), True, True, count) if count in LIMITS else Tier(str(value), False)
    if isinstance(value, str):
        label = value.strip().upper()
        if label == TIER_NOT_SET:
            return Tier(label, True)
        if label in TIERS:
            return Tier(label, True, True, TIERS[label])
        return Tier(value.strip()[:60], False)
    return Tier(f"(a {type(value).__name__})", False)


@dataclass
class Event:
    """One `account_events` row."""

    kind: str
    source: str
    occurred_at: datetime
    organisation_id: str | None = None
    waba_id: str | None = None
    phone_number_id: str | None = None
    field: str | None = None
    event: str | None = None
    old_value: str | None = None
    new_value: str | None = None
    applied: bool = False
    note: str | None = None
    actor: str | None = None
    reason: str | None = None
    detail: Any = None
    inbox_event_id: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"account event kind must be one of {', '.join(KINDS)}")
        if self.source not in SOURCES:
            raise ValueError(f"account event source must be one of {', '.join(SOURCES)}")


@dataclass(frozen=True)
class Outcome:
    """What applying one fact came to: recorded (`event_id`, None for a redelivered webhook
    already recorded), applied, and why not or what else it did (`note`)."""

    event_id: int | None
    applied: bool
    note: str | None = None

    @property
    def duplicate(self) -> bool:
        return self.event_id is None


def record(conn: sa.Connection, event: Event) -> int | None:
    """Insert the event; None when the same webhook fact is already recorded."""
    return conn.execute(
        sa.text(
            "INSERT INTO account_events (organisation_id, waba_id, phone_number_id, kind,"
            " source, field, event, old_value, new_value, applied, note, actor, reason,"
            " detail, inbox_event_id, occurred_at) VALUES (CAST(:organisation_id AS uuid),"
            " :waba_id, :phone_number_id, :kind, :source, :field, :event, :old_value,"
            " :new_value, :applied, :note, :actor, :reason, CAST(:detail AS jsonb),"
            " :inbox_event_id, :occurred_at) ON CONFLICT DO NOTHING RETURNING id"
        ),
        {
            **event.__dict__,
            "organisation_id": str(event.organisation_id) if event.organisation_id else None,
            "detail": None if event.detail is None else json.dumps(event.detail),
        },
    ).scalar_one_or_none()


def _note(conn: sa.Connection, event_id: int, note: str, breaker_id: int | None = None) -> None:
    conn.execute(
        sa.text(
            "UPDATE account_events SET note = :note, breaker_id = COALESCE(:b, breaker_id)"
            " WHERE id = :id"
        ),
        {"id": event_id, "note": note, "b": breaker_id},
    )


def db_now(conn: sa.Connection) -> datetime:
    return conn.execute(sa.text("SELECT now()")).scalar_one()


def organisation_of_waba(conn: sa.Connection, waba_id: str | None) -> str | None:
    if not waba_id:
        return None
    return conn.execute(
        sa.text("SELECT id::text FROM organisations WHERE waba_id = :w"), {"w": waba_id}
    ).scalar_one_or_none()


def set_messaging_limit(
    conn: sa.Connection,
    organisation_id: str,
    limit: int | None,
    source: str,
    occurred_at: datetime | None = None,
    *,
    record_unchanged: bool = True,
    **about: Any,
) -> Outcome:
    """Make `limit` the organisation's messaging limit, unless the limit in force was
    decided later than `occurred_at` (now, if not given); recorded either way (with
    `record_unchanged=False`, a value that changes nothing is not). `about`: the event's
    other columns (field, event, actor, reason, detail, inbox_event_id, waba_id)."""
    if not is_limit(limit):
        raise ValueError(f"{limit!r} is not a messaging limit")
    row = conn.execute(
        sa.text(
            "SELECT messaging_limit, messaging_limit_at, now() AS now FROM organisations"
            " WHERE id = CAST(:o AS uuid) FOR UPDATE"
        ),
        {"o": organisation_id},
    ).one()
    at = occurred_at or row.now
    old, new = limit_text(row.messaging_limit), limit_text(limit)
    older = row.messaging_limit_at is not None and at < row.messaging_limit_at
    if old == new and not record_unchanged:
        if not older:
            _limit_decided(conn, organisation_id, limit, source, at)
        return Outcome(None, False, "unchanged")
    note = None
    if older:
        note = (
            f"older than the limit in force (decided {row.messaging_limit_at.isoformat()}):"
            " recorded, not applied"
        )
    elif old == new:
        note = "unchanged"
    event_id = record(
        conn,
        Event(
            "messaging_limit",
            source,
            at,
            organisation_id,
            old_value=old,
            new_value=new,
            applied=not older,
            note=note,
            **about,
        ),
    )
    if event_id is None:
        return Outcome(None, False, "already recorded")
    if not older:
        _limit_decided(conn, organisation_id, limit, source, at)
        if old != new:
            log.info(
                "organisation %s messaging limit %s → %s (%s, account event %s)",
                organisation_id,
                old,
                new,
                source,
                event_id,
            )
    return Outcome(event_id, not older, note)


def _limit_decided(
    conn: sa.Connection, organisation_id: str, limit: int | None, source: str, at: datetime
) -> None:
    conn.execute(
        sa.text(
            "UPDATE organisations SET messaging_limit = :l, messaging_limit_source = :s,"
            " messaging_limit_at = :at WHERE id = CAST(:o AS uuid)"
        ),
        {"o": organisation_id, "l": limit, "s": source, "at": at},
    )


def set_throughput(
    conn: sa.Connection,
    phone_number_id: str,
    level: str,
    source: str,
    occurred_at: datetime | None = None,
    *,
    record_unchanged: bool = True,
    **about: Any,
) -> Outcome:
    """Make `level` (STANDARD, HIGH, …) the number's throughput and set its messages per
    second from it (80, 1,000; another level keeps the rate), unless the throughput in
    force was decided later than `occurred_at`. Recorded as `set_messaging_limit` is."""
    row = conn.execute(
        sa.text(
            "SELECT organisation_id::text, messages_per_second, throughput_level,"
            " throughput_at, now() AS now FROM phone_numbers WHERE phone_number_id = :p"
            " FOR UPDATE"
        ),
        {"p": phone_number_id},
    ).one()
    at = occurred_at or row.now
    rate = THROUGHPUT.get(level, row.messages_per_second)
    older = row.throughput_at is not None and at < row.throughput_at
    changed = rate != row.messages_per_second  # a level that keeps the rate is no news
    if not changed and not record_unchanged:
        if not older:
            _throughput_decided(conn, phone_number_id, level, rate, at)
        return Outcome(None, False, "unchanged")
    note = None
    if older:
        note = (
            f"older than the throughput in force (decided {row.throughput_at.isoformat()}):"
            " recorded, not applied"
        )
    elif not changed:
        note = "unchanged"
    elif level not in THROUGHPUT:
        note = f"level {level} names no rate: messages per second kept"
    about.setdefault("event", level)
    event_id = record(
        conn,
        Event(
            "throughput",
            source,
            at,
            row.organisation_id,
            phone_number_id=phone_number_id,
            old_value=str(row.messages_per_second),
            new_value=str(rate),
            applied=not older,
            note=note,
            **about,
        ),
    )
    if event_id is None:
        return Outcome(None, False, "already recorded")
    if not older:
        _throughput_decided(conn, phone_number_id, level, rate, at)
        if rate != row.messages_per_second:
            log.info(
                "phone number %s throughput %s/s → %s/s (%s, account event %s)",
                phone_number_id,
                row.messages_per_second,
                rate,
                source,
                event_id,
            )
    return Outcome(event_id, not older, note)


def _throughput_decided(
    conn: sa.Connection, phone_number_id: str, level: str, rate: int, at: datetime
) -> None:
    conn.execute(
        sa.text(
            "UPDATE phone_numbers SET throughput_level = :level, messages_per_second = :rate,"
            " throughput_at = :at WHERE phone_number_id = :p"
        ),
        {"p": phone_number_id, "level": level, "rate": rate, "at": at},
    )


def number_by_display(conn: sa.Connection, organisation_id: str, display: Any) -> str | None:
    """The organisation's phone number ID whose display number has these digits (webhooks
    name a number by its display number only)."""
    digits = re.sub(r"\D", "", display) if isinstance(display, str) else ""
    if not digits:
        return None
    return conn.execute(
        sa.text(
            "SELECT phone_number_id FROM phone_numbers WHERE organisation_id = CAST(:o AS uuid)"
            " AND regexp_replace(display_phone, '\\D', '', 'g') = :d"
            " ORDER BY phone_number_id LIMIT 1"
        ),
        {"o": organisation_id, "d": digits},
    ).scalar_one_or_none()


# The account's standing: notices from `account_update`.


@dataclass(frozen=True)
class Notice:
    """One `account_update` fact. `kind`: ban (disabled, scheduled, reinstated, deleted),
    restriction, violation, or account (anything else, recorded only). `value`: the ban
    state, the restriction types or the violation type. `stops_sending` opens the account
    breaker (until `expires_at`, if Meta says); `reinstates` may close it."""

    kind: str
    event: str
    value: str | None
    summary: str
    stops_sending: bool = False
    reinstates: bool = False
    expires_at: datetime | None = None


def apply_notice(
    conn: sa.Connection,
    organisation_id: str,
    notice: Notice,
    occurred_at: datetime | None,
    **about: Any,
) -> Outcome:
    """Record the notice and act on it if it is the newest of its kind: open the account
    breaker for a notice that stops sending, close a ban's breaker on reinstatement."""
    now = conn.execute(
        sa.text("SELECT now() FROM organisations WHERE id = CAST(:o AS uuid) FOR UPDATE"),
        {"o": organisation_id},
    ).scalar_one()
    at = occurred_at or now
    newest = None
    if notice.kind != "account":
        newest = conn.execute(
            sa.text(
                "SELECT max(occurred_at) FROM account_events"
                " WHERE organisation_id = CAST(:o AS uuid) AND kind = :k"
            ),
            {"o": organisation_id, "k": notice.kind},
        ).scalar_one()
    older = newest is not None and at < newest
    note = (
        f"older than the newest {notice.kind} event ({newest.isoformat()}): recorded only"
        if older
        else None
    )
    event_id = record(
        conn,
        Event(
            notice.kind,
            "webhook",
            at,
            organisation_id,
            event=notice.event,
            new_value=notice.value,
            applied=not older,
            note=note,
            reason=notice.summary,
            **about,
        ),
    )
    if event_id is None:
        return Outcome(None, False, "already recorded")
    if older:
        return Outcome(event_id, False, note)
    if notice.stops_sending:
        note = _hold(conn, organisation_id, notice, event_id, now)
    elif notice.reinstates:
        note = _reinstate(conn, organisation_id, notice, event_id, at, now)
    return Outcome(event_id, True, note)


def _hold(
    conn: sa.Connection, organisation_id: str, notice: Notice, event_id: int, now: datetime
) -> str:
    if notice.expires_at is not None and notice.expires_at <= now:
        note = f"already over ({notice.expires_at.isoformat()}): no circuit breaker opened"
        _note(conn, event_id, note)
        return note
    breaker, opened = breakers.trip(
        conn, "account", organisation_id, None, notice.summary[:500], "operator", 0.0
    )
    if opened:
        note = f"opened circuit breaker {breaker.id} on the account"
        _note(conn, event_id, note, breaker.id)
        log.warning(
            "circuit breaker %s opened on account %s: %s (account event %s)",
            breaker.id,
            organisation_id,
            notice.summary,
            event_id,
        )
    else:
        note = f"circuit breaker {breaker.id} on the account was already open"
        _note(conn, event_id, note)
    return note


def _reinstate(
    conn: sa.Connection,
    organisation_id: str,
    notice: Notice,
    event_id: int,
    at: datetime,
    now: datetime,
) -> str:
    """Meta reinstated a disabled account: close the account breaker if that ban (an
    earlier ban event) opened it and business-initiated messaging is not restricted;
    a breaker any other cause opened stays for an operator to reset."""
    breaker = next(
        (
            b
            for b in breakers.open_breakers(conn)
            if b.scope == "account" and b.scope_key == organisation_id
        ),
        None,
    )
    if breaker is None:
        note = "no account circuit breaker was open"
    else:
        opener = conn.execute(
            sa.text(
                "SELECT kind, occurred_at FROM account_events WHERE breaker_id = :b"
                " ORDER BY id LIMIT 1"
            ),
            {"b": breaker.id},
        ).one_or_none()
        if opener is None or opener.kind != "ban" or opener.occurred_at > at:
            note = (
                f"circuit breaker {breaker.id} left open: a ban did not open it"
                " (an operator resets it)"
            )
        elif any(r["type"] == BIZ_INITIATED for r in _restrictions(conn, organisation_id, now)):
            note = (
                f"circuit breaker {breaker.id} left open: business-initiated messaging is"
                " still restricted"
            )
        else:
            breakers.close(
                conn,
                breaker.id,
                "whatsapp",
                f"{notice.summary} at {at.isoformat()} (account event {event_id})",
            )
            note = f"closed circuit breaker {breaker.id}: WhatsApp reinstated the account"
            log.warning(
                "circuit breaker %s on account %s closed: WhatsApp reinstated it"
                " (account event %s)",
                breaker.id,
                organisation_id,
                event_id,
            )
    _note(conn, event_id, note)
    return note


def _restrictions(conn: sa.Connection, organisation_id: str, now: datetime) -> list[dict]:
    """The restrictions in force: those of the newest restriction event not yet expired."""
    detail = conn.execute(
        sa.text(
            "SELECT detail FROM account_events WHERE organisation_id = CAST(:o AS uuid)"
            " AND kind = 'restriction' ORDER BY occurred_at DESC, id DESC LIMIT 1"
        ),
        {"o": organisation_id},
    ).scalar_one_or_none()
    return _active(restriction_list(detail), now)


def restriction_list(detail: Any) -> list[dict[str, Any]]:
    """`restriction_info[]` of an ACCOUNT_RESTRICTION value: type and expiry (UTC)."""
    items = (detail or {}).get("restriction_info") if isinstance(detail, dict) else None
    found = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("restriction_type"), str):
            continue
        expires = item.get("expiration")
        try:
            expires_at = datetime.fromtimestamp(int(expires), tz=UTC) if expires else None
        except (TypeError, ValueError, OverflowError, OSError):
            expires_at = None
        found.append({"type": item["restriction_type"], "expires_at": expires_at})
    return found


def _active(restrictions: list[dict], now: datetime) -> list[dict]:
    return [r for r in restrictions if r["expires_at"] is None or r["expires_at"] > now]


def states(conn: sa.Connection, organisation_ids: list[str] | None = None) -> dict[str, dict]:
    """Each organisation's standing with WhatsApp (every one asked for; without a list,
    those with any notice or an open account breaker): `status` (ok, violation,
    restricted, scheduled_for_disable, disabled, deleted), `reason`, `since`, the `ban`,
    the `restrictions` in force, the `last_violation` and the open account `breaker`."""
    now = db_now(conn)
    ids = [str(i) for i in organisation_ids] if organisation_ids is not None else None
    notices = conn.execute(
        sa.text(
            "SELECT DISTINCT ON (organisation_id, kind) organisation_id::text AS org, kind,"
            " event, new_value, detail, occurred_at FROM account_events"
            " WHERE organisation_id IS NOT NULL AND kind IN ('ban', 'restriction', 'violation')"
            " AND (CAST(:ids AS text[]) IS NULL OR organisation_id::text = ANY(:ids))"
            " ORDER BY organisation_id, kind, occurred_at DESC, id DESC"
        ),
        {"ids": ids},
    ).all()
    found: dict[str, dict] = {i: _state() for i in ids or []}
    for n in notices:
        state = found.setdefault(n.org, _state())
        if n.kind == "ban":
            ban_info = (n.detail or {}).get("ban_info") if isinstance(n.detail, dict) else None
            state["ban"] = {
                "state": n.new_value,
                "event": n.event,
                "date": (ban_info or {}).get("waba_ban_date")
                if isinstance(ban_info, dict)
                else None,
                "at": n.occurred_at,
            }
        elif n.kind == "restriction":
            state["restrictions"] = _active(restriction_list(n.detail), now)
            state["_restricted_at"] = n.occurred_at
        else:
            state["last_violation"] = {"type": n.new_value, "at": n.occurred_at}
    for b in breakers.open_breakers(conn):
        if b.scope == "account" and (ids is None or b.scope_key in found):
            found.setdefault(b.scope_key, _state())["breaker"] = {
                "id": b.id,
                "error_code": b.error_code,
                "error_title": b.error_title,
                "opened_at": b.opened_at,
            }
    for state in found.values():
        _judge(state, now)
    return found


def _state() -> dict[str, Any]:
    return {
        "status": "ok",
        "reason": None,
        "since": None,
        "ban": None,
        "restrictions": [],
        "last_violation": None,
        "breaker": None,
    }


def _judge(state: dict[str, Any], now: datetime) -> None:
    ban, restricted_at = state["ban"], state.pop("_restricted_at", None)
    ban_state = (ban or {}).get("state")
    violation = state["last_violation"]
    if ban_state == "DELETED":
        state.update(status="deleted", reason="WhatsApp deleted the account", since=ban["at"])
    elif ban_state in ("DISABLE", "SCHEDULE_FOR_DISABLE"):
        disabled = ban_state == "DISABLE"
        when = f" (ban date {ban['date']})" if ban.get("date") else ""
        state.update(
            status="disabled" if disabled else "scheduled_for_disable",
            reason=(
                "WhatsApp disabled the account" if disabled else "WhatsApp will disable the account"
            )
            + when,
            since=ban["at"],
        )
    elif state["restrictions"]:
        state.update(
            status="restricted",
            reason="WhatsApp restricts "
            + ", ".join(
                r["type"] + (f" until {r['expires_at'].isoformat()}" if r["expires_at"] else "")
                for r in state["restrictions"]
            ),
            since=restricted_at,
        )
    elif violation and violation["at"] > now - timedelta(days=VIOLATION_SHOWN_DAYS):
        state.update(
            status="violation",
            reason=f"WhatsApp reported a policy violation ({violation['type']})",
            since=violation["at"],
        )


def troubled(conn: sa.Connection) -> list[dict[str, Any]]:
    """The organisations whose account is not in good standing, for /health and /stats."""
    found = {k: v for k, v in states(conn).items() if v["status"] != "ok"}
    if not found:
        return []
    names = dict(
        conn.execute(
            sa.text(
                "SELECT id::text, jsonb_build_object('name', name, 'waba_id', waba_id)"
                " FROM organisations WHERE id::text = ANY(:ids)"
            ),
            {"ids": list(found)},
        ).all()
    )
    return _jsonable(
        [
            {"organisation_id": org, **names.get(org, {}), **state}
            for org, state in sorted(found.items())
        ]
    )


def events(
    conn: sa.Connection, organisation_id: str, kind: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """The organisation's account history, newest first."""
    rows = conn.execute(
        sa.text(
            "SELECT id, kind, source, field, event, phone_number_id, old_value, new_value,"
            " applied, note, actor, reason, detail, inbox_event_id, breaker_id, occurred_at,"
            " recorded_at FROM account_events WHERE organisation_id = CAST(:o AS uuid)"
            " AND (CAST(:k AS text) IS NULL OR kind = :k)"
            " ORDER BY occurred_at DESC, id DESC LIMIT :n"
        ),
        {"o": organisation_id, "k": kind, "n": limit},
    ).mappings()
    return _jsonable([dict(r) for r in rows])


def _jsonable(value: Any) -> Any:
    return json.loads(
        json.dumps(value, default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v))
    )


# Number status, read from the Graph API.


def refresh_numbers(
    engine: sa.Engine, client: Any, organisation_id: str | None = None
) -> list[dict[str, Any]]:
    """Read each phone number's status from the Graph API (`GET /{phone-number-id}?fields=
    …`; every number, or the organisation's) and store it: display number, verified name,
    quality rating, name status, throughput (which sets messages per second) and the
    portfolio's messaging limit. In dev mode nothing can be read: nothing is done. A number
    whose read fails keeps what it had, gets the error in `status_error` and a log line;
    the others are read all the same. Returns one result per number."""
    if client.dev_mode:
        return []

    import aiohttp

    from resources.graph_errors import GraphAPIError

    with engine.connect() as conn:
        numbers = conn.execute(
            sa.text(
                "SELECT phone_number_id, organisation_id::text FROM phone_numbers"
                " WHERE CAST(:o AS uuid) IS NULL OR organisation_id = CAST(:o AS uuid)"
                " ORDER BY phone_number_id"
            ),
            {"o": organisation_id},
        ).all()
    results = []
    for number, organisation in numbers:
        try:
            data = client.get(number, {"fields": ",".join(NUMBER_FIELDS)})
            if not isinstance(data, dict):
                raise ValueError("the answer is not a JSON object")
        except GraphAPIError as error:
            problem = f"Graph API error {error.code} (HTTP {error.http_status}): {error.title}"
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as error:
            problem = f"{type(error).__name__}: {error}"
        else:
            with engine.begin() as conn:
                changes = apply_number_status(conn, number, data)
            results.append(
                {"phone_number_id": number, "organisation_id": organisation, "changes": changes}
            )
            continue
        log.warning("status of phone number %s not read: %s", number, problem)
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE phone_numbers SET status_error = :e, status_error_at = now()"
                    " WHERE phone_number_id = :p"
                ),
                {"p": number, "e": problem[:1000]},
            )
        results.append(
            {"phone_number_id": number, "organisation_id": organisation, "error": problem}
        )
    return results


def apply_number_status(conn: sa.Connection, phone_number_id: str, data: dict) -> dict[str, Any]:
    """Store one number's status as the Graph API answered it; what changed."""
    before = conn.execute(
        sa.text(
            "SELECT organisation_id::text AS org, display_phone, verified_name, quality_rating,"
            " name_status FROM phone_numbers WHERE phone_number_id = :p FOR UPDATE"
        ),
        {"p": phone_number_id},
    ).one()
    columns = {
        "display_phone": data.get("display_phone_number"),
        "verified_name": data.get("verified_name"),
        "quality_rating": data.get("quality_rating"),
        "name_status": data.get("name_status"),
    }
    columns = {k: str(v)[:200] for k, v in columns.items() if v not in (None, "")}
    changes: dict[str, Any] = {
        k: [getattr(before, k), v] for k, v in columns.items() if getattr(before, k) != v
    }
    conn.execute(
        sa.text(
            "UPDATE phone_numbers SET "
            + "".join(f"{k} = :{k}, " for k in columns)
            + "status_read_at = now(), status_error = NULL, status_error_at = NULL"
            " WHERE phone_number_id = :p"
        ),
        {"p": phone_number_id, **columns},
    )
    level = (
        (data.get("throughput") or {}).get("level")
        if isinstance(data.get("throughput"), dict)
        else None
    )
    if isinstance(level, str) and level:
        outcome = set_throughput(
            conn, phone_number_id, level, "graph_api", record_unchanged=False, field="throughput"
        )
        if outcome.event_id is not None:
            changes["throughput"] = level
    named = tier(data.get("whatsapp_business_manager_messaging_limit"))
    if named is not None and named.sets:
        outcome = set_messaging_limit(
            conn,
            before.org,
            named.limit,
            "graph_api",
            record_unchanged=False,
            field="whatsapp_business_manager_messaging_limit",
            event=named.label,
        )
        if outcome.event_id is not None:
            changes["messaging_limit"] = limit_text(named.limit)
    elif named is not None and not named.known:
        log.warning(
            "phone number %s: unknown messaging limit tier %s read from the Graph API;"
            " the limit is left as it is",
            phone_number_id,
            quoted_tier(named.label),
        )
    return changes
