"""The local S3/SQS server as the stack runs it: usable at real sizes, SQS's deduplication,
a port in use refused in one line, and no server left behind by a stack that has exited."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import psutil
import pytest

from pipelines.dev.local_aws import InlineWSGI, LocalAWS
from pipelines.dev.local_stack import StackError, free_port, local_stack
from resources.queue import SQSResource

_OUTSIDE = ("DATABASE_URL", "DAGSTER_POSTGRES_URL", "AWS_ENDPOINT_URL", "DAGSTER_HOME", "APP_ENV")


def _fifo_queue() -> SQSResource:
    suffix = uuid.uuid4().hex[:10]
    queue = SQSResource.from_settings().model_copy(
        update={"queue_name": f"big-{suffix}.fifo", "dlq_name": f"big-dlq-{suffix}.fifo"}
    )
    queue.ensure_queues()
    return queue


def _receive_all(sqs: SQSResource, count: int, deadline: float) -> list[str]:
    bodies: list[str] = []
    while len(bodies) < count and time.monotonic() < deadline:
        messages = sqs.receive(wait_seconds=1)
        if messages:
            bodies.extend(m.body for m in messages)
            sqs.client.delete_message_batch(
                QueueUrl=sqs.url(),
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m.receipt} for i, m in enumerate(messages)
                ],
            )
    return bodies


def test_the_stacks_sqs_serves_a_fifo_queue_of_thousands_and_stops_with_the_stack(
    tmp_path, monkeypatch
):
    for name in _OUTSIDE:  # a stack of its own, not the session's
        monkeypatch.delenv(name, raising=False)
    count = 3000
    with local_stack(tmp_path / "state") as stack:
        server = psutil.Process(stack.aws.pid)
        assert "pipelines.dev.local_aws" in server.cmdline()
        assert server.pid != os.getpid()
        sqs = _fifo_queue()
        for start in range(0, count, 10):  # as dispatch queues: one group per recipient
            sent = sqs.send_batch(
                [
                    sqs.entry(i, f"m{i}", f"+1202555{i:04d}", f"run-{i}")
                    for i in range(start, start + 10)
                ]
            )
            assert len(sent["Successful"]) == 10
        assert sqs.depth().visible == count

        # Generous: minutes, where it now takes seconds (moto alone took minutes to enqueue).
        received = _receive_all(sqs, count, time.monotonic() + 180)

        assert sorted(received) == sorted(f"m{i}" for i in range(count))
        depth = sqs.depth()
        assert (depth.visible, depth.in_flight, depth.dead_letter) == (0, 0, 0)
    assert not server.is_running()


def test_a_deduplication_id_is_remembered_after_its_message_is_deleted(sqs):
    first = [sqs.entry(i, f"m{i}", f"+120255500{i:02d}", f"d{i}") for i in range(10)]
    sqs.send_batch(first)
    sqs.send_batch(first)  # a retried batch: dropped, as SQS drops it
    assert sorted(_receive_all(sqs, 10, time.monotonic() + 20)) == sorted(
        f"m{i}" for i in range(10)
    )

    sqs.send_batch(first)  # within 5 minutes of the first: still a duplicate
    sqs.send_batch([sqs.entry(10, "m10", "+12025550010", "d10")])

    assert _receive_all(sqs, 2, time.monotonic() + 3) == ["m10"]


def test_an_sqs_receive_waiting_for_messages_holds_up_no_other_request():
    """moto runs on the server's loop thread, except SQS receives: a long poll there would
    stop every other request, the send it waits for among them."""
    waiting, sent = threading.Event(), threading.Event()

    def moto(environ, start_response):
        if environ.get("HTTP_X_AMZ_TARGET") == "AmazonSQS.ReceiveMessage":
            waiting.set()
            answer = b"received" if sent.wait(30) else b"nothing after 30 s"
        else:
            sent.set()
            answer = b"sent"
        start_response("200 OK", [("Content-Length", str(len(answer)))])
        return [answer]

    server = InlineWSGI(moto, threads=2)

    async def call(target: str) -> bytes:
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/",
            "query_string": b"",
            "http_version": "1.1",
            "headers": [(b"x-amz-target", target.encode())],
        }
        answer = []

        async def receive():
            return {"type": "http.request", "body": b"{}", "more_body": False}

        async def send(message):
            answer.append(message.get("body", b""))

        await server(scope, receive, send)
        return b"".join(answer)

    async def a_receive_then_a_send() -> list[bytes]:
        receiving = asyncio.create_task(call("AmazonSQS.ReceiveMessage"))
        await asyncio.get_running_loop().run_in_executor(None, waiting.wait, 30)
        return await asyncio.gather(receiving, call("AmazonSQS.SendMessageBatch"))

    assert asyncio.run(a_receive_then_a_send()) == [b"received", b"sent"]
    server.pool.shutdown()


def test_a_port_in_use_is_one_line_and_nothing_is_left_running():
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    taken = LocalAWS()
    taken.start()
    try:
        with pytest.raises(StackError) as refused:
            LocalAWS(port=taken.port).start()
    finally:
        taken.stop()
    assert str(refused.value) == (
        f"cannot start the local S3/SQS server: port {taken.port} on 127.0.0.1 is in use"
    )
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before


def test_the_server_ends_when_the_process_that_started_it_is_killed():
    starter = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from pipelines.dev.local_aws import LocalAWS; import sys, time;"
            f" server = LocalAWS(port={free_port()}); server.start();"
            " print(server.pid, flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    server = psutil.Process(int(starter.stdout.readline()))
    starter.send_signal(signal.SIGKILL)
    starter.wait()
    try:
        server.wait(timeout=15)
    except psutil.TimeoutExpired:
        server.kill()
        pytest.fail("the local S3/SQS server outlived the process that started it")
