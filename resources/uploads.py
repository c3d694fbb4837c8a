"""PUTs to one origin (a bucket's endpoint) over keep-alive `http.client` connections, one per
thread.

A campaign uploads two or more files a member, from several threads of its media run. On
urllib3's connection pool a PUT cost 0.58 ms of the run's CPU, and on `http.client` 0.33 ms
(90 KB bodies to the local S3 server): urllib3's pool checks connections out and in,
builds its retry and timeout objects and wraps each response, for one plain request.
A connection the server closed while it was idle is found before it is used, as urllib3
finds it, and replaced; any error closes the connection, and the caller's retry (see
`resources.aws_retries`) goes on a new one.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.client import HTTPConnection, HTTPSConnection
from typing import IO
from urllib.parse import urlsplit

from urllib3.util.wait import wait_for_read

TIMEOUT_SECONDS = 60.0
# Bytes read from a body per send: http.client's default (8 KB) makes a dozen calls a file.
BLOCK_BYTES = 256 * 1024


@dataclass(frozen=True)
class Answer:
    status: int
    reason: str
    data: bytes


class Uploads:
    def __init__(self, origin: str) -> None:
        parts = urlsplit(origin)
        self._https = parts.scheme == "https"
        self._host, self._port = parts.hostname, parts.port
        self._local = threading.local()

    def put(self, target: str, body: IO[bytes], headers: dict[str, str]) -> Answer:
        """PUT `body` (read from where it is) to `target` (path and query) with `headers`."""
        connection = self._connection()
        try:
            connection.request("PUT", target, body=body, headers=headers)
            response = connection.getresponse()
            answer = Answer(response.status, response.reason, response.read())
        except BaseException:
            connection.close()
            raise
        if response.will_close:
            connection.close()
        return answer

    def _connection(self) -> HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            kind = HTTPSConnection if self._https else HTTPConnection
            connection = kind(
                self._host, self._port, timeout=TIMEOUT_SECONDS, blocksize=BLOCK_BYTES
            )
            self._local.connection = connection
        elif connection.sock is not None and wait_for_read(connection.sock, timeout=0.0):
            # Readable while idle: the server closed it (or sent what nobody asked for).
            connection.close()
        return connection
