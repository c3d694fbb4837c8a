"""Errors described for a log line, without the personal data they may carry.

A database error's text holds its statement, its parameters (hidden by our engines,
`hide_parameters`) and a DETAIL line with the row's values (a phone number, a message);
other errors quote whatever input they failed on (`'+1…' is not a phone number`). A log
line gets the error's type and, for a database error, the server's primary message, which
names the constraint or the problem and not the row (for a Graph API error, its code). The full text stays where it is
needed (the inbox's `error` column, the API's answer to the operator who sent it).
"""

from __future__ import annotations

import sqlalchemy as sa

from resources.graph_errors import GraphAPIError


def describe(error: BaseException) -> str:
    """One line about `error`, fit for a log."""
    if isinstance(error, GraphAPIError):
        return f"Graph API error {error.code} (HTTP {error.http_status})"
    cause = error.orig if isinstance(error, sa.exc.DBAPIError) and error.orig else None
    if cause is None:
        return type(error).__name__
    diag = getattr(cause, "diag", None)
    primary = getattr(diag, "message_primary", None) or str(cause).strip()
    return f"{type(cause).__name__}: {primary.splitlines()[0] if primary else ''}".rstrip(": ")
