"""Running the webhook app in a test: a fresh app object per test with its background
workers in the same process, a fake Graph API on loopback, signed posts, and waiting for
the workers."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from langchain_core.language_models import BaseChatModel
from starlette.testclient import TestClient

from resources import campaigns
from resources.whatsapp import WhatsAppClient
from tests.fake_graph import FakeGraph
from tests.payloads import PHONE_NUMBER_ID, signed
from tests.servers import serve
from webhook_app.workers import app_with_workers

ADMIN = {"Authorization": "Bearer dev-admin-token"}


def add_organisation(engine: sa.Engine) -> Any:
    with engine.begin() as conn:
        org = campaigns.create_organisation(conn, "Shop")
        campaigns.add_phone_number(conn, org, PHONE_NUMBER_ID)
    return org


@contextmanager
def fake_graph() -> Iterator[tuple[FakeGraph, str]]:
    graph = FakeGraph()
    with serve(graph.app()) as url:
        yield graph, url


@contextmanager
def webhook_client(
    graph_url: str | None = None,
    model: BaseChatModel | None = None,
    access_token: str | None = "test-token",
) -> Iterator[TestClient]:
    whatsapp = None
    if graph_url is not None:
        whatsapp = WhatsAppClient(access_token, PHONE_NUMBER_ID, graph_url, "v25.0", 5.0, 8)
    with TestClient(app_with_workers(model, whatsapp)) as client:
        yield client


def post(client: TestClient, payload: Any, **kw: Any):
    body, headers = signed(payload, **kw)
    return client.post("/webhook", content=body, headers=headers)


def worker_stats(client: TestClient, **expected: int) -> dict:
    """`/stats` once the worker processes' counters (their heartbeat rows) show `expected`."""

    def read() -> dict | None:
        stats = client.get("/stats").json()
        return stats if all(stats["workers"][k] == v for k, v in expected.items()) else None

    return wait_until(read)


def wait_until(check: Callable[[], Any], timeout: float = 60.0) -> Any:
    """Poll `check` until it returns something truthy; fail with what it last returned."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {result!r})")
        time.sleep(0.05)


def scalar(engine: sa.Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def rows(engine: sa.Engine, sql: str, **params: Any) -> list[sa.Row]:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).all()


def inbox_drained(engine: sa.Engine) -> bool:
    return scalar(engine, "SELECT count(*) FROM webhook_inbox WHERE processed_at IS NULL") == 0
