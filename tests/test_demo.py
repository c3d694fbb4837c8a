import sqlalchemy as sa

from pipelines.dev.demo import load_demo, messaging_limit_note, summary


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


def test_make_dev_says_how_many_recipients_the_demo_may_reach_and_how_to_raise_it(engine):
    campaign = load_demo(engine)
    note = messaging_limit_note(engine, campaign, "http://127.0.0.1:8000")
    with engine.connect() as conn:
        organisation = conn.execute(sa.text("SELECT id FROM organisations")).scalar_one()
    assert "may message 250 new recipients per 24 h" in note
    assert f"curl -X PATCH http://127.0.0.1:8000/api/organisations/{organisation}" in note
    assert f"waflow campaigns update-organisation {organisation} --messaging-limit" in note
