"""Templates as Meta has them: the sync of an organisation's WhatsApp Business account
(`GET /{waba-id}/message_templates`, every page), the events its webhooks bring (status,
category, quality score), and the check of our parameter configuration against Meta's
components.

The `whatsapp_templates` asset, `waflow templates sync` and `POST /api/organisations/{id}/
templates/sync` all call `sync_organisation`; the webhook worker calls `record_event`; the
operator API asks `problems` and `approval_refusal`.

A sync reads every page before it changes anything, then applies the organisation in one
transaction: a sync that fails half-way applies nothing. Each of Meta's facts keeps the time
it was true (a webhook's `entry[].time`, or the moment a sync started reading), and an
older fact never overwrites a newer one: webhooks delivered out of order, and a sync racing
a webhook, end on the newest. An event for a template we do not know waits in
`template_events` and is applied when a sync finds the template (or an operator creates it).

A template Meta pauses or disables opens its circuit breaker (scope `template`) at once, so
the sender holds its queued messages instead of failing them one by one with 132015 or
132016; APPROVED again closes the breaker such a status opened.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote
from uuid import UUID

import sqlalchemy as sa

from resources import breakers
from resources.errors import Conflict, NotFound
from resources.graph_errors import GraphAPIError
from resources.whatsapp import WhatsAppClient

log = logging.getLogger(__name__)

# What a sync asks Meta for, per template.
FIELDS = (
    "name",
    "language",
    "status",
    "category",
    "quality_score",
    "components",
    "rejected_reason",
    "id",
)
PAGE_SIZE = 100

APPROVED = "APPROVED"
LOCAL_APPROVED = "approved"
# Webhook `event` values that are a status of the template itself (Meta's status enum).
STATUS_EVENTS = frozenset(
    {
        "APPROVED",
        "PENDING",
        "REJECTED",
        "PAUSED",
        "DISABLED",
        "IN_APPEAL",
        "PENDING_DELETION",
        "DELETED",
        "ARCHIVED",
        "LIMIT_EXCEEDED",
    }
)
# "No longer flagged or disabled and can be sent again."
REINSTATED = "REINSTATED"
# A status that stops every send of the template: the breaker opens with the code a send
# would meet (resources.graph_errors).
BREAKING_STATUSES = {
    "PAUSED": (132015, "Template is paused"),
    "DISABLED": (132016, "Template is disabled"),
}
CATEGORIES = {"MARKETING": "marketing", "UTILITY": "utility", "AUTHENTICATION": "authentication"}
MEDIA_HEADERS = ("IMAGE", "VIDEO", "DOCUMENT")
ACTIVE_CAMPAIGN_STATUSES = (
    "approved",
    "asset_generation",
    "asset_generated",
    "ready_to_launch",
    "running",
    "paused",
)
STATUS_FIELD = "message_template_status_update"
CATEGORY_FIELD = "template_category_update"
QUALITY_FIELD = "message_template_quality_update"
_VARIABLE = re.compile(r"\{\{\s*([^{}\s]+)\s*\}\}")
_SYNC_LOCK = "template_sync:"


class CannotReadMeta(Conflict):
    """No access token (dev mode): nothing can be read from Meta, so nothing was changed."""


class NoSuchOrganisation(NotFound):
    pass


class NoWABA(Conflict):
    """The organisation has no WhatsApp Business account id to read templates from."""


class SyncFailed(RuntimeError):
    """The Graph API refused a page: nothing of the organisation was changed."""

    def __init__(self, organisation_id: str, waba_id: str, error: Any) -> None:
        self.organisation_id = organisation_id
        self.waba_id = waba_id
        self.code = getattr(error, "code", None)
        self.title = getattr(error, "title", str(error))
        self.http_status = getattr(error, "http_status", None)
        super().__init__(
            f"Graph API error {self.code} (HTTP {self.http_status}): {self.title}; reading the"
            f" templates of WABA {waba_id} (organisation {organisation_id}) failed and nothing"
            " was changed"
        )


# Meta's components, summarised.


@dataclass(frozen=True)
class Components:
    """What our configuration must fit: the header's format and variables, the body's
    variables, and the buttons (a URL button with a variable takes one parameter)."""

    header_format: str | None = None
    header_parameters: int = 0
    body_text: str | None = None
    body_parameters: int = 0
    buttons: tuple[dict[str, Any], ...] = ()

    @property
    def button_parameters(self) -> int:
        return sum(b["parameters"] for b in self.buttons)

    @property
    def message_type(self) -> str:
        return self.header_format.lower() if self.header_format in MEDIA_HEADERS else "text"


def variables(text: Any) -> list[str]:
    """The distinct `{{1}}` / `{{name}}` variables of a text, in order of appearance."""
    return list(dict.fromkeys(_VARIABLE.findall(text))) if isinstance(text, str) else []


def summarize(components: Any) -> Components:
    header_format, header_parameters, body_text, body_parameters = None, 0, None, 0
    buttons: list[dict[str, Any]] = []
    for component in components if isinstance(components, list) else []:
        if not isinstance(component, dict):
            continue
        kind = str(component.get("type", "")).upper()
        if kind == "HEADER":
            header_format = str(component.get("format") or "TEXT").upper()
            header_parameters = len(variables(component.get("text")))
        elif kind == "BODY":
            body_text = component.get("text")
            body_parameters = len(variables(body_text))
        elif kind == "BUTTONS":
            for button in component.get("buttons") or []:
                if not isinstance(button, dict):
                    continue
                button_type = str(button.get("type", "")).upper()
                summary = {"type": button_type, "text": button.get("text")}
                if button.get("url"):
                    summary["url"] = button["url"]
                summary["parameters"] = (
                    len(variables(button.get("url"))) if button_type == "URL" else 0
                )
                buttons.append(summary)
    return Components(header_format, header_parameters, body_text, body_parameters, tuple(buttons))


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def problems(parameters: Any, known: Components) -> list[str]:
    """Where our parameters do not fit Meta's components, one sentence each; [] if they fit."""
    parameters = (
        [p for p in parameters if isinstance(p, dict)] if isinstance(parameters, list) else []
    )
    by_type = Counter(p.get("type") for p in parameters)
    found = []
    if by_type["body"] != known.body_parameters:
        found.append(
            f"body: Meta's template has {_count(known.body_parameters, 'body parameter')}"
            f" ({', '.join(variables(known.body_text)) or 'none'}); {by_type['body']} configured"
        )
    headers = [p for p in parameters if p.get("type") == "header"]
    form = known.header_format
    if form in MEDIA_HEADERS:
        wanted = form.lower()
        if not headers:
            found.append(
                f"header: Meta's template has a {form} header; configure one header parameter"
                f" with valueType {wanted}"
            )
        elif len(headers) > 1:
            found.append(f"header: {len(headers)} header parameters; a {form} header takes one")
        elif headers[0].get("valueType") != wanted:
            found.append(
                f"header: the header parameter is {headers[0].get('valueType')!s} but Meta's"
                f" template has a {form} header"
            )
    elif form == "TEXT":
        if len(headers) != known.header_parameters:
            found.append(
                f"header: Meta's template has a text header with"
                f" {_count(known.header_parameters, 'parameter')}; {len(headers)} configured"
            )
        elif any(h.get("valueType") != "text" for h in headers):
            found.append("header: Meta's template has a text header; its parameter must be text")
    elif form == "LOCATION":
        found.append("header: Meta's template has a LOCATION header, which campaigns cannot fill")
    elif headers:
        found.append(
            "header: a header parameter is configured but Meta's template has no media header"
        )
    if by_type["button"] != known.button_parameters:
        found.append(
            f"button: Meta's template has"
            f" {_count(known.button_parameters, 'URL button parameter')}; {by_type['button']}"
            " configured"
        )
    return found


