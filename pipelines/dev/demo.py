"""Demo data for `make dev`, and the headless end-to-end run behind `make demo`.

The demo is what a new user sees first: one organisation with an approved campaign whose
template has a media generator and 50 audience members (fictional 555-01xx numbers).
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import sqlalchemy as sa

from pipelines.dev import conversation_demo as webhook_demo
from resources import audience, campaigns, messages, settings
from resources.postgres import PostgresResource

DEMO_ORGANISATION = "Demo organisation"
DEMO_GENERATOR = (
    Path(__file__).resolve().parents[2] / "assets_defs" / "generators" / "demo_offer.py"
)
OFFERS = ("20% off your next order", "Free delivery this week", "A gift with your next visit")


def demo_members(count: int = 50) -> list[campaigns.Member]:
    return [
        campaigns.Member(
            msisdn=f"+1202555{100 + i:04d}",
            name=f"Customer {i + 1}",
            attributes={"offer": OFFERS[i % len(OFFERS)], "code": f"DEMO{i + 1:03d}"},
        )
        for i in range(count)
    ]


def add_demo_template(conn: sa.Connection, organisation_id: UUID) -> int:
    """The demo's `demo_offer` template for the organisation, with its offer-card generator."""
    template = campaigns.create_template(
        conn,
        organisation_id,
        "demo_offer",
        message_type="image",
        body="Hi {{1}}, {{2}}! Show the code in the picture at checkout.",
        parameters=[
            {"type": "header", "valueType": "image", "source": "asset.image"},
            {"type": "body", "valueType": "text", "source": "contact.name"},
            {"type": "body", "valueType": "text", "source": "attributes.offer"},
        ],
    )
    campaigns.add_generator(
        conn,
        template,
        DEMO_GENERATOR.name,
        DEMO_GENERATOR.read_text(),
        "Offer card with QR code",
    )
    return template


def load_demo(engine: sa.Engine, members: int = 50, approved: bool = True) -> UUID:
    """Create the demo organisation and its campaign, once; returns the campaign id.

    The campaign is approved, unless `approved=False` leaves it a draft for the operator API
    to approve (as the production topology's test does)."""
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtext('load_demo'))"))
        existing = conn.execute(
            sa.text(
                "SELECT c.id FROM campaigns c JOIN organisations o ON o.id = c.organisation_id"
                " WHERE o.name = :n ORDER BY c.created_at LIMIT 1"
            ),
            {"n": DEMO_ORGANISATION},
        ).scalar_one_or_none()
        if existing is not None:
            return existing
        org = campaigns.create_organisation(conn, DEMO_ORGANISATION)
        phone_number_id = settings.get("WHATSAPP_PHONE_NUMBER_ID")
        campaigns.add_phone_number(conn, org, phone_number_id)
        return add_demo_campaign(conn, org, phone_number_id, "Demo offer", members, approved)


def add_demo_campaign(
    conn: sa.Connection,
    organisation_id: UUID,
    phone_number_id: str,
    name: str,
    members: int,
    approved: bool,
) -> UUID:
    """The demo's template (with its generator) and a campaign of `members` demo members on
    it, sent from `phone_number_id`: approved, or left a draft."""
    template = add_demo_template(conn, organisation_id)
    campaign = campaigns.create_campaign(
        conn,
        organisation_id,
        name,
        message_type="template",
        template_id=template,
        phone_number_id=phone_number_id,
    )
    campaigns.add_audience(conn, campaign, demo_members(members))
    if approved:
        campaigns.set_campaign_status(conn, campaign, "approved")
    return campaign


def messaging_limit_note(engine: sa.Engine, campaign_id: UUID, api_url: str) -> str:
    """What `make dev` says about the demo organisation's messaging limit: it holds a
    campaign bigger than the tier, and must match the tier WhatsApp granted."""
    with engine.connect() as conn:
        organisation_id, limit = conn.execute(
            sa.text(
                "SELECT o.id, o.messaging_limit FROM organisations o"
                " JOIN campaigns c ON c.organisation_id = o.id WHERE c.id = :c"
            ),
            {"c": campaign_id},
        ).one()
    if limit is None:
        return f"demo organisation {organisation_id}: no messaging limit (unlimited tier)"
    return (
        f"demo organisation {organisation_id} may message {limit:,} new recipients per 24 h"
        " (its WhatsApp messaging limit; more wait, held, until the window frees room)."
        f" To raise it to the tier WhatsApp granted: curl -X PATCH {api_url}/api/organisations/"
        f"{organisation_id} -H 'Authorization: Bearer $ADMIN_API_TOKEN'"
        " -d '{\"messaging_limit\": 2000}', or waflow campaigns update-organisation"
        f" {organisation_id} --messaging-limit 2000"
    )


