"""The sender worker: CPU per message and throughput unthrottled, and how closely it keeps a
phone number's throughput limit.

The worker runs as its own process (`waflow sender --drain`), the fake Graph API in another,
so the worker's CPU time (from its rusage) counts only its own work; the same command on an
empty queue is measured first and subtracted (interpreter start-up and imports).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import sqlalchemy as sa

from pipelines.dev.local_stack import free_port, local_stack
from resources.postgres import create_engine
from resources.queue import SQSResource
from tests.bench import Figure, benchmark
from tests.bench.aws_server import aws_server
from tests.sending import enqueue, make_run, payload

MESSAGES = 20_000
LIMIT_PER_SECOND = 80
LIMITED_SECONDS = 40
WINDOW_SECONDS = 10
BACKLOG = 1000
STALL_SECONDS = 60
REPO = Path(__file__).resolve().parents[2]


def _start_fake_graph(*options: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_graph", "--port", str(port), *options], cwd=REPO
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(f"{url}/_fake/stats", timeout=1)
            return process, url
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise RuntimeError("fake Graph API did not start") from None
            time.sleep(0.2)


def _worker_env(graph_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "WHATSAPP_ACCESS_TOKEN": "test-token",
        "WHATSAPP_API_BASE_URL": graph_url,
        "SENDER_WAIT_SECONDS": "1",
    }


def _cpu_and_wait(process: subprocess.Popen) -> float:
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"sender exited with {process.returncode}")
    return usage.ru_utime + usage.ru_stime


# One client for the fake API's stats: `httpx.get` builds a client, with a TLS context, per call.
_STATS = httpx.Client(timeout=10)


def _sent(graph_url: str) -> int:
    return _STATS.get(f"{graph_url}/_fake/stats").json()["count"]


def _send_all(
    engine: sa.Engine, sqs: SQSResource, graph_url: str, count: int, rate: int
) -> tuple[float, float]:
    """Feed `count` payloads to a running worker, a bounded backlog at a time (the local SQS
    server slows down with queue length; real SQS does not), and stop it with SIGTERM once
    every row is recorded. Returns the worker's CPU seconds and the wall seconds."""
    already = _sent(graph_url)
    run = make_run(engine, count, messages_per_second=rate, first_number=already)
    bodies = [payload(run, i) for i in range(count)]
    with engine.begin() as conn:  # the phone number is shared by both runs: set its limit
        conn.execute(sa.text("UPDATE phone_numbers SET messages_per_second = :r"), {"r": rate})
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "sender"],
        cwd=REPO,
        env=_worker_env(graph_url),
        stdout=subprocess.DEVNULL,
    )
    started, fed = time.perf_counter(), 0

    def sent_so_far() -> int:
        nonlocal fed
        sent = _sent(graph_url) - already
        if fed < count and fed - sent < BACKLOG:
            enqueue(sqs, bodies[fed : fed + 100])
            fed += 100
        return sent

    _until(count, sent_so_far)
    _until(count, lambda: _recorded(engine, run.campaign_run_id))
    wall = time.perf_counter() - started
    process.send_signal(signal.SIGTERM)
    return _cpu_and_wait(process), wall


def _until(count: int, progress: Callable[[], int]) -> None:
    """Poll `progress` until it reaches `count`; fail if it stops moving."""
    last, last_change = -1, time.monotonic()
    while (done := progress()) < count:
        if done != last:
            last, last_change = done, time.monotonic()
        elif time.monotonic() - last_change > STALL_SECONDS:
            raise RuntimeError(f"no progress for {STALL_SECONDS} s: {done} of {count}")
        time.sleep(0.02)


def _recorded(engine: sa.Engine, campaign_run_id: int) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT count(*) FROM messages WHERE campaign_run_id = :r AND status = 'sent'"),
            {"r": campaign_run_id},
        ).scalar_one()


def _window_errors(times: list[float]) -> tuple[float, float]:
    """(max 10-s window rate, run average) as % over the limit."""
    times.sort()
    most, j = 0, 0
    for i, start in enumerate(times):
        while j < len(times) and times[j] < start + WINDOW_SECONDS:
            j += 1
        if times[-1] - start >= WINDOW_SECONDS:
            most = max(most, j - i)
    limit = LIMIT_PER_SECOND * WINDOW_SECONDS
    average = (len(times) - 1) / (times[-1] - times[0])
    return 100 * (most - limit) / limit, 100 * (average - LIMIT_PER_SECOND) / LIMIT_PER_SECOND


def _fresh_environment() -> None:
    for name in ("DATABASE_URL", "AWS_ENDPOINT_URL", "DAGSTER_HOME", "DAGSTER_POSTGRES_URL"):
        os.environ.pop(name, None)
    os.environ.pop("WHATSAPP_ACCESS_TOKEN", None)
    # A standard queue: the local SQS server's FIFO emulation costs seconds per batch at depth.
    os.environ.update(SQS_QUEUE_NAME="bench-messages", SQS_DLQ_NAME="bench-messages-dlq")