# What Meta lists.


@dataclass(frozen=True)
class MetaTemplate:
    name: str
    language: str
    status: str
    category: str | None
    quality_score: str | None
    rejected_reason: str | None
    meta_id: str | None
    components: list[Any]

    @classmethod
    def parse(cls, item: Any) -> MetaTemplate | None:
        if not isinstance(item, dict):
            return None
        name, language, status = item.get("name"), item.get("language"), item.get("status")
        if not (isinstance(name, str) and isinstance(language, str) and isinstance(status, str)):
            return None
        quality = item.get("quality_score")
        if isinstance(quality, dict):
            quality = quality.get("score")
        components = item.get("components")
        return cls(
            name=name,
            language=language,
            status=status.upper(),
            category=item.get("category"),
            quality_score=quality if isinstance(quality, str) else None,
            rejected_reason=item.get("rejected_reason"),
            meta_id=str(item["id"]) if item.get("id") is not None else None,
            components=components if isinstance(components, list) else [],
        )


def read(client: WhatsAppClient, waba_id: str) -> list[MetaTemplate]:
    """Every template Meta lists for the WABA, every page read (a failing page raises the
    Graph API's error and nothing is returned)."""
    if client.dev_mode:
        raise CannotReadMeta(
            "cannot read templates from Meta without WHATSAPP_ACCESS_TOKEN (dev mode);"
            " nothing was changed"
        )
    items = client.get_all(
        f"{quote(waba_id, safe='')}/message_templates",
        {"fields": ",".join(FIELDS), "limit": str(PAGE_SIZE)},
    )
    listed: dict[tuple[str, str], MetaTemplate] = {}
    for item in items:
        template = MetaTemplate.parse(item)
        if template is None:
            log.warning("WABA %s listed a template without name, language or status", waba_id)
            continue
        listed[(template.name, template.language)] = template
    return list(listed.values())


