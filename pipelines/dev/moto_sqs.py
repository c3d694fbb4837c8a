"""Makes moto's SQS fit to stand in for SQS: safe for concurrent consumers, and as fast at
thousands of messages as at ten. The local S3/SQS server (`pipelines.dev.local_aws`), which
`make dev`, the tests and the benchmarks all run, patches it with `patch_sqs()`.

- moto's queues are not thread-safe. Its server runs each request in a thread of its own,
  and two receives at once could hand one message to both consumers, lose others, or count
  extra receives until a message went to the DLQ. One lock now serialises the operations
  on messages; a long poll waits for messages outside it, as SQS's does.
- moto computes every queue attribute (three full scans of the queue) for each message
  sent or received, which made a queue of n messages cost n² (2,000 payloads took minutes
  to enqueue); here only when a client asks for them with GetQueueAttributes. It also reads
  the clock once per message of each scan (here once per scan), lists its own package
  directory on every request (here once) and converts the same attribute names from
  camelCase on every message (here remembered).
- moto finds a message by its receipt handle (delete, change visibility) by scanning the
  queue and building a list of every message's handles, and checks a FIFO message's
  deduplication id against every message in the queue: both made a queue of n messages
  cost n². Here each queue keeps its receipt handles and deduplication ids in dicts.
  Deduplication is SQS's: an id is remembered for 5 minutes after the message it came with
  was accepted, whether or not that message was deleted since (moto forgot it on delete);
  a message moved to the dead-letter queue is not a new send and is never dropped.
- moto drew a receipt handle one random letter at a time (185 calls per message received)
  and computed every queue attribute to read the retention period of each message received;
  here one call, and the one attribute.
"""

from __future__ import annotations

import functools
import string
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

_LOCK = threading.RLock()
_OPERATIONS = (
    "send_message",
    "send_message_batch",
    "delete_message",
    "delete_message_batch",
    "change_message_visibility",
    "change_message_visibility_batch",
    "get_queue_attributes",
    "purge_queue",
)


def patch_sqs() -> None:
    """Patch moto's SQS in this process (once; later calls do nothing)."""
    from moto.sqs.models import SQSBackend

    if getattr(SQSBackend, "_patched", False):
        return
    _index_messages()
    _serialise(SQSBackend)
    _count_on_demand()
    SQSBackend._patched = True


def _serialise(backend: type) -> None:
    for name in _OPERATIONS:
        setattr(backend, name, _locked(getattr(backend, name)))
    receive = _locked(backend.receive_message)

    def receive_message(self, queue_name: str, count: int, wait_seconds: int, *args, **kwargs):
        deadline = time.monotonic() + wait_seconds
        while True:
            received = receive(self, queue_name, count, 0, *args, **kwargs)
            left = deadline - time.monotonic()
            if received or left <= 0:
                return received
            self.get_queue(queue_name).wait_for_messages(min(left, 1.0))

    backend.receive_message = receive_message


def _count_on_demand() -> None:
    from moto import backends
    from moto.core import responses, utils
    from moto.sqs import models
    from moto.sqs import responses as sqs_responses

    def visible(queue) -> _Visible:
        return _Visible(queue, utils.unix_time_millis())

    def delayed(queue) -> int:
        now = utils.unix_time_millis()
        return sum(now < m.delayed_until for m in queue._messages)

    def not_visible(queue) -> int:
        now = utils.unix_time_millis()
        return sum(now <= m.visible_at for m in queue._messages)

    models.Queue.messages = property(visible)
    asked = threading.local()
    for name, count in (
        ("approximate_number_of_messages", lambda queue: len(queue.messages)),
        ("approximate_number_of_messages_delayed", delayed),
        ("approximate_number_of_messages_not_visible", not_visible),
    ):
        setattr(
            models.Queue,
            name,
            property(lambda queue, count=count: count(queue) if getattr(asked, "on", False) else 0),
        )
    get_attributes = sqs_responses.SQSResponse.get_queue_attributes

    def get_queue_attributes(self):
        asked.on = True
        try:
            return get_attributes(self)
        finally:
            asked.on = False

    sqs_responses.SQSResponse.get_queue_attributes = get_queue_attributes
    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules
    remembered = functools.lru_cache(maxsize=None)(utils.camelcase_to_underscores)
    models.camelcase_to_underscores = remembered
    responses.camelcase_to_underscores = remembered


