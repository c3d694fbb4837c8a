"""The local S3 + SQS server: moto in a process of its own, served by uvicorn.

One setup for everything that runs locally: `local_stack` starts it for `make dev`, `make
demo` and each test worker, and the benchmarks start the same server (`tests/bench`).

- Its own process: moto's work shares no interpreter lock with the stack's (dispatch,
  Dagster's code server, the tests), and its CPU and memory are its own.
- moto patched by `pipelines.dev.moto_sqs.patch_sqs()`: thread-safe, and no per-message costs
  that grow with the queue.
- uvicorn keeps connections alive, as SQS and S3 do: werkzeug's server (moto's own) closes
  the connection after every answer, so each call paid a TCP handshake and teardown.
- moto is called on uvicorn's own thread (`InlineWSGI`), one request after another, as its
  work holds the interpreter lock anyway. uvicorn's WSGI bridge handed each request to a
  thread and its answer back, and those hand-offs cost a third of the server's CPU: an S3
  PUT took 2.1-2.8 ms of it, and takes 1.2-1.8 ms here. Only an SQS receive, which may wait
  up to 20 s for messages, goes to a thread of its own.
- Two costs of moto's per request are cut: Flask's debug mode, which moto turns on (Flask
  then builds a class for every request with a body), and the matching of the request's
  host against every service's URL patterns, twice a request (remembered per host).
- The stack binds the listening socket itself and hands it to the server, so a port in use
  is a `StackError` at once, and there is no window in which another process could take a
  port found free.
- It lives as long as the process that started it: `stop()` ends it, and so does the end
  of that process however it ends (the server exits when its stdin, a pipe from the
  starter, closes). It runs in a session of its own, so a Ctrl-C in the terminal reaches
  the supervisor, which stops its services first, and not the server under them.

Everything is in memory: stopping the server empties every bucket and queue.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import httpx

from pipelines.dev.local_stack import StackError, require_local_extra

# moto accepts any credentials; real ones must never reach it.
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "AWS_SESSION_TOKEN": "local",
}
# A thread per concurrent SQS receive: long polls hold theirs for up to 20 s.
_THREADS = 64
_READY_PATH = "/moto-api/"


class LocalAWS:
    """moto's S3 + SQS server on `host` (a free port unless one is given), in a child process.

    `log`: where the server's own output goes (a temporary file when not given); the last
    line is quoted when it cannot start.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, log: Path | None = None) -> None:
        self.host = host
        self.port = port
        self.log = log
        self._process: subprocess.Popen | None = None
        self._output: IO[bytes] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self, wait: bool = True) -> str:
        """Start the server; return its endpoint URL once it answers (`wait`), or at once
        (the caller then calls `wait_until_ready` before using it)."""
        require_local_extra("moto", "the local S3/SQS server")
        listener = _listen(self.host, self.port)
        self.port = listener.getsockname()[1]
        self._output = open(self.log, "w+b") if self.log else tempfile.TemporaryFile()  # noqa: SIM115
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "pipelines.dev.local_aws", str(listener.fileno())],
                stdin=subprocess.PIPE,
                stdout=self._output,
                stderr=subprocess.STDOUT,
                pass_fds=(listener.fileno(),),
                start_new_session=True,
            )
        finally:
            listener.close()  # the child holds its own copy
        if wait:
            self.wait_until_ready()
        return self.url

    def stop(self, timeout: float = 5.0) -> None:
        """End the server (its state is in memory: nothing to save) and wait for it."""
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.stdin.close()  # the server exits when its stdin closes
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        else:
            process.stdin.close()
        if self._output is not None:
            self._output.close()
            self._output = None

    def wait_until_ready(self, timeout: float = 60.0) -> None:
        """Return once the server answers; `StackError` (and the server stopped) if it
        exits or does not answer in time."""
        try:
            self._wait(timeout)
        except StackError:
            self.stop()
            raise

    def _wait(self, timeout: float) -> None:
        assert self._process is not None
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=5.0, trust_env=False) as client:
            while True:
                if self._process.poll() is not None:
                    raise StackError(
                        f"the local S3/SQS server exited with code {self._process.returncode}"
                        f" during start-up: {self._last_line()}"
                    )
                try:
                    client.get(self.url + _READY_PATH)
                    return
                except httpx.HTTPError:
                    if time.monotonic() > deadline:
                        raise StackError(
                            f"the local S3/SQS server did not answer on {self.url}"
                            f" within {timeout:.0f} s"
                        ) from None
                    time.sleep(0.1)

    def _last_line(self) -> str:
        if self._output is None:
            return "no output"
        self._output.seek(0)
        text = self._output.read()
        lines = text.decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else "no output"


