"""A stand-in for the WhatsApp Cloud API (Graph API) on loopback.

It checks what a real client must get right — the bearer token, the URL shape, and each
message type's documented body — and answers with realistic ids, or with the error the
test asks for (a Graph error code, an HTTP status, a delay).
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


@dataclass
class Failure:
    code: int
    title: str
    http_status: int = 400
    subcode: int | None = None


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

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/{version}/{phone_number_id}/messages", self._messages, methods=["POST"]),
                Route("/_fake/stats", self._stats),
                Route("/media-download/{media_id}", self._media_download, methods=["GET"]),
                Route("/{version}/{media_id}", self._media_url, methods=["GET"]),
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
            self.answers.append(failure.code if failure else None)
            number = next(self._ids)
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        if failure:
            return _error(failure.http_status, failure.code, failure.title, failure.subcode)
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

    def add_media(self, media_id: str, content: bytes, mime_type: str) -> None:
        """Media a customer sent: its id resolves to a short-lived URL that serves `content`."""
        self.media[media_id] = (content, mime_type)

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


def _error(status: int, code: int, title: str, subcode: int | None = None) -> JSONResponse:
    error = {"message": title, "type": "OAuthException", "code": code, "fbtrace_id": "Afake"}
    if subcode is not None:
        error["error_subcode"] = subcode
    error["error_data"] = {"messaging_product": "whatsapp", "details": title}
    return JSONResponse({"error": error}, status_code=status)


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