# The sync.


@dataclass
class SyncResult:
    organisation_id: str
    waba_id: str
    read_at: datetime
    templates: int = 0
    created: int = 0
    updated: int = 0
    removed: int = 0
    mismatched: int = 0
    events_applied: int = 0
    breakers_opened: list[int] = field(default_factory=list)
    breakers_closed: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "read_at": self.read_at.isoformat()}


@dataclass(frozen=True)
class Organisation:
    id: str
    name: str
    waba_id: str | None


def organisations(conn: sa.Connection, organisation_id: str | None = None) -> list[Organisation]:
    """Organisations with a WABA (or the one asked for, with or without; none for an id
    that is not an organisation's)."""
    if organisation_id is not None:
        try:
            organisation_id = str(UUID(str(organisation_id)))
        except ValueError:
            return []
    rows = conn.execute(
        sa.text(
            "SELECT id::text, name, waba_id FROM organisations"
            " WHERE (CAST(:o AS uuid) IS NULL AND waba_id IS NOT NULL) OR id = CAST(:o AS uuid)"
            " ORDER BY created_at, id"
        ),
        {"o": organisation_id},
    ).all()
    return [Organisation(*row) for row in rows]


def sync_organisation(
    engine: sa.Engine, client: WhatsAppClient, organisation_id: str
) -> SyncResult:
    """Read the organisation's templates from Meta (every page), then apply them in one
    transaction. Raises `NoSuchOrganisation`, `NoWABA`, `CannotReadMeta` (dev mode) or
    `SyncFailed` (a Graph API error), each having changed nothing."""
    with engine.connect() as conn:
        found = organisations(conn, organisation_id)
    if not found:
        raise NoSuchOrganisation(f"organisation {organisation_id} does not exist")
    organisation = found[0]
    if not organisation.waba_id:
        raise NoWABA(
            f"organisation {organisation_id} has no waba_id: set its WhatsApp Business account"
            " id to read its templates from Meta"
        )
    # Whole seconds, as Meta's webhook times are: an event of the second the read started
    # counts as no older than what the read finds.
    read_at = datetime.now(UTC).replace(microsecond=0)
    try:
        listed = read(client, organisation.waba_id)
    except GraphAPIError as error:
        raise SyncFailed(organisation.id, organisation.waba_id, error) from error
    with engine.begin() as conn:
        conn.execute(
            sa.text("SELECT pg_advisory_xact_lock(hashtext(:k))"),
            {"k": _SYNC_LOCK + organisation.id},
        )
        result = _apply_sync(conn, organisation, listed, read_at)
    log.info(
        "templates of organisation %s synced from WABA %s: %d listed, %d new, %d updated,"
        " %d no longer listed, %d mismatched",
        organisation.id,
        organisation.waba_id,
        result.templates,
        result.created,
        result.updated,
        result.removed,
        result.mismatched,
    )
    return result


