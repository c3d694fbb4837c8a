"""What an operator does to campaigns, once, for both the operator API and the CLI: create
and list organisations, templates and campaigns, import contacts and audiences, look contacts
up and change their consent (who and why), approve, follow a campaign's progress, request its
dispatch now, and look at the queue.

Every function takes plain values and returns JSON-ready dicts; bad input raises
`InvalidInput` listing every problem, a missing row `NotFound`, a refused status change
`Conflict` (`resources.errors`).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from psycopg2.extras import execute_values

from resources import (
    account,
    campaign_runs,
    campaigns,
    consent,
    contact_csv,
    progress,
    recurrence,
    settings,
)
from resources import templates as meta_templates
from resources.errors import Conflict, DomainError, InvalidInput, NotFound
from resources.phone import InvalidPhoneNumber, to_e164
from resources.queue import SQSResource
from resources.queue_message import MESSAGE_TYPES, PARAMETER_SLOTS, PARAMETER_VALUE_TYPES
from resources.readiness import Report
from resources.readiness import check as check_readiness
from resources.settings import is_production

PARAMETER_SOURCES = ("contact.", "attributes.", "asset.", "literal:")
MEMBER_STATUSES = (
    "pending",
    "asset_generating",
    "asset_generated",
    "ready_to_send",
    "failed",
    "skipped",
)
MAX_PAGE = 500
# The largest id a bigint column holds.
MAX_ID = 2**63 - 1


class NotReady(InvalidInput):
    """The campaign cannot send what it is meant to (`resources.readiness`): every problem
    with its count and first members in `report`; the message holds counts only."""

    code = "not_ready"
    summary = "campaign not ready"

    def __init__(self, report: Report) -> None:
        DomainError.__init__(self, report.summary())
        self.report = report
        self.errors = [p.as_dict() for p in report.problems]

    def fields(self) -> dict[str, Any]:
        return self.report.as_dict()


def _uuid(value: Any, name: str) -> str:
    try:
        return str(UUID(str(value)))
    except ValueError:
        raise InvalidInput([{"field": name, "error": "must be a UUID"}]) from None


def _require(data: dict[str, Any], *names: str) -> list[dict[str, str]]:
    return [{"field": n, "error": "is required"} for n in names if data.get(n) in (None, "")]


def is_id(value: Any) -> bool:
    """A row id as JSON gives it: a whole number a bigint column holds (not a boolean)."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ID


def _typed(
    data: dict[str, Any], texts: tuple[str, ...] = (), ids: tuple[str, ...] = ()
) -> list[dict[str, str]]:
    """The fields given with the wrong JSON type, each named: a text given as a number, a
    list or an object, an id that is not a whole number in range. Unchecked, the database
    would refuse them with an error the caller cannot read."""
    errors = [
        {"field": name, "error": "must be a string"}
        for name in texts
        if data.get(name) is not None and not isinstance(data[name], str)
    ]
    return errors + [
        {"field": name, "error": f"must be a whole number from 1 to {MAX_ID}"}
        for name in ids
        if data.get(name) is not None and not is_id(data[name])
    ]


def _phone_number_id(data: dict[str, Any]) -> list[dict[str, str]]:
    """A phone number ID is text; a whole number is taken as its digits."""
    value = data.get("phone_number_id")
    if value is None or isinstance(value, str) or is_id(value):
        return []
    return [{"field": "phone_number_id", "error": "must be a string (the phone number ID)"}]


