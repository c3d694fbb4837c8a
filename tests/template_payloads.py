"""Meta's template objects and template webhooks, in their documented shapes.

- A template as `GET /{waba-id}/message_templates` lists it: `name`, `language`, `status`,
  `category`, `components` (HEADER with `format`, BODY with `text` and `example`, FOOTER,
  BUTTONS), `quality_score` (`score`, `date`), `rejected_reason`, `id`.
- `message_template_status_update`, `template_category_update` and
  `message_template_quality_update` changes: `entry[].id` is the WABA id, `entry[].time`
  the Unix time the webhook was triggered, `value` names the template by
  `message_template_id`, `message_template_name` and `message_template_language`.
"""

from __future__ import annotations

import itertools
from typing import Any

WABA_ID = "102290129340398"
_ids = itertools.count(1689556908129832)


def meta_template(
    name: str,
    language: str = "en_US",
    status: str = "APPROVED",
    category: str = "MARKETING",
    body: str = "Hi {{1}}, our spring sale is on: {{2}} off everything.",
    header: str | None = None,
    url_button: bool = False,
    quality: str = "GREEN",
    rejected_reason: str = "NONE",
    template_id: str | None = None,
) -> dict[str, Any]:
    components: list[dict[str, Any]] = []
    if header in ("IMAGE", "VIDEO", "DOCUMENT"):
        components.append(
            {
                "type": "HEADER",
                "format": header,
                "example": {"header_handle": ["https://scontent.whatsapp.net/v/t61/sample"]},
            }
        )
    elif header is not None:
        components.append({"type": "HEADER", "format": "TEXT", "text": header})
    components.append(
        {
            "type": "BODY",
            "text": body,
            "example": {"body_text": [["Ana", "20%"][: body.count("{{")]]},
        }
    )
    components.append({"type": "FOOTER", "text": "Reply STOP to opt out"})
    buttons: list[dict[str, Any]] = [{"type": "QUICK_REPLY", "text": "Stop promotions"}]
    if url_button:
        buttons.insert(
            0,
            {
                "type": "URL",
                "text": "Shop now",
                "url": "https://shop.example/sale/{{1}}",
                "example": ["https://shop.example/sale/spring"],
            },
        )
    components.append({"type": "BUTTONS", "buttons": buttons})
    return {
        "name": name,
        "parameter_format": "POSITIONAL",
        "components": components,
        "language": language,
        "status": status,
        "category": category,
        "quality_score": {"score": quality, "date": 1767225600},
        "rejected_reason": rejected_reason,
        "id": template_id or str(next(_ids)),
    }


def _change(field: str, value: dict[str, Any], at: int, waba_id: str) -> dict[str, Any]:
    return {
        "object": "whatsapp_business_account",
        "entry": [{"id": waba_id, "time": at, "changes": [{"value": value, "field": field}]}],
    }


def status_update(
    event: str,
    name: str,
    language: str = "en_US",
    *,
    at: int,
    reason: str | None = "NONE",
    category: str = "MARKETING",
    template_id: int = 1689556908129832,
    waba_id: str = WABA_ID,
) -> dict[str, Any]:
    value: dict[str, Any] = {
        "event": event,
        "message_template_id": template_id,
        "message_template_name": name,
        "message_template_language": language,
        "reason": reason,
        "message_template_category": category,
    }
    if event == "DISABLED":
        value["disable_info"] = {"disable_date": str(at)}
    if event in ("PAUSED", "APPROVED") and reason == "NONE":
        titles = {"PAUSED": "FIRST_PAUSE", "APPROVED": "UNPAUSE"}
        value["other_info"] = {
            "title": titles[event],
            "description": "Your WhatsApp message template has been paused"
            if event == "PAUSED"
            else "Your WhatsApp message template has been unpaused.",
        }
    return _change("message_template_status_update", value, at, waba_id)


def category_update(
    name: str,
    language: str = "en_US",
    *,
    at: int,
    previous: str = "UTILITY",
    new: str = "MARKETING",
    template_id: int = 278077987957091,
    waba_id: str = WABA_ID,
) -> dict[str, Any]:
    """A completed category change."""
    value = {
        "message_template_id": template_id,
        "message_template_name": name,
        "message_template_language": language,
        "previous_category": previous,
        "new_category": new,
    }
    return _change("template_category_update", value, at, waba_id)


def impending_category_update(
    name: str,
    language: str = "en_US",
    *,
    at: int,
    current: str = "UTILITY",
    correct: str = "MARKETING",
    waba_id: str = WABA_ID,
) -> dict[str, Any]:
    """A category change Meta announces 24 hours ahead (`new_category` is the current one)."""
    value = {
        "message_template_id": 278077987957091,
        "message_template_name": name,
        "message_template_language": language,
        "correct_category": correct,
        "new_category": current,
        "category_update_timestamp": at + 24 * 3600,
    }
    return _change("template_category_update", value, at, waba_id)


def quality_update(
    name: str,
    language: str = "en_US",
    *,
    at: int,
    previous: str = "GREEN",
    new: str = "YELLOW",
    waba_id: str = WABA_ID,
) -> dict[str, Any]:
    value = {
        "previous_quality_score": previous,
        "new_quality_score": new,
        "message_template_id": 806312974732579,
        "message_template_name": name,
        "message_template_language": language,
    }
    return _change("message_template_quality_update", value, at, waba_id)
