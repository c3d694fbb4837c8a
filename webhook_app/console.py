"""The operator console (`/console`): the inbox, a conversation with its reply box, the
campaigns and the templates with their media generators, served as plain HTML.

Pages are rendered on the server with Jinja2 (every value escaped: customer text is hostile
input) and a few lines of dependency-free JavaScript refresh the live parts by polling,
which works behind any load balancer. An operator signs in with an operator token (an
organisation's or the platform admin's); the session is an HttpOnly, SameSite=Strict
cookie (`resources.console_sessions`) and every form carries the session's CSRF token. The
console acts through the same functions as the operator and campaign APIs, within the
token's organisation, and records the signed-in operator's name on every move.
"""

from __future__ import annotations

import base64
import functools
import json
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit
from uuid import UUID

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from resources import campaign_control as control
from resources import (
    campaign_funnel,
    console_sessions,
    conversations,
    generators,
    media_files,
    settings,
    tenants,
)
from resources.errors import Conflict, DomainError, InvalidInput, NotFound
from resources.operator_templates import get_template, list_templates
from webhook_app import bodies, operator_api
from webhook_app.auth import Caller, identify_token

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
COOKIE = "waflow_console"
LOGIN_COOKIE = "waflow_console_login"
POLL_MS = 5000
MAX_FORM_BYTES = 256 * 1024

templates = Jinja2Templates(directory=HERE / "templates" / "console")
Handler = Callable[[Request, console_sessions.Session], Awaitable[Response]]


class SignedOut(Exception):
    """No live session: a page goes to the sign-in form, a live fragment answers 401."""


def _engine(request: Request):
    return request.app.state.postgres.engine


def _secure(request: Request) -> bool:
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip()
    return (forwarded or request.url.scheme) == "https"


def _s3_origin() -> str:
    parts = urlsplit(settings.get("AWS_ENDPOINT_URL") or "")
    return f" {parts.scheme}://{parts.netloc}" if parts.scheme == "http" else ""


def _headers(response: Response) -> Response:
    """Scripts and styles from the console only; images also from the media bucket."""
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
        f" img-src 'self' data: https:{_s3_origin()}; form-action 'self';"
        " frame-ancestors 'none'; base-uri 'none'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


def _render(
    request: Request, name: str, session: console_sessions.Session | None, **context: Any
) -> Response:
    context = {
        "session": session,
        "notice": request.query_params.get("notice", "")[:500],
        "poll_ms": POLL_MS,
        **context,
    }
    return _headers(templates.TemplateResponse(request, name, context))


def _back(path: str, notice: str | None = None, **params: Any) -> Response:
    query = {k: v for k, v in {**params, "notice": notice}.items() if v not in (None, "")}
    return _headers(RedirectResponse(path + (f"?{urlencode(query)}" if query else ""), 303))


async def _form(request: Request) -> dict[str, str]:
    """An HTML form's fields (URL-encoded, as the console's forms post them; anything
    else, or more than `MAX_FORM_BYTES`, is no fields at all and so fails the CSRF check)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind != "application/x-www-form-urlencoded":
        return {}
    try:
        raw = await bodies.read_capped(request, MAX_FORM_BYTES)
    except bodies.BodyRefused:
        return {}
    return dict(parse_qsl(raw.decode("utf-8", "replace"), max_num_fields=50))


async def _session(request: Request) -> console_sessions.Session:
    secret = request.cookies.get(COOKIE)
    found = (
        await run_in_threadpool(console_sessions.find, _engine(request), secret) if secret else None
    )
    if found is None:
        raise SignedOut
    return found


def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A signed-in page: the session, the CSRF check of every POST, and the answers to a
    missing session (the sign-in form, or 401 for a live fragment) and a refused form."""

    @functools.wraps(handler)
    async def endpoint(request: Request) -> Response:
        try:
            session = await _session(request)
        except SignedOut:
            if request.headers.get("x-console-poll") or request.method == "POST":
                return _headers(Response("signed out", 401, media_type="text/plain"))
            response = _back(
                "/console/login", "Please sign in." if COOKIE in request.cookies else None
            )
            response.delete_cookie(COOKIE, path="/console")
            return response
        if request.method == "POST":
            form = await _form(request)
            if not session.csrf_matches(form.get("csrf")):
                return _headers(
                    Response("missing or wrong CSRF token", 403, media_type="text/plain")
                )
            request.state.form = form
        return await handler(request, session)

    return endpoint