# Meta's components replace ours only from a sync that read later than the one that set
# them; each of status, category and quality only when the sync read later than that
# fact's time (a webhook may have brought a newer one).
_NEWER = "t.synced_at IS NULL OR t.synced_at <= :at"
_UPSERT_META = sa.text(
    f"""
    INSERT INTO templates AS t (organisation_id, name, language, category, message_type, body,
        status, origin, meta_template_id, quality_score, rejected_reason, components,
        header_format, header_parameters, body_parameters, buttons, status_at, category_at,
        quality_at, synced_at)
    VALUES (:o, :name, :language, COALESCE(:category, 'marketing'), :message_type, :body,
        :status, 'meta', :meta_id, :quality, :rejected, CAST(:components AS jsonb), :header,
        :header_parameters, :body_parameters, CAST(:buttons AS jsonb), :at,
        CASE WHEN :category IS NOT NULL THEN :at END, :at, :at)
    ON CONFLICT (organisation_id, name, language) DO UPDATE SET
        meta_template_id = EXCLUDED.meta_template_id,
        rejected_reason = EXCLUDED.rejected_reason,
        components = CASE WHEN {_NEWER} THEN EXCLUDED.components ELSE t.components END,
        body = CASE WHEN {_NEWER} THEN EXCLUDED.body ELSE t.body END,
        message_type = CASE WHEN {_NEWER} THEN EXCLUDED.message_type ELSE t.message_type END,
        header_format = CASE WHEN {_NEWER} THEN EXCLUDED.header_format ELSE t.header_format END,
        header_parameters = CASE WHEN {_NEWER}
                                 THEN EXCLUDED.header_parameters ELSE t.header_parameters END,
        body_parameters = CASE WHEN {_NEWER}
                               THEN EXCLUDED.body_parameters ELSE t.body_parameters END,
        buttons = CASE WHEN {_NEWER} THEN EXCLUDED.buttons ELSE t.buttons END,
        synced_at = GREATEST(t.synced_at, :at),
        status = CASE WHEN t.status_at IS NULL OR t.status_at <= :at
                      THEN EXCLUDED.status ELSE t.status END,
        status_reason = CASE WHEN t.status_at IS NULL OR t.status_at <= :at
                             THEN NULL ELSE t.status_reason END,
        status_at = GREATEST(t.status_at, :at),
        category = CASE WHEN :category IS NOT NULL
                         AND (t.category_at IS NULL OR t.category_at <= :at)
                        THEN EXCLUDED.category ELSE t.category END,
        category_at = CASE WHEN :category IS NOT NULL THEN GREATEST(t.category_at, :at)
                           ELSE t.category_at END,
        quality_score = CASE WHEN t.quality_at IS NULL OR t.quality_at <= :at
                             THEN EXCLUDED.quality_score ELSE t.quality_score END,
        quality_at = GREATEST(t.quality_at, :at)
    RETURNING t.id, (t.xmax = 0) AS created, t.status
    """
)

# Templates a previous sync found that Meta no longer lists: deleted at Meta.
_NO_LONGER_LISTED = sa.text(
    "UPDATE templates SET synced_at = NULL,"
    " status = CASE WHEN status_at IS NULL OR status_at <= :at THEN 'DELETED' ELSE status END,"
    " status_reason = CASE WHEN status_at IS NULL OR status_at <= :at"
    "   THEN :reason ELSE status_reason END,"
    " status_at = GREATEST(status_at, :at)"
    " WHERE organisation_id = :o AND synced_at IS NOT NULL AND synced_at <= :at"
    " AND (name, language) NOT IN (SELECT n, l FROM unnest(CAST(:names AS text[]),"
    "   CAST(:languages AS text[])) AS listed (n, l))"
    " RETURNING id"
)


def _apply_sync(
    conn: sa.Connection, organisation: Organisation, listed: list[MetaTemplate], read_at: datetime
) -> SyncResult:
    result = SyncResult(organisation.id, organisation.waba_id or "", read_at, len(listed))
    for template in listed:
        known = summarize(template.components)
        category = CATEGORIES.get(str(template.category or "").upper())
        if template.category and category is None:
            log.warning(
                "template %s (%s) of WABA %s has category %r, which we do not know; kept ours",
                template.name,
                template.language,
                organisation.waba_id,
                template.category,
            )
        row = conn.execute(
            _UPSERT_META,
            {
                "o": organisation.id,
                "name": template.name,
                "language": template.language,
                "category": category,
                "message_type": known.message_type,
                "body": known.body_text,
                "status": template.status,
                "meta_id": template.meta_id,
                "quality": template.quality_score,
                "rejected": template.rejected_reason,
                "components": json.dumps(template.components),
                "header": known.header_format,
                "header_parameters": known.header_parameters,
                "body_parameters": known.body_parameters,
                "buttons": json.dumps(list(known.buttons)),
                "at": read_at,
            },
        ).one()
        if row.created:
            result.created += 1
        else:
            result.updated += 1
        result.events_applied += apply_pending(
            conn, organisation.id, template.name, template.language
        )
    removed = conn.execute(
        _NO_LONGER_LISTED,
        {
            "o": organisation.id,
            "at": read_at,
            "reason": f"no longer listed by Meta (sync of {read_at.isoformat(timespec='seconds')})",
            "names": [t.name for t in listed],
            "languages": [t.language for t in listed],
        },
    ).all()
    result.removed = len(removed)
    statuses = conn.execute(
        sa.text(
            "SELECT name, language, status, status_reason FROM templates"
            " WHERE organisation_id = :o AND (synced_at = :at OR id = ANY(CAST(:removed AS bigint[])))"
        ),
        {"o": organisation.id, "at": read_at, "removed": [r.id for r in removed]},
    ).all()
    for name, language, status, reason in statuses:
        opened, closed = breaker_follows_status(
            conn, organisation.id, name, language, status, reason, "whatsapp_templates sync"
        )
        result.breakers_opened += [opened] if opened else []
        result.breakers_closed += [closed] if closed else []
    result.mismatched = refresh_problems(conn, organisation.id)
    conn.execute(
        sa.text(
            "INSERT INTO template_syncs (organisation_id, waba_id, read_at, templates, created,"
            " updated, removed, mismatched) VALUES (:o, :w, :at, :n, :c, :u, :r, :m)"
        ),
        {
            "o": organisation.id,
            "w": organisation.waba_id,
            "at": read_at,
            "n": result.templates,
            "c": result.created,
            "u": result.updated,
            "r": result.removed,
            "m": result.mismatched,
        },
    )
    return result


