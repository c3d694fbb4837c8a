from pipelines.demo import load_demo, summary
from webhook_app import demo


def test_the_demo_posts_receipts_and_replies_and_reports_them(engine, monkeypatch):
    monkeypatch.setenv("AGENT_BUFFER_SECONDS", "0")
    campaign_id = load_demo(engine)
    demo.run(engine, campaign_id)
    demo.run(engine, campaign_id)
    result = summary(engine, campaign_id)
    assert (result["messages_delivered"], result["messages_read"]) == (10, 5)
    assert result["replies_answered"] == 3
