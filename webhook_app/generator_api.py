"""The operator API for generator authoring: thin HTTP handlers over `resources.generators`,
which the CLI and the console call too.

A template of another organisation answers 404 as one that does not exist. A rejected
source answers 422 naming the line and the reason, and nothing is stored. A preview answers
200 with its result also when the generator itself failed (the error is in the result);
503 when it cannot run now (no sandbox on this host, or every preview slot busy).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.routing import Route

from resources import generators, tenants
from resources.errors import InvalidInput, NotFound
from resources.fields import is_id
from webhook_app import bodies
from webhook_app.auth import caller
from webhook_app.campaign_api import operation

TEMPLATE = "/api/templates/{template_id:int}/generators"


def _engine(request: Request):
    return request.app.state.postgres.engine


async def _template(request: Request) -> int:
    """The path's template; another organisation's is 404, as a missing one."""
    template_id = request.path_params["template_id"]
    if not is_id(template_id):  # beyond a bigint: no template has it
        raise NotFound(f"template {template_id} does not exist")
    if caller(request).organisation_id is not None:
        owner = await run_in_threadpool(
            tenants.organisation_of, _engine(request), "template", template_id
        )
        if owner is None or not caller(request).sees(owner):
            raise NotFound(f"template {template_id} does not exist")
    return template_id


async def _body(request: Request) -> dict[str, Any]:
    return await bodies.json_object(request, optional=True)


def _text(data: dict[str, Any], name: str, default: str | None) -> Any:
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, str):
        raise InvalidInput([{"field": name, "error": "must be text"}])
    return value


@operation(201)
async def publish(request: Request) -> Any:
    """Publish a new version of the template's generator; it becomes the active one.

    ---
    summary: Publish a generator version
    description: >-
      The source must compile, define generate_asset(attributes, name, msisdn, temp_dir)
      with four parameters and fit GENERATOR_MAX_BYTES. A rejected source answers 422 with
      the line and the reason, and nothing is stored.
    requestBody:
      required: true
      content:
        application/json:
          schema:
            type: object
            required: [source]
            properties:
              source: {type: string, description: the generator's Python source}
              file_name: {type: string, default: generator.py, description: "a name ending in .py, shown in tracebacks"}
              description: {type: string, description: what changed in this version}
          example:
            source: |
              import json, os

              def generate_asset(attributes, name, msisdn, temp_dir):
                  path = os.path.join(temp_dir, "offer.json")
                  with open(path, "w") as f:
                      json.dump({"name": name, "offer": attributes.get("offer")}, f)
                  return {"json": path}
            file_name: offer.py
            description: first offer card
    responses:
      201:
        description: "the new version: template_id, version, file_name, description, active, created_at"
      404: {description: no such template}
      413: {description: body over 1 MiB}
      422:
        description: "rejected: errors is [{field: source, line, error}] (line null when no line is to blame)"
    """
    data = await _body(request)
    template_id = await _template(request)
    source = data.get("source")
    if source is None:
        raise InvalidInput([{"field": "source", "error": "is required"}])
    version = await run_in_threadpool(
        generators.publish,
        _engine(request),
        template_id,
        source,
        _text(data, "file_name", generators.DEFAULT_FILE_NAME),
        data.get("description", ""),
    )
    return replace(version, source=None).as_dict()


@operation(200)
async def list_versions(request: Request) -> Any:
    """The template's generator versions, newest first.

    ---
    summary: List generator versions
    responses:
      200:
        description: "[{template_id, version, file_name, description, active, created_at}], newest first"
      404: {description: no such template}
    """
    versions = await run_in_threadpool(
        generators.list_versions, _engine(request), await _template(request)
    )
    return [version.as_dict() for version in versions]


@operation(200)
async def get_version(request: Request) -> Any:
    """One generator version, with its source.

    ---
    summary: Read a generator version's source
    responses:
      200:
        description: "{template_id, version, file_name, description, active, created_at, source}"
      404: {description: no such template or version}
    """
    version = await run_in_threadpool(
        generators.get_version,
        _engine(request),
        await _template(request),
        request.path_params["version"],
    )
    return version.as_dict()


@operation(200)
async def activate(request: Request) -> Any:
    """Make a stored version the active one: a roll back or forward.

    ---
    summary: Activate a generator version
    description: >-
      Members of a running campaign not yet generated get this version; those already
      generated keep their media.
    responses:
      200: {description: the version now active}
      404: {description: no such template or version}
    """
    version = await run_in_threadpool(
        generators.activate,
        _engine(request),
        await _template(request),
        request.path_params["version"],
    )
    return replace(version, source=None).as_dict()


@operation(200)
async def preview(request: Request) -> Any:
    """Run a draft or a stored version in the media sandbox for one sample member.

    ---
    summary: Preview a generator
    description: >-
      Runs "source" (a draft, checked as a publish would be but not stored), a stored
      "version", or else the active version, for "member" or for the first member of
      "campaign_id" (else a sample member), in the same sandbox and limits as a campaign
      and at most GENERATOR_PREVIEW_SECONDS. Answers 200 also when the generator failed.
    requestBody:
      content:
        application/json:
          schema:
            type: object
            properties:
              source: {type: string, description: a draft source (not stored)}
              file_name: {type: string, default: generator.py, description: the draft's file name}
              version: {type: integer, description: a stored version}
              member:
                type: object
                properties:
                  name: {type: string, nullable: true}
                  msisdn: {type: string}
                  attributes: {type: object}
              campaign_id: {type: string, format: uuid, description: use this campaign's first member}
          example:
            version: 2
            member: {name: Ana, msisdn: "+12025550100", attributes: {offer: 2 for 1}}
    responses:
      200:
        description: >-
          {ok, version, member, files: [{asset_type, name, content_type, size,
          thumbnail_png (base64 PNG, images), data (base64; null above 5 MiB)}], output,
          seconds, peak_memory_mb, error, traceback (the generator's own frames)}
      404: {description: no such template, version or campaign}
      422: {description: "bad fields: errors lists each"}
      503: {description: no sandbox on this host, or every preview slot busy}
    """
    data = await _body(request)
    template_id = await _template(request)
    result = await run_in_threadpool(
        generators.preview,
        _engine(request),
        template_id,
        source=data.get("source"),
        version=data.get("version"),
        member=data.get("member"),
        campaign_id=data.get("campaign_id"),
        file_name=_text(data, "file_name", generators.DEFAULT_FILE_NAME),
    )
    return result.as_dict()


routes = [
    Route(TEMPLATE, publish, methods=["POST"]),
    Route(TEMPLATE, list_versions, methods=["GET"]),
    Route(TEMPLATE + "/preview", preview, methods=["POST"]),
    Route(TEMPLATE + "/{version:int}", get_version, methods=["GET"]),
    Route(TEMPLATE + "/{version:int}/activate", activate, methods=["POST"]),
]
