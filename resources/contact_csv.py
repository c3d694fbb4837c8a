"""Contacts and audiences from CSV: every row checked first, then all rows written or none.

Columns: `phone` (or `msisdn`, required, normalised to E.164), `name`, `opted_out`
(true/false, contacts only; a missing column or an empty cell means "leave consent as it
is"); every other column becomes an attribute. A file with any bad row is refused whole,
with one error per bad row, so nothing is ever half imported; so is a file that is not CSV
(the error names its line) or has more than `CSV_MAX_ROWS` rows.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

from resources import settings
from resources.phone import InvalidPhoneNumber, to_e164

_PHONE_COLUMNS = ("phone", "msisdn")
_BOOLEANS = {
    "true": True,
    "yes": True,
    "1": True,
    "false": False,
    "no": False,
    "0": False,
}


class InvalidCSV(ValueError):
    """The file cannot be imported; `errors` holds one entry per bad row (line numbers as in
    a spreadsheet, the header being line 1)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} error(s); nothing was imported")
        self.errors = errors


@dataclass(frozen=True)
class ContactRow:
    phone: str
    name: str | None
    attributes: dict[str, str] = field(default_factory=dict)
    # None: the file says nothing about this contact's consent.
    opted_out: bool | None = None
    line: int = 0


def parse(text: str, allow_opt_out: bool = False) -> list[ContactRow]:
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    try:
        return _rows(reader, allow_opt_out, settings.number("CSV_MAX_ROWS"))
    except csv.Error as error:
        # `line_num` counts the lines read before the one that failed.
        line = reader.line_num + 1
        raise InvalidCSV([{"line": line, "error": f"not valid CSV: {error}"}]) from None


def _rows(reader: csv.DictReader, allow_opt_out: bool, max_rows: int) -> list[ContactRow]:
    columns = [c.strip().lower() for c in reader.fieldnames or []]
    if any("\x00" in c for c in columns):
        raise InvalidCSV([{"line": 1, "error": "a NUL character cannot be stored"}])
    phone_column = next((c for c in _PHONE_COLUMNS if c in columns), None)
    if phone_column is None:
        raise InvalidCSV([{"line": 1, "error": "the header needs a `phone` (or `msisdn`) column"}])
    reader.fieldnames = columns
    rows: list[ContactRow] = []
    errors: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for line, record in enumerate(reader, start=2):
        if line - 1 > max_rows:
            raise InvalidCSV(
                [{"line": line, "error": f"more than {max_rows:,} rows (CSV_MAX_ROWS): split it"}]
            )
        if None in record:
            errors.append({"line": line, "error": "more fields than the header has columns"})
            continue
        values = {k: (v or "").strip() for k, v in record.items()}
        if any("\x00" in v for v in values.values()):
            errors.append({"line": line, "error": "a NUL character cannot be stored"})
            continue
        try:
            phone = to_e164(values.pop(phone_column))
        except InvalidPhoneNumber as error:
            errors.append({"line": line, "error": str(error)})
            continue
        if phone in seen:
            errors.append({"line": line, "error": f"{phone} is already on line {seen[phone]}"})
            continue
        seen[phone] = line
        opted_out = None
        if "opted_out" in values:
            flag = values.pop("opted_out").lower()
            if not allow_opt_out:
                errors.append(
                    {"line": line, "error": "opted_out is set on contacts, not on an audience"}
                )
                continue
            if flag not in _BOOLEANS and flag != "":
                errors.append(
                    {
                        "line": line,
                        "error": "opted_out must be true or false (empty: left as it is)",
                    }
                )
                continue
            opted_out = _BOOLEANS.get(flag)
        name = values.pop("name", "") or None
        for other in _PHONE_COLUMNS:
            values.pop(other, None)
        attributes = {k: v for k, v in values.items() if v}
        rows.append(ContactRow(phone, name, attributes, opted_out, line))
    if errors:
        raise InvalidCSV(errors)
    if not rows:
        raise InvalidCSV([{"line": 2, "error": "the file has no rows"}])
    return rows
