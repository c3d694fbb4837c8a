"""`GET /health` and `GET /stats`: is this instance able to work, and what has it done."""

from __future__ import annotations

import sqlalchemy as sa
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from webhook_app import buffer
from webhook_app.runtime import Runtime


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

    def check() -> dict:
        with runtime.engine.connect() as conn:
            return _inbox(conn)

    try:
        inbox = await run_in_threadpool(check)
    except sa.exc.SQLAlchemyError as error:
        reason = str(error.orig if hasattr(error, "orig") else error).splitlines()[0]
        return JSONResponse({"status": "unavailable", "database": reason}, status_code=503)
    workers = runtime.workers_alive()
    healthy = all(workers.values())
    return JSONResponse(
        {
            "status": "ok" if healthy else "degraded",
            "database": "ok",
            "inbox": inbox,
            "workers": workers,
        },
        status_code=200 if healthy else 503,
    )


async def stats(request: Request) -> JSONResponse:
    runtime: Runtime = request.app.state.webhook

    def read() -> dict:
        with runtime.engine.connect() as conn:
            states = dict(
                conn.execute(
                    sa.text(
                        "SELECT CASE WHEN processed_at IS NULL THEN 'pending'"
                        " WHEN error IS NULL THEN 'processed' ELSE 'failed' END, count(*)"
                        " FROM webhook_inbox GROUP BY 1"
                    )
                ).all()
            )
            replies = dict(
                conn.execute(
                    sa.text(
                        "SELECT sender_type, count(*) FROM messages WHERE direction = 'outbound'"
                        " AND sender_type IN ('ai', 'operator', 'system') GROUP BY 1"
                    )
                ).all()
            )
            return {
                "buffer": {"active_buffers": buffer.active_buffers(conn)},
                "inbox": {s: states.get(s, 0) for s in ("pending", "processed", "failed")},
                "replies_sent": replies,
            }

    counters = runtime.counters
    return JSONResponse(
        {
            **await run_in_threadpool(read),
            "this_instance": {
                "events_stored": runtime.writer.stored,
                "events_processed": counters["events"],
                "duplicates_dropped": counters["duplicates_dropped"]
                + counters["duplicate_receipts"],
                "receipts_applied": counters["receipts"] + counters["receipts_applied_late"],
                "inbound_messages": counters["inbound"],
                "turns_answered": counters["turns"],
                "replies_sent": counters["replies_sent"],
                "fallback_replies": counters["fallback_replies"],
            },
        }
    )
