"""Makes moto's SQS fit to stand in for SQS: safe for concurrent consumers, and as fast at
thousands of messages as at ten. The local stack (`make dev`, the tests) and the
benchmarks' server both patch it with `patch_sqs()`, so every local queue behaves alike.

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
"""

from __future__ import annotations

import functools
import threading
import time
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

    def visible(queue) -> list:
        now = utils.unix_time_millis()
        return [m for m in queue._messages if now > m.visible_at and now >= m.delayed_until]

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


def _locked(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            return method(*args, **kwargs)

    return locked
