"""Meta's account-level webhook fields → the organisation's messaging limit, its numbers'
throughput, and its standing (`resources.account`).

Account-level changes name the WhatsApp Business account in `entry[].id` (the WABA id, which
the organisation holds as `waba_id`) and happened at `entry[].time`; a number is named by its
display number only. Each change is recorded in `account_events` with its old and new
values, then applied unless a newer fact of its kind is already in force:

- `phone_number_quality_update`: `max_daily_conversations_per_business` (and, while Meta
  still sends it, `current_limit`) is the business portfolio's messaging limit; `event`
  `THROUGHPUT_UPGRADE` raises the number to higher throughput (1,000 messages/s), and its
  `current_limit` (`TIER_UNLIMITED`) is that throughput, not a messaging limit. `old_limit`
  is only kept (Meta sends it for limit changes only). `TIER_NOT_SET` and a tier we do not
  know change nothing: the change is kept and one log line says so.
- `business_capability_update`: `max_daily_conversations_per_business` (a tier or a count),
  or the older `max_daily_conversation_per_phone` (a count, -1 = unlimited).
- `account_update`: `DISABLED_UPDATE` (`ban_info.waba_ban_state` DISABLE, SCHEDULE_FOR_DISABLE,
  REINSTATE), `ACCOUNT_DELETED`, `ACCOUNT_RESTRICTION` (`restriction_info[]`: type,
  expiration), `ACCOUNT_VIOLATION` (`violation_info.violation_type`); every other event is
  recorded only. A disable, a deletion or a restriction of business-initiated messaging
  opens the account circuit breaker with the reason; REINSTATE closes it when that ban
  opened it.

A change for a WABA no organisation holds is recorded (without an organisation) and logged.
Log lines name rows by id and quote only words: never a phone number.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from resources import account
from resources.account import Notice, quoted
from webhook_app.payloads import (
    ACCOUNT_FIELD,
    CAPABILITY_FIELD,
    NUMBER_QUALITY_FIELD,
    AccountUpdate,
    Event,
    Value,
)

log = logging.getLogger(__name__)

FIELDS = (NUMBER_QUALITY_FIELD, CAPABILITY_FIELD, ACCOUNT_FIELD)
THROUGHPUT_UPGRADE = "THROUGHPUT_UPGRADE"
# `event` values of phone_number_quality_update: the documented ones, and the messaging
# limit events of earlier versions.
QUALITY_EVENTS = (
    "ONBOARDING",
    THROUGHPUT_UPGRADE,
    "UPGRADE",
    "DOWNGRADE",
    "FLAGGED",
    "UNFLAGGED",
)
INFORMATIONAL = (
    "AD_ACCOUNT_LINKED",
    "AUTH_INTL_PRICE_ELIGIBILITY_UPDATE",
    "BUSINESS_PRIMARY_LOCATION_COUNTRY_UPDATE",
    "MM_LITE_TERMS_SIGNED",
    "PARTNER_ADDED",
    "PARTNER_APP_INSTALLED",
    "PARTNER_APP_UNINSTALLED",
    "PARTNER_CLIENT_CERTIFICATION_STATUS_UPDATE",
    "PARTNER_REMOVED",
    "VOLUME_BASED_PRICING_TIER_UPDATE",
    "ACCOUNT_OFFBOARDED",
    "ACCOUNT_RECONNECTED",
)


@dataclass(frozen=True)
class Entry:
    """Where one change came from: the WABA, its organisation, when, which inbox event."""

    waba_id: str | None
    organisation_id: str | None
    occurred_at: datetime | None
    inbox_event_id: int | None

    def about(self, field: str, value: dict[str, Any]) -> dict[str, Any]:
        return {
            "waba_id": self.waba_id,
            "field": field,
            "detail": value,
            "inbox_event_id": self.inbox_event_id,
        }


def apply(conn: sa.Connection, event: Event, event_id: int | None = None) -> Counter:
    """Apply the account-level changes of every entry; the tally of what happened."""
    tally: Counter = Counter()
    for entry in event.entries:
        mine = [c for c in entry.changes if c.field in FIELDS]
        if not mine:
            continue
        if entry.time is None:
            log.warning("inbox event %s: an entry without a valid time; taken as now", event_id)
        organisation_id = account.organisation_of_waba(conn, entry.waba_id)
        where = Entry(entry.waba_id, organisation_id, entry.time, event_id)
        for change in mine:
            field, value = change.field, change.value
            if where.organisation_id is None:
                tally.update(_unmatched(conn, where, field, value))
            elif value.account is not None:
                tally.update(_account_update(conn, where, value.account, value.raw))
            else:
                tally.update(_limits(conn, where, field, value))
    return tally


def _count(outcome: account.Outcome) -> Counter:
    if outcome.duplicate:
        return Counter(account_events_duplicate=1)
    return Counter(account_events=1, **{"account_events_applied": 1} if outcome.applied else {})


def _event(value: Value) -> str | None:
    """The `event` of an account update or a quality update (a capability update has none)."""
    if value.account is not None:
        return value.account.event
    return value.quality.event if value.quality is not None else None


def _unmatched(conn: sa.Connection, where: Entry, field: str, value: Value) -> Counter:
    event_id = account.record(
        conn,
        account.Event(
            "account",
            "webhook",
            where.occurred_at or account.db_now(conn),
            event=_event(value),
            note="no organisation holds this WhatsApp Business account: recorded only",
            **where.about(field, value.raw),
        ),
    )
    if event_id is None:
        return Counter(account_events_duplicate=1)
    log.warning(
        "%s in inbox event %s: no organisation holds WABA %s (set its waba_id);"
        " recorded as account event %s, nothing applied",
        field,
        where.inbox_event_id,
        where.waba_id if (where.waba_id or "").isdigit() else quoted(where.waba_id),
        event_id,
    )
    return Counter(account_events=1, account_events_ignored=1)


def _limits(conn: sa.Connection, where: Entry, field: str, sent: Value) -> Counter:
    """phone_number_quality_update and business_capability_update."""
    tally: Counter = Counter()
    quality, value = sent.quality, sent.raw
    event = _event(sent)
    org = where.organisation_id
    if quality is not None and event not in QUALITY_EVENTS:
        log.warning(
            "phone_number_quality_update in inbox event %s: unknown event %s (known: %s);"
            " its limit, if any, is applied",
            where.inbox_event_id,
            quoted(event),
            ", ".join(QUALITY_EVENTS),
        )
    upgrade = quality is not None and event == THROUGHPUT_UPGRADE
    if upgrade:
        number = account.number_by_display(conn, org, quality.display_phone_number)
        if number is None:
            event_id = account.record(
                conn,
                account.Event(
                    "throughput",
                    "webhook",
                    where.occurred_at or account.db_now(conn),
                    org,
                    event=event,
                    new_value=str(account.THROUGHPUT[account.HIGHER_THROUGHPUT]),
                    note="no phone number of the organisation has this display number"
                    " (set display_phone, or refresh the numbers): recorded, not applied",
                    **where.about(field, value),
                ),
            )
            log.warning(
                "THROUGHPUT_UPGRADE in inbox event %s: no phone number of organisation %s has"
                " its display number; recorded as account event %s, nothing applied",
                where.inbox_event_id,
                org,
                event_id,
            )
            tally.update(
                Counter(account_events_duplicate=1)
                if event_id is None
                else Counter(account_events=1, account_events_ignored=1)
            )
        else:
            tally.update(
                _count(
                    account.set_throughput(
                        conn,
                        number,
                        account.HIGHER_THROUGHPUT,
                        "webhook",
                        where.occurred_at,
                        **{**where.about(field, value), "event": event},
                    )
                )
            )
    found = None
    if quality is not None:
        found = quality.max_daily_conversations_per_business
        if found is None and not upgrade:
            found = quality.current_limit
    elif sent.capability is not None:
        found = sent.capability.max_daily_conversations_per_business
        if found is None:
            found = sent.capability.max_daily_conversation_per_phone
    if found is None:
        if not upgrade:  # the change is kept even when it names no limit
            tally.update(_unchanged(conn, where, field, value, event, None, "names no limit"))
        return tally
    if upgrade and found.sets and found.limit is None:
        return tally + _unchanged(
            conn,
            where,
            field,
            value,
            event,
            found.label,
            "TIER_UNLIMITED on a THROUGHPUT_UPGRADE is the number's throughput, not the"
            " portfolio's messaging limit",
        )
    if not found.known:
        log.warning(
            "%s in inbox event %s: unknown messaging limit tier %s; kept, nothing changed",
            field,
            where.inbox_event_id,
            account.quoted_tier(found.label),
        )
        return tally + _unchanged(conn, where, field, value, event, found.label, "unknown tier")
    if not found.sets:
        return tally + _unchanged(
            conn, where, field, value, event, found.label, "TIER_NOT_SET names no limit"
        )
    return tally + _count(
        account.set_messaging_limit(
            conn,
            org,
            found.limit,
            "webhook",
            where.occurred_at,
            **{**where.about(field, value), "event": event or found.label},
        )
    )


def _unchanged(
    conn: sa.Connection,
    where: Entry,
    field: str,
    value: dict[str, Any],
    event: str | None,
    label: str | None,
    why: str,
) -> Counter:
    """Keep a limit change that changes nothing, with why."""
    current = conn.execute(
        sa.text("SELECT messaging_limit FROM organisations WHERE id = CAST(:o AS uuid)"),
        {"o": where.organisation_id},
    ).scalar_one()
    event_id = account.record(
        conn,
        account.Event(
            "messaging_limit",
            "webhook",
            where.occurred_at or account.db_now(conn),
            where.organisation_id,
            event=event,
            old_value=account.limit_text(current),
            new_value=label,
            note=f"{why}: kept, nothing changed",
            **where.about(field, value),
        ),
    )
    if event_id is None:
        return Counter(account_events_duplicate=1)
    return Counter(account_events=1, account_events_ignored=1)


def _account_update(
    conn: sa.Connection, where: Entry, update: AccountUpdate, value: dict[str, Any]
) -> Counter:
    notice = notice_of(update)
    if notice.kind == "account" and notice.event not in INFORMATIONAL:
        log.warning(
            "account_update in inbox event %s: unknown event %s; recorded only",
            where.inbox_event_id,
            quoted(update.event),
        )
    return _count(
        account.apply_notice(
            conn,
            where.organisation_id,
            notice,
            where.occurred_at,
            **where.about(ACCOUNT_FIELD, value),
        )
    )


def notice_of(update: AccountUpdate) -> Notice:
    """What one `account_update` means for sending."""
    event = update.event
    label = f"account_update {event}"
    if event == "DISABLED_UPDATE":
        state = update.ban.state if update.ban is not None else None
        date = update.ban.date if update.ban is not None else None
        when = f", ban date {date}" if date else ""
        if state == "DISABLE":
            return Notice(
                "ban", event, state, f"WhatsApp disabled the account ({label}{when})", True
            )
        if state == "SCHEDULE_FOR_DISABLE":
            return Notice(
                "ban", event, state, f"WhatsApp scheduled the account to be disabled ({label})"
            )
        if state == "REINSTATE":
            return Notice(
                "ban", event, state, f"WhatsApp reinstated the account ({label})", reinstates=True
            )
        return Notice("account", event, None, f"{label} with ban state {quoted(state)}")
    if event == "ACCOUNT_DELETED":
        return Notice("ban", event, "DELETED", f"WhatsApp deleted the account ({label})", True)
    if event == "ACCOUNT_RESTRICTION":
        types = sorted({r.type for r in update.restrictions})
        stopping = [r for r in update.restrictions if r.type == account.BIZ_INITIATED]
        until = None
        if stopping:
            ends = [r.expires_at for r in stopping]
            until = None if None in ends else max(e for e in ends if e is not None)
        remedy = next((r.remediation for r in update.restrictions if r.remediation), None)
        summary = (
            "WhatsApp restricts "
            + (", ".join(types) or "the account")
            + (f" until {until.isoformat()}" if until else "")
            + f" ({label})"
            + (f": {remedy[:300]}" if remedy else "")
        )
        return Notice(
            "restriction", event, ",".join(types) or None, summary, bool(stopping), False, until
        )
    if event == "ACCOUNT_VIOLATION":
        kind = update.violation_type
        return Notice(
            "violation", event, kind, f"WhatsApp reported a policy violation {kind or ''} ({label})"
        )
    return Notice("account", event or "(missing)", None, label)