def _caller(session: console_sessions.Session) -> Caller:
    return Caller(session.organisation_id, session.token_id)


async def _owned(request: Request, session: console_sessions.Session, kind: Any, object_id: Any):
    """`NotFound` for a campaign or template that does not exist or is another
    organisation's, alike."""
    owner = await run_in_threadpool(tenants.organisation_of, _engine(request), kind, object_id)
    if owner is None or not _caller(session).sees(owner):
        raise NotFound(f"{kind} {object_id} does not exist")


# -- Signing in and out ----------------------------------------------------------------------


def _login_page(request: Request, status: int = 200, **context: Any) -> Response:
    """The sign-in form with a fresh CSRF token, in its field and in its cookie."""
    csrf = secrets.token_urlsafe(32)
    response = _render(request, "login.html", None, csrf=csrf, **context)
    response.status_code = status
    response.set_cookie(
        LOGIN_COOKIE,
        csrf,
        max_age=600,
        path="/console",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    return response


async def login_form(request: Request) -> Response:
    return _login_page(request)


async def login(request: Request) -> Response:
    """Open a session for a working operator token; the sign-in form is protected by a
    double-submitted CSRF token (its cookie and its field must match)."""
    form = await _form(request)
    expected = request.cookies.get(LOGIN_COOKIE, "")
    if not expected or not secrets.compare_digest(form.get("csrf", ""), expected):
        return _headers(Response("missing or wrong CSRF token", 403, media_type="text/plain"))
    token = form.get("token", "").strip()
    operator = form.get("operator", "").strip()[:200]
    who = await identify_token(request, token)
    if who is None or not operator:
        problem = "Give your name." if who else "That token is not a working operator token."
        return _login_page(request, 401 if who is None else 422, error=problem, operator=operator)
    secret = await run_in_threadpool(
        console_sessions.open_session,
        _engine(request),
        token,
        who.organisation_id,
        who.token_id,
        operator,
    )
    response = _back("/console")
    response.set_cookie(
        COOKIE,
        secret,
        max_age=int(settings.number("CONSOLE_SESSION_HOURS") * 3600),
        path="/console",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    response.delete_cookie(LOGIN_COOKIE, path="/console")
    return response


@page
async def logout(request: Request, session: console_sessions.Session) -> Response:
    await run_in_threadpool(console_sessions.close, _engine(request), request.cookies[COOKIE])
    response = _back("/console/login", "Signed out.")
    response.delete_cookie(COOKIE, path="/console")
    return response


# -- Inbox and conversations -----------------------------------------------------------------


def _filters(request: Request) -> tuple[conversations.Filters, dict[str, str]]:
    query = request.query_params
    shown = {k: query[k] for k in ("show", "q") if query.get(k)}
    show = shown.get("show", "")
    return (
        conversations.Filters(
            needs_human=True if show == "needs_human" else None,
            taken_over=True if show == "taken_over" else None,
            open_window=True if show == "open_window" else None,
            q=shown.get("q", "").strip()[:200] or None,
        ),
        shown,
    )


async def _inbox_page(request: Request, session: console_sessions.Session) -> dict[str, Any]:
    filters, shown = _filters(request)
    try:
        listed = await run_in_threadpool(
            conversations.list_conversations,
            _engine(request),
            session.organisation_id,
            filters,
            50,
            request.query_params.get("after") or None,
        )
    except InvalidInput:
        listed = {"conversations": [], "next": None}
    following = listed["next"] and "/console?" + urlencode({**shown, "after": listed["next"]})
    return {**listed, "shown": shown, "next_url": following}


@page
async def inbox(request: Request, session: console_sessions.Session) -> Response:
    listed = await _inbox_page(request, session)
    rows_url = "/console/inbox/rows?" + urlencode(listed["shown"])
    return _render(request, "inbox.html", session, rows_url=rows_url, **listed)


@page
async def inbox_rows(request: Request, session: console_sessions.Session) -> Response:
    listed = await _inbox_page(request, session)
    return _render(request, "inbox_rows.html", session, **listed)


async def _transcript(request: Request, session: console_sessions.Session) -> dict[str, Any]:
    return await run_in_threadpool(
        conversations.transcript,
        _engine(request),
        request.path_params["conversation_id"],
        session.organisation_id,
        None,  # media is linked through /console/media/{id}: a stable address to poll
        50,
        request.query_params.get("before") or None,
    )


@page
async def conversation(request: Request, session: console_sessions.Session) -> Response:
    try:
        shown = await _transcript(request, session)
    except (NotFound, InvalidInput):
        return _back("/console", "No such conversation.")
    organisation_id = shown["conversation"]["organisation_id"]
    choices = await run_in_threadpool(_sendable, _engine(request), organisation_id)
    return _render(request, "conversation.html", session, templates=choices, **shown)


def _sendable(engine, organisation_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return conversations.sendable_templates(conn, organisation_id)


@page
async def conversation_messages(request: Request, session: console_sessions.Session) -> Response:
    try:
        shown = await _transcript(request, session)
    except (NotFound, InvalidInput):
        return _headers(Response("not found", 404, media_type="text/plain"))
    return _render(request, "transcript.html", session, **shown)


_MOVES = {
    "takeover": (conversations.take_over, "Taken over: the agent is silent."),
    "handback": (conversations.hand_back, "Handed back to the agent."),
    "dismiss": (conversations.dismiss, "Flag dismissed."),
}


@page
async def conversation_action(request: Request, session: console_sessions.Session) -> Response:
    conversation_id = request.path_params["conversation_id"]
    action = request.path_params["action"]
    form = request.state.form
    body: dict[str, Any] = {"conversation_id": conversation_id, "operator": session.operator}
    path = f"/console/conversations/{conversation_id}"
    try:
        if action == "reply":
            if form.get("template_id"):
                body["template_id"] = form["template_id"]
            else:
                body["message"] = form.get("message", "")
            await run_in_threadpool(
                operator_api.send, request.app.state.webhook, body, _caller(session)
            )
            return _back(path, "Sent.")
        if action not in _MOVES:
            return _headers(Response("unknown action", 404, media_type="text/plain"))
        move, done = _MOVES[action]
        await run_in_threadpool(
            operator_api.act, request.app.state.webhook, body, _caller(session), move
        )
        return _back(path, done)
    except DomainError as error:
        return _back(path, error.summary)


@page
async def media(request: Request, session: console_sessions.Session) -> Response:
    """A fresh short-lived link to a copy of inbound media in our bucket."""
    found = await run_in_threadpool(
        media_files.location,
        _engine(request),
        request.path_params["media_id"],
        session.organisation_id,
    )
    if found is None:
        return _headers(Response("not found", 404, media_type="text/plain"))
    url = await run_in_threadpool(operator_api.presign, *found)
    return _headers(RedirectResponse(url, 302))


# -- Campaigns --------------------------------------------------------------------------------


@page
async def campaigns(request: Request, session: console_sessions.Session) -> Response:
    listed = await run_in_threadpool(
        campaign_funnel.campaign_funnels, _engine(request), session.organisation_id
    )
    return _render(
        request, "campaigns.html", session, campaigns=listed, stages=campaign_funnel.STAGES
    )


_CONTROLS = {
    "pause": (control.pause, "Campaign paused."),
    "resume": (control.resume, "Campaign resumed."),
    "cancel": (control.cancel, "Campaign cancelled."),
}


@page
async def campaign_action(request: Request, session: console_sessions.Session) -> Response:
    campaign_id: UUID = request.path_params["campaign_id"]  # the route's `uuid` convertor's
    act, done = _CONTROLS.get(request.path_params["action"], (None, ""))
    try:
        await _owned(request, session, "campaign", campaign_id)
        if act is None:
            raise NotFound("unknown action")
        await run_in_threadpool(act, _engine(request), campaign_id, {"by": session.operator})
    except (NotFound, Conflict, InvalidInput) as error:
        return _back("/console/campaigns", _reason(error))
    return _back("/console/campaigns", done)


def _reason(error: Exception) -> str:
    if isinstance(error, InvalidInput):
        return "; ".join(f"{e.get('field')}: {e.get('error')}" for e in error.errors)
    return str(error)


# -- Templates and generators ----------------------------------------------------------------


@page
async def template_list(request: Request, session: console_sessions.Session) -> Response:
    listed = await run_in_threadpool(_templates_with_versions, _engine(request), session)
    return _render(request, "templates.html", session, templates=listed)


def _templates_with_versions(engine, session: console_sessions.Session) -> list[dict[str, Any]]:
    listed = list_templates(engine, session.organisation_id)
    return [{**t, "versions": generators.list_versions(engine, t["id"])} for t in listed]


async def _template(request: Request, session: console_sessions.Session) -> dict[str, Any]:
    template_id = request.path_params["template_id"]
    await _owned(request, session, "template", template_id)
    return await run_in_threadpool(get_template, _engine(request), template_id)


async def _template_page(
    request: Request, session: console_sessions.Session, **context: Any
) -> Response:
    engine = _engine(request)
    try:
        template = await _template(request, session)
    except NotFound:
        return _back("/console/templates", "No such template.")
    versions = await run_in_threadpool(generators.list_versions, engine, template["id"])
    wanted = request.query_params.get("version") or context.pop("shown_version", None)
    active = next((v.version for v in versions if v.active), None)
    shown = None
    if versions:
        try:
            number = int(wanted) if wanted else (active or versions[0].version)
            shown = await run_in_threadpool(generators.get_version, engine, template["id"], number)
        except (ValueError, NotFound):
            shown = None
    return _render(
        request,
        "template.html",
        session,
        template=template,
        versions=versions,
        shown=shown,
        **context,
    )


@page
async def template_detail(request: Request, session: console_sessions.Session) -> Response:
    return await _template_page(request, session)


@page
async def template_activate(request: Request, session: console_sessions.Session) -> Response:
    template_id = request.path_params["template_id"]
    path = f"/console/templates/{template_id}"
    try:
        await _owned(request, session, "template", template_id)
        version = int(request.state.form.get("version", ""))
        await run_in_threadpool(generators.activate, _engine(request), template_id, version)
    except (NotFound, InvalidInput, ValueError) as error:
        return _back(path, _reason(error) if not isinstance(error, ValueError) else "Bad version.")
    return _back(path, f"Version {version} is active.", version=version)


@page
async def template_preview(request: Request, session: console_sessions.Session) -> Response:
    """Run a draft or a stored version for one sample member and show what it made."""
    form = request.state.form
    template_id = request.path_params["template_id"]
    problem, result = None, None
    try:
        await _owned(request, session, "template", template_id)
        attributes = json.loads(form.get("attributes") or "{}")
        member = {
            "name": form.get("name") or generators.SAMPLE_MEMBER["name"],
            "msisdn": form.get("msisdn") or generators.SAMPLE_MEMBER["msisdn"],
            "attributes": attributes,
        }
        draft = form.get("source") if form.get("what") == "draft" else None
        version = int(form["version"]) if draft is None and form.get("version") else None
        result = await run_in_threadpool(
            functools.partial(
                generators.preview,
                _engine(request),
                template_id,
                source=draft,
                version=version,
                member=member,
            )
        )
    except json.JSONDecodeError:
        problem = "Attributes must be a JSON object."
    except (NotFound, InvalidInput, generators.PreviewUnavailable, ValueError) as error:
        problem = _reason(error)
    return await _template_page(
        request,
        session,
        result=result,
        problem=problem,
        form=form,
        thumbnails=_thumbnails(result),
        shown_version=form.get("version"),
    )


def _thumbnails(result: generators.PreviewResult | None) -> list[str | None]:
    if result is None:
        return []
    return [
        "data:image/png;base64," + base64.b64encode(f.thumbnail_png).decode()
        if f.thumbnail_png
        else None
        for f in result.files
    ]


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in ("console.css", "console.js"):
        return Response("not found", 404, media_type="text/plain")
    return FileResponse(STATIC / name, headers={"Cache-Control": "max-age=300"})


def _route(path: str, endpoint: Callable, method: str) -> Route:
    """HTML for people: kept out of the OpenAPI document of the JSON APIs."""
    return Route(path, endpoint, methods=[method], include_in_schema=False)


CONVERSATION = "/console/conversations/{conversation_id:int}"
TEMPLATE = "/console/templates/{template_id:int}"
routes = [
    _route("/console/static/{name}", static, "GET"),
    _route("/console/login", login_form, "GET"),
    _route("/console/login", login, "POST"),
    _route("/console/logout", logout, "POST"),
    _route("/console", inbox, "GET"),
    _route("/console/inbox/rows", inbox_rows, "GET"),
    _route(CONVERSATION, conversation, "GET"),
    _route(CONVERSATION + "/messages", conversation_messages, "GET"),
    _route(CONVERSATION + "/{action}", conversation_action, "POST"),
    _route("/console/media/{media_id:int}", media, "GET"),
    _route("/console/campaigns", campaigns, "GET"),
    _route("/console/campaigns/{campaign_id:uuid}/{action}", campaign_action, "POST"),
    _route("/console/templates", template_list, "GET"),
    _route(TEMPLATE, template_detail, "GET"),
    _route(TEMPLATE + "/activate", template_activate, "POST"),
    _route(TEMPLATE + "/preview", template_preview, "POST"),
]