def _timestamp(data: dict[str, Any], name: str, errors: list) -> datetime | None:
    value = data.get(name)
    if value in (None, ""):
        return None
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        errors.append({"field": name, "error": "must be an ISO 8601 date-time"})
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def create_organisation(engine: sa.Engine, data: dict[str, Any]) -> dict[str, Any]:
    """A new organisation, with its sending phone number ID and its WhatsApp Business
    account id (`waba_id`) if given. A phone number ID or a WABA id that another
    organisation holds is a `Conflict`, and nothing is created."""
    errors = _require(data, "name") + _typed(data, texts=("name",)) + _phone_number_id(data)
    limit = data.get("messaging_limit", 250)
    if not account.is_limit(limit):
        errors.append({"field": "messaging_limit", "error": LIMIT_ERROR})
    waba_id = _waba_id(data, errors)
    if errors:
        raise InvalidInput(errors)
    phone_number_id = data.get("phone_number_id")
    with engine.begin() as conn:
        organisation = campaigns.create_organisation(conn, data["name"], limit)
        _created_with_limit(conn, str(organisation), limit, "messaging_limit" in data)
        if waba_id is not None:
            _set_waba(conn, str(organisation), waba_id, "nothing was created")
        if phone_number_id not in (None, "") and not campaigns.add_phone_number(
            conn, organisation, str(phone_number_id)
        ):
            holder = conn.execute(
                sa.text(
                    "SELECT o.id::text, o.name FROM phone_numbers p"
                    " JOIN organisations o ON o.id = p.organisation_id"
                    " WHERE p.phone_number_id = :p"
                ),
                {"p": str(phone_number_id)},
            ).one()
            raise Conflict(
                f"phone_number_id {phone_number_id} already belongs to organisation"
                f" {holder.id} ({holder.name}); nothing was created"
            )
        return _organisations(conn, organisation_id=str(organisation))[0]


def list_organisations(
    engine: sa.Engine, phone_number_id: str | None = None, organisation_id: str | None = None
) -> list[dict[str, Any]]:
    """Every organisation (or the one holding `phone_number_id`, or only `organisation_id`)
    with its phone numbers."""
    with engine.connect() as conn:
        return _organisations(
            conn, organisation_id=organisation_id, phone_number_id=phone_number_id
        )


def _organisations(
    conn: sa.Connection, organisation_id: str | None = None, phone_number_id: str | None = None
) -> list[dict[str, Any]]:
    rows = conn.execute(
        sa.text(
            "SELECT o.id::text, o.name, o.waba_id, o.messaging_limit, o.messaging_limit_source,"
            " o.messaging_limit_at, o.created_at,"
            " coalesce(jsonb_agg(jsonb_build_object('phone_number_id', p.phone_number_id,"
            "   'display_phone', p.display_phone, 'messages_per_second', p.messages_per_second,"
            "   'throughput_level', p.throughput_level, 'quality_rating', p.quality_rating,"
            "   'name_status', p.name_status, 'verified_name', p.verified_name,"
            "   'status_read_at', p.status_read_at, 'status_error', p.status_error)"
            "   ORDER BY p.phone_number_id) FILTER (WHERE p.phone_number_id IS NOT NULL),"
            "   '[]') AS phone_numbers"
            " FROM organisations o LEFT JOIN phone_numbers p ON p.organisation_id = o.id"
            " WHERE (CAST(:o AS uuid) IS NULL OR o.id = CAST(:o AS uuid))"
            " AND (CAST(:p AS text) IS NULL OR EXISTS (SELECT 1 FROM phone_numbers q"
            "   WHERE q.organisation_id = o.id AND q.phone_number_id = :p))"
            " GROUP BY o.id ORDER BY o.created_at, o.id"
        ),
        {"o": organisation_id, "p": phone_number_id},
    ).mappings()
    found = [dict(r) for r in rows]
    standing = account.states(conn, [o["id"] for o in found])
    return _jsonable([{**o, "account": standing[o["id"]]} for o in found])


def _organisation(conn: sa.Connection, organisation_id: str) -> None:
    if not conn.execute(
        sa.text("SELECT 1 FROM organisations WHERE id = :o"), {"o": organisation_id}
    ).scalar():
        raise NotFound(f"organisation {organisation_id} does not exist")


LIMIT_ERROR = (
    "must be one of WhatsApp's messaging limits: "
    + ", ".join(map(str, account.LIMITS))
    + " or null (unlimited)"
)
_CHANGEABLE = ("waba_id", "messaging_limit", "phone_numbers")
_DISPLAY_PHONE = re.compile(r"\+?[0-9][0-9 ()./-]{3,38}")


