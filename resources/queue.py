"""The outbound message queue (SQS, FIFO or standard) and its dead-letter queue: every call
the platform makes to SQS goes through `SQSResource`.

`dagster-aws` ships no SQS resource; this one mirrors `S3Resource`'s settings
(region, endpoint) so both point at the same AWS account or local server.

Two clients: boto3's for the rare administrative calls (queue creation, attributes, URLs),
and the lean one (`resources.sqs_client`) for the calls made per message. The lean one
takes its endpoint and signing region from boto3's, so botocore's resolver decides both:
every partition (China, GovCloud), FIPS and dual-stack endpoints, `AWS_ENDPOINT_URL_SQS`,
`AWS_DEFAULT_REGION` and the profile's region work alike for both.

Sending (dispatch) meets two kinds of trouble, handled differently:
- the endpoint is unreachable or throttling: the whole call is retried with backoff for up to
  `retry_seconds`, then `SQSUnavailable` fails the run, leaving its rows pending and unqueued
  for the next attempt;
- SQS answers but rejects some entries: those entries are retried with backoff a few times,
  and the ones still rejected come back as failures carrying SQS's code and message.

Receiving (the sender): a received payload is deleted once its row records the result,
hidden for longer while it waits (`postpone`; near the dead-letter queue's receive count it
is queued again as a fresh copy instead), made visible at once when a worker stops
(`release`), or moved to the dead-letter queue with the reason (`dead_letter`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import boto3
import botocore.session
from botocore.exceptions import BotoCoreError, ClientError
from dagster import ConfigurableResource
from pydantic import PrivateAttr
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_exponential_jitter,
)

from resources import settings
from resources.queue_message import SQS_MAX_MESSAGE_BYTES
from resources.sqs_client import SQSClient

log = logging.getLogger(__name__)

BATCH_SIZE = 10
ENTRY_ATTEMPTS = 4
MAX_VISIBILITY_SECONDS = 12 * 3600  # SQS's ceiling
RECEIVE_ATTRIBUTES = ["ApproximateReceiveCount", "MessageGroupId"]
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
class QueueDepth:
    visible: int
    in_flight: int
    delayed: int
    dead_letter: int


@dataclass(frozen=True)
class Outgoing:
    """A campaign message row's payload on its way to the queue."""

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


@dataclass(frozen=True, slots=True)
class Received:
    """A payload as the queue handed it over; `receipt` names this receipt of it."""

    body: str
    receipt: str
    message_id: str
    receive_count: int
    group_id: str | None

    @classmethod
    def of(cls, message: dict[str, Any]) -> Received:
        attributes = message.get("Attributes", {})
        return cls(
            message["Body"],
            message["ReceiptHandle"],
            message.get("MessageId", ""),
            int(attributes.get("ApproximateReceiveCount", 1)),
            attributes.get("MessageGroupId"),
        )


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


