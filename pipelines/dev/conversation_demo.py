"""The conversation half of `make demo`: receipts for the sent messages and a few customer
replies, posted signed to the real app (in-process, through Starlette's test client, with
its background workers running beside it in the same process), until every receipt is
applied and every reply answered.
"""

from __future__ import annotations

import json
import time
from uuid import UUID

import sqlalchemy as sa

from resources import message_buffer, messages, settings
from webhook_app.signature import app_secret, sign

REPLIES = ("Hi! Is the offer still valid?", "What time do you open tomorrow?", "STOP")


def _envelope(value: dict) -> dict:
    metadata = {
        "display_phone_number": "15550100000",
        "phone_number_id": settings.get("WHATSAPP_PHONE_NUMBER_ID"),
    }
    return {
        "object": "whatsapp_business_account",
        "entry": [
            {
                "id": "demo-waba",
                "changes": [
                    {
                        "field": "messages",
                        "value": {"messaging_product": "whatsapp", "metadata": metadata, **value},
                    }
                ],
            }
        ],
    }


def run(engine: sa.Engine, campaign_id: UUID, timeout: float = 60.0) -> None:
    from starlette.testclient import TestClient

    from webhook_app.workers import app_with_workers

    with engine.connect() as conn:
        sent = messages.accepted(conn, campaign_id)
    now = str(int(time.time()))
    events = [
        {
            "statuses": [
                {
                    "id": m.provider_message_id,
                    "status": "delivered",
                    "timestamp": now,
                    "recipient_id": m.peer_phone.lstrip("+"),
                }
            ]
        }
        for m in sent
    ]
    events += [
        {
            "statuses": [
                {
                    "id": m.provider_message_id,
                    "status": "read",
                    "timestamp": now,
                    "recipient_id": m.peer_phone.lstrip("+"),
                }
            ]
        }
        for m in sent[::2]
    ]
    events += [
        {
            "contacts": [{"profile": {"name": "Demo customer"}, "wa_id": m.peer_phone.lstrip("+")}],
            "messages": [
                {
                    "from": m.peer_phone.lstrip("+"),
                    "id": f"wamid.demo.in.{m.id}",
                    "timestamp": now,
                    "type": "text",
                    "text": {"body": text},
                }
            ],
        }
        for m, text in zip(sent, REPLIES, strict=False)
    ]
    secret = app_secret()
    with TestClient(app_with_workers()) as client:
        for event in events:
            body = json.dumps(_envelope(event)).encode()
            response = client.post(
                "/webhook", content=body, headers={"X-Hub-Signature-256": sign(secret, body)}
            )
            response.raise_for_status()
        deadline = time.monotonic() + timeout
        while not _settled(engine):
            if time.monotonic() > deadline:
                raise RuntimeError("the webhook app did not process the demo events in time")
            time.sleep(0.2)


def _settled(engine: sa.Engine) -> bool:
    """Every event processed and every customer answered."""
    with engine.connect() as conn:
        inbox_waiting = conn.execute(
            sa.text("SELECT EXISTS (SELECT 1 FROM webhook_inbox WHERE processed_at IS NULL)")
        ).scalar_one()
        return not inbox_waiting and message_buffer.active_buffers(conn) == 0


def summary(conn: sa.Connection) -> dict[str, int]:
    return messages.conversation_summary(conn)