def update_organisation(
    engine: sa.Engine, organisation_id: str, data: dict[str, Any]
) -> dict[str, Any]:
    """Change an organisation's WhatsApp Business account id (`waba_id`, null to clear;
    one another organisation holds is a `Conflict`), its messaging limit (`messaging_limit`:
    one of WhatsApp's tiers, null = unlimited; recorded in its account history with who and
    why, `by` and `reason`) and its numbers' display numbers (`phone_numbers`:
    `[{"phone_number_id", "display_phone"}]`). All or nothing; answers the organisation."""
    organisation_id = _uuid(organisation_id, "organisation_id")
    errors: list[dict[str, Any]] = [
        {"field": name, "error": f"cannot be changed here (only {', '.join(_CHANGEABLE)})"}
        for name in sorted(set(data) - {*_CHANGEABLE, "by", "reason"})
    ]
    if not set(data) & set(_CHANGEABLE):
        errors.append({"field": "body", "error": f"give one of {', '.join(_CHANGEABLE)}"})
    waba_id = _waba_id(data, errors)
    if "messaging_limit" in data and not account.is_limit(data["messaging_limit"]):
        errors.append({"field": "messaging_limit", "error": LIMIT_ERROR})
    numbers = _display_phones(data.get("phone_numbers", []), errors)
    for name, longest in (("by", 200), ("reason", 1000)):
        value = data.get(name)
        if value is not None and not (isinstance(value, str) and 0 < len(value) <= longest):
            errors.append({"field": name, "error": f"must be text of 1 to {longest} characters"})
    if errors:
        raise InvalidInput(errors)
    with engine.begin() as conn:
        _organisation(conn, organisation_id)
        held = set(
            conn.execute(
                sa.text(
                    "SELECT phone_number_id FROM phone_numbers"
                    " WHERE organisation_id = :o AND phone_number_id = ANY(:ids)"
                ),
                {"o": organisation_id, "ids": list(numbers)},
            ).scalars()
        )
        missing = [
            {
                "field": f"phone_numbers[{i}].phone_number_id",
                "error": "not a number of this organisation",
            }
            for i, number in enumerate(numbers)
            if number not in held
        ]
        if missing:
            raise InvalidInput(missing)
        if "waba_id" in data:
            _set_waba(conn, organisation_id, waba_id, "nothing was changed")
        if "messaging_limit" in data:
            account.set_messaging_limit(
                conn,
                organisation_id,
                data["messaging_limit"],
                "operator",
                record_unchanged=False,
                actor=data.get("by") or "operator",
                reason=data.get("reason"),
            )
        for number, display in numbers.items():
            conn.execute(
                sa.text("UPDATE phone_numbers SET display_phone = :d WHERE phone_number_id = :p"),
                {"p": number, "d": display},
            )
        return _organisations(conn, organisation_id=organisation_id)[0]


def account_history(
    engine: sa.Engine, organisation_id: str, kind: str | None = None, limit: Any = 100
) -> list[dict[str, Any]]:
    """The organisation's account events, newest first: every change of its messaging
    limit, its numbers' throughput and its standing with WhatsApp, with where it came from."""
    organisation_id = _uuid(organisation_id, "organisation_id")
    errors = []
    if kind not in (None, "", *account.KINDS):
        errors.append({"field": "kind", "error": f"must be one of {', '.join(account.KINDS)}"})
    try:
        limit = int(limit)
    except (TypeError, ValueError):
        limit = 0
    if not 1 <= limit <= MAX_PAGE:
        errors.append({"field": "limit", "error": f"must be a number from 1 to {MAX_PAGE}"})
    if errors:
        raise InvalidInput(errors)
    with engine.connect() as conn:
        _organisation(conn, organisation_id)
        return account.events(conn, organisation_id, kind or None, limit)


def _waba_id(data: dict[str, Any], errors: list) -> str | None:
    value = data.get("waba_id")
    if value is None:
        return None
    text = (
        str(value).strip() if isinstance(value, str | int) and not isinstance(value, bool) else ""
    )
    if not re.fullmatch(r"\d{1,32}", text):
        errors.append(
            {
                "field": "waba_id",
                "error": "must be the WhatsApp Business account id (digits) or null",
            }
        )
        return None
    return text


def _display_phones(value: Any, errors: list) -> dict[str, str | None]:
    if not isinstance(value, list):
        errors.append({"field": "phone_numbers", "error": "must be a list"})
        return {}
    found: dict[str, str | None] = {}
    for i, item in enumerate(value):
        where = f"phone_numbers[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("phone_number_id"), str):
            errors.append({"field": where, "error": "must be {phone_number_id, display_phone}"})
            continue
        display = item.get("display_phone")
        if display is not None and not (
            isinstance(display, str) and _DISPLAY_PHONE.fullmatch(display.strip())
        ):
            errors.append(
                {"field": f"{where}.display_phone", "error": "must be a phone number, or null"}
            )
            continue
        found[item["phone_number_id"]] = display.strip() if display else None
    return found


