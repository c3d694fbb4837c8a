"""The WhatsApp Business Account webhook envelope, checked before anything is stored.

Only the envelope is checked (`object`, `entry[].changes[].field/value`): WhatsApp adds
fields and message types over time, and those must be stored and skipped, not refused.
"""

from __future__ import annotations

from typing import Any

from webhook_app.bodies import BodyRefused, parse_json


class BadPayload(ValueError):
    """The body is not a WhatsApp webhook; the message says why (it is the 400's reason)."""


def parse(body: bytes) -> dict[str, Any]:
    try:
        payload = parse_json(body)
    except BodyRefused as error:
        raise BadPayload(str(error)) from None
    problem = envelope_problem(payload)
    if problem:
        raise BadPayload(f"not a WhatsApp webhook payload: {problem}")
    return payload


def envelope_problem(payload: Any) -> str | None:
    if not isinstance(payload, dict):
        return "the body must be a JSON object"
    if payload.get("object") != "whatsapp_business_account":
        return 'object must be "whatsapp_business_account"'
    entries = payload.get("entry")
    if not isinstance(entries, list) or not entries:
        return "entry must be a non-empty list"
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("changes"), list):
            return f"entry[{i}].changes must be a list"
        for j, change in enumerate(entry["changes"]):
            if not isinstance(change, dict) or not isinstance(change.get("field"), str):
                return f"entry[{i}].changes[{j}].field must be a string"
            if not isinstance(change.get("value"), dict):
                return f"entry[{i}].changes[{j}].value must be an object"
    return None


def changes(payload: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every (field, value) of every entry, in order."""
    return [(c["field"], c["value"]) for e in payload["entry"] for c in e["changes"]]