def _listen(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        listener = socket.socket(family, kind, proto)
    except OSError as error:
        raise StackError(f"cannot start the local S3/SQS server on {host}: {error}") from None
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(1024)
    except OSError as error:
        listener.close()
        if port and error.errno == errno.EADDRINUSE:
            reason = f"port {port} on {host} is in use"
        else:
            reason = f"cannot listen on {host}:{port}: {error.strerror}"
        raise StackError(f"cannot start the local S3/SQS server: {reason}") from None
    return listener


Answer = tuple[int, list[tuple[bytes, bytes]], bytes]  # status, headers, body


class InlineWSGI:
    """An ASGI app that calls a WSGI app on the event loop's thread with the whole request
    body, and sends its whole answer; SQS receives (long polls) run on a thread pool."""

    def __init__(self, app: Callable[..., Iterable[bytes]], threads: int) -> None:
        self.app = app
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="receive")

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        from uvicorn.middleware.wsgi import build_environ

        if scope["type"] != "http":
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        environ = build_environ(scope, message, io.BytesIO(body))
        if _may_wait(environ, body):
            loop = asyncio.get_running_loop()
            status, headers, content = await loop.run_in_executor(self.pool, self._call, environ)
        else:
            status, headers, content = self._call(environ)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    def _call(self, environ: dict[str, Any]) -> Answer:
        started: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc_info=None) -> None:
            started[:] = [
                int(status.split(" ", 1)[0]),
                [
                    (name.lower().encode("latin1"), value.encode("latin1"))
                    for name, value in headers
                ],
            ]

        result = self.app(environ, start_response)
        try:
            content = b"".join(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        return started[0], started[1], content


def _may_wait(environ: dict[str, Any], body: bytes) -> bool:
    """An SQS ReceiveMessage, in the JSON protocol or the query protocol (a form body: an
    uploaded file's bytes are not searched)."""
    if environ.get("HTTP_X_AMZ_TARGET") == "AmazonSQS.ReceiveMessage":
        return True
    form = environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded")
    return form and b"Action=ReceiveMessage" in body


def _exit_when_orphaned() -> None:
    """End this process when the one that started it closes our stdin, or is gone."""
    try:
        sys.stdin.buffer.read()
    finally:
        os._exit(0)


def serve(fd: int) -> None:
    """The server's process: moto, patched, served by uvicorn on the listening socket `fd`."""
    threading.Thread(target=_exit_when_orphaned, name="orphan-watch", daemon=True).start()

    import uvicorn
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app

    from pipelines.dev.moto_sqs import patch_sqs

    def backend_app(service: str) -> Any:
        app = create_backend_app(service)
        app.debug = False  # moto's is on, and Flask in debug mode makes a class per request
        return app

    patch_sqs()
    dispatcher = DomainDispatcherApplication(backend_app)
    # Which service a host is: moto tries every service's URL patterns, twice a request.
    dispatcher.get_backend_for_host = functools.lru_cache(maxsize=1024)(
        dispatcher.get_backend_for_host
    )
    app = InlineWSGI(dispatcher, threads=_THREADS)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=fd)])


if __name__ == "__main__":
    serve(int(sys.argv[1]))
