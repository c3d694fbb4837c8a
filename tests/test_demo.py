import sqlalchemy as sa

from pipelines.demo import load_demo, summary


def test_the_demo_campaign_is_loaded_once(engine):
    first = load_demo(engine)
    second = load_demo(engine)
    assert first == second
    result = summary(engine, first)
    assert result["campaign_status"] == "approved"
    assert result["audience_by_status"] == {"pending": 50}
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM campaigns")).scalar_one() == 1
        assert conn.execute(sa.text("SELECT count(*) FROM contacts")).scalar_one() == 50
        source = conn.execute(
            sa.text("SELECT file_content FROM asset_generate_files WHERE is_active")
        ).scalar_one()
    assert "def generate_asset(attributes, name, msisdn, temp_dir)" in source


def test_the_demo_sends_its_queued_campaign_in_dev_mode(engine, sqs, monkeypatch):
    from pipelines.demo import queue_demo_messages, send_queued

    monkeypatch.setenv("SQS_QUEUE_NAME", sqs.queue_name)
    monkeypatch.setenv("SQS_DLQ_NAME", sqs.dlq_name)
    campaign = load_demo(engine, members=5)
    assert queue_demo_messages(engine, campaign) == 5
    assert queue_demo_messages(engine, campaign) == 0  # queued once per run and member
    assert send_queued(engine, campaign) == {"messages_sent": 5, "send_failed": 0}
    with engine.connect() as conn:
        ids = conn.execute(sa.text("SELECT provider_message_id FROM messages")).scalars().all()
    assert all(i.startswith("dev_") and i.endswith("_demo_offer") for i in ids)