def dispatch_demo(engine: sa.Engine, campaign_id: UUID) -> None:
    """What the campaign-run sensor and `dispatched_batches` do in `make dev`, run once."""
    import dagster as dg

    from assets_defs.dispatch.asset import dispatched_batches
    from assets_defs.dispatch.planner import plan_tick
    from assets_defs.partitions import campaign_partition_key
    from pipelines.definitions import resources

    plan = plan_tick(engine, datetime.now(UTC))
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(
        "campaigns", sorted({campaign_partition_key(r.campaign_id) for r in plan.to_launch})
    )
    for run in plan.to_launch:
        dg.materialize(
            [dispatched_batches],
            partition_key=dg.MultiPartitionKey(
                {
                    "campaign": campaign_partition_key(run.campaign_id),
                    "date": run.run_date.isoformat(),
                }
            ),
            resources=resources(),
            instance=instance,
        )


def next_sensor_tick(engine: sa.Engine) -> None:
    """The campaign-run sensor's next tick: a run whose messages are all out completes,
    and the one-off campaign with it."""
    from assets_defs.dispatch.planner import plan_tick

    plan_tick(engine, datetime.now(UTC))


def summary(engine: sa.Engine, campaign_id: UUID) -> dict[str, Any]:
    with engine.connect() as conn:
        campaign = campaigns.get_campaign(conn, campaign_id)
        counts = campaigns.audience_counts(conn, campaign_id)
        migrations = conn.execute(sa.text("SELECT count(*) FROM schema_migrations")).scalar_one()
        runs, queued, failed, skipped = conn.execute(
            sa.text(
                "SELECT count(*), COALESCE(sum(queued), 0), COALESCE(sum(failed), 0),"
                " COALESCE(sum(skipped), 0) FROM campaign_runs WHERE campaign_id = :c"
            ),
            {"c": campaign_id},
        ).one()
        media_generated, media_failed = audience.media_outcomes(conn, campaign_id)
        conversations = webhook_demo.summary(conn)
    return {
        "campaign_id": str(campaign_id),
        "campaign_status": campaign.status if campaign else None,
        "audience": sum(counts.values()),
        "audience_by_status": counts,
        "migrations": migrations,
        "media_generated": media_generated,
        "media_failed": media_failed,
        "campaign_runs": runs,
        "messages_queued": queued,
        "messages_failed": failed,
        "messages_skipped": skipped,
        **conversations,
    }


def generate_demo_media(campaign_id: UUID) -> None:
    """Materialise `campaign_media` for the campaign, as the approval sensor's run would."""
    import dagster as dg

    from assets_defs.media import campaign_media
    from assets_defs.partitions import campaign_partition_key, campaign_partitions
    from pipelines.definitions import resources

    key = campaign_partition_key(campaign_id)
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(campaign_partitions.name, [key])
        dg.materialize(
            [campaign_media], partition_key=key, resources=resources(), instance=instance
        )


def archive_demo(postgres: PostgresResource, campaign_id: UUID) -> dict[str, int]:
    """Messages and media dated past their thresholds, archived by the archive assets."""
    from assets_defs.archive.demo import archive_history
    from resources.storage import S3Storage

    with postgres.engine.connect() as conn:
        campaign = campaigns.get_campaign(conn, campaign_id)
    return archive_history(
        postgres,
        S3Storage.from_settings(),
        campaign.organisation_id,
        settings.get("WHATSAPP_PHONE_NUMBER_ID"),
    )


def send_queued(engine: sa.Engine, campaign_id: UUID) -> dict[str, int]:
    """Run one sender worker until the queue is empty; without `WHATSAPP_ACCESS_TOKEN` it
    is in dev mode, so nothing leaves the machine."""
    from pipelines.sender.worker import SenderConfig, Worker
    from resources.queue import SQSResource
    from resources.whatsapp import WhatsAppResource

    client = WhatsAppResource.from_settings().client
    try:
        Worker(
            engine, SQSResource.from_settings(), client, SenderConfig(lanes=2, wait_seconds=1)
        ).run(drain=True)
    finally:
        client.close()
    with engine.connect() as conn:
        counts = messages.status_counts(conn, campaign_id)
    return {"messages_sent": counts.get("sent", 0), "send_failed": counts.get("failed", 0)}


def run_demo(state_dir: Path | None = None) -> dict[str, Any]:
    """The whole flow once, headless, on a fresh embedded stack: in a temporary folder, or
    in `state_dir` (which keeps its logs) when given."""
    from pipelines.dev.local_stack import local_stack

    started = time.monotonic()
    with contextlib.ExitStack() as scope:
        state = state_dir or Path(
            scope.enter_context(tempfile.TemporaryDirectory(prefix="waflow-demo-"))
        )
        scope.enter_context(local_stack(state))
        postgres = PostgresResource.from_settings()
        campaign_id = load_demo(postgres.engine)
        generate_demo_media(campaign_id)
        dispatch_demo(postgres.engine, campaign_id)
        sending = send_queued(postgres.engine, campaign_id)
        next_sensor_tick(postgres.engine)
        webhook_demo.run(postgres.engine, campaign_id)
        result = summary(postgres.engine, campaign_id)
        result.update(sending)
        result.update(archive_demo(postgres, campaign_id))
        postgres.engine.dispose()
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def print_summary(result: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