def _set_waba(conn: sa.Connection, organisation_id: str, waba_id: str | None, undone: str) -> None:
    holder = conn.execute(
        sa.text("SELECT id::text, name FROM organisations WHERE waba_id = :w AND id <> :o"),
        {"w": waba_id, "o": organisation_id},
    ).one_or_none()
    taken = Conflict(
        f"waba_id {waba_id} already belongs to organisation"
        f" {holder.id if holder else 'another'} ({holder.name if holder else '?'}); {undone}"
    )
    if holder is not None:
        raise taken
    try:
        with conn.begin_nested():
            conn.execute(
                sa.text("UPDATE organisations SET waba_id = :w WHERE id = :o"),
                {"w": waba_id, "o": organisation_id},
            )
    except sa.exc.IntegrityError:
        raise taken from None


def _created_with_limit(
    conn: sa.Connection, organisation_id: str, limit: int | None, given: bool
) -> None:
    """A new organisation's limit: the operator's if given, else the default (250, what a
    new business portfolio starts with), which any fact from WhatsApp replaces."""
    if given:
        conn.execute(
            sa.text("UPDATE organisations SET messaging_limit_source = 'operator' WHERE id = :o"),
            {"o": organisation_id},
        )
    account.record(
        conn,
        account.Event(
            "messaging_limit",
            "operator",
            account.db_now(conn),
            organisation_id,
            new_value=account.limit_text(limit),
            applied=True,
            note="organisation created" + ("" if given else " with the default limit"),
        ),
    )


def find_contacts(
    engine: sa.Engine,
    organisation_id: str,
    phone: str | None = None,
    user_id: str | None = None,
) -> list[dict[str, Any]]:
    """The organisation's contacts with this phone (any form with its country code) or
    business-scoped user id, each with both consent facts and the history, newest first."""
    organisation_id = _uuid(organisation_id, "organisation_id")
    if not phone and not user_id:
        raise InvalidInput([{"field": "phone", "error": "give phone (E.164) or user_id"}])
    if phone:
        try:
            phone = to_e164(phone)
        except InvalidPhoneNumber as error:
            raise InvalidInput([{"field": "phone", "error": str(error)}]) from None
    with engine.connect() as conn:
        _organisation(conn, organisation_id)
        return _jsonable(consent.find_contacts(conn, organisation_id, phone, user_id or None))


def set_consent(
    engine: sa.Engine, organisation_id: str, contact_id: int, data: dict[str, Any]
) -> dict[str, Any]:
    """An operator's explicit opt-out or opt-in (consent source `api`): who (`by`) and why
    (`reason`) are required and kept in the history. Answers the contact with its state,
    history and whether this call changed it (a call that changes nothing is not recorded)."""
    organisation_id = _uuid(organisation_id, "organisation_id")
    errors = []
    if data.get("scope") not in consent.SCOPES:
        errors.append({"field": "scope", "error": f"must be one of {', '.join(consent.SCOPES)}"})
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
        _organisation(conn, organisation_id)
        owner = conn.execute(
            sa.text("SELECT organisation_id::text FROM contacts WHERE id = :c"),
            {"c": contact_id},
        ).scalar_one_or_none()
        if owner != organisation_id:
            raise NotFound(f"contact {contact_id} does not exist in organisation {organisation_id}")
        changed = consent.record(
            conn,
            consent.Change(
                contact_id,
                data["scope"],
                data["opted_out"],
                "api",
                actor=data["by"].strip(),
                reason=data["reason"].strip(),
            ),
        )
        return _jsonable({**consent.describe(conn, contact_id), "changed": changed})


