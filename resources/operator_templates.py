"""The templates an operator creates, reads and changes: ours (name, language, body,
category, message type) and our parameters (where each value comes from), checked against
the components of the template Meta has (`resources.templates`), whose own fields only Meta
changes.

Bad input raises `InvalidInput` listing every problem and changes nothing; a missing
template `NotFound`."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from resources import campaigns
from resources import templates as meta_templates
from resources.errors import InvalidInput, NotFound
from resources.fields import as_uuid, constraint, required, wrong_types
from resources.queue_message import PARAMETER_SLOTS, PARAMETER_VALUE_TYPES
from resources.settings import is_production

PARAMETER_SOURCES = ("contact.", "attributes.", "asset.", "literal:")


def create_template(engine: sa.Engine, data: dict[str, Any]) -> dict[str, Any]:
    """A template with our parameters. For a name and language a sync found at Meta, this
    configures that template (Meta's status, category, body and components stay); in
    production a name and language Meta does not have is refused."""
    errors = required(data, "organisation_id", "name") + wrong_types(
        data, texts=("organisation_id", "name", "language", "body", "category", "message_type")
    )
    if data.get("message_type", "text") not in PARAMETER_VALUE_TYPES:
        errors.append(
            {"field": "message_type", "error": f"must be one of {', '.join(PARAMETER_VALUE_TYPES)}"}
        )
    _check_parameters(data.get("parameters", []), errors)
    if errors:
        raise InvalidInput(errors)
    organisation_id = as_uuid(data["organisation_id"], "organisation_id")
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
                raise InvalidInput([{"field": "template", "error": constraint(error)}]) from None
            # Webhooks that named it before it existed here.
            meta_templates.apply_pending(conn, organisation_id, data["name"], language)
    return get_template(engine, template)


def get_template(engine: sa.Engine, template_id: int) -> dict[str, Any]:
    """The template with our parameters and what Meta says of it; `NotFound` if none."""
    with engine.connect() as conn:
        row = meta_templates.template_row(conn, template_id)
    if row is None:
        raise NotFound(f"template {template_id} does not exist")
    return row


def list_templates(engine: sa.Engine, organisation_id: str | None = None) -> list[dict[str, Any]]:
    """Every template (or only `organisation_id`'s), in id order."""
    organisation_id = as_uuid(organisation_id, "organisation_id") if organisation_id else None
    with engine.connect() as conn:
        ids = meta_templates.template_ids(conn, organisation_id)
    return [get_template(engine, i) for i in ids]


def update_template(engine: sa.Engine, template_id: int, data: dict[str, Any]) -> dict[str, Any]:
    """Change our fields of a template (what Meta decides is refused, `_meta_owned`); all
    or nothing."""
    errors = [
        {"field": k, "error": "cannot be changed"}
        for k in data
        if k not in meta_templates.OPERATOR_FIELDS
    ]
    errors += wrong_types(data, texts=("body", "status", "category", "message_type"))
    if "parameters" in data:
        _check_parameters(data["parameters"], errors)
    if errors:
        raise InvalidInput(errors)
    current = get_template(engine, template_id)
    _meta_owned(engine, current, data)
    with engine.begin() as conn:
        for name, value in data.items():
            try:
                meta_templates.set_template_field(conn, template_id, name, value)
            except sa.exc.IntegrityError as error:
                raise InvalidInput([{"field": name, "error": constraint(error)}]) from None
        meta_templates.refresh_problems(conn, current["organisation_id"], template_id)
    return get_template(engine, template_id)


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