@benchmark("sender")
def sender() -> list[Figure]:
    _fresh_environment()
    messages = int(os.environ.get("BENCH_SENDER_MESSAGES", MESSAGES))
    graph, graph_url = _start_fake_graph()
    try:
        with aws_server(), tempfile.TemporaryDirectory() as state, local_stack(Path(state)):
            engine = create_engine(os.environ["DATABASE_URL"])
            sqs = SQSResource.from_settings()
            idle = subprocess.Popen(
                [sys.executable, "-m", "pipelines.cli", "sender", "--drain"],
                cwd=REPO,
                env=_worker_env(graph_url),
                stdout=subprocess.DEVNULL,
            )
            idle_cpu = _cpu_and_wait(idle)
            cpu, wall = _send_all(engine, sqs, graph_url, messages, 1000)
            limited = LIMIT_PER_SECOND * LIMITED_SECONDS
            _send_all(engine, sqs, graph_url, limited, LIMIT_PER_SECOND)
            times = _STATS.get(f"{graph_url}/_fake/stats?times").json()["times"][messages:]
            engine.dispose()
    finally:
        graph.terminate()
        graph.wait()
    window_error, average_error = _window_errors(times)
    return [
        Figure(
            "sender_cpu_ms_per_message",
            round(1000 * (cpu - idle_cpu) / messages, 3),
            "ms",
            "target",
            1.0,
            f"<= 1.0 ms ({messages} messages, standard queue; start-up {idle_cpu:.2f} s CPU subtracted)",
        ),
        Figure(
            "sender_messages_per_s",
            round(messages / wall, 1),
            "messages/s",
            "whatsapp_ceiling",
            1000.0,
            "unthrottled (limit 1,000/s), one worker process",
        ),
        Figure(
            "rate_limit_error_pct",
            round(window_error, 2),
            "%",
            "limit_per_s",
            LIMIT_PER_SECOND,
            "max 10-s window within +2 % of 80/s",
        ),
        Figure(
            "rate_limit_average_error_pct",
            round(average_error, 2),
            "%",
            "limit_per_s",
            LIMIT_PER_SECOND,
            "run average within -5 % of 80/s",
        ),
    ]


BREAKER_MESSAGES = 10_000
BREAKER_LANES = 8
TOKEN_EXPIRES_AFTER = 1000


@benchmark("breaker")
def breaker() -> list[Figure]:
    """Requests made after the access token expired (the first 190) while 10,000 messages
    are queued for a worker of 8 lanes at 1,000/s: the circuit breaker should hold all but
    what was already in flight, at most one batch per lane."""
    _fresh_environment()
    graph, graph_url = _start_fake_graph("--expire-token-after", str(TOKEN_EXPIRES_AFTER))
    try:
        with aws_server(), tempfile.TemporaryDirectory() as state, local_stack(Path(state)):
            engine = create_engine(os.environ["DATABASE_URL"])
            sqs = SQSResource.from_settings()
            run = make_run(engine, BREAKER_MESSAGES, messages_per_second=1000)
            for start in range(0, BREAKER_MESSAGES, 1000):
                enqueue(sqs, [payload(run, i) for i in range(start, start + 1000)])
            process = subprocess.Popen(
                [sys.executable, "-m", "pipelines.cli", "sender"],
                cwd=REPO,
                env={**_worker_env(graph_url), "SENDER_LANES": str(BREAKER_LANES)},
                stdout=subprocess.DEVNULL,
            )
            _until(BREAKER_MESSAGES, lambda: _settled(engine, sqs, run.campaign_run_id))
            process.send_signal(signal.SIGTERM)
            _cpu_and_wait(process)
            stats = _STATS.get(f"{graph_url}/_fake/stats").json()
            engine.dispose()
    finally:
        graph.terminate()
        graph.wait()
    if stats["accepted"] != TOKEN_EXPIRES_AFTER:
        raise RuntimeError(f"{stats['accepted']} sends accepted, not {TOKEN_EXPIRES_AFTER}")
    wasted = stats["count"] - TOKEN_EXPIRES_AFTER - 1
    return [
        Figure(
            "breaker_wasted_sends",
            wasted,
            "requests",
            "one_batch_per_lane",
            BREAKER_LANES * 10,
            f"<= one batch per lane ({BREAKER_LANES} lanes x 10) after the first 190,"
            f" {BREAKER_MESSAGES} queued",
        )
    ]


def _settled(engine: sa.Engine, sqs: SQSResource, campaign_run_id: int) -> int:
    """Rows sent or held, once the queue is empty (until then, the sent ones)."""
    with engine.connect() as conn:
        done = conn.execute(
            sa.text(
                "SELECT count(*) FROM messages WHERE campaign_run_id = :r"
                " AND (status = 'sent' OR held_at IS NOT NULL)"
            ),
            {"r": campaign_run_id},
        ).scalar_one()
    depth = sqs.depth()
    return done if depth.visible + depth.in_flight == 0 else min(done, BREAKER_MESSAGES - 1)
