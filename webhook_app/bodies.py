"""Request bodies, read within limits: the webhook, the operator API and the campaign API
read theirs here.

A body is capped while it streams in (a client cannot make the app hold more than the cap
by sending it), and JSON is parsed with limits of its own: too deep, or a number no column
of ours could hold, is refused by name rather than failing further in as a 500.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.requests import Request

MAX_JSON_BYTES = 1024 * 1024
MAX_CSV_BYTES = 20 * 1024 * 1024
MAX_JSON_DEPTH = 32
# The largest whole number a JSON body may carry: PostgreSQL's bigint.
MAX_INTEGER = 2**63 - 1


class BodyRefused(ValueError):
    """The body cannot be used; the message says why, in words fit for the answer."""


class BodyTooLarge(BodyRefused):
    """The body passed its cap (413)."""


async def read_capped(request: Request, limit: int) -> bytes:
    """The body, read chunk by chunk; `BodyTooLarge` as soon as it passes `limit` (or as
    soon as its Content-Length says it will)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body larger than {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(raw: bytes) -> Any:
    """The JSON value of a body; `BodyRefused` naming what is wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BodyRefused(f"body is not valid UTF-8 (byte {error.start})") from None
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as error:
        raise BodyRefused(f"body is not JSON: {error}") from None
    except RecursionError:
        raise BodyRefused(f"body is nested deeper than {MAX_JSON_DEPTH} levels") from None
    # Fewer brackets than the limit cannot nest past it: most bodies skip the walk.
    brackets = raw.count(b"{") + raw.count(b"[")
    if brackets > MAX_JSON_DEPTH and _depth(value) > MAX_JSON_DEPTH:
        raise BodyRefused(f"body is nested deeper than {MAX_JSON_DEPTH} levels")
    return value


async def json_object(
    request: Request, limit: int = MAX_JSON_BYTES, optional: bool = False
) -> dict[str, Any]:
    """A JSON object body (`{}` for an empty one when `optional`)."""
    raw = await read_capped(request, limit)
    if optional and not raw.strip():
        return {}
    value = parse_json(raw)
    if not isinstance(value, dict):
        raise BodyRefused("the body must be a JSON object")
    if b"\\u0000" in raw:
        raise BodyRefused("body has a NUL character (\\u0000), which cannot be stored")
    return value


async def csv_text(request: Request, limit: int = MAX_CSV_BYTES) -> str:
    """A CSV body as text (its rows are checked by `resources.contact_csv`)."""
    raw = await read_capped(request, limit)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise BodyRefused(f"the CSV is not UTF-8 text (byte {error.start})") from None


def _integer(text: str) -> int:
    # Checked on the digits first: Python refuses to convert more than 4,300 of them.
    if len(text.lstrip("-")) > 19 or abs(int(text)) > MAX_INTEGER:
        raise BodyRefused(f"body has a whole number beyond ±{MAX_INTEGER}")
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BodyRefused("body has a number beyond the range of a double")
    return value


def _no_constant(name: str) -> None:
    raise BodyRefused(f"body is not JSON: {name} is not a JSON value")


# Built once: `json.loads` with hooks would build a decoder per body.
_DECODER = json.JSONDecoder(parse_int=_integer, parse_float=_float, parse_constant=_no_constant)


def _depth(value: Any) -> int:
    """How deep the containers nest (a scalar: 0), level by level, without recursion; it
    stops counting past `MAX_JSON_DEPTH`."""
    depth, level = 0, [value] if isinstance(value, dict | list) else []
    while level and depth <= MAX_JSON_DEPTH:
        depth += 1
        below = []
        for item in level:
            for child in item.values() if isinstance(item, dict) else item:
                if isinstance(child, dict | list):
                    below.append(child)
        level = below
    return depth
