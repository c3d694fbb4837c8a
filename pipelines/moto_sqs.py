"""Makes moto's SQS safe for concurrent consumers, for the local stack and the benchmarks.

moto's queues are not thread-safe. Its server runs each request in a thread of its own, and
two receives at once could hand one message to both consumers, lose others, or count extra
receives until a message went to the DLQ. One lock now serialises the operations on
messages; a long poll waits for messages outside it, as SQS's does.
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


def serialise_queue_operations() -> None:
    """Patch moto's SQS backend in this process (once; later calls do nothing)."""
    from moto.sqs.models import SQSBackend

    if getattr(SQSBackend, "_serialised", False):
        return
    for name in _OPERATIONS:
        setattr(SQSBackend, name, _locked(getattr(SQSBackend, name)))
    receive = _locked(SQSBackend.receive_message)

    def receive_message(self, queue_name: str, count: int, wait_seconds: int, *args, **kwargs):
        deadline = time.monotonic() + wait_seconds
        while True:
            received = receive(self, queue_name, count, 0, *args, **kwargs)
            left = deadline - time.monotonic()
            if received or left <= 0:
                return received
            self.get_queue(queue_name).wait_for_messages(min(left, 1.0))

    SQSBackend.receive_message = receive_message
    SQSBackend._serialised = True


def _locked(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def locked(*args: Any, **kwargs: Any) -> Any:
        with _LOCK:
            return method(*args, **kwargs)

    return locked
