import pytest
from starlette.testclient import TestClient

from pipelines.dev.local_stack import EmbeddedPostgres
from resources.settings import MissingSetting
from webhook_app.app import REQUIRED_IN_PRODUCTION, app
from webhook_app.workers import app_with_workers


def test_health_checks_the_database(database_url):
    with TestClient(app_with_workers()) as client:
        response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["database"] == "ok"


def test_health_answers_503_while_the_database_is_down_and_recovers(tmp_path, monkeypatch):
    server = EmbeddedPostgres(tmp_path / "pg")
    server.start()
    monkeypatch.setenv("DATABASE_URL", server.url("postgres"))
    try:
        with TestClient(app_with_workers()) as client:
            assert client.get("/health").status_code == 200
            server.stop()
            down = client.get("/health")
            assert down.status_code == 503
            assert down.json()["status"] == "unavailable"
            server.start()
            assert client.get("/health").status_code == 200
    finally:
        server.stop()


def test_production_refuses_to_start_without_its_secrets(database_url, monkeypatch):
    monkeypatch.setenv("APP_ENV", "production")
    for name in REQUIRED_IN_PRODUCTION:
        monkeypatch.setenv(name, database_url if name == "DATABASE_URL" else "set")
    monkeypatch.delenv("WHATSAPP_APP_SECRET")
    with pytest.raises(MissingSetting, match="WHATSAPP_APP_SECRET"), TestClient(app):
        pass


def test_health_is_degraded_while_no_worker_process_is_alive(database_url):
    with TestClient(app) as client:
        response = client.get("/health")
    assert response.status_code == 503
    assert response.json()["status"] == "degraded"
    assert response.json()["workers"] == {}


def test_admin_routes_need_the_bearer_token(monkeypatch):
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from webhook_app.auth import requires_admin

    @requires_admin
    async def secret(request):
        return PlainTextResponse("ok")

    monkeypatch.setenv("ADMIN_API_TOKEN", "t0ken")
    client = TestClient(Starlette(routes=[Route("/x", secret)]))
    assert client.get("/x").status_code == 401
    assert client.get("/x", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/x", headers={"Authorization": "Bearer t0ken"}).text == "ok"
