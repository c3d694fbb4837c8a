"""`GET /health` and `GET /stats`: is this instance able to work, and what has it done.

The worker processes report through their heartbeat rows (`webhook_workers`): a process
whose last beat is older than `STALE_SECONDS` counts as gone. Both also show the open
circuit breakers (sending is held in their scopes) and the organisations whose WhatsApp
account is not in good standing. An open breaker does not make this
instance unhealthy (it receives webhooks as before), so it does not change the status code.
"""

from __future__ import annotations

import logging
from collections import Counter

import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from resources import account, breakers, message_buffer, messages, safe_errors
from webhook_app import provider_errors
from webhook_app.runtime import Runtime

log = logging.getLogger(__name__)

STALE_SECONDS = 10
_LIVE_WORKERS = sa.text(
    "SELECT id, loops, counters FROM webhook_workers"
    " WHERE beat_at > now() - make_interval(secs => :stale) ORDER BY id"
)


def _live_workers(conn: sa.Connection) -> list[sa.Row]:
    return conn.execute(_LIVE_WORKERS, {"stale": STALE_SECONDS}).all()


def _inbox(conn: sa.Connection) -> dict:
    backlog, oldest = conn.execute(
        sa.text(
            "SELECT count(*), extract(epoch FROM now() - min(received_at))"
            " FROM webhook_inbox WHERE processed_at IS NULL"
        )
    ).one()
    return {"backlog": backlog, "oldest_unprocessed_age_s": round(float(oldest or 0), 3)}


async def health(request: Request) -> JSONResponse:
    runtime: Runtime = request.app.state.webhook

    def check() -> tuple[dict, list[sa.Row], list[dict], list[dict]]:
        with runtime.engine.connect() as conn:
            return _inbox(conn), _live_workers(conn), _breakers(conn), account.troubled(conn)

    try:
        inbox, live, open_breakers, accounts = await run_in_threadpool(check)
    except sa.exc.SQLAlchemyError as error:
        # The driver's message names the server and the user: the log has it, the
        # unauthenticated answer does not.
        log.warning("health: database unavailable: %s", safe_errors.describe(error))
        return JSONResponse(
            {"status": "unavailable", "database": f"unavailable ({type(error).__name__})"},
            status_code=503,
        )
    # Each loop of each live worker process; none at all means nobody processes the inbox.
    workers = {f"{w.id}/{name}": alive for w in live for name, alive in w.loops.items()}
    healthy = bool(workers) and all(workers.values())
    return JSONResponse(
        {
            "status": "ok" if healthy else "degraded",
            "database": "ok",
            "inbox": inbox,
            "workers": workers,
            "sending": _sending(open_breakers, accounts),
        },
        status_code=200 if healthy else 503,
    )


def _breakers(conn: sa.Connection) -> list[dict]:
    return [
        {
            "id": b.id,
            "scope": b.scope,
            "scope_key": b.scope_key,
            "error_code": b.error_code,
            "error_title": b.error_title,
            "closes_by": b.closes_by,
            "opened_at": b.opened_at.isoformat(),
        }
        for b in breakers.open_breakers(conn)
    ]


def _sending(open_breakers: list[dict], accounts: list[dict]) -> dict:
    """Open breakers hold sending; `accounts` are the organisations whose WhatsApp account
    is not in good standing (disabled, restricted, …), with the reason."""
    return {
        "status": "held" if open_breakers else "ok",
        "open_breakers": open_breakers,
        "accounts": accounts,
    }


async def stats(request: Request) -> JSONResponse:
    runtime: Runtime = request.app.state.webhook

    def read() -> dict:
        with runtime.engine.connect() as conn:
            live = _live_workers(conn)
            states = dict(
                conn.execute(
                    sa.text(
                        "SELECT CASE WHEN processed_at IS NULL THEN 'pending'"
                        " WHEN error IS NULL THEN 'processed' ELSE 'failed' END, count(*)"
                        " FROM webhook_inbox GROUP BY 1"
                    )
                ).all()
            )
            replies = messages.replies_by_sender(conn)
            return {
                "sending": _sending(_breakers(conn), account.troubled(conn)),
                "buffer": {"active_buffers": message_buffer.active_buffers(conn)},
                "inbox": {s: states.get(s, 0) for s in ("pending", "processed", "failed")},
                "provider_errors": provider_errors.by_code(conn),
                "replies_sent": replies,
                "workers": _worker_counters(live),
            }

    return JSONResponse(
        {
            **await run_in_threadpool(read),
            "this_instance": {"events_stored": runtime.writer.stored},
        }
    )


def _worker_counters(live: list[sa.Row]) -> dict:
    """What the live worker processes have done since they started, summed."""
    counters: Counter = Counter()
    for worker in live:
        counters.update(worker.counters)
    return {
        "processes": len(live),
        "events_processed": counters["events"],
        "duplicates_dropped": counters["duplicates_dropped"] + counters["duplicate_receipts"],
        "receipts_applied": counters["receipts"] + counters["receipts_applied_late"],
        "inbound_messages": counters["inbound"],
        "turns_answered": counters["turns"],
        "replies_sent": counters["replies_sent"],
        "replies_sent_from_outbox": counters["outbox_sent_late"],
        "fallback_replies": counters["fallback_replies"],
        "account_events": counters["account_events"],
        "provider_errors": counters["provider_errors"],
        "numbers_changed": counters["numbers_changed"],
        "contacts_merged": counters["contacts_merged"],
    }
