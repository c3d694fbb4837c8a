"""WhatsApp's template webhooks → the template as Meta has it (`resources.templates`).

Three fields, each naming the template by `message_template_name` and
`message_template_language` in the WhatsApp Business account `entry[].id`:

- `message_template_status_update`: `event` (APPROVED, PAUSED, DISABLED, REJECTED, …) with
  its `reason`. A status event sets the status; REINSTATED sets APPROVED again; FLAGGED,
  LOCKED, UNLOCKED and UNARCHIVED are recorded and change nothing (the next sync reads the
  status they leave). PAUSED or DISABLED opens the template's circuit breaker, APPROVED
  closes it.
- `template_category_update`: a completed change (`previous_category`, `new_category`) sets
  the category, which the next dispatch follows for consent; an impending one
  (`correct_category`, `category_update_timestamp`) is recorded only.
- `message_template_quality_update`: `new_quality_score`.

None carries a time of its own: the entry's `time` orders them, so an older event never
overwrites a newer one. Each is recorded once (a redelivery changes nothing). An event for a
template we do not know waits and is applied when a sync finds it. An entry whose WABA is no
organisation's changes nothing: the event stays in the inbox and one log line says so.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime

import sqlalchemy as sa

from resources import templates
from webhook_app.payloads import TEMPLATE_FIELDS, Event, TemplateUpdate

log = logging.getLogger(__name__)

FIELDS = TEMPLATE_FIELDS
MAX_TEXT = 500


def apply(conn: sa.Connection, webhook: Event, event_id: int | None = None) -> Counter:
    """Apply every template change of every entry of one inbox event; the tally."""
    tally: Counter = Counter()
    for entry in webhook.entries:
        changes = [c for c in entry.changes if c.field in FIELDS]
        if not changes:
            continue
        waba_id = entry.waba_id or ""
        organisation_id = templates.organisation_of_waba(conn, waba_id) if waba_id else None
        if organisation_id is None:
            log.warning(
                "template webhook in inbox event %s ignored: WABA %r is no organisation's",
                event_id,
                waba_id[:40],
            )
            tally["template_events_unknown_waba"] += len(changes)
            continue
        for change in changes:
            event, problem = _parse(change.field, change.value.template, entry.time)
            if event is None:
                log.warning(
                    "%s change in inbox event %s ignored: %s", change.field, event_id, problem
                )
                tally["template_events_ignored"] += 1
                continue
            outcome = templates.record_event(conn, organisation_id, event, event_id)
            if outcome == "pending":
                log.info(
                    "%s for template %r (%s) waits: organisation %s has no such template yet",
                    event.field,
                    event.name,
                    event.language,
                    organisation_id,
                )
            tally[f"template_events_{outcome}"] += 1
    return tally


def _text(value: str | None) -> str | None:
    return value[:MAX_TEXT] if value else None


def _parse(
    field: str, update: TemplateUpdate, at: datetime | None
) -> tuple[templates.Event | None, str | None]:
    if not (update.name and update.language):
        return None, "no message_template_name or message_template_language"
    if at is None:
        return None, "the entry has no valid time"
    common = {
        "field": field,
        "name": update.name,
        "language": update.language,
        "occurred_at": at,
        "meta_template_id": update.template_id,
    }
    if field == templates.STATUS_FIELD:
        if not update.event:
            return None, "no event"
        event = update.event.upper()
        # Why, when `reason` is NONE: a pause's title and description, a rejection's detail.
        info = ": ".join(p for p in (update.pause_title, update.pause_description) if p)
        detail = _text("; ".join(p for p in (info, update.rejection_reason) if p))
        if event in templates.STATUS_EVENTS:
            kind, new = "status", event
        elif event == templates.REINSTATED:
            kind, new = "status", templates.APPROVED
        else:
            kind, new = "noted", None
        return templates.Event(
            value=event, kind=kind, new=new, reason=_text(update.reason), detail=detail, **common
        ), None
    if field == templates.CATEGORY_FIELD:
        correct = update.correct_category
        if correct:
            when = update.category_update_at
            detail = f"Meta will recategorise it as {correct}" + (
                f" at {when.isoformat()}" if when else ""
            )
            return templates.Event(
                value=correct.upper(), kind="noted", detail=detail, **common
            ), None
        new = update.new_category
        if not new:
            return None, "no new_category"
        category = templates.CATEGORIES.get(new.upper())
        if category is None:
            return templates.Event(
                value=new.upper(), kind="noted", detail=f"unknown category {new[:40]!r}", **common
            ), None
        previous = update.previous_category
        detail = f"was {previous}" if previous else None
        return templates.Event(
            value=new.upper(), kind="category", new=category, detail=detail, **common
        ), None
    score = update.new_quality_score
    if not score:
        return None, "no new_quality_score"
    previous = update.previous_quality_score
    return templates.Event(
        value=score.upper(),
        kind="quality",
        new=score.upper(),
        detail=f"was {previous}" if previous else None,
        **common,
    ), None