def _check_parameters(parameters: Any, errors: list) -> None:
    if not isinstance(parameters, list):
        errors.append({"field": "parameters", "error": "must be a list"})
        return
    for i, p in enumerate(parameters):
        where = f"parameters[{i}]"
        if not isinstance(p, dict):
            errors.append({"field": where, "error": "must be an object"})
            continue
        if p.get("type") not in PARAMETER_SLOTS:
            errors.append(
                {"field": f"{where}.type", "error": f"must be one of {', '.join(PARAMETER_SLOTS)}"}
            )
        if p.get("valueType") not in PARAMETER_VALUE_TYPES:
            errors.append(
                {
                    "field": f"{where}.valueType",
                    "error": f"must be one of {', '.join(PARAMETER_VALUE_TYPES)}",
                }
            )
        if not str(p.get("source", "")).startswith(PARAMETER_SOURCES):
            errors.append(
                {
                    "field": f"{where}.source",
                    "error": "must be contact.<field>, attributes.<key>, asset.<type> or literal:<text>",
                }
            )


def _against_meta(
    conn: sa.Connection, organisation_id: str, name: str, language: str, parameters: Any
) -> int | None:
    """The template a sync created under this name and language, now given our
    `parameters`; None when there is none, and a new row is to be created. Parameters that
    do not fit Meta's components are refused, and so, in production, is a template Meta does
    not have (a sync of the organisation's WABA found no such name and language)."""
    known = meta_templates.known_template(conn, organisation_id, name, language)
    if known is None:
        missing = meta_templates.not_at_meta(conn, organisation_id, name, language)
        if missing and is_production():
            raise InvalidInput([{"field": "name", "error": missing}])
        return None
    if known.origin != "meta" or known.parameters:
        raise InvalidInput(
            [
                {
                    "field": "template",
                    "error": f"template {name!r} ({language}) already exists (id {known.id});"
                    f" change it with PATCH /api/templates/{known.id}",
                }
            ]
        )
    if known.components is not None:
        found = meta_templates.problems(parameters, known.components)
        if found:
            raise InvalidInput([{"field": "parameters", "error": p} for p in found])
    meta_templates.configure(conn, known.id, parameters)
    meta_templates.refresh_problems(conn, organisation_id, known.id)
    return known.id


def create_template(engine: sa.Engine, data: dict[str, Any]) -> dict[str, Any]:
    """A template with our parameters. For a name and language a sync found at Meta, this
    configures that template (Meta's status, category, body and components stay); in
    production a name and language Meta does not have is refused."""
    errors = _require(data, "organisation_id", "name") + _typed(
        data, texts=("organisation_id", "name", "language", "body", "category", "message_type")
    )
    if data.get("message_type", "text") not in PARAMETER_VALUE_TYPES:
        errors.append(
            {"field": "message_type", "error": f"must be one of {', '.join(PARAMETER_VALUE_TYPES)}"}
        )
    _check_parameters(data.get("parameters", []), errors)
    if errors:
        raise InvalidInput(errors)
    organisation_id = _uuid(data["organisation_id"], "organisation_id")
    language = data.get("language", "en")
    with engine.begin() as conn:
        template = _against_meta(
            conn, organisation_id, data["name"], language, data.get("parameters", [])
        )
        if template is None:
            try:
                template = campaigns.create_template(
                    conn,
                    organisation_id,
                    data["name"],
                    language=language,
                    message_type=data.get("message_type", "text"),
                    body=data.get("body"),
                    parameters=data.get("parameters", []),
                    category=data.get("category", "marketing"),
                )
            except sa.exc.IntegrityError as error:
                raise InvalidInput([{"field": "template", "error": _constraint(error)}]) from None
            # Webhooks that named it before it existed here.
            meta_templates.apply_pending(conn, organisation_id, data["name"], language)
    return get_template(engine, template)


def get_template(engine: sa.Engine, template_id: int) -> dict[str, Any]:
    with engine.connect() as conn:
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
    if row is None:
        raise NotFound(f"template {template_id} does not exist")
    return _jsonable(dict(row))


def list_templates(engine: sa.Engine, organisation_id: str | None = None) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        ids = (
            conn.execute(
                sa.text(
                    "SELECT id FROM templates WHERE CAST(:o AS uuid) IS NULL OR organisation_id = CAST(:o AS uuid)"
                    " ORDER BY id"
                ),
                {"o": _uuid(organisation_id, "organisation_id") if organisation_id else None},
            )
            .scalars()
            .all()
        )
    return [get_template(engine, i) for i in ids]


