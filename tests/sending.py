"""Rows and payloads as the dispatch step leaves them (`pending` messages, seed-3 payloads with
`messageId` and `phoneNumberId` on the queue), and a sender worker aimed at a fake Graph API."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

import sqlalchemy as sa

from pipelines.sender.worker import SenderConfig, Worker
from resources import campaigns
from resources.queue import SQSResource
from resources.whatsapp import WhatsAppClient

PHONE_NUMBER_ID = "1234567890"
TEST_CONFIG = SenderConfig(
    lanes=2,
    visibility_seconds=10,
    wait_seconds=1,
    retry_base_seconds=1,
    release_seconds=0.2,
    probe_seconds=1,
)


@dataclass
class Run:
    organisation_id: str
    campaign_id: str
    campaign_run_id: int
    message_ids: list[int]
    phones: list[str]


def make_run(
    engine: sa.Engine,
    members: int,
    *,
    message_type: str = "template",
    messaging_limit: int | None = None,
    messages_per_second: int = 1000,
    first_number: int = 0,
    run_date: date | None = None,
) -> Run:
    with engine.begin() as conn:
        org = campaigns.create_organisation(conn, "Acme", messaging_limit)
        campaigns.add_phone_number(conn, org, PHONE_NUMBER_ID, messages_per_second)
        template = campaigns.create_template(conn, org, "offer", message_type="text")
        campaign = campaigns.create_campaign(
            conn,
            org,
            "Offer",
            message_type=message_type,
            template_id=template if message_type == "template" else None,
            message_content="Hello" if message_type == "text" else None,
            phone_number_id=PHONE_NUMBER_ID,
        )
        campaigns.add_audience(
            conn,
            campaign,
            [
                campaigns.Member(f"+1{2025550000 + first_number + i}", f"Customer {i}")
                for i in range(members)
            ],
        )
        run_id = conn.execute(
            sa.text(
                "INSERT INTO campaign_runs (campaign_id, run_date, status)"
                " VALUES (:c, :d, 'dispatched') RETURNING id"
            ),
            {"c": campaign, "d": run_date or date.today()},
        ).scalar_one()
        rows = conn.execute(
            sa.text(
                "INSERT INTO messages (organisation_id, contact_id, campaign_run_id,"
                " campaign_audience_id, direction, sender_type, phone_number_id, peer_phone,"
                " message_type, status)"
                " SELECT c.organisation_id, a.contact_id, :r, a.id, 'outbound', 'campaign', :p,"
                " a.msisdn, c.message_type, 'pending'"
                " FROM campaign_audience a JOIN campaigns c ON c.id = a.campaign_id"
                " WHERE a.campaign_id = :c ORDER BY a.msisdn RETURNING id, peer_phone"
            ),
            {"r": run_id, "p": PHONE_NUMBER_ID, "c": campaign},
        ).all()
    rows = sorted(rows, key=lambda r: r.id)
    run = Run(str(org), str(campaign), run_id, [r.id for r in rows], [r.peer_phone for r in rows])
    # Stored with the row, as dispatch does: what a held row is queued again from.
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE messages m SET payload = CAST(v.body AS jsonb)"
                " FROM unnest(CAST(:ids AS bigint[]), CAST(:bodies AS text[])) AS v(id, body)"
                " WHERE m.id = v.id"
            ),
            {
                "ids": run.message_ids,
                "bodies": [
                    json.dumps({k: v for k, v in payload(run, i).items() if k != "messageId"})
                    for i in range(len(rows))
                ],
            },
        )
    return run


def payload(run: Run, index: int, **fields: Any) -> dict[str, Any]:
    """A seed-3 template payload for the run's `index`th message; `fields` override."""
    body = {
        "organizationId": run.organisation_id,
        "campaignId": run.campaign_id,
        "campaignAudienceId": "00000000-0000-0000-0000-000000000000",
        "to": run.phones[index],
        "templateName": "offer",
        "templateLanguage": "en",
        "templateParameters": [
            {"type": "header", "valueType": "image", "value": "https://example.com/a.jpg"},
            {"type": "body", "valueType": "text", "value": f"Customer {index}"},
        ],
        "messageId": run.message_ids[index],
        "phoneNumberId": PHONE_NUMBER_ID,
    }
    body.update(fields)
    return body


def enqueue(sqs: SQSResource, bodies: list[dict[str, Any] | str]) -> None:
    """Queue bodies as the dispatch does: FIFO group per recipient, a distinct dedup id."""
    for start in range(0, len(bodies), 10):
        entries = []
        for i, body in enumerate(bodies[start : start + 10]):
            text = body if isinstance(body, str) else json.dumps(body)
            group = body["to"] if isinstance(body, dict) and "to" in body else "malformed"
            entries.append(
                {
                    "Id": str(i),
                    "MessageBody": text,
                    "MessageGroupId": group.lstrip("+"),
                    "MessageDeduplicationId": f"{time.time_ns()}-{start + i}",
                }
            )
        result = sqs.send_batch(entries)
        assert not result.get("Failed"), result


def client_for(base_url: str, token: str | None = "test-token") -> WhatsAppClient:
    return WhatsAppClient(token, PHONE_NUMBER_ID, base_url, "v25.0", 10.0, 64)


def drain(engine: sa.Engine, sqs: SQSResource, client: WhatsAppClient, **config: Any) -> Worker:
    worker = Worker(engine, sqs, client, _config(**config))
    worker.run(drain=True)
    return worker


def _config(**overrides: Any) -> SenderConfig:
    values = {**TEST_CONFIG.__dict__, **overrides}
    return SenderConfig(**values)


def start(engine: sa.Engine, sqs: SQSResource, client: WhatsAppClient, **config: Any):
    """A worker running in a thread until stopped; returns (worker, thread)."""
    worker = Worker(engine, sqs, client, _config(**config))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    return worker, thread


def wait_for(predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


def statuses(engine: sa.Engine, run: Run) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT status, count(*) FROM messages WHERE campaign_run_id = :r GROUP BY status"
            ),
            {"r": run.campaign_run_id},
        )
        return dict(rows.all())


def row(engine: sa.Engine, message_id: int) -> sa.Row:
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT * FROM messages WHERE id = :id"), {"id": message_id}
        ).one()


def dead_letters(sqs: SQSResource) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while True:
        batch = sqs.client.receive_message(
            QueueUrl=sqs.url(sqs.dlq_name),
            MaxNumberOfMessages=10,
            WaitTimeSeconds=0,
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not batch:
            return found
        found += batch
