"""A media host for the media archive's tests: files, a 404, a hang, a flaky URL and a body
far over the size cap (generated lazily, never held in memory)."""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40 + b"\xff\xd9"
PDF = b"%PDF-1.4\n" + b"x" * 5000 + b"\n%%EOF\n"
HANG_SECONDS = 3
HUGE_BYTES = 1 << 30


def media_app() -> Starlette:
    calls: dict[str, int] = {}

    async def photo(request: Request) -> Response:
        return Response(JPEG, media_type="image/jpeg")

    async def document(request: Request) -> Response:
        return Response(PDF, media_type="application/pdf")

    async def page(request: Request) -> Response:
        return Response(b"<html>login</html>", media_type="text/html")

    async def missing(request: Request) -> Response:
        return PlainTextResponse("not found", status_code=404)

    async def hang(request: Request) -> Response:
        await asyncio.sleep(HANG_SECONDS)
        return Response(JPEG, media_type="image/jpeg")

    async def flaky(request: Request) -> Response:
        calls["flaky"] = calls.get("flaky", 0) + 1
        if calls["flaky"] <= 2:
            return PlainTextResponse("try later", status_code=503)
        return Response(JPEG, media_type="image/jpeg")

    async def huge(request: Request) -> Response:
        async def chunks():
            chunk = b"\0" * (1 << 20)
            for _ in range(HUGE_BYTES // len(chunk)):
                yield chunk

        return StreamingResponse(chunks(), media_type="video/mp4")

    return Starlette(
        routes=[
            Route("/photo.jpg", photo),
            Route("/menu.pdf", document),
            Route("/page", page),
            Route("/missing.jpg", missing),
            Route("/hang.jpg", hang),
            Route("/flaky.jpg", flaky),
            Route("/huge.mp4", huge),
        ]
    )