def update_template(engine: sa.Engine, template_id: int, data: dict[str, Any]) -> dict[str, Any]:
    allowed = {"body", "parameters", "status", "category", "message_type"}
    errors = [{"field": k, "error": "cannot be changed"} for k in data if k not in allowed]
    errors += _typed(data, texts=("body", "status", "category", "message_type"))
    if "parameters" in data:
        _check_parameters(data["parameters"], errors)
    if errors:
        raise InvalidInput(errors)
    current = get_template(engine, template_id)
    _meta_owned(engine, current, data)
    with engine.begin() as conn:
        for name, value in data.items():
            try:
                conn.execute(
                    sa.text(
                        f"UPDATE templates SET {name} = CAST(:v AS {'jsonb' if name == 'parameters' else 'text'}) WHERE id = :id"
                    ),
                    {"v": json.dumps(value) if name == "parameters" else value, "id": template_id},
                )
            except sa.exc.IntegrityError as error:
                raise InvalidInput([{"field": name, "error": _constraint(error)}]) from None
        meta_templates.refresh_problems(conn, current["organisation_id"], template_id)
    return get_template(engine, template_id)


def _meta_owned(engine: sa.Engine, template: dict[str, Any], data: dict[str, Any]) -> None:
    """Refuse what only Meta decides: its statuses (APPROVED, PAUSED, …) on any template,
    and the status, category, body and message type of a template Meta lists; and
    parameters that do not fit Meta's components."""
    errors = []
    status = data.get("status")
    if isinstance(status, str) and status.isupper():
        errors.append(
            {"field": "status", "error": "Meta's statuses come from Meta (a sync, a webhook)"}
        )
    elif template["synced_at"] is not None:
        errors += [
            {
                "field": name,
                "error": "comes from Meta's template: change it in WhatsApp Manager, then sync",
            }
            for name in ("status", "category", "body", "message_type")
            if name in data and data[name] != template[name]
        ]
    if "parameters" in data:
        with engine.connect() as conn:
            known = meta_templates.components_of(conn, template["id"])
        if known is not None:
            errors += [
                {"field": "parameters", "error": p}
                for p in meta_templates.problems(data["parameters"], known)
            ]
    if errors:
        raise InvalidInput(errors)


