"""Campaigns ready for dispatch, a way to materialise one run, and a way to read the queue."""

from __future__ import annotations

import json
import time
from datetime import UTC, date, datetime
from typing import Any
from uuid import UUID

import dagster as dg
import sqlalchemy as sa

from assets_defs.dispatch.asset import dispatched_batches
from resources import campaigns
from resources.queue import SQSResource

PHONE_NUMBER_ID = "1234567890"
TODAY = datetime.now(UTC).date()


def org_with_phone(conn: sa.Connection) -> UUID:
    org = campaigns.create_organisation(conn, "Test organisation")
    campaigns.add_phone_number(conn, org, PHONE_NUMBER_ID)
    return org


def ready_campaign(
    engine: sa.Engine,
    members: list[campaigns.Member],
    *,
    message_type: str = "template",
    parameters: list[dict[str, str]] | None = None,
    asset_keys: dict[str, dict[str, str]] | None = None,
    **campaign: Any,
) -> UUID:
    """A campaign in `asset_generated` (as the media step leaves it) with its audience."""
    with engine.begin() as conn:
        org = org_with_phone(conn)
        template = None
        if message_type == "template":
            template = campaigns.create_template(
                conn, org, "offer", message_type="image", parameters=parameters or []
            )
        campaign.setdefault("phone_number_id", PHONE_NUMBER_ID)
        if message_type == "text":
            campaign.setdefault("message_content", "Hello from the campaign")
        campaign_id = campaigns.create_campaign(
            conn, org, "Offer", message_type=message_type, template_id=template, **campaign
        )
        campaigns.add_audience(conn, campaign_id, members)
        for msisdn, keys in (asset_keys or {}).items():
            conn.execute(
                sa.text(
                    "UPDATE campaign_audience SET generated_asset_urls = CAST(:k AS jsonb),"
                    " status = 'asset_generated' WHERE campaign_id = :c AND msisdn = :m"
                ),
                {"k": json.dumps(keys), "c": campaign_id, "m": msisdn},
            )
        campaigns.set_campaign_status(conn, campaign_id, "approved")
        campaigns.set_campaign_status(conn, campaign_id, "asset_generated")
    return campaign_id


def partition(campaign_id: UUID | str, run_date: date = TODAY) -> dg.MultiPartitionKey:
    return dg.MultiPartitionKey({"campaign": str(campaign_id), "date": run_date.isoformat()})


def materialize_run(
    campaign_id: UUID | str,
    resources: dict[str, Any],
    run_date: date = TODAY,
    raise_on_error: bool = True,
) -> dg.ExecuteInProcessResult:
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("campaigns", [str(campaign_id)])
    return dg.materialize(
        [dispatched_batches],
        partition_key=partition(campaign_id, run_date),
        resources=resources,
        instance=instance,
        raise_on_error=raise_on_error,
    )


def drain(sqs: SQSResource, expected: int | None = None, timeout: float = 90) -> list[dict]:
    """Every payload on the queue (deleted as read); waits for `expected` payloads at most
    `timeout` seconds."""
    bodies: list[dict] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        messages = sqs.receive(wait_seconds=0)
        if messages:
            bodies.extend(json.loads(m.body) for m in messages)
            sqs.client.delete_message_batch(
                QueueUrl=sqs.url(),
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m.receipt} for i, m in enumerate(messages)
                ],
            )
        elif expected is None or len(bodies) >= expected:
            break
    return bodies


def member_rows(engine: sa.Engine, campaign_id: UUID | str) -> dict[str, dict]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT msisdn, status, last_error FROM campaign_audience WHERE campaign_id = :c"
            ),
            {"c": campaign_id},
        ).mappings()
        return {row["msisdn"]: dict(row) for row in rows}


def campaign_status(engine: sa.Engine, campaign_id: UUID | str) -> str:
    with engine.connect() as conn:
        return campaigns.get_campaign(conn, campaign_id).status
