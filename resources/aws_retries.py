"""botocore's standard retry mode, for the calls made without botocore's client (`sqs_client`,
and the media uploads of `storage`): a connection error, an answer of 500, 502, 503 or 504,
or a throttling error is tried again after a random wait of up to 2^attempt seconds (full
jitter, so that many clients throttled together do not come back together); anything else
is final. Errors are botocore's own, `ClientError` with the service's error code and
`EndpointConnectionError`, so callers handle one kind of error whichever client made the
call."""

from __future__ import annotations

import http.client
import random
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import urllib3
from botocore.exceptions import ClientError, EndpointConnectionError

RETRY_STATUSES = frozenset({500, 502, 503, 504})
THROTTLING_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
        "KMS.ThrottlingException",
    }
)
MAX_BACKOFF_SECONDS = 20.0
# A request that got no answer: urllib3's errors (the SQS client), http.client's and the
# socket's (the uploads).
CONNECTION_ERRORS = (urllib3.exceptions.HTTPError, http.client.HTTPException, OSError)


class Response(Protocol):
    status: int


R = TypeVar("R", bound=Response)


def with_retries(
    send: Callable[[], R],
    attempts: int,
    error_response: Callable[[R], dict[str, Any]],
    operation: str,
    endpoint_url: str,
) -> R:
    """`send()`'s successful answer, after at most `attempts` tries. `error_response` reads
    a failed answer into botocore's error shape (`{"Error": {"Code", "Message"}, ...}`)."""
    attempt = 1
    while True:
        try:
            response = send()
        except CONNECTION_ERRORS as error:
            if attempt == attempts:
                raise EndpointConnectionError(endpoint_url=endpoint_url, error=error) from error
        else:
            if response.status < 300:
                return response
            answer = error_response(response)
            if attempt == attempts or not retryable(response.status, answer["Error"]["Code"]):
                raise ClientError(answer, operation)
        backoff(attempt)
        attempt += 1


def retryable(status: int, code: str) -> bool:
    return status in RETRY_STATUSES or code in THROTTLING_CODES


def backoff(attempt: int) -> None:
    time.sleep(random.random() * min(MAX_BACKOFF_SECONDS, 2.0**attempt))
