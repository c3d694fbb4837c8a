"""A loopback TCP proxy that can take its endpoint down and bring it back on the same port,
so a test can cut a real server (Postgres, SQS) off mid-run without losing the server's
state or disturbing the rest of the suite that shares it."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

from pipelines.dev.local_stack import free_port


class TCPProxy:
    """Forwards to `upstream` ("host:port"). `cut()` closes every connection and refuses new
    ones until `restore()`. Given `cut_after`, the proxy cuts by itself: the `cut_on_nth`
    request containing those bytes reaches the upstream, but its answer does not."""

    def __init__(self, upstream: str, cut_after: bytes | None = None, cut_on_nth: int = 1) -> None:
        host, port = upstream.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.cut_after = cut_after
        self.cut_on_nth = cut_on_nth
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cuts = 0
        self.on_cut: Callable[[], None] = lambda: None
        self._seen = 0
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None

    def __enter__(self) -> TCPProxy:
        self.restore()
        return self

    def __exit__(self, *exc: object) -> None:
        self._close_all()

    def restore(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        listener.settimeout(0.1)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            upstream = socket.create_connection(self.upstream)
            with self._lock:
                # A cut between the accept and here must not miss this connection.
                cut = self._listener is not listener
                if not cut:
                    self._sockets |= {client, upstream}
            if cut:
                for sock in (client, upstream):
                    sock.close()
                return
            doomed = threading.Event()
            threading.Thread(
                target=self._pump, args=(client, upstream, doomed, True), daemon=True
            ).start()
            threading.Thread(
                target=self._pump, args=(upstream, client, doomed, False), daemon=True
            ).start()

    def _pump(
        self, source: socket.socket, target: socket.socket, doomed: threading.Event, request: bool
    ) -> None:
        try:
            while data := source.recv(65536):
                if not request and doomed.is_set():
                    self.cut()
                    return
                if request and self.cut_after is not None and self.cut_after in data:
                    with self._lock:
                        self._seen += 1
                        if self._seen == self.cut_on_nth:
                            doomed.set()
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.cuts += 1
        self._close_all()
        self.on_cut()

    def _close_all(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, set()
        if listener is not None:
            listener.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
