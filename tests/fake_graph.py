"""A stand-in for the WhatsApp Cloud API (Graph API) on loopback.

It checks what a real client must get right — the bearer token, the URL shape, and each
message type's documented body — and answers with realistic ids, or with the error the
test asks for (a Graph error code, an HTTP status, a delay).

It also serves a WABA's message templates (`GET /{waba-id}/message_templates`, paged as the
Graph API pages an edge: `data`, `paging.cursors`, `paging.next`), and once it holds
templates it answers a send of a template it does not have with 132001, of a paused one
with 132015 and of a disabled one with 132016.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

MESSAGE_TYPES = {
    "text",
    "template",
    "image",
    "video",
    "document",
    "audio",
    "interactive",
    "reaction",
}
MEDIA_TYPES = {"image", "video", "document", "audio"}
# The WhatsApp Business Phone Number API's readable fields, and those it answers without
# `fields`.
NUMBER_FIELDS = {
    "id",
    "display_phone_number",
    "verified_name",
    "quality_rating",
    "name_status",
    "new_name_status",
    "new_display_name",
    "code_verification_status",
    "platform_type",
    "status",
    "throughput",
    "whatsapp_business_manager_messaging_limit",
    "messaging_limit_tier",
    "is_official_business_account",
    "account_mode",
    "last_onboarded_time",
    "health_status",
}
NUMBER_DEFAULTS = ["id", "display_phone_number", "verified_name", "quality_rating"]


@dataclass
class Failure:
    code: int
    title: str
    http_status: int = 400
    subcode: int | None = None
    details: str | None = None


@dataclass
class FakeGraph:
    access_token: str = "test-token"
    delay_seconds: float = 0.0
    requests: list[dict[str, Any]] = field(default_factory=list)
    request_times: list[float] = field(default_factory=list)
    # The error code each request was answered with, None for an accepted message.
    answers: list[int | None] = field(default_factory=list)
    media: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    _failures: list[Failure] = field(default_factory=list)
    _rules: list[tuple[Callable[[dict[str, Any], int], bool], Failure]] = field(
        default_factory=list
    )
    _ids: itertools.count = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    # Message templates by WABA id, as Meta lists them; the longest page it answers; the
    # pages that fail (by WABA and page number); the query of every list request.
    templates: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    template_page_size: int = 25
    template_requests: list[dict[str, str]] = field(default_factory=list)
    _template_page_failures: dict[tuple[str, int], Failure] = field(default_factory=dict)
    # Called (in a thread) with the WABA id and page number before a page is answered: what
    # happens at Meta while a client reads the pages.
    before_template_page: Callable[[str, int], None] | None = None
    # Business phone numbers by id, as `GET /{phone-number-id}` describes them; the numbers
    # whose reads fail; the `fields` of every read.
    phone_numbers: dict[str, dict[str, Any]] = field(default_factory=dict)
    number_requests: list[dict[str, str]] = field(default_factory=list)
    _number_failures: dict[str, Failure] = field(default_factory=dict)

    def fail_next(self, failure: Failure, times: int = 1) -> None:
        with self._lock:
            self._failures.extend([failure] * times)

    def fail_sequence(self, failures: list[Failure]) -> None:
        """Answer the next requests with these failures, in order, then succeed again."""
        with self._lock:
            self._failures.extend(failures)

    def fail_when(self, rule: Callable[[dict[str, Any], int], bool], failure: Failure) -> None:
        """Answer with `failure` every request for which `rule(body, earlier_requests)`
        holds, until `recover()` (e.g. an expired token after 100 sends, a paused template)."""
        with self._lock:
            self._rules.append((rule, failure))

    def accepted(self) -> list[dict[str, Any]]:
        """The requests answered with a message id."""
        with self._lock:
            return [r for r, code in zip(self.requests, self.answers, strict=True) if code is None]

    def recover(self) -> None:
        with self._lock:
            self._rules.clear()
            self._failures.clear()
            self._template_page_failures.clear()
            self._number_failures.clear()

    def set_templates(self, waba_id: str, templates: list[dict[str, Any]]) -> None:
        """The WABA's templates as Meta lists them (`name`, `language`, `status`,
        `category`, `components`, …); also what a template send is checked against."""
        with self._lock:
            self.templates[waba_id] = [dict(t) for t in templates]

    def fail_template_page(self, waba_id: str, page: int, failure: Failure) -> None:
        """Answer every request for the WABA's `page`th template page (0 = the first) with
        `failure`, until `recover()`."""
        with self._lock:
            self._template_page_failures[(waba_id, page)] = failure

    def add_phone_number(self, phone_number_id: str, **fields: Any) -> None:
        """A business phone number Meta knows: its documented fields, a standard-throughput
        number on the 250 limit unless `fields` say otherwise (`throughput={"level":
        "HIGH"}`, `whatsapp_business_manager_messaging_limit="TIER_2K"`, …)."""
        with self._lock:
            self.phone_numbers[phone_number_id] = {
                "display_phone_number": "+1 555-555-0100",
                "verified_name": "Shop",
                "quality_rating": "GREEN",
                "name_status": "APPROVED",
                "code_verification_status": "VERIFIED",
                "platform_type": "CLOUD_API",
                "status": "CONNECTED",
                "throughput": {"level": "STANDARD"},
                "whatsapp_business_manager_messaging_limit": "TIER_250",
                **fields,
            }

    def fail_phone_number(self, phone_number_id: str, failure: Failure) -> None:
        """Answer every read of the number with `failure`, until `recover()`."""
        with self._lock:
            self._number_failures[phone_number_id] = failure

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/{version}/{phone_number_id}/messages", self._messages, methods=["POST"]),
                Route(
                    "/{version}/{waba_id}/message_templates",
                    self._message_templates,
                    methods=["GET"],
                ),
                Route("/_fake/stats", self._stats),
                Route("/media-download/{media_id}", self._media_download, methods=["GET"]),
                Route("/{version}/{media_id}", self._graph_object, methods=["GET"]),
            ]
        )

    async def _stats(self, request: Request) -> JSONResponse:
        """What a benchmark in another process needs: how many sends arrived, and when."""
        with self._lock:
            stats: dict[str, Any] = {
                "count": len(self.requests),
                "accepted": self.answers.count(None),
            }
            if "times" in request.query_params:
                stats["times"] = list(self.request_times)
        return JSONResponse(stats)

    async def _messages(self, request: Request) -> JSONResponse:
        if request.headers.get("authorization") != f"Bearer {self.access_token}":
            return _error(401, 190, "Invalid OAuth access token")
        if not request.path_params["version"].startswith("v"):
            return _error(400, 100, "Unknown path components")
        try:
            body = await request.json()
        except ValueError:
            return _error(400, 100, "Invalid JSON body")
        problem = _validate(body)
        if problem:
            return _error(400, 100, f"Invalid parameter: {problem}")
        with self._lock:
            earlier = len(self.requests)
            self.requests.append(body)
            self.request_times.append(time.time())
            failure = self._failures.pop(0) if self._failures else None
            failure = failure or next((f for rule, f in self._rules if rule(body, earlier)), None)
            failure = failure or self._template_refusal(body)
            self.answers.append(failure.code if failure else None)
            number = next(self._ids)
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        if failure:
            return _error(
                failure.http_status, failure.code, failure.title, failure.subcode, failure.details
            )
        address = body.get("to") or body["recipient"]
        contact = (
            {"input": address, "wa_id": address.lstrip("+")}
            if body.get("to")
            else {"input": address, "user_id": address}
        )
        wamid = "wamid." + base64.b64encode(f"{address}:{number}".encode()).decode()
        return JSONResponse(
            {
                "messaging_product": "whatsapp",
                "contacts": [contact],
                "messages": [{"id": wamid, "message_status": "accepted"}],
            }
        )

    def _template_refusal(self, body: dict[str, Any]) -> Failure | None:
        """What Meta answers a template send when it has no such template, or has it paused
        or disabled (only once templates are held: otherwise every template is accepted)."""
        if body.get("type") != "template" or not self.templates:
            return None
        name = body["template"]["name"]
        language = body["template"]["language"]["code"]
        found = next(
            (
                t
                for listed in self.templates.values()
                for t in listed
                if t.get("name") == name and t.get("language") == language
            ),
            None,
        )
        if found is None:
            return Failure(
                132001,
                "(#132001) Template name does not exist in the translation",
                http_status=404,
                details=f"template name ({name}) does not exist in {language}",
            )
        if found.get("status") == "PAUSED":
            return Failure(
                132015,
                "(#132015) Template is Paused",
                details="Template is paused due to low quality so it cannot be sent in a"
                " template message",
            )
        if found.get("status") == "DISABLED":
            return Failure(
                132016,
                "(#132016) Template is disabled",
                details="Template has been paused too many times due to low quality and is now"
                " permanently disabled",
            )
        return None

    async def _message_templates(self, request: Request) -> JSONResponse:
        """One page of the WABA's templates: `limit` (at most `template_page_size`) from the
        `after` cursor, only the `fields` asked for."""
        if request.headers.get("authorization") != f"Bearer {self.access_token}":
            return _error(401, 190, "Invalid OAuth access token")
        version, waba_id = request.path_params["version"], request.path_params["waba_id"]
        query = dict(request.query_params)
        with self._lock:
            self.template_requests.append({"waba_id": waba_id, **query})
            listed = self.templates.get(waba_id)
            if listed is None:
                return _error(
                    400,
                    100,
                    f"Unsupported get request. Object with ID '{waba_id}' does not exist,"
                    " cannot be loaded due to missing permissions, or does not support this"
                    " operation.",
                    33,
                )
            try:
                size = min(int(query.get("limit", "25")), self.template_page_size)
                start = int(base64.b64decode(query["after"]).decode()) if "after" in query else 0
            except ValueError:
                return _error(400, 100, "Invalid parameter")
            number = start // max(size, 1)
            failure = self._template_page_failures.get((waba_id, number))
        if self.before_template_page is not None:
            await asyncio.to_thread(self.before_template_page, waba_id, number)
        with self._lock:
            listed = self.templates.get(waba_id, [])
            page = listed[start : start + size]
        if failure:
            return _error(
                failure.http_status, failure.code, failure.title, failure.subcode, failure.details
            )
        wanted = {f.strip() for f in query["fields"].split(",")} if "fields" in query else None
        data = [
            {k: v for k, v in t.items() if wanted is None or k in wanted or k == "id"} for t in page
        ]
        paging: dict[str, Any] = {
            "cursors": {"before": _cursor(start), "after": _cursor(start + len(page) - 1)}
        }
        base = f"{str(request.base_url).rstrip('/')}/{version}/{waba_id}/message_templates"
        keep = {k: v for k, v in query.items() if k not in ("after", "before")}
        if start + size < len(listed):
            paging["next"] = f"{base}?{urlencode({**keep, 'after': _cursor(start + size)})}"
        if start > 0:
            paging["previous"] = f"{base}?{urlencode({**keep, 'before': _cursor(start)})}"
        return JSONResponse({"data": data, "paging": paging})

    def add_media(self, media_id: str, content: bytes, mime_type: str) -> None:
        """Media a customer sent: its id resolves to a short-lived URL that serves `content`."""
        self.media[media_id] = (content, mime_type)

    async def _graph_object(self, request: Request) -> JSONResponse:
        """`GET /{version}/{id}`: a registered phone number's fields, else media metadata."""
        number = request.path_params["media_id"]
        if number not in self.phone_numbers and number not in self._number_failures:
            return await self._media_url(request)
        if request.headers.get("authorization") != f"Bearer {self.access_token}":
            return _error(401, 190, "Invalid OAuth access token")
        if not request.path_params["version"].startswith("v"):
            return _error(400, 100, "Unknown path components")
        asked = request.query_params.get("fields")
        with self._lock:
            self.number_requests.append({"id": number, "fields": asked or ""})
            failure = self._number_failures.get(number)
            described = dict(self.phone_numbers.get(number, {}))
        if failure:
            return _error(
                failure.http_status, failure.code, failure.title, failure.subcode, failure.details
            )
        names = [f.strip() for f in asked.split(",") if f.strip()] if asked else NUMBER_DEFAULTS
        unknown = [n for n in names if n not in NUMBER_FIELDS]
        if unknown:
            return _error(
                400,
                100,
                f"(#100) Tried accessing nonexisting field ({unknown[0]}) on node type"
                " (WhatsAppBusinessPhoneNumber)",
            )
        return JSONResponse({"id": number, **{n: described[n] for n in names if n in described}})

    async def _media_url(self, request: Request) -> JSONResponse:
        if request.headers.get("authorization") != f"Bearer {self.access_token}":
            return _error(401, 190, "Invalid OAuth access token")
        media_id = request.path_params["media_id"]
        if media_id not in self.media:
            return _error(400, 100, f"Unsupported get request. Object with ID '{media_id}'")
        content, mime_type = self.media[media_id]
        return JSONResponse(
            {
                "messaging_product": "whatsapp",
                "url": f"{str(request.base_url).rstrip('/')}/media-download/{media_id}",
                "mime_type": mime_type,
                "sha256": hashlib.sha256(content).hexdigest(),
                "file_size": len(content),
                "id": media_id,
            }
        )

    async def _media_download(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {self.access_token}":
            return _error(401, 190, "Invalid OAuth access token")
        content, mime_type = self.media.get(request.path_params["media_id"], (b"", ""))
        if not mime_type:
            return _error(404, 100, "media not found")
        return Response(content, media_type=mime_type)


def _validate(body: dict[str, Any]) -> str | None:
    if body.get("messaging_product") != "whatsapp":
        return "messaging_product must be whatsapp"
    if not str(body.get("to", "")).lstrip("+").isdigit() and not (
        "to" not in body and body.get("recipient")
    ):
        return "to must be a phone number (or recipient a business-scoped user id)"
    kind = body.get("type", "text")
    if kind not in MESSAGE_TYPES:
        return f"type {kind!r} is not supported"
    content = body.get(kind)
    if not isinstance(content, dict):
        return f"{kind} object is missing"
    if kind == "text" and not content.get("body"):
        return "text.body is required"
    if kind == "template" and not (content.get("name") and content.get("language", {}).get("code")):
        return "template.name and template.language.code are required"
    if kind in MEDIA_TYPES and not (content.get("link") or content.get("id")):
        return f"{kind}.link or {kind}.id is required"
    if kind == "audio" and "caption" in content:
        return "audio has no caption"
    opaque = body.get("biz_opaque_callback_data")
    if opaque is not None and not (isinstance(opaque, str) and len(opaque) <= 512):
        return "biz_opaque_callback_data must be a string of at most 512 characters"
    if kind == "template":
        return _validate_components(content.get("components", []))
    return None


def _validate_components(components: Any) -> str | None:
    if not isinstance(components, list):
        return "template.components must be a list"
    for component in components:
        if component.get("type") not in ("header", "body", "button"):
            return f"component type {component.get('type')!r} is not supported"
        if component["type"] == "button" and not (
            component.get("sub_type") and str(component.get("index", "")).isdigit()
        ):
            return "button components need sub_type and index"
        for parameter in component.get("parameters", []):
            kind = parameter.get("type")
            if kind == "text" and not parameter.get("text"):
                return "text parameters need text"
            if kind in MEDIA_TYPES and not (parameter.get(kind) or {}).get("link"):
                return f"{kind} parameters need {kind}.link"
            if kind not in ("text", "currency", "date_time", *MEDIA_TYPES):
                return f"parameter type {kind!r} is not supported"
    return None


def _error(
    status: int, code: int, title: str, subcode: int | None = None, details: str | None = None
) -> JSONResponse:
    error = {"message": title, "type": "OAuthException", "code": code, "fbtrace_id": "Afake"}
    if subcode is not None:
        error["error_subcode"] = subcode
    error["error_data"] = {"messaging_product": "whatsapp", "details": details or title}
    return JSONResponse({"error": error}, status_code=status)


def _cursor(offset: int) -> str:
    """An opaque paging cursor, as the Graph API's are (here: the item's offset)."""
    return base64.b64encode(str(max(offset, 0)).encode()).decode()


def main() -> None:
    """Serve a fake Graph API in its own process (benchmarks keep its CPU out of the worker's)."""
    import uvicorn

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--token", default="test-token")
    parser.add_argument(
        "--expire-token-after", type=int, metavar="N", help="answer 190 from the N+1th send on"
    )
    args = parser.parse_args()
    fake = FakeGraph(access_token=args.token)
    if args.expire_token_after is not None:
        fake.fail_when(
            lambda body, earlier: earlier >= args.expire_token_after,
            Failure(190, "Error validating access token: Session has expired", http_status=401),
        )
    uvicorn.run(fake.app(), host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
