"""The operator API for campaigns: thin HTTP handlers over `resources.campaign_admin`,
which the CLI calls too.

Each route acts within one organisation (`webhook_app.auth`): with an organisation's token,
a campaign, template or organisation of another one answers 404 exactly as one that does not
exist, and lists hold only its own rows; the platform's routes answer it 403.

Bad input answers 422 with every problem listed (a campaign that is not ready to approve:
each problem with its count and first members), a missing row 404, a refused status change
or a taken phone number ID 409, a generator preview that cannot run now 503; CSV uploads take the file as the request body
(`Content-Type: text/csv`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Literal
from uuid import UUID

from botocore.exceptions import BotoCoreError, ClientError
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from resources import campaign_admin as admin
from resources import campaign_control as control
from resources import generators, templates, tenants
from resources.queue import SQSResource
from webhook_app import bodies
from webhook_app.auth import caller, requires_admin, requires_token


@functools.cache
def _sqs() -> SQSResource:
    return SQSResource.from_env()


def _engine(request: Request):
    return request.app.state.postgres.engine


async def _json(request: Request) -> dict[str, Any]:
    return await bodies.json_object(request, optional=True)


async def _csv(request: Request) -> str:
    return await bodies.csv_text(request)


def operation(status_code: int = 200, platform: bool = False) -> Callable:
    """Guard with a token (the platform admin's only, for a `platform` route) and map the
    operations' errors onto HTTP answers."""

    def wrap(handler: Callable) -> Callable:
        @(requires_admin if platform else requires_token)
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            try:
                return JSONResponse(await handler(request), status_code=status_code)
            except admin.NotReady as error:
                return JSONResponse(
                    {"error": "campaign not ready", "detail": str(error), **error.report.as_dict()},
                    422,
                )
            except admin.InvalidInput as error:
                return JSONResponse({"error": "invalid input", "errors": error.errors}, 422)
            except bodies.BodyRefused as error:
                errors = [{"field": "body", "error": str(error)}]
                status = 413 if isinstance(error, bodies.BodyTooLarge) else 422
                return JSONResponse({"error": "invalid input", "errors": errors}, status)
            except admin.NotFound as error:
                return JSONResponse({"error": "not found", "detail": str(error)}, 404)
            except admin.Conflict as error:
                return JSONResponse({"error": "conflict", "detail": str(error)}, 409)
            except generators.PreviewUnavailable as error:
                return JSONResponse({"error": "unavailable", "detail": str(error)}, 503)

        return endpoint

    return wrap


def _path(request: Request, name: str) -> str:
    return str(request.path_params[name])


def _within(request: Request, organisation_id: Any) -> None:
    """404 for an organisation the caller's token does not act for, as if it did not exist."""
    if not caller(request).sees(organisation_id):
        raise admin.NotFound(f"organisation {organisation_id} does not exist")


def _organisation(request: Request) -> str:
    """The path's organisation, checked against the caller's."""
    organisation_id = _path(request, "organisation_id")
    _within(request, organisation_id)
    return organisation_id


def _named_organisation(request: Request, data: dict[str, Any]) -> dict[str, Any]:
    """A body's `organisation_id`, checked against the caller's (a value that is not a UUID
    is left to the operation, which says so)."""
    try:
        given = UUID(str(data.get("organisation_id")))
    except ValueError:
        return data
    _within(request, given)
    return data


async def _owned(request: Request, kind: Literal["campaign", "template"]) -> Any:
    """The path's campaign or template; another organisation's is 404, as a missing one."""
    object_id = request.path_params[f"{kind}_id"]
    if caller(request).organisation_id is not None:
        owner = await run_in_threadpool(tenants.organisation_of, _engine(request), kind, object_id)
        if owner is None or not caller(request).sees(owner):
            raise admin.NotFound(f"{kind} {object_id} does not exist")
    return object_id


async def _campaign(request: Request) -> str:
    return str(await _owned(request, "campaign"))


@operation(201, platform=True)
async def create_organisation(request: Request) -> Any:
    return await run_in_threadpool(
        admin.create_organisation, _engine(request), await _json(request)
    )


@operation(200)
async def upload_contacts(request: Request) -> Any:
    text = await _csv(request)
    return await run_in_threadpool(
        admin.import_contacts, _engine(request), _organisation(request), text
    )


@operation(200)
async def list_templates(request: Request) -> Any:
    organisation = request.query_params.get("organisation_id")
    if organisation:
        _named_organisation(request, {"organisation_id": organisation})
    return await run_in_threadpool(
        admin.list_templates, _engine(request), organisation or caller(request).organisation_id
    )


@operation(201)
async def create_template(request: Request) -> Any:
    data = _named_organisation(request, await _json(request))
    return await run_in_threadpool(admin.create_template, _engine(request), data)


@operation(200)
async def get_template(request: Request) -> Any:
    return await run_in_threadpool(
        admin.get_template, _engine(request), await _owned(request, "template")
    )


@operation(200)
async def update_template(request: Request) -> Any:
    return await run_in_threadpool(
        admin.update_template,
        _engine(request),
        await _owned(request, "template"),
        await _json(request),
    )


@operation(201)
async def create_campaign(request: Request) -> Any:
    data = _named_organisation(request, await _json(request))
    return await run_in_threadpool(admin.create_campaign, _engine(request), data)


@operation(200)
async def upload_audience(request: Request) -> Any:
    text = await _csv(request)
    return await run_in_threadpool(
        admin.import_audience, _engine(request), await _campaign(request), text
    )


@operation(200)
async def approve_campaign(request: Request) -> Any:
    return await run_in_threadpool(
        admin.approve_campaign, _engine(request), await _campaign(request)
    )


@operation(200)
async def campaign_readiness(request: Request) -> Any:
    return await run_in_threadpool(
        admin.campaign_readiness, _engine(request), await _campaign(request)
    )


@operation(200)
async def campaign_status(request: Request) -> Any:
    return await run_in_threadpool(
        admin.campaign_status, _engine(request), await _campaign(request)
    )


@operation(200)
async def list_audience(request: Request) -> Any:
    query = request.query_params
    try:
        limit = int(query.get("limit", "100"))
    except ValueError:
        raise admin.InvalidInput([{"field": "limit", "error": "must be a number"}]) from None
    return await run_in_threadpool(
        admin.list_audience,
        _engine(request),
        await _campaign(request),
        query.get("status"),
        limit,
        query.get("after"),
    )


@operation(202)
async def process_messages(request: Request) -> Any:
    return await run_in_threadpool(
        admin.process_messages, _engine(request), await _campaign(request)
    )


@operation(200)
async def list_organisations(request: Request) -> Any:
    return await run_in_threadpool(
        admin.list_organisations,
        _engine(request),
        request.query_params.get("phone_number_id") or None,
        caller(request).organisation_id,
    )


@operation(200, platform=True)
async def update_organisation(request: Request) -> Any:
    return await run_in_threadpool(
        admin.update_organisation,
        _engine(request),
        _path(request, "organisation_id"),
        await _json(request),
    )


@operation(201, platform=True)
async def create_token(request: Request) -> Any:
    return await run_in_threadpool(
        tenants.create_token,
        _engine(request),
        _path(request, "organisation_id"),
        await _json(request),
    )


@operation(200, platform=True)
async def list_tokens(request: Request) -> Any:
    return await run_in_threadpool(
        tenants.list_tokens, _engine(request), _path(request, "organisation_id")
    )


@operation(200, platform=True)
async def revoke_token(request: Request) -> Any:
    return await run_in_threadpool(
        tenants.revoke_token,
        _engine(request),
        _path(request, "organisation_id"),
        request.path_params["token_id"],
        await _json(request),
    )


@operation(200)
async def account_history(request: Request) -> Any:
    query = request.query_params
    return await run_in_threadpool(
        admin.account_history,
        _engine(request),
        _organisation(request),
        query.get("kind"),
        query.get("limit", "100"),
    )


@operation(200)
async def find_contacts(request: Request) -> Any:
    query = request.query_params
    return await run_in_threadpool(
        admin.find_contacts,
        _engine(request),
        _organisation(request),
        query.get("phone"),
        query.get("user_id"),
    )


@operation(200)
async def set_consent(request: Request) -> Any:
    return await run_in_threadpool(
        admin.set_consent,
        _engine(request),
        _organisation(request),
        request.path_params["contact_id"],
        await _json(request),
    )


def _control(act: Callable) -> Callable:
    """A campaign control route: `POST` with an optional JSON body (`by`, `reason`, …)."""

    @functools.wraps(act)
    async def handler(request: Request) -> Any:
        return await run_in_threadpool(
            act, _engine(request), await _campaign(request), await _json(request)
        )

    return operation(200)(handler)


pause_campaign = _control(control.pause)
resume_campaign = _control(control.resume)
cancel_campaign = _control(control.cancel)
retry_failed = _control(control.retry_failed)


@operation(200, platform=True)
async def list_breakers(request: Request) -> Any:
    return await run_in_threadpool(
        control.list_breakers, _engine(request), request.query_params.get("include_closed", 0)
    )


@operation(200, platform=True)
async def reset_breaker(request: Request) -> Any:
    return await run_in_threadpool(
        control.reset_breaker,
        _engine(request),
        request.path_params["breaker_id"],
        await _json(request),
    )


@requires_token
async def sync_templates(request: Request) -> Response:
    """Read the organisation's templates from Meta now (every page, then one transaction)
    and answer what the sync did with the templates after it. 404 unknown organisation;
    409 no WABA id, or dev mode (no access token); 502 the Graph API's error, with its code
    and title. Nothing is changed unless the answer is 200."""
    engine = _engine(request)
    try:
        organisation_id = _organisation(request)
        result = await run_in_threadpool(
            templates.sync_organisation, engine, request.app.state.webhook.client, organisation_id
        )
    except (templates.NoSuchOrganisation, admin.NotFound) as error:
        return JSONResponse({"error": "not found", "detail": str(error)}, 404)
    except (templates.NoWABA, templates.CannotReadMeta) as error:
        return JSONResponse({"error": "conflict", "detail": str(error)}, 409)
    except templates.SyncFailed as error:
        return JSONResponse(
            {
                "error": "graph api error",
                "code": error.code,
                "title": error.title,
                "detail": str(error),
            },
            502,
        )
    return JSONResponse(await run_in_threadpool(templates.report, engine, result))


@requires_admin
async def sqs_status(request: Request) -> Response:
    try:
        return JSONResponse(await run_in_threadpool(admin.queue_status, _sqs()))
    except (BotoCoreError, ClientError) as error:
        return JSONResponse(
            {"error": "queue unavailable", "detail": f"{type(error).__name__}: {error}"}, 503
        )


routes = [
    Route("/api/organisations", create_organisation, methods=["POST"]),
    Route("/api/organisations/{organisation_id:uuid}/contacts", upload_contacts, methods=["POST"]),
    Route(
        "/api/organisations/{organisation_id:uuid}/templates/sync",
        sync_templates,
        methods=["POST"],
    ),
    Route("/api/templates", list_templates, methods=["GET"]),
    Route("/api/templates", create_template, methods=["POST"]),
    Route("/api/templates/{template_id:int}", get_template, methods=["GET"]),
    Route("/api/templates/{template_id:int}", update_template, methods=["PATCH"]),
    Route("/api/campaigns", create_campaign, methods=["POST"]),
    Route("/api/campaigns/sqs-status", sqs_status, methods=["GET"]),
    Route("/api/campaigns/{campaign_id:uuid}/audience", upload_audience, methods=["POST"]),
    Route("/api/campaigns/{campaign_id:uuid}/audience", list_audience, methods=["GET"]),
    Route("/api/campaigns/{campaign_id:uuid}/approve", approve_campaign, methods=["POST"]),
    Route("/api/campaigns/{campaign_id:uuid}/readiness", campaign_readiness, methods=["GET"]),
    Route("/api/campaigns/{campaign_id:uuid}/status", campaign_status, methods=["GET"]),
    Route("/api/campaigns/{campaign_id:uuid}/process-messages", process_messages, methods=["POST"]),
    Route("/api/campaigns/{campaign_id:uuid}/pause", pause_campaign, methods=["POST"]),
    Route("/api/campaigns/{campaign_id:uuid}/resume", resume_campaign, methods=["POST"]),
    Route("/api/campaigns/{campaign_id:uuid}/cancel", cancel_campaign, methods=["POST"]),
    Route("/api/campaigns/{campaign_id:uuid}/retry-failed", retry_failed, methods=["POST"]),
    Route("/api/breakers", list_breakers, methods=["GET"]),
    Route("/api/breakers/{breaker_id:int}/reset", reset_breaker, methods=["POST"]),
    Route("/api/organisations", list_organisations, methods=["GET"]),
    Route("/api/organisations/{organisation_id:uuid}", update_organisation, methods=["PATCH"]),
    Route("/api/organisations/{organisation_id:uuid}/tokens", create_token, methods=["POST"]),
    Route("/api/organisations/{organisation_id:uuid}/tokens", list_tokens, methods=["GET"]),
    Route(
        "/api/organisations/{organisation_id:uuid}/tokens/{token_id:int}",
        revoke_token,
        methods=["DELETE"],
    ),
    Route(
        "/api/organisations/{organisation_id:uuid}/account-events",
        account_history,
        methods=["GET"],
    ),
    Route("/api/organisations/{organisation_id:uuid}/contacts", find_contacts, methods=["GET"]),
    Route(
        "/api/organisations/{organisation_id:uuid}/contacts/{contact_id:int}/consent",
        set_consent,
        methods=["POST"],
    ),
]
