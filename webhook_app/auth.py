"""Who may call the operator API: the platform admin or one organisation's token.

`Authorization: Bearer <token>` with `ADMIN_API_TOKEN` is the platform admin, who may act on
every organisation; with an organisation's token (`resources.tenants`) the caller acts for
that organisation only. `requires_token` lets both in and leaves the caller in
`request.state.caller` for the route to scope what it touches; `requires_admin`
guards the platform's own routes (creating organisations and tokens, the shared queue, the
circuit breakers), which an organisation's token is refused with 403. No token, or one that
is neither, is 401.
"""

from __future__ import annotations

import functools
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from resources import settings, tenants

Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Caller:
    """The platform admin (`organisation_id` None) or the organisation a token acts for."""

    organisation_id: str | None
    token_id: int | None = None

    def sees(self, organisation_id: object) -> bool:
        """Whether the caller may see or change what belongs to this organisation."""
        return self.organisation_id is None or self.organisation_id == str(organisation_id)


PLATFORM_ADMIN = Caller(None)


def caller(request: Request) -> Caller:
    return request.state.caller


async def identify_token(request: Request, token: str) -> Caller | None:
    """Who `token` is: the platform admin, a live organisation token's owner, or None."""
    if not token:
        return None
    if hmac.compare_digest(token.encode(), settings.require("ADMIN_API_TOKEN").encode()):
        return PLATFORM_ADMIN
    if not token.startswith(tenants.TOKEN_PREFIX):
        return None
    owner = await run_in_threadpool(tenants.token_owner, request.app.state.postgres.engine, token)
    return Caller(owner.organisation_id, owner.token_id) if owner else None


async def _identify(request: Request) -> Caller | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return await identify_token(request, token.strip())


def _unauthorized() -> Response:
    return JSONResponse(
        {
            "error": "unauthorized",
            "detail": "send Authorization: Bearer <ADMIN_API_TOKEN or an organisation's token>",
        },
        status_code=401,
        headers={"WWW-Authenticate": "Bearer"},
    )


def requires_token(endpoint: Endpoint) -> Endpoint:
    """401 unless the platform admin's or a live organisation token is sent."""

    @functools.wraps(endpoint)
    async def guarded(request: Request) -> Response:
        found = await _identify(request)
        if found is None:
            return _unauthorized()
        request.state.caller = found
        return await endpoint(request)

    return guarded


def requires_admin(endpoint: Endpoint) -> Endpoint:
    """401 without a valid token, 403 with an organisation's: only `ADMIN_API_TOKEN` passes."""

    @functools.wraps(endpoint)
    async def guarded(request: Request) -> Response:
        found = await _identify(request)
        if found is None:
            return _unauthorized()
        if found.organisation_id is not None:
            return JSONResponse(
                {
                    "error": "forbidden",
                    "detail": "this route is the platform admin's (ADMIN_API_TOKEN);"
                    " an organisation's token cannot use it",
                },
                status_code=403,
            )
        request.state.caller = found
        return await endpoint(request)

    return guarded
