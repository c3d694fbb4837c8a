"""Graph API errors, in one place: the error an answer carries (`GraphAPIError`), the
error a failed receipt reports (`reported`), which failed sends are worth another attempt,
decided by the error `code`, and which concern the account rather than the recipient.

WhatsApp answers its throughput and pair-rate errors (130429, 131056) and most others with
HTTP 400, so the HTTP status says little; the code does. Source of the table: Meta's
"Error codes" page of the WhatsApp Cloud API
(https://developers.facebook.com/documentation/business-messaging/whatsapp/support/error-codes).

A network failure is retryable only when the request cannot have reached WhatsApp (the
connection was never made); after the request left, WhatsApp may have accepted it, and a
retry could reach the recipient twice, so such a row stays `sending` and is surfaced.

Errors about the access token, the account, the phone number or the template are not the
recipient's: every other row in that scope would fail the same way. `BREAKING` says which
scope each opens a circuit breaker on (`resources.breakers`) and how it closes: rate limits
by a probe, the rest by an operator's reset once the cause is fixed. Rate limits that can
pass for one message are retried first and open their breaker only after the retries.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import aiohttp


class GraphAPIError(Exception):
    """An error answer of the Graph API, kept whole so callers can classify it by `code`."""

    def __init__(
        self,
        http_status: int,
        code: int | None,
        title: str,
        subcode: int | None = None,
        details: str | None = None,
    ) -> None:
        super().__init__(f"Graph API error {code} (HTTP {http_status}): {title}")
        self.http_status = http_status
        self.code = code
        self.subcode = subcode
        self.title = title
        self.details = details

    @classmethod
    async def read(cls, response: aiohttp.ClientResponse) -> GraphAPIError:
        """The error an answer with a status of 400 or more carries."""
        try:
            error = json.loads(await response.read()).get("error", {})
        except (ValueError, AttributeError):
            error = {}
        return cls(
            http_status=response.status,
            code=error.get("code"),
            subcode=error.get("error_subcode"),
            title=error.get("error_user_title") or error.get("message") or response.reason or "",
            details=(error.get("error_data") or {}).get("details"),
        )


class ClientClosed(ConnectionError):
    """The client was closed before this request could start: nothing was sent."""


@dataclass(frozen=True)
class Reported:
    """An error WhatsApp reports in a webhook, one of a change's `errors[]`: its code, its
    title (or message) and Meta's details. A failed receipt's error is read, the same way,
    by the database (`resources.message_receipts`)."""

    code: int | None
    name: str | None
    details: str | None = None

    @property
    def title(self) -> str | None:
        """The title with Meta's details, as a failed message keeps it."""
        return f"{self.name}: {self.details}" if self.name and self.details else self.name


def reported_error(error: Any) -> Reported:
    """One error of a webhook, read as leniently as the rest of it: a field of the wrong type
    is left out."""
    error = error if isinstance(error, dict) else {}
    code = error.get("code")
    data = error.get("error_data")
    return Reported(
        code if isinstance(code, int) else None,
        error.get("title") or error.get("message"),
        data.get("details") if isinstance(data, dict) else None,
    )


class ErrorClass(Enum):
    RETRYABLE = "retryable"
    PERMANENT = "permanent"
    AMBIGUOUS = "ambiguous"
    BREAKER = "breaker"


R, P = ErrorClass.RETRYABLE, ErrorClass.PERMANENT

GRAPH_ERRORS: dict[int, tuple[ErrorClass, str]] = {
    1: (R, "API unknown: possibly a temporary outage"),
    2: (R, "API service: temporary downtime or overload"),
    4: (R, "API too many calls: app rate limit"),
    80007: (R, "WhatsApp Business account rate limit"),
    130429: (R, "Rate limit hit: phone number throughput"),
    131000: (R, "Something went wrong"),
    131016: (R, "Service unavailable"),
    131048: (R, "Spam rate limit hit"),
    131057: (R, "Account in maintenance mode"),
    131056: (R, "Pair rate limit hit: too many messages to this recipient"),
    133004: (R, "Server temporarily unavailable"),
    0: (P, "AuthException: access token invalid or expired"),
    3: (P, "API method: capability or permissions issue"),
    10: (P, "Permission denied"),
    100: (P, "Invalid parameter"),
    190: (P, "Access token has expired"),
    368: (P, "Temporarily blocked for policy violations"),
    130472: (P, "Recipient is part of an experiment"),
    131008: (P, "Required parameter is missing"),
    131009: (P, "Parameter value is not valid"),
    131021: (P, "Recipient cannot be sender"),
    131026: (P, "Message undeliverable"),
    131030: (P, "Recipient phone number not in allowed list"),
    131031: (P, "Account has been locked"),
    131042: (P, "Business eligibility payment issue"),
    131045: (P, "Incorrect certificate"),
    131047: (P, "Re-engagement message: more than 24 hours since the customer last replied"),
    131049: (P, "Not delivered to maintain healthy ecosystem engagement"),
    131050: (P, "User has stopped marketing messages"),
    131051: (P, "Unsupported message type"),
    131052: (P, "Media download error"),
    131053: (P, "Media upload error"),
    132000: (P, "Template parameter count mismatch"),
    132001: (P, "Template does not exist"),
    132005: (P, "Template hydrated text too long"),
    132007: (P, "Template format character policy violated"),
    132012: (P, "Template parameter format mismatch"),
    132015: (P, "Template is paused"),
    132016: (P, "Template is disabled"),
    133010: (P, "Phone number not registered"),
    135000: (P, "Generic user error"),
}
PERMISSION_CODES = range(200, 300)  # "API permission": not granted or revoked