def refresh_problems(
    conn: sa.Connection, organisation_id: str, template_id: int | None = None
) -> int:
    """Record, on each template whose components Meta gave us, where our parameters do not
    fit them; how many templates have a problem."""
    rows = conn.execute(
        sa.text(
            "SELECT id, parameters, components FROM templates WHERE organisation_id = :o"
            " AND components IS NOT NULL AND (CAST(:t AS bigint) IS NULL OR id = :t)"
        ),
        {"o": organisation_id, "t": template_id},
    ).all()
    mismatched = 0
    for template_id_, parameters, components in rows:
        found = problems(parameters, summarize(components))
        mismatched += bool(found)
        conn.execute(
            sa.text(
                "UPDATE templates SET config_problems = CAST(:p AS jsonb)"
                " WHERE id = :id AND config_problems <> CAST(:p AS jsonb)"
            ),
            {"id": template_id_, "p": json.dumps(found)},
        )
    return mismatched


def breaker_follows_status(
    conn: sa.Connection,
    organisation_id: str,
    name: str,
    language: str,
    status: str,
    reason: str | None,
    by: str,
) -> tuple[int | None, int | None]:
    """PAUSED or DISABLED opens the template's breaker (nothing of it is sent or failed until
    it closes); APPROVED closes the breaker such a status opened. (opened, closed) ids."""
    key = breakers.template_key(organisation_id, name, language)
    if status in BREAKING_STATUSES:
        code, title = BREAKING_STATUSES[status]
        if reason and reason.upper() != "NONE":
            title = f"{title} ({reason})"
        breaker, new = breakers.trip(conn, "template", key, code, title, "operator", 0)
        if new:
            log.warning(
                "circuit breaker %s on template %s opened: Meta set the template %s (%s)",
                breaker.id,
                key,
                status,
                by,
            )
        return (breaker.id if new else None), None
    if status != APPROVED:
        return None, None
    found = conn.execute(
        sa.text(
            "SELECT id FROM circuit_breakers WHERE scope = 'template' AND scope_key = :k"
            " AND closed_at IS NULL AND error_code = ANY(:codes)"
        ),
        {"k": key, "codes": [code for code, _ in BREAKING_STATUSES.values()]},
    ).scalar_one_or_none()
    if found is not None and breakers.close(conn, found, by, "Meta approved the template again"):
        log.info(
            "circuit breaker %s on template %s closed: the template is APPROVED again", found, key
        )
        return None, found
    return None, None


# Webhook events.


@dataclass(frozen=True)
class Event:
    """One template webhook change, parsed. `kind` says what it sets (status, category,
    quality) or `noted` for what changes nothing (e.g. FLAGGED, an impending category
    change); `new` is the value it sets."""

    field: str
    name: str
    language: str
    value: str
    occurred_at: datetime
    kind: str
    new: str | None = None
    reason: str | None = None
    meta_template_id: str | None = None
    detail: str | None = None


def organisation_of_waba(conn: sa.Connection, waba_id: str) -> str | None:
    return conn.execute(
        sa.text("SELECT id::text FROM organisations WHERE waba_id = :w"), {"w": waba_id}
    ).scalar_one_or_none()


