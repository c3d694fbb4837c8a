"""Bearer-token protection of the operator API (`ADMIN_API_TOKEN`)."""

from __future__ import annotations

import functools
import hmac
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from resources import settings

Endpoint = Callable[[Request], Awaitable[Response]]


def requires_admin(endpoint: Endpoint) -> Endpoint:
    """Answer 401 unless the request carries `Authorization: Bearer <ADMIN_API_TOKEN>`."""

    @functools.wraps(endpoint)
    async def guarded(request: Request) -> Response:
        expected = f"Bearer {settings.require('ADMIN_API_TOKEN')}".encode()
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return JSONResponse(
                {"error": "unauthorized", "detail": "send Authorization: Bearer <ADMIN_API_TOKEN>"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
        return await endpoint(request)

    return guarded
