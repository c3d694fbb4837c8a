import sqlalchemy as sa

from pipelines.dev import conversation_demo as demo
from pipelines.dev.demo import load_demo, summary


def _sent(engine: sa.Engine, campaign_id, members: int) -> None:
    """What dispatch and the sender leave behind: `members` messages accepted by WhatsApp."""
    with engine.begin() as conn:
        run_id = conn.execute(
            sa.text(
                "INSERT INTO campaign_runs (campaign_id, run_date, status)"
                " VALUES (:c, current_date, 'dispatched') RETURNING id"
            ),
            {"c": campaign_id},
        ).scalar_one()
        conn.execute(
            sa.text(
                "INSERT INTO messages (organisation_id, contact_id, campaign_run_id,"
                " campaign_audience_id, direction, sender_type, phone_number_id, peer_phone,"
                " message_type, provider_message_id, status, sent_at)"
                " SELECT c.organisation_id, a.contact_id, :r, a.id, 'outbound', 'campaign',"
                " c.phone_number_id, a.msisdn, 'template', 'wamid.test.' || a.id, 'sent', now()"
                " FROM campaign_audience a JOIN campaigns c ON c.id = a.campaign_id"
                " WHERE a.campaign_id = :c ORDER BY a.msisdn LIMIT :n"
            ),
            {"c": campaign_id, "r": run_id, "n": members},
        )


def test_the_demo_posts_receipts_and_replies_and_reports_them(engine, monkeypatch):
    monkeypatch.setenv("AGENT_BUFFER_SECONDS", "0")
    campaign_id = load_demo(engine)
    _sent(engine, campaign_id, 10)
    demo.run(engine, campaign_id)
    demo.run(engine, campaign_id)
    result = summary(engine, campaign_id)
    assert (result["messages_delivered"], result["messages_read"]) == (10, 5)
    assert result["replies_answered"] == 3
