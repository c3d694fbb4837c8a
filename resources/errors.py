"""Domain errors: a request that cannot be done as asked (a row that does not exist, a
status that refuses the move, bad input), as opposed to a fault.

The operations raise them and know nothing of HTTP; the web app maps each class to its
status in one place (`webhook_app/errors.py`), and the CLI prints them. Each carries a
stable `code` for programs and a message for people. A message names rows by id and holds
no personal data (no phone number, no message text), so that it may be logged: where the
caller's own input is quoted back (a refused phone number in a CSV line), it travels in the
error's fields (`InvalidInput.errors`), not in its message. `summary` is the short text
the APIs answer in `error` (the message itself on the four conversation action routes,
which have always answered so).
"""

from __future__ import annotations

from typing import Any, ClassVar


class DomainError(Exception):
    code: ClassVar[str] = "error"
    summary: str = "error"

    def __init__(self, message: str, *, summary: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if summary is not None:
            self.summary = summary

    def fields(self) -> dict[str, Any]:
        """What the error adds to its answer beside `error`, `code` and `detail`."""
        return {}


class BadRequest(DomainError, ValueError):
    """A request the operation cannot read (the conversation routes' 400)."""

    code = "bad_request"
    summary = "bad request"


class InvalidInput(DomainError, ValueError):
    """Bad input, every problem listed (`{"field" or "line", "error"}`); nothing was changed."""

    code = "invalid_input"
    summary = "invalid input"

    def __init__(self, errors: list[dict[str, Any]], *, summary: str | None = None) -> None:
        super().__init__(
            "; ".join(f"{e.get('field', e.get('line'))}: {e['error']}" for e in errors),
            summary=summary,
        )
        self.errors = errors

    def fields(self) -> dict[str, Any]:
        return {"errors": self.errors}


class TooLarge(InvalidInput):
    """A body over its size limit."""

    code = "too_large"


class NotFound(DomainError, LookupError):
    """No such row, or one of another organisation (which is answered the same)."""

    code = "not_found"
    summary = "not found"


class Conflict(DomainError, RuntimeError):
    """The row's state refuses the request (a status move, a number another organisation holds)."""

    code = "conflict"
    summary = "conflict"


class Refused(DomainError, RuntimeError):
    """WhatsApp (the Graph API) refused what the request asked it to do."""

    code = "refused"
    summary = "refused"


class Unavailable(DomainError, RuntimeError):
    """It cannot be done now (no sandbox on this host, no free slot, the queue unreachable);
    the same request may pass later."""

    code = "unavailable"
    summary = "unavailable"
