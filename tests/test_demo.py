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
