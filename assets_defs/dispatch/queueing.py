"""Putting prepared messages on the queue: `SendMessageBatch` with retries.

Two kinds of trouble, handled differently:
- the endpoint is unreachable or throttling: the whole call is retried with backoff for up to
  `retry_seconds`, then `SQSUnavailable` fails the run, leaving its rows pending and unqueued
  for the next attempt;
- SQS answers but rejects some entries: those entries are retried with backoff a few times,
  and the ones still rejected come back as failures carrying SQS's code and message.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from botocore.exceptions import BotoCoreError, ClientError
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_exponential_jitter,
)

from resources.queue import SQSResource
from resources.queue_message import SQS_MAX_MESSAGE_BYTES

BATCH_SIZE = 10
ENTRY_ATTEMPTS = 4
_TRANSIENT_CODES = {
    "ThrottlingException",
    "RequestThrottled",
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
    "KmsThrottled",
}


class SQSUnavailable(RuntimeError):
    """The queue could not be reached for the whole retry window."""


@dataclass(frozen=True)
class Outgoing:
    message_id: int
    member_id: str
    run_id: int
    to: str
    body: str


@dataclass
class BatchOutcome:
    sent: list[Outgoing] = field(default_factory=list)
    failed: list[tuple[Outgoing, str]] = field(default_factory=list)
    calls: int = 0


def pack(messages: Iterable[Outgoing]) -> Iterator[list[Outgoing]]:
    """Batches of at most 10 whose bodies together stay under SQS's per-request limit."""
    batch: list[Outgoing] = []
    size = 0
    for message in messages:
        length = len(message.body.encode())
        if batch and (len(batch) == BATCH_SIZE or size + length > SQS_MAX_MESSAGE_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(message)
        size += length
    if batch:
        yield batch


def entry(sqs: SQSResource, message: Outgoing) -> dict[str, str]:
    """One batch entry, deduplicated by run and member: a retried run's copy is dropped."""
    return sqs.entry(
        message.message_id, message.body, message.to, f"{message.run_id}-{message.member_id}"
    )


def send(sqs: SQSResource, batch: list[Outgoing], retry_seconds: float) -> BatchOutcome:
    """Send one batch; rejected entries are retried, then reported with SQS's reason."""
    outcome = BatchOutcome()
    remaining = {str(m.message_id): m for m in batch}
    errors: dict[str, str] = {}
    for attempt in range(ENTRY_ATTEMPTS):
        if attempt:
            time.sleep(min(0.2 * 2**attempt, 5.0))
        response = _call(sqs, [entry(sqs, m) for m in remaining.values()], retry_seconds)
        outcome.calls += 1
        for ok in response.get("Successful", []):
            outcome.sent.append(remaining.pop(ok["Id"]))
        errors = {
            f["Id"]: f"SQS {f['Code']}: {f.get('Message', '')}".strip()
            for f in response.get("Failed", [])
        }
        if not remaining:
            break
    outcome.failed = [
        (m, errors.get(key, "SQS did not accept the entry")) for key, m in remaining.items()
    ]
    return outcome


def _transient(error: BaseException) -> bool:
    if isinstance(error, BotoCoreError):
        return True
    if not isinstance(error, ClientError):
        return False
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return status >= 500 or error.response.get("Error", {}).get("Code") in _TRANSIENT_CODES


def _call(sqs: SQSResource, entries: list[dict[str, str]], retry_seconds: float) -> dict:
    retrying = Retrying(
        retry=retry_if_exception(_transient),
        wait=wait_exponential_jitter(initial=0.5, max=5.0),
        stop=stop_after_delay(retry_seconds),
    )
    try:
        return retrying(sqs.send_batch, entries)
    except RetryError as error:
        cause = error.last_attempt.exception()
        raise SQSUnavailable(
            f"SQS unreachable for {retry_seconds:g} s; the run's unqueued messages stay pending "
            f"for the next attempt ({type(cause).__name__}: {cause})"
        ) from cause
