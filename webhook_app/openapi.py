"""`GET /api/openapi.json`: the operator and campaign APIs described from the routes
themselves (Starlette's `SchemaGenerator`), never written by hand.

Each `/api/...` handler's docstring ends with a `---` line and YAML in OpenAPI's operation
form (summary, request body with an example, responses); path parameters are added here
from the route's converters (`{campaign_id:uuid}`), so a docstring need not repeat them, and
every error answer (a status of 400 or more) is given the one error body
(`webhook_app.errors`), so a docstring need only say when it happens. The document is open
like `/health`: it describes the routes, it holds no data.
"""

from __future__ import annotations

import re
from importlib.metadata import version
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route
from starlette.schemas import SchemaGenerator

_PARAMETER = re.compile(r"{(\w+)(?::(\w+))?}")
_TYPES = {
    "uuid": {"type": "string", "format": "uuid"},
    "int": {"type": "integer"},
    None: {"type": "string"},
}

BASE = {
    "openapi": "3.0.3",
    "info": {
        "title": "waflow operator and campaign API",
        "version": version("waflow"),
        "description": "Bearer token: the platform's ADMIN_API_TOKEN or an organisation's"
        " token (which sees only its own organisation). JSON unless a CSV body is said.",
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error", "code", "detail"],
                "properties": {
                    "error": {
                        "type": "string",
                        "description": "short text (on the conversation action routes, the"
                        " message itself)",
                    },
                    "code": {
                        "description": "stable: bad_request, invalid_input, too_large,"
                        " not_found, not_ready, conflict, refused, unavailable; Meta's"
                        " number for a Graph API error (with its title)",
                    },
                    "detail": {"type": "string", "description": "the message"},
                    "errors": {
                        "type": "array",
                        "items": {"type": "object"},
                        "description": "invalid input: every bad field or CSV line",
                    },
                },
            }
        },
    },
    "security": [{"bearer": []}],
}
ERROR_BODY = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


def document(routes: list[BaseRoute]) -> dict[str, Any]:
    """The OpenAPI document of the `/api/` routes."""
    api = [r for r in routes if isinstance(r, Route) and r.path.startswith("/api/")]
    schema = SchemaGenerator({**BASE, "paths": {}}).get_schema(api)
    for route in api:
        operations = schema["paths"].get(_PARAMETER.sub(r"{\1}", route.path), {})
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": _TYPES.get(kind, _TYPES[None])}
            for name, kind in _PARAMETER.findall(route.path)
        ]
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                if int(status) >= 400 and isinstance(response, dict):
                    response.setdefault("content", ERROR_BODY)
            given = {p["name"] for p in operation.get("parameters", []) if p.get("in") == "path"}
            missing = [p for p in parameters if p["name"] not in given]
            if missing:
                operation["parameters"] = [*missing, *operation.get("parameters", [])]
    return schema


async def openapi(request: Request) -> JSONResponse:
    return JSONResponse(document(request.app.routes))


routes = [Route("/api/openapi.json", openapi, methods=["GET"], include_in_schema=False)]
