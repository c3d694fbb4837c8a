"""Each campaign's status and message funnel, for the operator console's campaigns view:
how many recipients were queued, and how far their messages got (sent, delivered, read),
or why not (failed, skipped). One query for the page, not one per campaign."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from resources.campaign_control import PAUSABLE

STAGES = ("queued", "sent", "delivered", "read", "failed", "skipped")

_FUNNELS = sa.text(
    "SELECT c.id::text AS id, c.name, c.status, c.status_reason, c.recurrence, c.created_at,"
    " coalesce(m.queued, 0) AS queued, coalesce(m.sent, 0) AS sent,"
    " coalesce(m.delivered, 0) AS delivered, coalesce(m.read, 0) AS read,"
    " coalesce(m.failed, 0) AS failed,"
    " coalesce(m.skipped, 0) + coalesce(a.skipped, 0) AS skipped"
    " FROM campaigns c"
    " LEFT JOIN LATERAL (SELECT count(*) AS queued,"
    "   count(*) FILTER (WHERE x.status IN ('sent', 'delivered', 'read')) AS sent,"
    "   count(*) FILTER (WHERE x.status IN ('delivered', 'read')) AS delivered,"
    "   count(*) FILTER (WHERE x.status = 'read') AS read,"
    "   count(*) FILTER (WHERE x.status = 'failed') AS failed,"
    "   count(*) FILTER (WHERE x.status = 'skipped') AS skipped"
    "   FROM messages x JOIN campaign_runs r ON r.id = x.campaign_run_id"
    "   WHERE r.campaign_id = c.id) m ON true"
    " LEFT JOIN LATERAL (SELECT count(*) AS skipped FROM campaign_audience ca"
    "   WHERE ca.campaign_id = c.id AND ca.status = 'skipped') a ON true"
    " WHERE CAST(:o AS uuid) IS NULL OR c.organisation_id = CAST(:o AS uuid)"
    " ORDER BY c.created_at DESC, c.id LIMIT :n"
)


def campaign_funnels(
    engine: sa.Engine, organisation_id: str | None, limit: int = 100
) -> list[dict[str, Any]]:
    """The newest campaigns with their funnel and the controls their status allows."""
    with engine.connect() as conn:
        rows = conn.execute(_FUNNELS, {"o": organisation_id, "n": limit}).mappings().all()
    return [
        {
            **row,
            "funnel": {stage: row[stage] for stage in STAGES},
            "actions": [
                action
                for action, allowed in (
                    ("pause", row["status"] in PAUSABLE),
                    ("resume", row["status"] == "paused"),
                    ("cancel", row["status"] not in ("completed", "cancelled", "failed")),
                )
                if allowed
            ],
        }
        for row in rows
    ]