class SQSResource(ConfigurableResource):
    """Names rather than URLs: the URL is resolved once, so the same settings work
    against AWS and the local server."""

    queue_name: str = settings.BY_NAME["SQS_QUEUE_NAME"].default
    dlq_name: str = settings.BY_NAME["SQS_DLQ_NAME"].default
    max_receive_count: int = 3
    # None: botocore's own (AWS_DEFAULT_REGION, the profile), else us-east-1.
    region_name: str | None = None
    endpoint_url: str | None = None

    _client: SQSClient | None = PrivateAttr(default=None)
    _admin: Any = PrivateAttr(default=None)
    _urls: dict[str, str] = PrivateAttr(default_factory=dict)
    # Dispatch's sending threads and the sender's lanes share one client and its connections.
    _client_lock: threading.RLock = PrivateAttr(default_factory=threading.RLock)

    @classmethod
    def from_settings(cls, source: settings.Source = settings.NOW) -> SQSResource:
        """The one way it is built, by the code location and by every process."""
        return cls(
            queue_name=source.text("SQS_QUEUE_NAME"),
            dlq_name=source.text("SQS_DLQ_NAME"),
            max_receive_count=source.number("SQS_MAX_RECEIVE_COUNT"),
            region_name=source.text("AWS_REGION"),
            endpoint_url=source.text("AWS_ENDPOINT_URL"),
        )

    @property
    def is_fifo(self) -> bool:
        return self.queue_name.endswith(".fifo")

    @property
    def admin(self) -> Any:
        """boto3's SQS client, for administrative calls."""
        with self._client_lock:
            if self._admin is None:
                session = boto3.session.Session()
                self._admin = session.client(
                    "sqs",
                    region_name=self.region_name or session.region_name or "us-east-1",
                    endpoint_url=self.endpoint_url,
                )
            return self._admin

    @property
    def client(self) -> SQSClient:
        """The lean client, for the calls made per message."""
        with self._client_lock:
            if self._client is None:
                meta = self.admin.meta
                self._client = SQSClient(
                    meta.endpoint_url,
                    meta.region_name,
                    botocore.session.get_session().get_credentials(),
                )
            return self._client

    def url(self, name: str | None = None) -> str:
        name = name or self.queue_name
        if name not in self._urls:
            self._urls[name] = self.admin.get_queue_url(QueueName=name)["QueueUrl"]
        return self._urls[name]

    def ensure_queues(self) -> None:
        """Create the DLQ and the queue with its redrive policy; a no-op when they exist."""
        fifo = {"FifoQueue": "true"} if self.is_fifo else {}
        dlq_url = self.admin.create_queue(
            QueueName=self.dlq_name,
            Attributes={**fifo, "MessageRetentionPeriod": str(14 * 24 * 3600)},
        )["QueueUrl"]
        dlq_arn = self.admin.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
            "Attributes"
        ]["QueueArn"]
        redrive = {"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(self.max_receive_count)}
        self.admin.create_queue(
            QueueName=self.queue_name,
            Attributes={
                **fifo,
                "VisibilityTimeout": "60",
                "ReceiveMessageWaitTimeSeconds": "20",
                "RedrivePolicy": json.dumps(redrive),
            },
        )
        self._urls[self.dlq_name] = dlq_url

    def entry(self, message_id: int, body: str, to: str, dedup_id: str) -> dict[str, str]:
        """One `SendMessageBatch` entry of a message payload. FIFO: one message group per
        recipient (consumers work in parallel, one recipient's messages stay in order),
        deduplicated by `dedup_id`."""
        item = {"Id": str(message_id), "MessageBody": body}
        if self.is_fifo:
            item["MessageGroupId"] = hashlib.sha256(to.encode()).hexdigest()[:32]
            item["MessageDeduplicationId"] = dedup_id
        return item

    def send_batch(self, entries: list[dict[str, Any]]) -> dict[str, Any]:
        """One `SendMessageBatch` (at most 10 entries); returns SQS's Successful/Failed lists."""
        return self.client.send_message_batch(QueueUrl=self.url(), Entries=entries)

    def send(self, batch: list[Outgoing], retry_seconds: float) -> BatchOutcome:
        """Send one batch (see `pack`), deduplicated by run and member: a retried run's copy
        is dropped. Rejected entries are retried, then reported with SQS's reason."""
        outcome = BatchOutcome()
        remaining = {str(m.message_id): m for m in batch}
        errors: dict[str, str] = {}
        for attempt in range(ENTRY_ATTEMPTS):
            if attempt:
                time.sleep(min(0.2 * 2**attempt, 5.0))
            entries = [
                self.entry(m.message_id, m.body, m.to, f"{m.run_id}-{m.member_id}")
                for m in remaining.values()
            ]
            response = self._send_retrying(entries, retry_seconds)
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

    def send_again(self, messages: list[Outgoing]) -> list[int]:
        """Queue rows once more (released from a hold, or lost), each under a fresh
        deduplication id, as the queue would drop a copy of the first; one call per 10, no
        retry. Returns the message ids SQS took: an entry it refuses is the caller's to try
        again later, and an unreachable queue raises."""
        queued: list[int] = []
        for start in range(0, len(messages), BATCH_SIZE):
            entries = [
                self.entry(
                    m.message_id, m.body, m.to, f"{m.run_id}-{m.member_id}-{uuid.uuid4().hex[:12]}"
                )
                for m in messages[start : start + BATCH_SIZE]
            ]
            answer = self.send_batch(entries)
            queued += [int(ok["Id"]) for ok in answer.get("Successful", [])]
        return queued

    def receive(
        self,
        max_messages: int = BATCH_SIZE,
        wait_seconds: int = 20,
        visibility_seconds: int | None = None,
    ) -> list[Received]:
        """Up to `max_messages` payloads, hidden from other consumers for
        `visibility_seconds` (the queue's default when None)."""
        params: dict[str, Any] = {
            "QueueUrl": self.url(),
            "MaxNumberOfMessages": max_messages,
            "WaitTimeSeconds": wait_seconds,
            "AttributeNames": RECEIVE_ATTRIBUTES,
        }
        if visibility_seconds is not None:
            params["VisibilityTimeout"] = visibility_seconds
        return [Received.of(m) for m in self.client.receive_message(**params).get("Messages", [])]

    def delete(self, messages: Sequence[Received]) -> None:
        """Delete received payloads. One SQS does not take comes back later; its row is past
        `pending` by then, so it is deleted then."""
        for start in range(0, len(messages), BATCH_SIZE):
            entries = [
                {"Id": str(i), "ReceiptHandle": m.receipt}
                for i, m in enumerate(messages[start : start + BATCH_SIZE])
            ]
            try:
                self.client.delete_message_batch(QueueUrl=self.url(), Entries=entries)
            except (BotoCoreError, ClientError) as error:
                log.warning("cannot delete %d payloads: %s", len(entries), error)

    def change_visibility(self, messages: Sequence[Received], seconds: int) -> None:
        """Hide received payloads for `seconds` from now (0: visible again at once)."""
        for start in range(0, len(messages), BATCH_SIZE):
            entries = [
                {"Id": str(i), "ReceiptHandle": m.receipt, "VisibilityTimeout": seconds}
                for i, m in enumerate(messages[start : start + BATCH_SIZE])
            ]
            try:
                self.client.change_message_visibility_batch(QueueUrl=self.url(), Entries=entries)
            except (BotoCoreError, ClientError) as error:
                log.warning("cannot change visibility of %d payloads: %s", len(entries), error)

    def release(self, messages: Sequence[Received]) -> None:
        """Make received-but-unstarted payloads visible again at once (a graceful stop)."""
        self.change_visibility(messages, 0)

    def postpone(self, messages: Sequence[Received], seconds: float) -> None:
        """Hide payloads for `seconds`. One near the DLQ's receive count is requeued as a
        fresh copy instead, so that waiting never sends a payload to the DLQ."""
        near_limit = [m for m in messages if m.receive_count >= self.max_receive_count]
        for message in near_limit:
            self.requeue(message)
        rest = [m for m in messages if m not in near_limit]
        self.change_visibility(rest, min(int(seconds), MAX_VISIBILITY_SECONDS))

    def requeue(self, message: Received) -> None:
        """Queue a fresh copy of a received payload (its receive count starts again) and
        delete this one."""
        self.client.send_message(
            QueueUrl=self.url(), MessageBody=message.body, **self._fifo_keys(message)
        )
        self.delete([message])

    def dead_letter(self, message: Received, reason: str) -> None:
        """Move a payload that will never be sent to the DLQ, with the reason."""
        self.client.send_message(
            QueueUrl=self.url(self.dlq_name),
            MessageBody=message.body,
            MessageAttributes={"reason": {"DataType": "String", "StringValue": reason[:1000]}},
            **self._fifo_keys(message),
        )
        self.delete([message])

    def _fifo_keys(self, message: Received) -> dict[str, str]:
        if not self.is_fifo:
            return {}
        return {
            "MessageGroupId": message.group_id or "sender",
            "MessageDeduplicationId": uuid.uuid4().hex,
        }

    def _send_retrying(self, entries: list[dict[str, str]], retry_seconds: float) -> dict:
        retrying = Retrying(
            retry=retry_if_exception(_transient),
            wait=wait_exponential_jitter(initial=0.5, max=5.0),
            stop=stop_after_delay(retry_seconds),
        )
        try:
            return retrying(self.send_batch, entries)
        except RetryError as error:
            cause = error.last_attempt.exception()
            raise SQSUnavailable(
                f"SQS unreachable for {retry_seconds:g} s; the run's unqueued messages stay"
                f" pending for the next attempt ({type(cause).__name__}: {cause})"
            ) from cause

    def is_empty(self) -> bool:
        """Nothing visible, in flight or delayed (the dead-letter queue aside)."""
        depth = self.depth()
        return depth.visible + depth.in_flight + depth.delayed == 0

    def depth(self) -> QueueDepth:
        def attrs(url: str) -> dict[str, str]:
            return self.admin.get_queue_attributes(
                QueueUrl=url,
                AttributeNames=[
                    "ApproximateNumberOfMessages",
                    "ApproximateNumberOfMessagesNotVisible",
                    "ApproximateNumberOfMessagesDelayed",
                ],
            )["Attributes"]

        main, dead = attrs(self.url()), attrs(self.url(self.dlq_name))
        return QueueDepth(
            visible=int(main["ApproximateNumberOfMessages"]),
            in_flight=int(main["ApproximateNumberOfMessagesNotVisible"]),
            delayed=int(main["ApproximateNumberOfMessagesDelayed"]),
            dead_letter=int(dead["ApproximateNumberOfMessages"]),
        )


def _transient(error: BaseException) -> bool:
    if isinstance(error, BotoCoreError):
        return True
    if not isinstance(error, ClientError):
        return False
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return status >= 500 or error.response.get("Error", {}).get("Code") in _TRANSIENT_CODES
