"""Demo data for `make dev`, and the headless end-to-end run behind `make demo`.

The demo is what a new user sees first: one organisation with an approved campaign whose
template has a media generator and 50 audience members (fictional 555-01xx numbers).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import sqlalchemy as sa

from resources import campaigns, settings
from resources.postgres import PostgresResource

DEMO_ORGANISATION = "Demo organisation"
DEMO_GENERATOR = (
    Path(__file__).resolve().parent.parent / "assets_defs" / "generators" / "demo_offer.py"
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


def load_demo(engine: sa.Engine, members: int = 50) -> UUID:
    """Create the demo organisation and its approved campaign, once; returns the campaign id."""
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
        template = campaigns.create_template(
            conn,
            org,
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
        campaign = campaigns.create_campaign(
            conn,
            org,
            "Demo offer",
            message_type="template",
            template_id=template,
            phone_number_id=phone_number_id,
        )
        campaigns.add_audience(conn, campaign, demo_members(members))
        campaigns.set_campaign_status(conn, campaign, "approved")
        return campaign


def summary(engine: sa.Engine, campaign_id: UUID) -> dict[str, Any]:
    with engine.connect() as conn:
        campaign = campaigns.get_campaign(conn, campaign_id)
        counts = campaigns.audience_counts(conn, campaign_id)
        migrations = conn.execute(sa.text("SELECT count(*) FROM schema_migrations")).scalar_one()
    return {
        "campaign_id": str(campaign_id),
        "campaign_status": campaign.status if campaign else None,
        "audience": sum(counts.values()),
        "audience_by_status": counts,
        "migrations": migrations,
    }


def queue_demo_messages(engine: sa.Engine, campaign_id: UUID) -> int:
    """Queue one seed-3 payload per demo member, as the dispatch step does (a stand-in until
    the dispatch capability runs in the demo): a `pending` message row per member of today's
    run, then its payload with `messageId` and `phoneNumberId`."""
    from resources.queue import SQSResource
    from resources.storage import S3Storage

    with engine.begin() as conn:
        run_id = conn.execute(
            sa.text(
                "INSERT INTO campaign_runs (campaign_id, run_date, status) VALUES (:c, current_date,"
                " 'dispatched') ON CONFLICT (campaign_id, run_date) DO UPDATE SET status = 'dispatched'"
                " RETURNING id"
            ),
            {"c": campaign_id},
        ).scalar_one()
        rows = conn.execute(
            sa.text(
                "INSERT INTO messages (organisation_id, contact_id, campaign_run_id,"
                " campaign_audience_id, direction, sender_type, phone_number_id, peer_phone,"
                " message_type, status)"
                " SELECT c.organisation_id, a.contact_id, :r, a.id, 'outbound', 'campaign',"
                " c.phone_number_id, a.msisdn, 'template', 'pending'"
                " FROM campaign_audience a JOIN campaigns c ON c.id = a.campaign_id"
                " WHERE a.campaign_id = :c ON CONFLICT DO NOTHING"
                " RETURNING id, campaign_audience_id, peer_phone, organisation_id, phone_number_id"
            ),
            {"r": run_id, "c": campaign_id},
        ).all()
        members = {
            str(m.id): m
            for m in conn.execute(
                sa.text(
                    "SELECT id, name, attributes FROM campaign_audience WHERE campaign_id = :c"
                ),
                {"c": campaign_id},
            )
        }
    s3, sqs = S3Storage.from_env(), SQSResource.from_env()
    entries = []
    for row in rows:
        member = members[str(row.campaign_audience_id)]
        image = s3.presigned_url(f"campaigns/{campaign_id}/{member.id}/image.jpg", 7 * 24 * 3600)
        body = {
            "organizationId": str(row.organisation_id),
            "campaignId": str(campaign_id),
            "campaignAudienceId": str(member.id),
            "to": row.peer_phone,
            "templateName": "demo_offer",
            "templateLanguage": "en",
            "templateParameters": [
                {"type": "header", "valueType": "image", "value": image},
                {"type": "body", "valueType": "text", "value": member.name},
                {"type": "body", "valueType": "text", "value": member.attributes["offer"]},
            ],
            "messageId": row.id,
            "phoneNumberId": row.phone_number_id,
        }
        entries.append(
            {
                "Id": str(len(entries) % 10),
                "MessageBody": json.dumps(body),
                "MessageGroupId": row.peer_phone.lstrip("+"),
                "MessageDeduplicationId": f"{run_id}-{member.id}",
            }
        )
    for start in range(0, len(entries), 10):
        sqs.send_batch(entries[start : start + 10])
    return len(entries)


def send_queued(engine: sa.Engine, campaign_id: UUID) -> dict[str, int]:
    """Run one sender worker until the queue is empty; without `WHATSAPP_ACCESS_TOKEN` it
    is in dev mode, so nothing leaves the machine."""
    from pipelines.sender.worker import SenderConfig, Worker
    from resources.queue import SQSResource
    from resources.whatsapp import WhatsAppResource

    client = WhatsAppResource.from_env().client
    Worker(engine, SQSResource.from_env(), client, SenderConfig(lanes=2, wait_seconds=1)).run(
        drain=True
    )
    with engine.connect() as conn:
        counts = dict(
            conn.execute(
                sa.text(
                    "SELECT m.status, count(*) FROM messages m JOIN campaign_runs r"
                    " ON r.id = m.campaign_run_id WHERE r.campaign_id = :c GROUP BY m.status"
                ),
                {"c": campaign_id},
            ).all()
        )
    return {"messages_sent": counts.get("sent", 0), "send_failed": counts.get("failed", 0)}


def run_demo() -> dict[str, Any]:
    """The whole flow once, headless, on a fresh embedded stack."""
    from pipelines.local_stack import local_stack

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="waflow-demo-") as state, local_stack(Path(state)):
        postgres = PostgresResource.from_env()
        campaign_id = load_demo(postgres.engine)
        queue_demo_messages(postgres.engine, campaign_id)
        sending = send_queued(postgres.engine, campaign_id)
        result = summary(postgres.engine, campaign_id)
        result.update(sending)
        postgres.engine.dispose()
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def print_summary(result: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
