"""Run an ASGI app under uvicorn on a free loopback port, in a thread, for a test's duration."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn


@contextmanager
def serve(app, host: str = "127.0.0.1", log_level: str = "warning") -> Iterator[str]:
    sock = socket.socket()
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    # Graph API's front ends keep idle connections far longer than uvicorn's 5 s: a client's
    # pooled connection is not closed under it between two sends.
    server = uvicorn.Server(
        uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_keep_alive=120)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
