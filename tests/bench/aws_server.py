"""The benchmarks' S3 and SQS: the local stack's own server (`pipelines.dev.local_aws`), one more
instance of it.

The same code `make dev` and the tests run: moto in a process of its own (it shares no
interpreter lock with what is measured, and its CPU and memory are not counted), patched by
`pipelines.dev.moto_sqs`, served by uvicorn with keep-alive. Entered before `local_stack`, it
is the one the stack uses (the stack starts none when `AWS_ENDPOINT_URL` is set); every
side of a comparison talks to the same server.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from unittest import mock

from pipelines.dev.local_aws import CREDENTIALS, LocalAWS


@contextmanager
def aws_server() -> Iterator[str]:
    """Start the server on a free loopback port and point this process and its children at
    it (`AWS_ENDPOINT_URL` and throwaway credentials, as `local_stack` does for its own);
    yields the endpoint URL."""
    server = LocalAWS()
    url = server.start()
    try:
        with mock.patch.dict(os.environ, {"AWS_ENDPOINT_URL": url, **CREDENTIALS}):
            yield url
    finally:
        server.stop()
