"""The local SQS and S3 server for benchmarks: moto in a process of its own.

In its own process it shares no interpreter lock with what is measured, and its CPU and
memory are not counted. moto also pays per-request costs that do not depend on the client
and that would make a benchmark measure moto instead:
- it computes every queue attribute, three full scans of the queue, for each message sent
  or received; here only when a client asks for them with GetQueueAttributes;
- it reads the clock (a few datetime objects) once per message for each scan of a queue,
  which at 200,000 messages makes one GetQueueAttributes outlast a client's read timeout;
  here once per scan;
- it lists its own package directory (one `stat` per service) on every request; here once;
- it converts the same attribute names from camelCase on every message; here remembered;
- it logs every request line; here not;
- its web server (werkzeug's) closes the connection after every answer, so that each call
  paid a TCP handshake and teardown, charged on loopback to the client's CPU; here uvicorn
  serves it and keeps connections alive, as SQS does.
It is also not thread-safe; `pipelines.moto_sqs` makes it so, as for the local stack.

Every side of a comparison talks to the same server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

import httpx


@contextmanager
def aws_server() -> Iterator[str]:
    """Start the server on a free loopback port and point this process and its children at
    it (`AWS_ENDPOINT_URL` and throwaway credentials, as `local_stack` does for its own);
    yields the endpoint URL."""
    from pipelines.local_stack import free_port

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.aws_server", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            httpx.get(f"{url}/moto-api/", timeout=1)
            break
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                server.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.2)
    local = {
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_SESSION_TOKEN": "local",
    }
    try:
        with mock.patch.dict(os.environ, local):
            yield url
    finally:
        server.terminate()
        server.wait(10)


def _serve(port: int) -> None:
    import functools
    import threading

    import uvicorn
    from moto import backends
    from moto.core import responses, utils
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from moto.sqs import models
    from moto.sqs import responses as sqs_responses
    from uvicorn.middleware.wsgi import WSGIMiddleware

    from pipelines.moto_sqs import serialise_queue_operations

    def visible(queue) -> list:
        now = utils.unix_time_millis()
        return [m for m in queue._messages if now > m.visible_at and now >= m.delayed_until]

    def delayed(queue) -> int:
        now = utils.unix_time_millis()
        return sum(now < m.delayed_until for m in queue._messages)

    def not_visible(queue) -> int:
        now = utils.unix_time_millis()
        return sum(now <= m.visible_at for m in queue._messages)

    models.Queue.messages = property(visible)
    asked = threading.local()
    for name, count in (
        ("approximate_number_of_messages", lambda queue: len(queue.messages)),
        ("approximate_number_of_messages_delayed", delayed),
        ("approximate_number_of_messages_not_visible", not_visible),
    ):
        setattr(
            models.Queue,
            name,
            property(lambda queue, count=count: count(queue) if getattr(asked, "on", False) else 0),
        )
    get_attributes = sqs_responses.SQSResponse.get_queue_attributes

    def get_queue_attributes(self):
        asked.on = True
        try:
            return get_attributes(self)
        finally:
            asked.on = False

    sqs_responses.SQSResponse.get_queue_attributes = get_queue_attributes
    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules
    remembered = functools.lru_cache(maxsize=None)(utils.camelcase_to_underscores)
    models.camelcase_to_underscores = remembered
    responses.camelcase_to_underscores = remembered
    serialise_queue_operations()
    # A thread per concurrent request: long polls hold theirs for up to 20 s.
    app = WSGIMiddleware(DomainDispatcherApplication(create_backend_app), workers=64)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
