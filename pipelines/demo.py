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
from webhook_app import demo as webhook_demo

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
        conversations = webhook_demo.summary(conn)
    return {
        "campaign_id": str(campaign_id),
        "campaign_status": campaign.status if campaign else None,
        "audience": sum(counts.values()),
        "audience_by_status": counts,
        "migrations": migrations,
        **conversations,
    }


def run_demo() -> dict[str, Any]:
    """The whole flow once, headless, on a fresh embedded stack."""
    from pipelines.local_stack import local_stack

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="waflow-demo-") as state, local_stack(Path(state)):
        postgres = PostgresResource.from_env()
        campaign_id = load_demo(postgres.engine)
        webhook_demo.run(postgres.engine, campaign_id)
        result = summary(postgres.engine, campaign_id)
        postgres.engine.dispose()
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def print_summary(result: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(result, sort_keys=True) + "\n")
