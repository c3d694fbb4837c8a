"""`/api/openapi.json` is generated from the routes: every `/api/...` route is in it with a
summary, so a route added without its docstring's OpenAPI part is caught here."""

from starlette.routing import Route
from starlette.testclient import TestClient

from webhook_app import app as app_module


def _api_routes() -> set[tuple[str, str]]:
    found = set()
    for route in app_module.app.routes:
        if isinstance(route, Route) and route.path.startswith("/api/") and route.include_in_schema:
            path = route.path
            for name, converter in ((":uuid}", "}"), (":int}", "}")):
                path = path.replace(name, converter)
            found |= {(method.lower(), path) for method in route.methods - {"HEAD"}}
    return found


def test_every_api_route_is_documented_with_a_summary_and_examples():
    client = TestClient(app_module.app)  # no lifespan: the document needs no database
    answer = client.get("/api/openapi.json")
    assert answer.status_code == 200
    document = answer.json()
    assert document["openapi"].startswith("3.")
    operations = {
        (method, path): operation
        for path, methods in document["paths"].items()
        for method, operation in methods.items()
    }
    missing = _api_routes() - set(operations)
    assert missing == set(), "give these handlers a docstring with `---` and OpenAPI YAML"
    assert set(operations) == _api_routes()
    for key, operation in operations.items():
        assert operation.get("summary"), key
        assert operation.get("responses"), key
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                assert response["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/Error"
                }, (key, status)
        for content in operation.get("requestBody", {}).get("content", {}).values():
            assert "example" in content, key
        declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
        assert declared == set(_names(key[1])), key


def test_the_campaign_routes_show_their_request_bodies():
    document = TestClient(app_module.app).get("/api/openapi.json").json()
    campaign = document["paths"]["/api/campaigns"]["post"]["requestBody"]["content"]
    assert {"organisation_id", "name", "message_type"} <= set(
        campaign["application/json"]["example"]
    )
    audience = document["paths"]["/api/campaigns/{campaign_id}/audience"]["post"]["requestBody"]
    assert audience["content"]["text/csv"]["example"].startswith("phone,name")


def _names(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]
