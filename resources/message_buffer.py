"""The per-customer message buffer (seed 4), kept in Postgres instead of Redis.

A conversation's unhandled inbound messages form its next turn. The turn is due once the
customer has been quiet for the window (default 3 s) — or has kept typing for the longest
wait — and is claimed with a lease on the conversation, so one instance answers it even
when several run; a lease whose holder died expires and the turn is answered again.

An agent whose model sees media (`await_media`) also waits for the turn's inbound media to
reach our bucket: until each has had its first copy attempt, or for the longest wait.
"""

from __future__ import annotations

import sqlalchemy as sa

_CLAIM = sa.text(
    """
    WITH waiting AS (
        SELECT conversation_id, min(created_at) AS first, max(created_at) AS last
        FROM messages WHERE direction = 'inbound' AND handled_at IS NULL
        GROUP BY conversation_id
    ), due AS (
        SELECT c.id FROM conversations c JOIN waiting w ON w.conversation_id = c.id
        WHERE (w.last <= clock_timestamp() - make_interval(secs => :window)
               OR w.first <= clock_timestamp() - make_interval(secs => :max_wait))
          AND (c.agent_lease_until IS NULL OR c.agent_lease_until < clock_timestamp())
          AND (NOT :await_media
               OR w.first <= clock_timestamp() - make_interval(secs => :max_wait)
               OR NOT EXISTS (
                   SELECT 1 FROM messages m JOIN media md ON md.message_id = m.id
                   WHERE m.conversation_id = c.id AND m.direction = 'inbound'
                     AND m.handled_at IS NULL AND md.status = 'pending' AND md.attempts = 0))
        ORDER BY w.first LIMIT :n
        FOR UPDATE OF c SKIP LOCKED
    )
    UPDATE conversations c SET agent_lease_until = clock_timestamp() + make_interval(secs => :lease)
    FROM due WHERE c.id = due.id
    RETURNING c.id
    """
)


def claim_due(
    engine: sa.Engine,
    window: float,
    max_wait: float,
    lease: float,
    limit: int = 8,
    await_media: bool = False,
) -> list[int]:
    """Conversations whose turn is due, now leased to the caller for `lease` seconds."""
    params = {
        "window": window,
        "max_wait": max_wait,
        "lease": lease,
        "n": limit,
        "await_media": await_media,
    }
    with engine.begin() as conn:
        return list(conn.execute(_CLAIM, params).scalars())


def release(conn: sa.Connection, conversation_id: int) -> None:
    """The turn is answered: its conversation's next turn may be claimed as soon as it is
    due (in the transaction that marks the turn's messages handled)."""
    conn.execute(
        sa.text("UPDATE conversations SET agent_lease_until = NULL WHERE id = :id"),
        {"id": conversation_id},
    )


def release_later(engine: sa.Engine, conversation_id: int, seconds: float) -> None:
    """After a failed turn: try again in `seconds`, not in a tight loop."""
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE conversations SET agent_lease_until ="
                " clock_timestamp() + make_interval(secs => :s) WHERE id = :id"
            ),
            {"s": seconds, "id": conversation_id},
        )


def active_buffers(conn: sa.Connection) -> int:
    """Conversations with messages waiting for an answer."""
    return conn.execute(
        sa.text(
            "SELECT count(DISTINCT conversation_id) FROM messages"
            " WHERE direction = 'inbound' AND handled_at IS NULL"
        )
    ).scalar_one()
