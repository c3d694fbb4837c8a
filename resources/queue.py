"""The outbound message queue (SQS, FIFO or standard) and its dead-letter queue.

`dagster-aws` ships no SQS resource; this one mirrors `S3Resource`'s settings
(region, endpoint) so both point at the same AWS account or local server.

Two clients: boto3's for the rare administrative calls (queue creation, attributes, URLs),
and the lean one (`resources.sqs_client`) for the calls made per message. The lean one
takes its endpoint and signing region from boto3's, so botocore's resolver decides both:
every partition (China, GovCloud), FIPS and dual-stack endpoints, `AWS_ENDPOINT_URL_SQS`,
`AWS_DEFAULT_REGION` and the profile's region work alike for both.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from typing import Any

import boto3
import botocore.session
from dagster import ConfigurableResource
from pydantic import PrivateAttr

from resources import settings
from resources.sqs_client import SQSClient


@dataclass(frozen=True)
class QueueDepth:
    visible: int
    in_flight: int
    delayed: int
    dead_letter: int


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
    def from_env(cls) -> SQSResource:
        return cls(
            queue_name=settings.get("SQS_QUEUE_NAME"),
            dlq_name=settings.get("SQS_DLQ_NAME"),
            max_receive_count=settings.number("SQS_MAX_RECEIVE_COUNT"),
            region_name=settings.get("AWS_REGION"),
            endpoint_url=settings.get("AWS_ENDPOINT_URL"),
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

    def receive(self, max_messages: int = 10, wait_seconds: int = 20) -> list[dict[str, Any]]:
        response = self.client.receive_message(
            QueueUrl=self.url(),
            MaxNumberOfMessages=max_messages,
            WaitTimeSeconds=wait_seconds,
            AttributeNames=["ApproximateReceiveCount"],
        )
        return response.get("Messages", [])

    def delete(self, receipt_handle: str) -> None:
        self.client.delete_message(QueueUrl=self.url(), ReceiptHandle=receipt_handle)

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
