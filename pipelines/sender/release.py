"""Held rows back onto the queue once their hold is lifted.

A row is held (`pending`, `held_at` set, no payload on the queue) while its campaign is
paused, while a circuit breaker on its scope is open, or after an operator asked for its
failure to be retried. Every sender worker runs `release_due` every
`SENDER_RELEASE_SECONDS`: it re-queues the rows whose campaign runs again and whose breaker
closed, plus each due probe, from the payload stored with the row.

Exactly once: the rows are locked (`SKIP LOCKED`, so workers share the work) until the
transaction that records the queueing commits. A payload that arrives before that commit
waits for it in the claim, which takes a held row whose hold is lifted; the claim's
compare-and-set on `pending` then lets only one copy through. A worker that dies after
SQS accepted a payload but before its commit leaves the row held: that payload still
claims it, and if the row is queued again meanwhile, the second copy finds it taken.
"""

from __future__ import annotations

import json
import uuid

import sqlalchemy as sa

from resources import breakers
from resources.queue import SQSResource

PAGE = 500

_PROBE_CANDIDATE = sa.text(
    "SELECT m.id FROM messages m JOIN campaign_runs r ON r.id = m.campaign_run_id"
    " JOIN campaigns c ON c.id = r.campaign_id"
    " WHERE m.breaker_id = :b AND m.held_at IS NOT NULL AND m.status = 'pending'"
    " AND c.status NOT IN ('paused', 'cancelled') ORDER BY m.id LIMIT 1"
)
_RELEASABLE = sa.text(
    "SELECT m.id, m.campaign_run_id, m.campaign_audience_id::text, m.peer_phone, m.payload"
    " FROM messages m JOIN campaign_runs r ON r.id = m.campaign_run_id"
    " JOIN campaigns c ON c.id = r.campaign_id"
    " LEFT JOIN circuit_breakers b ON b.id = m.breaker_id"
    " WHERE m.held_at IS NOT NULL AND m.status = 'pending'"
    " AND c.status NOT IN ('paused', 'cancelled')"
    " AND (m.breaker_id IS NULL OR b.closed_at IS NOT NULL OR b.probe_message_id = m.id)"
    " ORDER BY m.id LIMIT :n FOR UPDATE OF m SKIP LOCKED"
)
_QUEUED = sa.text(
    "UPDATE messages SET held_at = NULL, queued_at = now(), status_reason = NULL"
    " WHERE id = ANY(:ids)"
)
_UNSENDABLE = sa.text(
    "UPDATE messages SET status = 'failed', failed_at = now(), held_at = NULL,"
    " error_title = 'not queued', error_detail = :reason WHERE id = ANY(:ids)"
)


def release_due(engine: sa.Engine, sqs: SQSResource) -> int:
    """Start due probes, then re-queue every releasable held row; how many were queued."""
    with engine.begin() as conn:
        for breaker in breakers.due_probes(conn):
            candidate = conn.execute(_PROBE_CANDIDATE, {"b": breaker.id}).scalar_one_or_none()
            if candidate is not None:
                breakers.claim_probe(conn, breaker.id, candidate)
    total = 0
    while True:
        found, queued = _release_page(engine, sqs)
        total += queued
        if found < PAGE or queued < found:  # the last page, or SQS refused some: next tick
            return total


def _release_page(engine: sa.Engine, sqs: SQSResource) -> tuple[int, int]:
    """One page of releasable rows queued; (rows found, rows queued). An entry SQS refuses
    stays held for the next tick; an unreachable queue raises, and nothing changes."""
    with engine.begin() as conn:
        rows = conn.execute(_RELEASABLE, {"n": PAGE}).all()
        entries, unsendable = [], []
        for message_id, run_id, member_id, to, payload in rows:
            if not payload:
                unsendable.append(message_id)
                continue
            body = json.dumps({**payload, "messageId": message_id}, separators=(",", ":"))
            # A fresh deduplication id: the queue would drop a copy of the first one.
            dedup = f"{run_id}-{member_id}-{uuid.uuid4().hex[:12]}"
            entries.append(sqs.entry(message_id, body, to, dedup))
        if unsendable:
            conn.execute(
                _UNSENDABLE, {"ids": unsendable, "reason": "no stored payload to queue again"}
            )
        queued = []
        for start in range(0, len(entries), 10):
            answer = sqs.send_batch(entries[start : start + 10])
            queued += [int(ok["Id"]) for ok in answer.get("Successful", [])]
        if queued:
            conn.execute(_QUEUED, {"ids": queued})
    return len(rows), len(queued)