def create_campaign(engine: sa.Engine, data: dict[str, Any]) -> dict[str, Any]:
    errors = _require(data, "organisation_id", "name", "message_type") + _phone_number_id(data)
    errors += _typed(
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
        errors += _require(data, "template_id")
    if message_type == "text":
        errors += _require(data, "message_content")
    if data.get("recurrence", "once") not in recurrence.RECURRENCES:
        errors.append(
            {"field": "recurrence", "error": f"must be one of {', '.join(recurrence.RECURRENCES)}"}
        )
    start_at = _timestamp(data, "start_at", errors)
    end_at = _timestamp(data, "end_at", errors)
    if start_at and end_at and end_at < start_at:
        errors.append({"field": "end_at", "error": "must not be before start_at"})
    if errors:
        raise InvalidInput(errors)
    organisation = _uuid(data["organisation_id"], "organisation_id")
    with engine.begin() as conn:
        if data.get("template_id") is not None:
            owner = conn.execute(
                sa.text("SELECT organisation_id::text FROM templates WHERE id = :t"),
                {"t": data["template_id"]},
            ).scalar_one_or_none()
            if owner != organisation:
                raise InvalidInput(
                    [{"field": "template_id", "error": "no such template in this organisation"}]
                )
        if (
            data.get("phone_number_id") not in (None, "")
            and not conn.execute(
                sa.text(
                    "SELECT 1 FROM phone_numbers WHERE phone_number_id = :p AND organisation_id = :o"
                ),
                {"p": str(data["phone_number_id"]), "o": organisation},
            ).scalar()
        ):
            raise InvalidInput(
                [{"field": "phone_number_id", "error": "no such phone number in this organisation"}]
            )
        try:
            campaign = campaigns.create_campaign(
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
            raise InvalidInput([{"field": "campaign", "error": _constraint(error)}]) from None
    return campaign_status(engine, campaign)


def approve_campaign(engine: sa.Engine, campaign_id: str) -> dict[str, Any]:
    """`draft → approved`, only for a campaign that can send what it is meant to: its
    template is approvable (`_template_approvable`) and `resources.readiness` finds no
    problem, else `NotReady` lists them and nothing changes. Answers the campaign's status
    with the readiness report (`readiness`: its warnings, e.g. a check that could not be
    made)."""
    campaign_id = _uuid(campaign_id, "campaign_id")
    with engine.begin() as conn:
        _campaign(conn, campaign_id)
        try:
            # Also locks the campaign: an audience import waits until this commits.
            campaigns.set_campaign_status(conn, campaign_id, "approved")
        except campaigns.InvalidTransition as error:
            raise Conflict(str(error)) from None
        _template_approvable(conn, campaign_id)
        report = check_readiness(conn, campaign_id, is_production())
        if report is None:
            raise NotFound(f"campaign {campaign_id} does not exist")
        if not report.ready:
            raise NotReady(report)
    return {**campaign_status(engine, campaign_id), "readiness": report.as_dict()}


def campaign_readiness(engine: sa.Engine, campaign_id: str) -> dict[str, Any]:
    """What approval checks, now, without approving or changing anything: `ready`, every
    problem (`errors`) with its count and first members, and `warnings`."""
    campaign_id = _uuid(campaign_id, "campaign_id")
    with engine.connect() as conn:
        report = check_readiness(conn, campaign_id, is_production())
    if report is None:
        raise NotFound(f"campaign {campaign_id} does not exist")
    return report.as_dict()


def _template_approvable(conn: sa.Connection, campaign_id: str) -> None:
    """A template campaign is approved only on a template Meta has APPROVED (in development,
    also one declared approved locally) whose parameters fit Meta's components."""
    template_id = conn.execute(
        sa.text("SELECT template_id FROM campaigns WHERE id = :c"), {"c": campaign_id}
    ).scalar_one()
    if template_id is None:
        return
    refusal = meta_templates.approval_refusal(conn, template_id, is_production())
    if refusal is None:
        return
    if refusal.kind == "conflict":
        raise Conflict("; ".join(refusal.reasons))
    raise InvalidInput([{"field": "template", "error": reason} for reason in refusal.reasons])


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
    organisation_id = _uuid(organisation_id, "organisation_id")
    try:
        rows = contact_csv.parse(text, allow_opt_out=True)
    except contact_csv.InvalidCSV as error:
        raise InvalidInput(error.errors) from None
    with engine.begin() as conn:
        _organisation(conn, organisation_id)
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
        opted_out = consent.record_many(
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


def import_audience(engine: sa.Engine, campaign_id: str, text: str) -> dict[str, Any]:
    """Add members to a campaign that is still a draft (numbers normalised, repeats refused).

    Counts are for the whole file, as the contacts import's: `imported` rows, of which
    `created` new members and `already_present` members the campaign already had."""
    campaign_id = _uuid(campaign_id, "campaign_id")
    try:
        rows = contact_csv.parse(text)
    except contact_csv.InvalidCSV as error:
        raise InvalidInput(error.errors) from None
    with engine.begin() as conn:
        # An approval under way (it locks the campaign) checks every member: wait for it.
        conn.execute(sa.text("SELECT 1 FROM campaigns WHERE id = :c FOR SHARE"), {"c": campaign_id})
        campaign = _campaign(conn, campaign_id)
        if campaign.status != "draft":
            raise Conflict(
                f"campaign {campaign_id} is {campaign.status}; audiences change only while it is a draft"
            )
        added = campaigns.add_audience(
            conn, campaign_id, [campaigns.Member(r.phone, r.name, r.attributes) for r in rows]
        )
    return {"imported": len(rows), "created": added, "already_present": len(rows) - added}


def campaign_status(engine: sa.Engine, campaign_id: str | UUID) -> dict[str, Any]:
    campaign_id = _uuid(campaign_id, "campaign_id")
    with engine.connect() as conn:
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
        if row is None:
            raise NotFound(f"campaign {campaign_id} does not exist")
        run_rows = conn.execute(
            sa.text(
                "SELECT id, run_date, status, status_reason, queued, failed, skipped, dispatched_at,"
                " resumes FROM campaign_runs WHERE campaign_id = :c ORDER BY run_date DESC LIMIT 50"
            ),
            {"c": campaign_id},
        ).mappings()
        messages = conn.execute(
            sa.text(
                "SELECT m.status, count(*) FROM messages m JOIN campaign_runs r ON r.id = m.campaign_run_id"
                " WHERE r.campaign_id = :c GROUP BY m.status"
            ),
            {"c": campaign_id},
        )
        stuck = settings.number("SENDER_STUCK_AFTER_SECONDS")
        return _jsonable(
            {
                **row,
                "audience": campaigns.audience_counts(conn, campaign_id),
                "messages": dict(messages.all()),
                # Each run: its messages by stage, what the rest wait for, when it should end.
                "runs": [
                    {**r, **progress.run_progress(conn, r["id"], stuck)} for r in run_rows.all()
                ],
            }
        )


def list_audience(
    engine: sa.Engine,
    campaign_id: str,
    status: str | None = None,
    limit: int = 100,
    after: str | None = None,
) -> dict[str, Any]:
    """One page of members in id order; pass `next_after` back as `after` for the next page."""
    campaign_id = _uuid(campaign_id, "campaign_id")
    errors = []
    if status is not None and status not in MEMBER_STATUSES:
        errors.append({"field": "status", "error": f"must be one of {', '.join(MEMBER_STATUSES)}"})
    if not 1 <= limit <= MAX_PAGE:
        errors.append({"field": "limit", "error": f"must be between 1 and {MAX_PAGE}"})
    if errors:
        raise InvalidInput(errors)
    after = _uuid(after, "after") if after else "00000000-0000-0000-0000-000000000000"
    with engine.connect() as conn:
        _campaign(conn, campaign_id)
        rows = (
            conn.execute(
                sa.text(
                    "SELECT id::text, msisdn, name, attributes, status, last_error, generated_asset_urls,"
                    " status_changed_at FROM campaign_audience WHERE campaign_id = :c AND id > CAST(:after AS uuid)"
                    " AND (CAST(:s AS text) IS NULL OR status = :s) ORDER BY id LIMIT :n"
                ),
                {"c": campaign_id, "after": after, "s": status, "n": limit},
            )
            .mappings()
            .all()
        )
    items = [dict(r) for r in rows]
    return _jsonable(
        {"items": items, "next_after": items[-1]["id"] if len(items) == limit else None}
    )


def process_messages(
    engine: sa.Engine, campaign_id: str, today: date | None = None
) -> dict[str, Any]:
    """Record today's run of the campaign now; the campaign-run sensor launches its
    `dispatched_batches` partition on its next tick (within 30 s)."""
    campaign_id = _uuid(campaign_id, "campaign_id")
    run_date = today or datetime.now(UTC).date()
    with engine.begin() as conn:
        campaign = _campaign(conn, campaign_id)
        if campaign.end_at is not None and datetime.now(UTC) > campaign.end_at:
            raise Conflict(f"campaign {campaign_id} ended at {campaign.end_at.isoformat()}")
        try:
            run = campaign_runs.record_run(conn, campaign_id, run_date)
        except campaign_runs.CannotRun as error:
            raise Conflict(str(error)) from None
    return {
        "campaign_id": campaign_id,
        "campaign_run_id": run.id,
        "run_date": run.run_date.isoformat(),
        "run_status": run.status,
        "partition": {"campaign": campaign_id, "date": run.run_date.isoformat()},
        "launch": "the campaign-run sensor requests this partition's run on its next tick",
    }


def queue_status(sqs: SQSResource) -> dict[str, Any]:
    depth = sqs.depth()
    return {
        "queue": sqs.queue_name,
        "dead_letter_queue": sqs.dlq_name,
        "fifo": sqs.is_fifo,
        "visible": depth.visible,
        "in_flight": depth.in_flight,
        "delayed": depth.delayed,
        "dead_letter": depth.dead_letter,
    }


def _campaign(conn: sa.Connection, campaign_id: str) -> campaigns.Campaign:
    campaign = campaigns.get_campaign(conn, campaign_id)
    if campaign is None:
        raise NotFound(f"campaign {campaign_id} does not exist")
    return campaign


def _constraint(error: sa.exc.IntegrityError) -> str:
    return str(error.orig).strip().splitlines()[0]


def _jsonable(value: Any) -> Any:
    return json.loads(
        json.dumps(value, default=lambda v: v.isoformat() if hasattr(v, "isoformat") else str(v))
    )
