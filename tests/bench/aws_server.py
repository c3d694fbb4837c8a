"""The local SQS and S3 server for benchmarks: moto in a process of its own.

In its own process it shares no interpreter lock with what is measured, and its CPU and
memory are not counted. Its SQS is patched as the local stack's is (`pipelines.moto_sqs`:
thread-safe, and no per-message costs that would make a benchmark measure moto), and it
does not log every request line. Its web server is uvicorn, which keeps connections alive
as SQS does: werkzeug's closes the connection after every answer, so that each call paid a
TCP handshake and teardown, charged on loopback to the client's CPU.

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

    import uvicorn
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from uvicorn.middleware.wsgi import WSGIMiddleware

    from pipelines.moto_sqs import patch_sqs

    patch_sqs()
    # A thread per concurrent request: long polls hold theirs for up to 20 s.
    app = WSGIMiddleware(DomainDispatcherApplication(create_backend_app), workers=64)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
