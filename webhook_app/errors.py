"""Domain errors as HTTP answers, for every route of the app: the one place that says which
status each error class gets, registered as the app's `exception_handlers`.

Every error answer has one body:

    {"error": "not found", "code": "not_found", "detail": "campaign … does not exist"}

`code` is stable, for programs (`resources.errors`); `detail` is the message; `error` is the
short text the API has always answered (the message itself on the conversation action
routes: takeover, handback, dismiss, operator-message). An error may add fields: `errors`
(every bad field or CSV line) for invalid input, the readiness report for a campaign that is
not ready. A request body the app refuses (`webhook_app.bodies`) is invalid input, 413 when
over its cap.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from resources.errors import (
    BadRequest,
    Conflict,
    DomainError,
    InvalidInput,
    NotFound,
    Refused,
    TooLarge,
    Unavailable,
)
from webhook_app.bodies import BodyRefused, BodyTooLarge

STATUS: dict[type[DomainError], int] = {
    BadRequest: 400,
    NotFound: 404,
    Conflict: 409,
    TooLarge: 413,
    InvalidInput: 422,
    Refused: 502,
    Unavailable: 503,
}


def body(error: DomainError) -> dict[str, Any]:
    return {"error": error.summary, "code": error.code, "detail": error.message, **error.fields()}


def answer(error: DomainError) -> JSONResponse:
    status = next(STATUS[kind] for kind in type(error).__mro__ if kind in STATUS)
    return JSONResponse(body(error), status)


async def _domain(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, DomainError)
    return answer(error)


async def _body_refused(request: Request, error: Exception) -> JSONResponse:
    kind = TooLarge if isinstance(error, BodyTooLarge) else InvalidInput
    return answer(kind([{"field": "body", "error": str(error)}]))


Handler = Callable[[Request, Exception], Coroutine[Any, Any, JSONResponse]]
handlers: dict[Any, Handler] = {
    **dict.fromkeys(STATUS, _domain),
    BodyRefused: _body_refused,
}
