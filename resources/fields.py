"""Checks of an operator's input fields, shared by the operations on each family of tables:
each problem is a `{"field", "error"}` dict, collected so that `InvalidInput` lists them all."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa

from resources.errors import InvalidInput

# The longest page a listing answers.
MAX_PAGE = 500
# The largest id a bigint column holds.
MAX_ID = 2**63 - 1


def uuid_of(value: Any, name: str) -> UUID:
    """`value` as a UUID, or `InvalidInput` naming the field: an id read at an edge."""
    try:
        return UUID(str(value))
    except ValueError:
        raise InvalidInput([{"field": name, "error": "must be a UUID"}]) from None


def as_uuid(value: Any, name: str) -> str:
    """`value` as a UUID's text, or `InvalidInput` naming the field."""
    return str(uuid_of(value, name))


def required(data: dict[str, Any], *names: str) -> list[dict[str, str]]:
    return [{"field": n, "error": "is required"} for n in names if data.get(n) in (None, "")]


def is_id(value: Any) -> bool:
    """A row id as JSON gives it: a whole number a bigint column holds (not a boolean)."""
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ID


def wrong_types(
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


def phone_number_id_problems(data: dict[str, Any]) -> list[dict[str, str]]:
    """A phone number ID is text; a whole number is taken as its digits."""
    value = data.get("phone_number_id")
    if value is None or isinstance(value, str) or is_id(value):
        return []
    return [{"field": "phone_number_id", "error": "must be a string (the phone number ID)"}]


def timestamp(data: dict[str, Any], name: str, errors: list) -> datetime | None:
    """The field as an aware date-time (UTC when it names no zone), None when absent; a
    value that is not ISO 8601 adds its problem to `errors`."""
    value = data.get(name)
    if value in (None, ""):
        return None
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        errors.append({"field": name, "error": "must be an ISO 8601 date-time"})
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def constraint(error: sa.exc.IntegrityError) -> str:
    """The first line of the database's refusal, which names the constraint."""
    return str(error.orig).strip().splitlines()[0]
