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

import sqlalchemy as sa

from resources import breakers
from resources.queue import Outgoing, SQSResource
from resources.queue_message import body, with_message_id

PAGE = 500

_PROBE_CANDIDATE = sa.text(
    "SELECT m.id FROM messages m JOIN campaign_runs r ON r.id = m.campaign_run_id"
    " JOIN campaigns c ON c.id = r.campaign_id"
    " WHERE m.breaker_id = :b AND m.held_at IS NOT NULL AND m.status = 'pending'"
    " AND c.status NOT IN ('paused', 'cancelled', 'failed') ORDER BY m.id LIMIT 1"
)
_RUNNING = (
    " FROM messages m JOIN campaign_runs r ON r.id = m.campaign_run_id"
    " JOIN campaigns c ON c.id = r.campaign_id"
    " LEFT JOIN circuit_breakers b ON b.id = m.breaker_id"
    " WHERE m.held_at IS NOT NULL AND m.status = 'pending'"
    " AND c.status NOT IN ('paused', 'cancelled', 'failed')"
)
_COLUMNS = "SELECT m.id, m.campaign_run_id, m.campaign_audience_id::text, m.peer_phone, m.payload"
_LIFTED = sa.text(
    _COLUMNS + _RUNNING + " AND m.hold_reason <> 'messaging_limit'"
    " AND (m.breaker_id IS NULL OR b.closed_at IS NOT NULL OR b.probe_message_id = m.id)"
    " ORDER BY m.id LIMIT :n FOR UPDATE OF m SKIP LOCKED"
)
# Room in each organisation's messaging window, for those with rows waiting for it (NULL:
# unlimited): its limit, less the recipients counted in the last 24 h and the payloads
# already on the queue (each will be counted when a sender admits it).
_ROOM = sa.text(
    "SELECT o.id, o.messaging_limit - (SELECT count(*) FROM messaging_window w"
    "   WHERE w.organisation_id = o.id AND w.counted_at > now() - interval '24 hours')"
    " - (SELECT count(*) FROM messages q WHERE q.organisation_id = o.id"
    "   AND q.status = 'pending' AND q.held_at IS NULL AND q.queued_at IS NOT NULL)"
    " FROM organisations o WHERE EXISTS (SELECT 1 FROM messages m"
    "   WHERE m.organisation_id = o.id AND m.hold_reason = 'messaging_limit'"
    "   AND m.status = 'pending')"
)
_WITHIN_LIMIT = sa.text(
    _COLUMNS + _RUNNING + " AND m.hold_reason = 'messaging_limit' AND m.organisation_id = :o"
    " ORDER BY m.id LIMIT :n FOR UPDATE OF m SKIP LOCKED"
)
_QUEUED = sa.text(
    "UPDATE messages SET held_at = NULL, hold_reason = NULL, queued_at = now(),"
    " requeued_at = NULL, status_reason = NULL"
    " WHERE id = ANY(:ids)"
)
_LOST = sa.text(
    _COLUMNS + " FROM messages m WHERE m.status = 'pending' AND m.held_at IS NULL"
    " AND m.queued_at < now() - make_interval(secs => :age) AND m.requeued_at IS NULL"
    " ORDER BY m.queued_at LIMIT :n FOR UPDATE OF m SKIP LOCKED"
)
_REQUEUED = sa.text(
    "UPDATE messages SET queued_at = now(), requeued_at = now() WHERE id = ANY(:ids)"
)
_UNSENDABLE = sa.text(
    "UPDATE messages SET status = 'failed', failed_at = now(), held_at = NULL,"
    " hold_reason = NULL,"
    " error_title = 'not queued', error_detail = :reason WHERE id = ANY(:ids)"
)


def release_due(engine: sa.Engine, sqs: SQSResource) -> int:
    """Start due probes, then re-queue every releasable held row; how many were queued."""
    with engine.begin() as conn:
        for breaker in breakers.due_probes(conn):
            candidate = conn.execute(_PROBE_CANDIDATE, {"b": breaker.id}).scalar_one_or_none()
            if candidate is not None:
                breakers.claim_probe(conn, breaker.id, candidate)
    total = _release(engine, sqs, _LIFTED, {})
    with engine.connect() as conn:
        rooms = conn.execute(_ROOM).all()
    for organisation_id, room in rooms:
        if room is None or room > 0:
            total += _release(engine, sqs, _WITHIN_LIMIT, {"o": organisation_id}, room)
    return total


def requeue_lost(engine: sa.Engine, sqs: SQSResource, older_than_seconds: float) -> int:
    """Queue once more the rows whose payload has not been received for `older_than_seconds`
    since it was queued; how many were queued."""
    return _release(engine, sqs, _LOST, {"age": older_than_seconds}, mark=_REQUEUED)


def _release(
    engine: sa.Engine,
    sqs: SQSResource,
    query: sa.TextClause,
    params: dict,
    most: int | None = None,
    mark: sa.TextClause = _QUEUED,
) -> int:
    """Queue the rows `query` finds, page by page (at most `most`), and `mark` them; how
    many were queued."""
    total = 0
    while most is None or total < most:
        page = PAGE if most is None else min(PAGE, most - total)
        found, queued = _release_page(engine, sqs, query, {**params, "n": page}, mark)
        total += queued
        if found < page or queued < found:  # the last page, or SQS refused some: next tick
            break
    return total


def _release_page(
    engine: sa.Engine, sqs: SQSResource, query: sa.TextClause, params: dict, mark: sa.TextClause
) -> tuple[int, int]:
    """One page of releasable rows queued; (rows found, rows queued). An entry SQS refuses
    stays held for the next tick; an unreachable queue raises, and nothing changes."""
    with engine.begin() as conn:
        rows = conn.execute(query, params).all()
        again, unsendable = [], []
        for message_id, run_id, member_id, to, payload in rows:
            if not payload:
                unsendable.append(message_id)
                continue
            queued_body = with_message_id(body(payload), message_id)
            again.append(Outgoing(message_id, member_id, run_id, to, queued_body))
        if unsendable:
            conn.execute(
                _UNSENDABLE, {"ids": unsendable, "reason": "no stored payload to queue again"}
            )
        queued = sqs.send_again(again)
        if queued:
            conn.execute(mark, {"ids": queued})
    return len(rows), len(queued)