def record_event(
    conn: sa.Connection, organisation_id: str, event: Event, inbox_event_id: int | None = None
) -> str:
    """Record the event once and apply it; its outcome (`applied`, `stale`, `pending`,
    `noted`), or `duplicate` when it was recorded before."""
    event_id = conn.execute(
        sa.text(
            "INSERT INTO template_events (organisation_id, field, name, language,"
            " meta_template_id, value, kind, new_value, reason, occurred_at, inbox_event_id,"
            " detail) VALUES (:o, :field, :name, :language, :mid, :value, :kind, :new, :reason,"
            " :at, :inbox, :detail)"
            " ON CONFLICT (organisation_id, field, name, language, value, occurred_at)"
            " DO NOTHING RETURNING id"
        ),
        {
            "o": organisation_id,
            "field": event.field,
            "name": event.name,
            "language": event.language,
            "mid": event.meta_template_id,
            "value": event.value,
            "kind": event.kind,
            "new": event.new,
            "reason": event.reason,
            "at": event.occurred_at,
            "inbox": inbox_event_id,
            "detail": event.detail,
        },
    ).scalar_one_or_none()
    if event_id is None:
        return "duplicate"
    return _apply_event(conn, organisation_id, event_id, event)


def apply_pending(conn: sa.Connection, organisation_id: str, name: str, language: str) -> int:
    """Apply, oldest first, the events that waited for this template; how many applied."""
    rows = conn.execute(
        sa.text(
            "SELECT id, field, name, language, value, occurred_at, kind, new_value, reason,"
            " meta_template_id, detail FROM template_events WHERE organisation_id = :o AND name = :n"
            " AND language = :l AND outcome = 'pending' ORDER BY occurred_at, id FOR UPDATE"
        ),
        {"o": organisation_id, "n": name, "l": language},
    ).all()
    applied = 0
    for row in rows:
        event = _event_of(row)
        applied += _apply_event(conn, organisation_id, row.id, event) == "applied"
    return applied


def _event_of(row: Any) -> Event:
    return Event(
        row.field,
        row.name,
        row.language,
        row.value,
        row.occurred_at,
        row.kind,
        row.new_value,
        row.reason,
        row.meta_template_id,
        row.detail,
    )


_SET = {
    "status": (
        "status = :new, status_reason = :reason, status_at = :at,"
        " meta_template_id = COALESCE(meta_template_id, :mid)",
        "status_at",
    ),
    "category": ("category = :new, category_at = :at", "category_at"),
    "quality": ("quality_score = :new, quality_at = :at", "quality_at"),
}


def _apply_event(conn: sa.Connection, organisation_id: str, event_id: int, event: Event) -> str:
    template = conn.execute(
        sa.text(
            "SELECT id FROM templates WHERE organisation_id = :o AND name = :n AND language = :l"
            " FOR UPDATE"
        ),
        {"o": organisation_id, "n": event.name, "l": event.language},
    ).scalar_one_or_none()
    if template is None:
        return "pending"
    # Meta's reason, or when it says NONE what the event tells (a pause's title).
    reason = event.reason if event.reason and event.reason.upper() != "NONE" else event.detail
    if event.kind == "noted":
        outcome = "noted"
    else:
        assignments, time_column = _SET[event.kind]
        changed = conn.execute(
            sa.text(
                f"UPDATE templates SET {assignments} WHERE id = :id"
                f" AND ({time_column} IS NULL OR {time_column} <= :at) RETURNING id"
            ),
            {
                "id": template,
                "new": event.new,
                "reason": reason,
                "at": event.occurred_at,
                "mid": event.meta_template_id,
            },
        ).first()
        outcome = "applied" if changed else "stale"
        if changed and event.kind == "status":
            breaker_follows_status(
                conn,
                organisation_id,
                event.name,
                event.language,
                event.new,
                reason,
                event.field,
            )
    conn.execute(
        sa.text(
            "UPDATE template_events SET outcome = :outcome, template_id = :t, applied_at = now()"
            " WHERE id = :id"
        ),
        {"outcome": outcome, "t": template, "id": event_id},
    )
    return outcome


# What operators and campaigns ask.


def sendable(status: str, production: bool) -> bool:
    """Whether a campaign may be approved on a template with this status: Meta's APPROVED,
    or in development a template declared approved locally."""
    return status == APPROVED or (not production and status == LOCAL_APPROVED)


@dataclass(frozen=True)
class Known:
    """A template Meta listed (or whose components we hold), for the operator API's checks."""

    id: int
    origin: str
    parameters: list[Any]
    components: Components | None
    synced: bool


