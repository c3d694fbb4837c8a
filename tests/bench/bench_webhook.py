"""The webhook app's request path and reply latency.

`webhook_events_per_s` / `webhook_p99_ms`: 20,000 signed status webhooks at concurrency 32
over loopback to the app under uvicorn, against the same-run baseline of a bare Starlette
endpoint under uvicorn that answers 200 (timed before and after the app, their mean). The
app runs as deployed (`make dev`, README "Production"): uvicorn in its own process and
`waflow webhook-worker` beside it, processing the inbox concurrently with the load. Every
posted event must be in the inbox afterwards, and the workers must have processed them all
before the reply figure is taken.
`webhook_reply_p50_ms`: an inbound text until the agent's reply request reaches the fake
Graph API (offline responder, 0 s buffer), through the app and the worker process.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import sqlalchemy as sa
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from pipelines.dev.local_stack import free_port, local_stack
from resources import campaigns
from resources.postgres import create_engine
from tests import payloads
from tests.bench import Figure, benchmark
from tests.fake_graph import FakeGraph
from tests.servers import serve

EVENTS = 20_000
CONCURRENCY = 32
REPLIES = 40
SECRET = "bench-app-secret"


async def _ok(request) -> JSONResponse:
    await request.body()
    return JSONResponse({"status": "received"})


bare_app = Starlette(routes=[Route("/webhook", _ok, methods=["POST"])])


def _uvicorn(app: str, port: int, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "uvicorn", app, "--port", str(port), "--log-level", "warning"],
        env={**os.environ, **env},
    )


def _webhook_worker(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "webhook-worker"], env={**os.environ, **env}
    )


def _wait_ready(url: str, path: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + path, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not start")


async def _post_all(port: int, bodies: list[bytes], latencies: list[float]) -> list[int]:
    """One keep-alive HTTP/1.1 connection posting `bodies` in turn; the non-200 statuses.

    A minimal client on asyncio streams, so the load generator's own CPU cost (which
    shares the machine with the servers) stays small next to the server's.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    refused = []
    try:
        for request in bodies:
            started = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - started)
            status = int(head.split(b" ", 2)[1])
            if status != 200:
                refused.append(status)
    finally:
        writer.close()
    return refused


def _requests(port: int, prefix: str) -> list[bytes]:
    requests = []
    for i in range(EVENTS):
        # As WhatsApp sends them for our messages: with our message id as the callback data.
        status = payloads.status(f"wamid.{prefix}{i}", "delivered", callback=str(i + 1))
        event = payloads.statuses(status)
        body, headers = payloads.signed(event, SECRET)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        requests.append(
            f"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{head}"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
    return requests


async def _load(port: int, requests: list[bytes]) -> tuple[float, list[float]]:
    latencies: list[float] = []
    shares = [requests[i::CONCURRENCY] for i in range(CONCURRENCY)]
    started = time.perf_counter()
    refused = await asyncio.gather(*(_post_all(port, share, latencies) for share in shares))
    elapsed = time.perf_counter() - started
    errors = [status for statuses in refused for status in statuses]
    if errors:
        raise RuntimeError(f"{len(errors)} webhooks refused, e.g. HTTP {errors[0]}")
    return len(requests) / elapsed, latencies


def _p99(latencies: list[float]) -> float:
    return statistics.quantiles(latencies, n=100)[98] * 1000


def _replies(url: str, graph: FakeGraph) -> list[float]:
    timings = []
    with httpx.Client(base_url=url, timeout=10) as client:
        for i in range(REPLIES):
            wa_id = f"1202555{i:04d}"
            body, headers = payloads.signed(
                payloads.inbound(payloads.text(f"question {i}", wa_id=wa_id), wa_id=wa_id), SECRET
            )
            seen = len(graph.requests)
            started = time.perf_counter()
            assert client.post("/webhook", content=body, headers=headers).status_code == 200
            deadline = started + 10
            while len(graph.requests) == seen:
                if time.perf_counter() > deadline:
                    raise RuntimeError("no reply reached the fake Graph API within 10 s")
                time.sleep(0.001)
            timings.append((time.perf_counter() - started) * 1000)
    return timings


@benchmark("webhook")
def webhook() -> list[Figure]:
    for name in ("DATABASE_URL", "AWS_ENDPOINT_URL", "DAGSTER_HOME", "DAGSTER_POSTGRES_URL"):
        os.environ.pop(name, None)
    graph = FakeGraph()
    with (
        tempfile.TemporaryDirectory() as state,
        local_stack(Path(state)) as stack,
        serve(graph.app()) as graph_url,
    ):
        engine = create_engine(stack.env["DATABASE_URL"])
        with engine.begin() as conn:
            org = campaigns.create_organisation(conn, "Bench")
            campaigns.add_phone_number(conn, org, payloads.PHONE_NUMBER_ID)
        bare_port, app_port = free_port(), free_port()
        bare = _uvicorn("tests.bench.bench_webhook:bare_app", bare_port, {})
        env = {
            "WHATSAPP_APP_SECRET": SECRET,
            "WHATSAPP_ACCESS_TOKEN": graph.access_token,
            "WHATSAPP_API_BASE_URL": graph_url,
            "AGENT_BUFFER_SECONDS": "0",
            "GOOGLE_API_KEY": "",
        }
        app = _uvicorn("webhook_app.app:app", app_port, env)
        worker = _webhook_worker(env)
        try:
            bare_url, app_url = f"http://127.0.0.1:{bare_port}", f"http://127.0.0.1:{app_port}"
            _wait_ready(bare_url, "/")
            _wait_ready(app_url, "/health")
            before, base_latencies = asyncio.run(_load(bare_port, _requests(bare_port, "B")))
            rate, latencies = asyncio.run(_load(app_port, _requests(app_port, "A")))
            with engine.connect() as conn:
                stored = conn.execute(sa.text("SELECT count(*) FROM webhook_inbox")).scalar_one()
            if stored != EVENTS:
                raise RuntimeError(f"{EVENTS} events acknowledged but {stored} stored")
            while json.loads(httpx.get(app_url + "/health").text)["inbox"]["backlog"]:
                time.sleep(0.5)
            # Again once the worker is idle: the mean cancels a drift of the machine's speed.
            after, _ = asyncio.run(_load(bare_port, _requests(bare_port, "C")))
            base_rate = (before + after) / 2
            print(f"bare Starlette {before:.0f} and {after:.0f} events/s; the app {rate:.0f}")
            replies = _replies(app_url, graph)
        finally:
            for process in (bare, app, worker):
                process.terminate()
                process.wait(timeout=30)
            engine.dispose()
    return [
        Figure(
            "webhook_events_per_s",
            round(rate),
            "events/s",
            "bare_starlette_per_s",
            round(base_rate),
            ">= 0.4x baseline",
        ),
        Figure(
            "webhook_p99_ms",
            round(_p99(latencies), 1),
            "ms",
            "bare_starlette_p99_ms",
            round(_p99(base_latencies), 1),
            "< 50 ms",
        ),
        Figure(
            "webhook_reply_p50_ms",
            round(statistics.median(replies), 1),
            "ms",
            target="< 250 ms",
        ),
    ]
