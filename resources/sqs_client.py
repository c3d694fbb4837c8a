"""SQS over its JSON protocol: one signed POST per operation, on a pooled urllib3 connection.

Why not boto3's client: every botocore call costs about 1.8 ms of CPU before the request
leaves (parameter validation, event hooks, endpoint rules, a rebuilt user agent, signing),
which is more than dispatch spends preparing ten messages and most of the sender's budget of
1 ms a message. The protocol itself is small: the operation's name goes in `X-Amz-Target`,
its parameters, named exactly as in boto3, go in a JSON body, and the answer is the JSON
boto3 would return. This client does that in about a tenth of the CPU.

It stays a drop-in for the calls we make: methods are the operations in snake case
(`send_message_batch(QueueUrl=..., Entries=...)`), errors are botocore's `ClientError` with
the same `Error.Code`, and an unreachable endpoint raises botocore's
`EndpointConnectionError`. Credentials come from botocore's usual chain (environment,
profile, instance role), refreshed as botocore refreshes them. The endpoint and the
signing region are given by botocore's own resolver (`resources.queue.SQSResource`), so
every partition and endpoint setting botocore knows works here too.

Retries are botocore's standard mode (`resources.aws_retries`): three attempts in all.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import urllib3
from botocore.credentials import Credentials
from botocore.exceptions import NoCredentialsError

from resources import sigv4
from resources.aws_retries import with_retries

_CONTENT_TYPE = "application/x-amz-json-1.0"
# Long polls wait up to 20 s before SQS answers.
_TIMEOUT = urllib3.Timeout(connect=10.0, read=60.0)
MAX_ATTEMPTS = 3


class SQSClient:
    """Thread-safe; build one per process and share it."""

    def __init__(
        self,
        endpoint_url: str,
        region: str,
        credentials: Credentials | None,
        max_connections: int = 32,
    ) -> None:
        parts = urlsplit(endpoint_url)
        self.endpoint_url = endpoint_url
        self._host = parts.netloc
        self._path = parts.path or "/"
        self._region = region
        self._credentials = credentials
        self._pool = urllib3.connection_from_url(
            endpoint_url, maxsize=max_connections, timeout=_TIMEOUT, retries=False
        )

    def __getattr__(self, name: str) -> Callable[..., dict[str, Any]]:
        if name.startswith("_"):
            raise AttributeError(name)
        action = "".join(word.capitalize() for word in name.split("_"))
        return lambda **params: self.call(action, params)

    def call(self, action: str, params: dict[str, Any]) -> dict[str, Any]:
        """Run one SQS operation (`SendMessageBatch`, ...) and return its answer."""
        body = json.dumps(params, separators=(",", ":")).encode()
        response = with_retries(
            lambda: self._pool.urlopen(
                "POST", self._path, body=body, headers=self._sign(action, body)
            ),
            MAX_ATTEMPTS,
            _error_response,
            action,
            self.endpoint_url,
        )
        return json.loads(response.data) if response.data else {}

    def close(self) -> None:
        self._pool.close()

    def _sign(self, action: str, body: bytes) -> dict[str, str]:
        """AWS Signature Version 4 headers for a POST of `body` to the endpoint."""
        if self._credentials is None:
            raise NoCredentialsError()
        credentials = self._credentials.get_frozen_credentials()
        amz_date = time.strftime(sigv4.TIMESTAMP, time.gmtime())
        headers = {
            "content-type": _CONTENT_TYPE,
            "host": self._host,
            "x-amz-date": amz_date,
            "x-amz-target": f"AmazonSQS.{action}",
            # As botocore: SQS then names its classic error codes in `x-amzn-query-error`.
            "x-amzn-query-mode": "true",
        }
        if credentials.token:
            headers["x-amz-security-token"] = credentials.token
        names = sorted(headers)
        signed_headers = ";".join(names)
        canonical = "\n".join(
            [
                "POST",
                self._path,
                "",
                "".join(f"{name}:{headers[name]}\n" for name in names),
                signed_headers,
                hashlib.sha256(body).hexdigest(),
            ]
        )
        scope = sigv4.scope(amz_date, self._region, "sqs")
        signature = sigv4.signature(credentials.secret_key, amz_date, scope, canonical)
        headers["authorization"] = (
            f"{sigv4.ALGORITHM} Credential={credentials.access_key}/{scope}, "
            f"SignedHeaders={signed_headers}, Signature={signature}"
        )
        return headers


def _error_response(response: urllib3.BaseHTTPResponse) -> dict[str, Any]:
    """botocore's error shape. SQS names its classic error codes (the ones its query protocol
    used, such as `AWS.SimpleQueueService.NonExistentQueue`) in `x-amzn-query-error`; botocore
    reports those, so this does too. An answer that is not JSON (a proxy's error page, a
    crashed server) is reported by its HTTP status, as botocore does."""
    try:
        answer = json.loads(response.data)
    except ValueError:
        answer = {}
    code = answer.get("__type", "").rpartition("#")[2] or str(response.status)
    query_error = response.headers.get("x-amzn-query-error", "")
    if query_error:
        code = query_error.split(";")[0]
    message = answer.get("message") or answer.get("Message") or response.reason or ""
    return {
        "Error": {"Code": code, "Message": message},
        "ResponseMetadata": {"HTTPStatusCode": response.status},
    }