@dataclass(frozen=True)
class Breaks:
    """The circuit breaker an error opens: its scope, and what closes it."""

    scope: str  # app | account | phone_number | template
    closes_by: str  # probe | operator
    after_retries: bool = False


BREAKING: dict[int, Breaks] = {
    # The access token or the app's permissions: nothing can be sent until they are fixed.
    0: Breaks("app", "operator"),
    10: Breaks("app", "operator"),
    190: Breaks("app", "operator"),
    4: Breaks("app", "probe", after_retries=True),
    # The WhatsApp Business account.
    368: Breaks("account", "operator"),
    131031: Breaks("account", "operator"),
    131042: Breaks("account", "operator"),
    80007: Breaks("account", "probe", after_retries=True),
    # The sending phone number.
    131048: Breaks("phone_number", "probe"),
    131057: Breaks("phone_number", "probe"),
    130429: Breaks("phone_number", "probe", after_retries=True),
    133010: Breaks("phone_number", "operator"),
    # The template: the same name and language fail for every recipient.
    132000: Breaks("template", "operator"),
    132001: Breaks("template", "operator"),
    132015: Breaks("template", "operator"),
    132016: Breaks("template", "operator"),
}
# The recipient has stopped marketing messages: a consent fact, recorded as such.
MARKETING_STOPPED = 131050


@dataclass(frozen=True)
class Classified:
    kind: ErrorClass
    code: int | None
    title: str
    breaks: Breaks | None = None


def classify(error: Exception) -> Classified:
    """What a send's error means: a Graph API error by its code, a network error by whether
    the request can have left."""
    import aiohttp  # loaded by whoever sends; the API and the assets only read the tables

    if isinstance(error, GraphAPIError):
        return _classify_graph(error)
    if isinstance(error, ClientClosed):  # shutting down before the request started
        return Classified(R, None, "network: client closed")
    if isinstance(error, aiohttp.ClientConnectorError):  # refused, unreachable, unknown host
        return Classified(R, None, "network: ConnectError")
    if isinstance(error, aiohttp.ConnectionTimeoutError):
        return Classified(R, None, "network: ConnectTimeout")
    # The request may have left (a read timeout, a dropped connection, an unreadable answer).
    return Classified(ErrorClass.AMBIGUOUS, None, f"unclear outcome: {type(error).__name__}")


def _classify_graph(error: GraphAPIError) -> Classified:
    known = GRAPH_ERRORS.get(error.code) if error.code is not None else None
    breaks = BREAKING.get(error.code) if error.code is not None else None
    if error.code in PERMISSION_CODES:
        breaks = Breaks("app", "operator")
    title = error.title or (known[1] if known else "")
    if breaks and not breaks.after_retries:
        return Classified(ErrorClass.BREAKER, error.code, title, breaks)
    if known:
        return Classified(known[0], error.code, title, breaks)
    # An unlisted code: trust the transport's hint (429 and 5xx are temporary).
    temporary = error.http_status == 429 or error.http_status >= 500
    return Classified(R if temporary else P, error.code, error.title)


def retryable_on_request(code: int | None, title: str | None) -> bool:
    """Whether a failed row (never accepted by WhatsApp) may be queued again on an
    operator's request: its error could pass, or concerned the account, not the recipient.
    A permanent recipient error never qualifies."""
    if code is None:
        return bool(title) and (title.startswith("network:") or title == "not queued")
    if code in BREAKING or code in PERMISSION_CODES:
        return True
    known = GRAPH_ERRORS.get(code)
    return known is not None and known[0] is ErrorClass.RETRYABLE


def codes_retryable_on_request() -> list[int]:
    """Every code for which `retryable_on_request` holds."""
    return sorted(
        {code for code, (kind, _) in GRAPH_ERRORS.items() if kind is ErrorClass.RETRYABLE}
        | set(BREAKING)
        | set(PERMISSION_CODES)
    )