def known_template(
    conn: sa.Connection, organisation_id: str, name: str, language: str
) -> Known | None:
    row = conn.execute(
        sa.text(
            "SELECT id, origin, parameters, components, synced_at IS NOT NULL FROM templates"
            " WHERE organisation_id = :o AND name = :n AND language = :l"
        ),
        {"o": organisation_id, "n": name, "l": language},
    ).one_or_none()
    if row is None:
        return None
    return Known(row[0], row[1], row[2], summarize(row[3]) if row[3] is not None else None, row[4])


def components_of(conn: sa.Connection, template_id: int) -> Components | None:
    components = conn.execute(
        sa.text("SELECT components FROM templates WHERE id = :t"), {"t": template_id}
    ).scalar_one_or_none()
    return summarize(components) if components is not None else None


def not_at_meta(conn: sa.Connection, organisation_id: str, name: str, language: str) -> str | None:
    """Why Meta does not have this template, if a sync of the organisation's WABA found no
    such name and language; None when Meta has it or we cannot tell (no WABA, never synced)."""
    last = conn.execute(
        sa.text(
            "SELECT s.waba_id, s.read_at FROM template_syncs s"
            " JOIN organisations o ON o.id = s.organisation_id AND o.waba_id = s.waba_id"
            " WHERE s.organisation_id = :o ORDER BY s.read_at DESC LIMIT 1"
        ),
        {"o": organisation_id},
    ).one_or_none()
    if last is None:
        return None
    listed = conn.execute(
        sa.text(
            "SELECT 1 FROM templates WHERE organisation_id = :o AND name = :n AND language = :l"
            " AND synced_at IS NOT NULL"
        ),
        {"o": organisation_id, "n": name, "l": language},
    ).first()
    if listed:
        return None
    return (
        f"Meta has no template {name!r} in language {language!r} in WABA {last.waba_id}"
        f" (sync of {last.read_at.isoformat(timespec='seconds')}); create it in WhatsApp"
        " Manager and sync the templates: production sends only templates Meta has"
    )


def configure(conn: sa.Connection, template_id: int, parameters: list[Any]) -> None:
    """Our parameters for a template a sync created."""
    conn.execute(
        sa.text("UPDATE templates SET parameters = CAST(:p AS jsonb) WHERE id = :id"),
        {"p": json.dumps(parameters), "id": template_id},
    )


@dataclass(frozen=True)
class Refusal:
    kind: str  # conflict (the status) | invalid (our configuration)
    reasons: list[str]


def approval_refusal(conn: sa.Connection, template_id: int, production: bool) -> Refusal | None:
    """Why a campaign on this template cannot be approved, or None."""
    row = conn.execute(
        sa.text(
            "SELECT name, language, status, status_reason, parameters, components, synced_at"
            " FROM templates WHERE id = :t"
        ),
        {"t": template_id},
    ).one()
    label = f"template {row.name!r} ({row.language})"
    if not sendable(row.status, production):
        why = f": {row.status_reason}" if row.status_reason else ""
        if production and row.status == LOCAL_APPROVED:
            reason = (
                f"{label} is only declared approved locally; production approves a campaign"
                " only on a template Meta has APPROVED (sync the organisation's templates)"
            )
        elif production:
            reason = f"{label} is {row.status}{why}; production needs it APPROVED by Meta"
        else:
            reason = (
                f"{label} is {row.status}{why}; a campaign needs it APPROVED by Meta"
                " (or declared approved locally, in development)"
            )
        return Refusal("conflict", [reason])
    if row.components is not None:
        found = problems(row.parameters, summarize(row.components))
        if found:
            return Refusal("invalid", [f"{label} does not fit Meta's: {p}" for p in found])
    return None


@dataclass(frozen=True)
class Unsendable:
    campaign_id: str
    campaign: str
    campaign_status: str
    template_id: int
    template: str
    language: str
    status: str


def active_campaigns_on_unsendable_templates(
    conn: sa.Connection, production: bool
) -> list[Unsendable]:
    rows = conn.execute(
        sa.text(
            "SELECT c.id::text, c.name, c.status, t.id, t.name, t.language, t.status"
            " FROM campaigns c JOIN templates t ON t.id = c.template_id"
            " WHERE c.status = ANY(:active) ORDER BY c.created_at, c.id"
        ),
        {"active": list(ACTIVE_CAMPAIGN_STATUSES)},
    ).all()
    return [Unsendable(*row) for row in rows if not sendable(row[6], production)]


