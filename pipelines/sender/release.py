"""Held rows back onto the queue once their hold is lifted.

A row is held (`pending`, `held_at` set, no payload on the queue) for a `hold_reason`:
its campaign is paused (or failed while it was sent), a circuit breaker on its scope is
open, its organisation's messaging limit is reached, or an operator asked for its failure
to be retried. Every
sender worker runs `release_due` every `SENDER_RELEASE_SECONDS`: it re-queues, from the
payload stored with each row, the rows whose campaign runs again and whose breaker closed,
each due probe, and as many messaging-limit rows as their organisation's window has room
for (all of them once the limit is unlimited).

Exactly once: the rows are locked (`SKIP LOCKED`, so workers share the work) until the
transaction that records the queueing commits. A payload that arrives before that commit
waits for it in the claim, which takes a held row whose hold is lifted; the claim's
compare-and-set on `pending` then lets only one copy through. A worker that dies after
SQS accepted a payload but before its commit leaves the row held: that payload still
claims it, and if the row is queued again meanwhile, the second copy finds it taken.

A row can also lose its payload while it is not held: SQS moves a payload to the
dead-letter queue after `SQS_MAX_RECEIVE_COUNT` receives, which a long database outage can
cause while the row stays `pending`, and a queue can be emptied. `requeue_lost` finds the
rows `pending`, not held, queued longer ago than `SENDER_REQUEUE_AFTER_SECONDS` (longer than
a payload waits on the queue) and not re-queued since, and queues each once more from its
stored payload. Should the first payload still turn up, the claim lets one copy through.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

from resources import breakers, held_messages
from resources.queue import Outgoing, SQSResource
from resources.queue_message import body, with_message_id

PAGE = 500

Find = Callable[[sa.Connection, int], list[sa.Row]]
Mark = Callable[[sa.Connection, list[int]], None]


def release_due(engine: sa.Engine, sqs: SQSResource) -> int:
    """Start due probes, then re-queue every releasable held row; how many were queued."""
    with engine.begin() as conn:
        for breaker in breakers.due_probes(conn):
            candidate = held_messages.probe_candidate(conn, breaker.id)
            if candidate is not None:
                breakers.claim_probe(conn, breaker.id, candidate)
    total = _release(engine, sqs, held_messages.lifted)
    with engine.connect() as conn:
        rooms = held_messages.rooms(conn)
    for organisation_id, room in rooms:
        if room is None or room > 0:
            total += _release(
                engine,
                sqs,
                lambda conn, n, o=organisation_id: held_messages.within_limit(conn, o, n),
                room,
            )
    return total


def requeue_lost(engine: sa.Engine, sqs: SQSResource, older_than_seconds: float) -> int:
    """Queue once more the rows whose payload has not been received for `older_than_seconds`
    since it was queued; how many were queued."""
    return _release(
        engine,
        sqs,
        lambda conn, n: held_messages.lost(conn, older_than_seconds, n),
        mark=held_messages.mark_requeued,
    )


def _release(
    engine: sa.Engine,
    sqs: SQSResource,
    find: Find,
    most: int | None = None,
    mark: Mark = held_messages.mark_released,
) -> int:
    """Queue the rows `find` finds, page by page (at most `most`), and `mark` them; how
    many were queued."""
    total = 0
    while most is None or total < most:
        page = PAGE if most is None else min(PAGE, most - total)
        found, queued = _release_page(engine, sqs, find, page, mark)
        total += queued
        if found < page or queued < found:  # the last page, or SQS refused some: next tick
            break
    return total


def _release_page(
    engine: sa.Engine, sqs: SQSResource, find: Find, page: int, mark: Mark
) -> tuple[int, int]:
    """One page of releasable rows queued; (rows found, rows queued). An entry SQS refuses
    stays held for the next tick; an unreachable queue raises, and nothing changes."""
    with engine.begin() as conn:
        rows = find(conn, page)
        again, unsendable = [], []
        for message_id, run_id, member_id, to, payload in rows:
            if not payload:
                unsendable.append(message_id)
                continue
            queued_body = with_message_id(body(payload), message_id)
            again.append(Outgoing(message_id, member_id, run_id, to, queued_body))
        if unsendable:
            held_messages.fail_unsendable(conn, unsendable, "no stored payload to queue again")
        queued = sqs.send_again(again)
        if queued:
            mark(conn, queued)
    return len(rows), len(queued)