def _index_messages() -> None:
    from moto.core.utils import unix_time, unix_time_millis
    from moto.moto_api._internal import mock_random
    from moto.sqs import models
    from moto.sqs.exceptions import InvalidParameterValue, ReceiptHandleIsInvalid

    window_ms = models.DEDUPLICATION_TIME_IN_SECONDS * 1000

    def handles(queue) -> dict[str, Any]:
        """Every receipt handle a message now in `queue` was given, to that message."""
        if "_handles" not in queue.__dict__:
            queue._handles = {}
        return queue._handles

    def deduplication(queue) -> dict[str, int]:
        """Deduplication id to when it was first accepted (ms), oldest first."""
        if "_deduplication" not in queue.__dict__:
            queue._deduplication = {}
        return queue._deduplication

    def owner(message):
        # A weak reference: `deepcopy(message)` (each receive) keeps it as it is.
        ref = message.__dict__.get("_queue")
        return ref() if ref is not None else None

    def find(queue, receipt_handle: str):
        message = handles(queue).get(receipt_handle)
        if message is None or owner(message) is not queue:
            raise ReceiptHandleIsInvalid()
        return message

    add_message = models.Queue.add_message

    def add(queue, message) -> None:
        if queue.lambda_event_source_mappings:  # never set up locally: moto's own way
            add_message(queue, message)
            return
        moved = owner(message) is not None  # to the dead-letter queue: not a new send
        if queue.fifo_queue and message.deduplication_id and not moved:
            seen = deduplication(queue)
            now = message.sent_timestamp
            while seen:
                oldest, at = next(iter(seen.items()))
                if now - at < window_ms:
                    break
                del seen[oldest]
            if message.deduplication_id in seen:
                return  # accepted, not delivered: as SQS does
            seen[message.deduplication_id] = now
        message._queue = weakref.ref(queue)
        with queue._messages_lock:
            queue._messages.append(message)
            queue._messages_lock.notify_all()

    def delete(queue, receipt_handle: str) -> None:
        if receipt_handle in queue.deleted_messages:
            return  # deleted already: SQS accepts it again
        message = find(queue, receipt_handle)
        try:
            queue._messages.remove(message)
        except ValueError:
            raise ReceiptHandleIsInvalid() from None
        queue.pending_messages.discard(message)
        every = message.all_receipt_handles
        queue.deleted_messages.update(every)
        known = handles(queue)
        for handle in every:
            known.pop(handle, None)

    mark_received = models.Message.mark_received

    def received(message, visibility_timeout: int | None = None) -> None:
        mark_received(message, visibility_timeout)
        queue = owner(message)
        if queue is not None:
            handles(queue)[message.receipt_handle] = message

    def change_message_visibility(
        self, queue_name: str, receipt_handle: str, visibility_timeout: int
    ) -> None:
        queue = self.get_queue(queue_name)
        message = find(queue, receipt_handle)
        until = unix_time_millis() + int(visibility_timeout) * 1000
        if until - message.sent_timestamp > 43200 * 1000:
            raise InvalidParameterValue(
                f"Value {visibility_timeout} for parameter VisibilityTimeout is invalid. Reason:"
                " Total VisibilityTimeout for the message is beyond the limit [43200 seconds]"
            )
        message.change_visibility(visibility_timeout)
        if message.visible and message in queue.pending_messages:
            queue.pending_messages.remove(message)

    purge_queue = models.SQSBackend.purge_queue

    def purge(self, queue_name: str) -> None:
        purge_queue(self, queue_name)
        queue = self.get_queue(queue_name)
        handles(queue).clear()
        deduplication(queue).clear()

    def retained(self, queue_name: str, message) -> bool:
        retention = int(self.get_queue(queue_name).message_retention_period)
        return retention + message.sent_timestamp / 1000 > unix_time()

    def receipt_handle() -> str:
        return "".join(mock_random.choices(string.ascii_lowercase, k=185))

    models.Queue.add_message = add
    models.Queue.delete_message = delete
    models.Message.mark_received = received
    models.SQSBackend.change_message_visibility = change_message_visibility
    models.SQSBackend.purge_queue = purge
    models.SQSBackend.is_message_valid_based_on_retention_period = retained
    models.generate_receipt_handle = receipt_handle


class _Visible:
    """A queue's visible messages, found as they are read: a receive stops at its tenth."""

    __slots__ = ("_now", "_queue")

    def __init__(self, queue: Any, now: float) -> None:
        self._queue, self._now = queue, now

    def __iter__(self):
        now = self._now
        return (m for m in self._queue._messages if now > m.visible_at and now >= m.delayed_until)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __bool__(self) -> bool:
        return any(True for _ in self)


def _locked(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            return method(*args, **kwargs)

    return locked
