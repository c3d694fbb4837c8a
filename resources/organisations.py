"""Organisations and their phone numbers, as an operator creates, lists and changes them:
the sending phone number IDs, the WhatsApp Business account id (`waba_id`), the messaging
limit (with its history in `resources.account`) and the numbers' display numbers.

Bad input raises `InvalidInput` listing every problem, a missing organisation `NotFound`, a
number or WABA id another organisation holds `Conflict`."""

from __future__ import annotations

import re
from typing import Any

import sqlalchemy as sa

from resources import account, campaigns
from resources.errors import Conflict, InvalidInput, NotFound
from resources.fields import MAX_PAGE, as_uuid, phone_number_id_problems, required, wrong_types


def create_organisation(engine: sa.Engine, data: dict[str, Any]) -> dict[str, Any]:
    """A new organisation, with its sending phone number ID and its WhatsApp Business
    account id (`waba_id`) if given. A phone number ID or a WABA id that another
    organisation holds is a `Conflict`, and nothing is created."""
    errors = (
        required(data, "name") + wrong_types(data, texts=("name",)) + phone_number_id_problems(data)
    )
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
    return [{**o, "account": standing[o["id"]]} for o in found]


def require_organisation(conn: sa.Connection, organisation_id: str) -> None:
    """`NotFound` unless the organisation exists."""
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
    organisation_id = as_uuid(organisation_id, "organisation_id")
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
        require_organisation(conn, organisation_id)
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
    organisation_id = as_uuid(organisation_id, "organisation_id")
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
        require_organisation(conn, organisation_id)
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
