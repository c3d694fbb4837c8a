"""The operator API for campaigns: thin HTTP handlers over the operations of `resources`
(`organisations`, `consent`, `operator_templates`, `campaigns`, `campaign_runs`,
`campaign_control`), whose results `webhook_app.campaign_answers` turns into JSON; the CLI
calls the same.

Each route acts within one organisation (`webhook_app.auth`): with an organisation's token,
a campaign, template or organisation of another one answers 404 exactly as one that does not
exist, and lists hold only its own rows; the platform's routes answer it 403.

Bad input answers 422 with every problem listed (a campaign that is not ready to approve:
each problem with its count and first members), a missing row 404, a refused status change
or a taken phone number ID 409, a generator preview that cannot run now 503, each in the
app's one error body (`webhook_app.errors`); CSV uploads take the file as the request body
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

from resources import campaign_control as control
from resources import (
    campaigns,
    consent,
    operator_templates,
    organisations,
    templates,
    tenants,
)
from resources.campaign_runs import campaign_progress
from resources.errors import InvalidInput, NotFound, Unavailable
from resources.queue import SQSResource
from webhook_app import bodies
from webhook_app import campaign_answers as answers
from webhook_app.auth import caller, requires_admin, requires_token
from webhook_app.campaign_answers import jsonable


@functools.cache
def _sqs() -> SQSResource:
    return SQSResource.from_settings()


def _engine(request: Request):
    return request.app.state.postgres.engine


async def _json(request: Request) -> dict[str, Any]:
    return await bodies.json_object(request, optional=True)


async def _csv(request: Request) -> str:
    return await bodies.csv_text(request)


def operation(status_code: int = 200, platform: bool = False) -> Callable:
    """Guard with a token (the platform admin's only, for a `platform` route) and answer
    the handler's result as JSON; its errors are the app's (`webhook_app.errors`)."""

    def wrap(handler: Callable) -> Callable:
        @(requires_admin if platform else requires_token)
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            return JSONResponse(jsonable(await handler(request)), status_code=status_code)

        return endpoint

    return wrap


def _path(request: Request, name: str) -> str:
    return str(request.path_params[name])


def _within(request: Request, organisation_id: Any) -> None:
    """404 for an organisation the caller's token does not act for, as if it did not exist."""
    if not caller(request).sees(organisation_id):
        raise NotFound(f"organisation {organisation_id} does not exist")


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
            raise NotFound(f"{kind} {object_id} does not exist")
    return object_id


async def _campaign(request: Request) -> UUID:
    """The path's campaign id (the route's `uuid` convertor parsed it)."""
    return await _owned(request, "campaign")


@operation(201, platform=True)
async def create_organisation(request: Request) -> Any:
    """Create an organisation (platform admin).

    ---
    summary: Create an organisation
    tags: [organisations]
    requestBody:
      required: true
      content:
        application/json:
          schema: {type: object}
          example: {"name": "Shop", "phone_number_id": "106540352242922",
                    "waba_id": "102290129340398", "messaging_limit": 250}
    responses:
      "201":
        description: the organisation with its phone numbers
      "422":
        description: invalid input; every bad field (or CSV line) is listed and nothing is changed
      "409":
        description: the phone number ID or WABA id belongs to another organisation
    """
    return await run_in_threadpool(
        organisations.create_organisation, _engine(request), await _json(request)
    )


@operation(200)
async def upload_contacts(request: Request) -> Any:
    """Create or update the organisation's contacts from a CSV body.

    ---
    summary: Import contacts from CSV
    tags: [contacts]
    requestBody:
      required: true
      content:
        text/csv:
          schema: {type: string}
          example: |
            phone,name,opted_out,city
            +16505551234,Ana,,Lisbon
            +16505550000,Bo,true,Porto
    responses:
      "200":
        description: imported, created, updated, opted_out and the rows not_applied
      "422":
        description: invalid input; every bad field (or CSV line) is listed and nothing is changed
      "404":
        description: no such object in the caller's organisation
    """
    text = await _csv(request)
    return await run_in_threadpool(
        consent.import_contacts, _engine(request), _organisation(request), text
    )


@operation(200)
async def list_templates(request: Request) -> Any:
    """The templates of the caller's organisation (or `organisation_id`'s).

    ---
    summary: List templates
    tags: [templates]
    parameters:
      - {name: organisation_id, in: query, required: false, schema: {type: string, format: uuid}}
    responses:
      "200":
        description: the templates, with their parameters and Meta status
    """
    organisation = request.query_params.get("organisation_id")
    if organisation:
        _named_organisation(request, {"organisation_id": organisation})
    return await run_in_threadpool(
        operator_templates.list_templates,
        _engine(request),
        organisation or caller(request).organisation_id,
    )


@operation(201)
async def create_template(request: Request) -> Any:
    """A template with our parameters (configures the one a sync found at Meta).

    ---
    summary: Create a template
    tags: [templates]
    requestBody:
      required: true
      content:
        application/json:
          schema: {type: object}
          example: {"organisation_id": "0f8e6a52-3c1d-4e57-9a0b-2f6d8c1e4b7a",
                    "name": "spring_offer", "language": "en", "category": "marketing",
                    "message_type": "image", "body": "Hi {{1}}, your offer is ready",
                    "parameters": [{"type": "header", "valueType": "image",
                    "source": "asset.image"}, {"type": "body", "valueType": "text",
                    "source": "contact.name"}]}
    responses:
      "201":
        description: the template
      "422":
        description: invalid input; every bad field (or CSV line) is listed and nothing is changed
    """
    data = _named_organisation(request, await _json(request))
    return await run_in_threadpool(operator_templates.create_template, _engine(request), data)


@operation(200)
async def get_template(request: Request) -> Any:
    """One template.

    ---
    summary: Read a template
    tags: [templates]
    responses:
      "200":
        description: the template
      "404":
        description: no such object in the caller's organisation
    """
    return await run_in_threadpool(
        operator_templates.get_template, _engine(request), await _owned(request, "template")
    )


@operation(200)
async def update_template(request: Request) -> Any:
    """Change a template's body, parameters, status, category or message type.

    ---
    summary: Change a template
    tags: [templates]
    requestBody:
      required: true
      content:
        application/json:
          schema: {type: object}
          example: {"body": "Hello {{1}}", "parameters": [{"type": "body", "valueType": "text",
                    "source": "contact.name"}]}
    responses:
      "200":
        description: the template
      "422":
        description: invalid input; every bad field (or CSV line) is listed and nothing is changed
      "404":
        description: no such object in the caller's organisation
    """
    return await run_in_threadpool(
        operator_templates.update_template,
        _engine(request),
        await _owned(request, "template"),
        await _json(request),
    )


@operation(201)
async def create_campaign(request: Request) -> Any:
    """A draft campaign; its audience comes next.

    ---
    summary: Create a draft campaign
    tags: [campaigns]
    requestBody:
      required: true
      content:
        application/json:
          schema: {type: object}
          example: {"organisation_id": "0f8e6a52-3c1d-4e57-9a0b-2f6d8c1e4b7a",
                    "name": "Spring offer", "message_type": "template", "template_id": 7,
                    "phone_number_id": "106540352242922", "recurrence": "once",
                    "start_at": "2026-04-01T09:00:00Z"}
    responses:
      "201":
        description: the campaign, as its status route shows it
      "422":
        description: invalid input; every bad field (or CSV line) is listed and nothing is changed
    """
    data = _named_organisation(request, await _json(request))
    return await run_in_threadpool(answers.created_campaign, _engine(request), data)


@operation(200)
async def upload_audience(request: Request) -> Any:
    """Add members to a draft campaign from a CSV body.

    ---
    summary: Add a draft's audience from CSV
    tags: [campaigns]
    requestBody:
      required: true
      content:
        text/csv:
          schema: {type: string}
          example: |
            phone,name,city
            +16505551234,Ana,Lisbon
            +16505550000,Bo,Porto
    responses:
      "200":
        description: imported, created and already_present
      "422":
        description: invalid input; every bad field (or CSV line) is listed and nothing is changed
      "404":
        description: no such object in the caller's organisation
      "409":
        description: refused in the campaign's current status
    """
    text = await _csv(request)
    return await run_in_threadpool(
        campaigns.import_audience, _engine(request), await _campaign(request), text
    )


@operation(200)
async def approve_campaign(request: Request) -> Any:
    """draft → approved, once the campaign can send what it is meant to.

    ---
    summary: Approve a draft campaign
    tags: [campaigns]
    responses:
      "200":
        description: the campaign, approved
      "422":
        description: not ready; every problem is listed
      "404":
        description: no such object in the caller's organisation
      "409":
        description: refused in the campaign's current status
    """
    return await run_in_threadpool(
        answers.approved_campaign, _engine(request), await _campaign(request)
    )


@operation(200)
async def campaign_readiness(request: Request) -> Any:
    """What approval would find now, changing nothing.

    ---
    summary: Check a campaign's readiness
    tags: [campaigns]
    responses:
      "200":
        description: problems and the first members as they would be sent
      "404":
        description: no such object in the caller's organisation
    """
    return await run_in_threadpool(
        answers.campaign_readiness, _engine(request), await _campaign(request)
    )


@operation(200)
async def get_campaign_progress(request: Request) -> Any:
    """Status, audience and message counts, and each run's progress.

    ---
    summary: Read a campaign's status
    tags: [campaigns]
    responses:
      "200":
        description: the campaign, its counts and runs
      "404":
        description: no such object in the caller's organisation
    """
    return await run_in_threadpool(campaign_progress, _engine(request), await _campaign(request))


@operation(200)
async def list_audience(request: Request) -> Any:
    """One page of a campaign's members.

    ---
    summary: List a campaign's members
    tags: [campaigns]
    parameters:
      - {name: status, in: query, required: false, schema: {type: string}}
      - {name: limit, in: query, required: false, schema: {type: integer, default: 100}}
      - {name: after, in: query, required: false, schema: {type: string},
         description: "the previous page's next_after"}
    responses:
      "200":
        description: items and next_after
      "404":
        description: no such object in the caller's organisation
    """
    query = request.query_params
    try:
        limit = int(query.get("limit", "100"))
    except ValueError:
        raise InvalidInput([{"field": "limit", "error": "must be a number"}]) from None
    return await run_in_threadpool(
        campaigns.list_audience,
        _engine(request),
        await _campaign(request),
        query.get("status"),
        limit,
        query.get("after"),
    )


@operation(202)
async def process_messages(request: Request) -> Any:
    """Record today's run now; the campaign-run sensor launches it.

    ---
    summary: Record today's run now
    tags: [campaigns]
    responses:
      "202":
        description: the run recorded
      "404":
        description: no such object in the caller's organisation
      "409":
        description: refused in the campaign's current status
    """
    return await run_in_threadpool(answers.recorded_run, _engine(request), await _campaign(request))


@operation(200)
async def list_organisations(request: Request) -> Any:
    """Organisations with their phone numbers (an organisation's token sees its own).

    ---
    summary: List organisations
    tags: [organisations]
    parameters:
      - {name: phone_number_id, in: query, required: false, schema: {type: string}}
    responses:
      "200":
        description: the organisations
    """
    return await run_in_threadpool(
        organisations.list_organisations,
        _engine(request),
        request.query_params.get("phone_number_id") or None,
        caller(request).organisation_id,
    )


@operation(200, platform=True)
async def update_organisation(request: Request) -> Any:
    """Change an organisation's WABA id, messaging limit or numbers' display numbers
    (platform admin).

    ---
    summary: Change an organisation
    tags: [organisations]
    requestBody:
      required: true
      content:
        application/json:
          schema: {type: object}
          example: {"messaging_limit": 2000, "by": "ana", "reason": "tier 2 granted",
                    "phone_numbers": [{"phone_number_id": "106540352242922",
                    "display_phone": "+1 555 078 3881"}]}
    responses:
      "200":
        description: the organisation
      "422":
        description: invalid input; every bad field (or CSV line) is listed and nothing is changed
      "404":
        description: no such object in the caller's organisation
      "409":
        description: the WABA id belongs to another organisation
    """
    return await run_in_threadpool(
        organisations.update_organisation,
        _engine(request),
        _path(request, "organisation_id"),
        await _json(request),
    )


@operation(201, platform=True)
async def create_token(request: Request) -> Any:
    """A new API token for the organisation, shown once (platform admin).

    ---
    summary: Create an organisation token
    tags: [tokens]
    requestBody:
      required: true
      content:
        application/json:
          schema: {type: object}
          example: {"name": "marketing team", "by": "ana"}
    responses:
      "201":
        description: the token (only now) and its id
      "422":
        description: invalid input; every bad field (or CSV line) is listed and nothing is changed
      "404":
        description: no such object in the caller's organisation
    """
    return await run_in_threadpool(
        tenants.create_token,
        _engine(request),
        _path(request, "organisation_id"),
        await _json(request),
    )


@operation(200, platform=True)
async def list_tokens(request: Request) -> Any:
    """The organisation's tokens, never the tokens themselves (platform admin).

    ---
    summary: List an organisation's tokens
    tags: [tokens]
    responses:
      "200":
        description: the tokens
      "404":
        description: no such object in the caller's organisation
    """
    return await run_in_threadpool(
        tenants.list_tokens, _engine(request), _path(request, "organisation_id")
    )


@operation(200, platform=True)
async def revoke_token(request: Request) -> Any:
    """Revoke a token; it stops working at once (platform admin).

    ---
    summary: Revoke a token
    tags: [tokens]
    requestBody:
      required: false
      content:
        application/json:
          schema: {type: object}
          example: {"by": "ana"}
    responses:
      "200":
        description: the revoked token
      "404":
        description: no such object in the caller's organisation
    """
    return await run_in_threadpool(
        tenants.revoke_token,
        _engine(request),
        _path(request, "organisation_id"),
        request.path_params["token_id"],
        await _json(request),
    )


@operation(200)
async def account_history(request: Request) -> Any:
    """The account's history: messaging limit, throughput and standing.

    ---
    summary: Read an organisation's account events
    tags: [organisations]
    parameters:
      - {name: kind, in: query, required: false, schema: {type: string}}
      - {name: limit, in: query, required: false, schema: {type: integer, default: 100}}
    responses:
      "200":
        description: the events, newest first
      "404":
        description: no such object in the caller's organisation
    """
    query = request.query_params
    return await run_in_threadpool(
        organisations.account_history,
        _engine(request),
        _organisation(request),
        query.get("kind"),
        query.get("limit", "100"),
    )


@operation(200)
async def find_contacts(request: Request) -> Any:
    """The organisation's contacts with this phone or user id, with consent and identity history.

    ---
    summary: Look contacts up
    tags: [contacts]
    parameters:
      - {name: phone, in: query, required: false, schema: {type: string}, example: "+16505551234"}
      - {name: user_id, in: query, required: false, schema: {type: string}}
    responses:
      "200":
        description: the matching contacts
      "422":
        description: invalid input; every bad field (or CSV line) is listed and nothing is changed
      "404":
        description: no such object in the caller's organisation
    """
    query = request.query_params
    return await run_in_threadpool(
        consent.look_up_contacts,
        _engine(request),
        _organisation(request),
        query.get("phone"),
        query.get("user_id"),
    )


@operation(200)
async def set_consent(request: Request) -> Any:
    """An operator's explicit opt-out or opt-in, saying who and why.

    ---
    summary: Opt a contact out or back in
    tags: [contacts]
    requestBody:
      required: true
      content:
        application/json:
          schema: {type: object}
          example: {"scope": "campaigns", "opted_out": true, "by": "ana",
                    "reason": "asked by phone"}
    responses:
      "200":
        description: the contact with its consent, history and whether this changed it
      "422":
        description: invalid input; every bad field (or CSV line) is listed and nothing is changed
      "404":
        description: no such object in the caller's organisation
    """
    return await run_in_threadpool(
        consent.set_consent,
        _engine(request),
        _organisation(request),
        request.path_params["contact_id"],
        await _json(request),
    )


def _control(act: Callable, summary: str, example: str, ok: str) -> Callable:
    """A campaign control route: `POST` with an optional JSON body (`by`, `reason`, …); its
    OpenAPI operation is built here, as the four differ only in these words."""

    @functools.wraps(act)
    async def handler(request: Request) -> Any:
        return await run_in_threadpool(
            act, _engine(request), await _campaign(request), await _json(request)
        )

    handler.__doc__ = f"""{summary}.

    ---
    summary: "{summary}"
    tags: [campaigns]
    requestBody:
      required: false
      content:
        application/json:
          schema: {{type: object}}
          example: {example}
    responses:
      "200":
        description: "{ok}"
      "404":
        description: no such campaign in the caller's organisation
      "409":
        description: refused in the campaign's current status
    """
    return operation(200)(handler)


pause_campaign = _control(
    control.pause,
    "Pause a campaign",
    '{"by": "ana", "reason": "wrong image"}',
    "the campaign, paused: media, dispatch and sending stop until it is resumed",
)
resume_campaign = _control(
    control.resume,
    "Resume a paused campaign",
    '{"by": "ana"}',
    "the campaign, carrying on where it stopped",
)
cancel_campaign = _control(
    control.cancel,
    "Cancel a campaign",
    '{"by": "ana", "reason": "wrong audience"}',
    "the campaign, cancelled: its unsent messages cancelled, its queued ones dropped",
)
retry_failed = _control(
    control.retry_failed,
    "Queue a campaign's failed messages again",
    '{"by": "ana", "campaign_run_id": 3}',
    "how many failed messages whose error could pass were queued again",
)


@operation(200, platform=True)
async def list_breakers(request: Request) -> Any:
    """Open circuit breakers and what they hold (platform admin).

    ---
    summary: List circuit breakers
    tags: [sending]
    parameters:
      - {name: include_closed, in: query, required: false, schema: {type: integer, default: 0}}
    responses:
      "200":
        description: the breakers
    """
    return await run_in_threadpool(
        control.list_breakers, _engine(request), request.query_params.get("include_closed", 0)
    )


@operation(200, platform=True)
async def reset_breaker(request: Request) -> Any:
    """Close a breaker once its cause is fixed (platform admin).

    ---
    summary: Reset a circuit breaker
    tags: [sending]
    requestBody:
      required: false
      content:
        application/json:
          schema: {type: object}
          example: {"by": "ana", "reason": "template re-approved"}
    responses:
      "200":
        description: the breaker, closed
      "404":
        description: no such object in the caller's organisation
    """
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
    and title. Nothing is changed unless the answer is 200.

    ---
    summary: Read the organisation's templates from Meta now
    tags: [templates]
    responses:
      "200":
        description: what the sync did, and the templates after it
      "404":
        description: no such object in the caller's organisation
      "409":
        description: no WABA id, or no access token (dev mode)
      "502":
        description: the Graph API's error, with its code and title
    """
    engine = _engine(request)
    organisation_id = _organisation(request)
    try:
        result = await run_in_threadpool(
            templates.sync_organisation, engine, request.app.state.webhook.client, organisation_id
        )
    except templates.SyncFailed as error:
        # Meta's error, not ours: `code` is the Graph API's, with its `title`.
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
    """Queue depth, in flight, delayed and dead-letter depth (platform admin).

    ---
    summary: Read the send queue's depth
    tags: [sending]
    responses:
      "200":
        description: the queue's counts
      "503":
        description: the queue is unreachable
    """
    try:
        return JSONResponse(await run_in_threadpool(answers.queue_depth, _sqs()))
    except (BotoCoreError, ClientError) as error:
        raise Unavailable(f"{type(error).__name__}: {error}", summary="queue unavailable") from None


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
    Route("/api/campaigns/{campaign_id:uuid}/status", get_campaign_progress, methods=["GET"]),
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