def listing(
    conn: sa.Connection, limit: int = 500, organisation_id: str | None = None
) -> list[dict[str, Any]]:
    """Templates of every organisation (or one), for the asset's table and sync reports."""
    rows = conn.execute(
        sa.text(
            "SELECT o.name AS organisation, t.id, t.name, t.language, t.status, t.category,"
            " t.quality_score, t.header_format, t.body_parameters, t.rejected_reason,"
            " t.status_reason, t.config_problems, t.synced_at IS NOT NULL AS at_meta"
            " FROM templates t JOIN organisations o ON o.id = t.organisation_id"
            " WHERE CAST(:o AS uuid) IS NULL OR o.id = CAST(:o AS uuid)"
            " ORDER BY o.name, t.name, t.language LIMIT :n"
        ),
        {"n": limit, "o": organisation_id},
    ).mappings()
    return [dict(row) for row in rows]


def report(engine: sa.Engine, result: SyncResult) -> dict[str, Any]:
    """What a sync did, and the organisation's templates after it (JSON-ready)."""
    with engine.connect() as conn:
        items = listing(conn, 10_000, result.organisation_id)
    return {
        **result.as_dict(),
        "items": [
            {
                "id": t["id"],
                "name": t["name"],
                "language": t["language"],
                "status": t["status"],
                "status_reason": t["status_reason"],
                "rejected_reason": t["rejected_reason"],
                "category": t["category"],
                "quality_score": t["quality_score"],
                "header_format": t["header_format"],
                "body_parameters": t["body_parameters"],
                "at_meta": t["at_meta"],
                "config_problems": t["config_problems"],
            }
            for t in items
        ],
    }


def in_use_with_problems(conn: sa.Connection, limit: int = 500) -> list[dict[str, Any]]:
    """Templates whose parameters do not fit Meta's components, used by a campaign that is a
    draft or not over yet."""
    rows = conn.execute(
        sa.text(
            "SELECT t.id, t.name, t.language, t.config_problems FROM templates t"
            " WHERE t.config_problems <> '[]' AND EXISTS (SELECT 1 FROM campaigns c"
            "   WHERE c.template_id = t.id AND c.status = ANY(:using))"
            " ORDER BY t.id LIMIT :n"
        ),
        {"using": ["draft", *ACTIVE_CAMPAIGN_STATUSES], "n": limit},
    ).mappings()
    return [dict(row) for row in rows]


def counts_by_status(conn: sa.Connection) -> dict[str, int]:
    return dict(
        conn.execute(sa.text("SELECT status, count(*) FROM templates GROUP BY status")).all()
    )


def template_row(conn: sa.Connection, template_id: int) -> dict[str, Any] | None:
    """The template's row as the operator API shows it, or None."""
    row = (
        conn.execute(
            sa.text(
                "SELECT id, organisation_id::text, name, language, category, message_type, body,"
                " parameters, status, status_reason, origin, meta_template_id, quality_score,"
                " rejected_reason, header_format, body_parameters, buttons, config_problems,"
                " synced_at FROM templates WHERE id = :id"
            ),
            {"id": template_id},
        )
        .mappings()
        .one_or_none()
    )
    return dict(row) if row else None


def template_ids(conn: sa.Connection, organisation_id: str | None) -> list[int]:
    """Every template's id (or only the organisation's), in order."""
    return list(
        conn.execute(
            sa.text(
                "SELECT id FROM templates"
                " WHERE CAST(:o AS uuid) IS NULL OR organisation_id = CAST(:o AS uuid) ORDER BY id"
            ),
            {"o": organisation_id},
        ).scalars()
    )


# The template's fields an operator may set, and their column types.
OPERATOR_FIELDS = {
    "body": "text",
    "parameters": "jsonb",
    "status": "text",
    "category": "text",
    "message_type": "text",
}


def set_template_field(conn: sa.Connection, template_id: int, name: str, value: Any) -> None:
    """Set one of `OPERATOR_FIELDS`; the database's constraints may refuse the value."""
    cast = OPERATOR_FIELDS[name]
    conn.execute(
        sa.text(f"UPDATE templates SET {name} = CAST(:v AS {cast}) WHERE id = :id"),
        {"v": json.dumps(value) if cast == "jsonb" else value, "id": template_id},
    )


def organisation_of_template(conn: sa.Connection, template_id: int) -> str | None:
    """The organisation the template belongs to, or None if there is no such template."""
    return conn.execute(
        sa.text("SELECT organisation_id::text FROM templates WHERE id = :t"), {"t": template_id}
    ).scalar_one_or_none()
