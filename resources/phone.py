"""Phone numbers in E.164, the only form stored and sent."""

from __future__ import annotations

import re

import phonenumbers

# E.164's shape, also used in SQL (`msisdn ~ '^…$'`).
E164_PATTERN = r"\+[1-9][0-9]{6,14}"
_E164 = re.compile(E164_PATTERN)


class InvalidPhoneNumber(ValueError):
    pass


def to_e164(raw: str, default_region: str | None = None) -> str:
    """Normalise `raw` to E.164 (`+15551234567`) or raise `InvalidPhoneNumber` saying why.

    Without a `default_region` the number must carry its country code, with or without
    the leading `+` (WhatsApp's `wa_id` has none).
    """
    text = (raw or "").strip()
    if not text:
        raise InvalidPhoneNumber("phone number is empty")
    if default_region is None and not text.startswith("+"):
        text = "+" + text
    try:
        number = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException as error:
        raise InvalidPhoneNumber(f"{raw!r} is not a phone number: {error}") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhoneNumber(f"{raw!r} is not a valid phone number")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def stored_form(raw: str) -> str:
    """The form an audience member's number is stored in: E.164 when `raw` is a phone number,
    else `raw` as given, so approval refuses it and dispatch fails the member saying why. A
    number already in E.164's shape is not parsed again (the CSV import parsed it)."""
    if is_e164(raw):
        return raw
    try:
        return to_e164(raw)
    except InvalidPhoneNumber:
        return raw


def is_e164(text: str) -> bool:
    """Whether `text` has E.164's shape. For numbers already validated when they were stored
    (queued payloads): a full check costs more than the rest of reading a payload."""
    return _E164.fullmatch(text) is not None
