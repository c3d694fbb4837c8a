"""The invariants the database itself holds, whatever code writes to it."""

import pytest
import sqlalchemy as sa

from resources import campaigns

IntegrityError = sa.exc.IntegrityError


@pytest.fixture
def campaign(engine):
    with engine.begin() as conn:
        org = campaigns.create_organisation(conn, "Acme")
        campaign_id = campaigns.create_campaign(
            conn, org, "Hello", message_type="text", message_content="Hi"
        )
        campaigns.add_audience(conn, campaign_id, [campaigns.Member("+12025550100", "Ann")])
        member = conn.execute(sa.text("SELECT id FROM campaign_audience")).scalar_one()
        run = conn.execute(
            sa.text(
                "INSERT INTO campaign_runs (campaign_id, run_date) VALUES (:c, current_date) RETURNING id"
            ),
            {"c": campaign_id},
        ).scalar_one()
    return {"org": org, "campaign": campaign_id, "member": member, "run": run}


def _insert_message(conn, campaign, **overrides):
    values = {
        "org": campaign["org"],
        "run": campaign["run"],
        "member": campaign["member"],
        "wamid": None,
        "status": "pending",
        **overrides,
    }
    conn.execute(
        sa.text(
            "INSERT INTO messages (organisation_id, campaign_run_id, campaign_audience_id, direction,"
            " sender_type, peer_phone, message_type, provider_message_id, status)"
            " VALUES (:org, :run, :member, 'outbound', 'campaign', '+12025550100', 'text', :wamid, :status)"
        ),
        values,
    )


def test_one_member_gets_at_most_one_message_per_campaign_run(engine, campaign):
    with engine.begin() as conn:
        _insert_message(conn, campaign)
    with pytest.raises(IntegrityError, match="campaign_run_id"), engine.begin() as conn:
        _insert_message(conn, campaign)


def test_a_wamid_belongs_to_one_message(engine, campaign):
    with engine.begin() as conn:
        _insert_message(conn, campaign, wamid="wamid.A")
        run2 = conn.execute(
            sa.text(
                "INSERT INTO campaign_runs (campaign_id, run_date) VALUES (:c, current_date + 1) RETURNING id"
            ),
            {"c": campaign["campaign"]},
        ).scalar_one()
    with pytest.raises(IntegrityError, match="provider_message_id"), engine.begin() as conn:
        _insert_message(conn, campaign, run=run2, wamid="wamid.A")


def test_one_campaign_run_per_campaign_and_date(engine, campaign):
    with pytest.raises(IntegrityError, match="campaign_runs"), engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO campaign_runs (campaign_id, run_date) VALUES (:c, current_date)"),
            {"c": campaign["campaign"]},
        )


@pytest.mark.parametrize(
    ("table", "column", "value"),
    [
        ("campaigns", "status", "launched"),
        ("campaign_audience", "status", "sent"),
        ("messages", "status", "queued"),
    ],
)
def test_unknown_statuses_are_refused(engine, campaign, table, column, value):
    with engine.begin() as conn:
        _insert_message(conn, campaign)
    with pytest.raises(IntegrityError, match="check"), engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {table} SET {column} = :v"), {"v": value})


def test_contacts_need_an_e164_phone_or_a_whatsapp_user_id(engine, campaign):
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO contacts (organisation_id, phone) VALUES (:o, '0044 7700')"),
            {"o": campaign["org"]},
        )
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(
            sa.text("INSERT INTO contacts (organisation_id) VALUES (:o)"), {"o": campaign["org"]}
        )
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO contacts (organisation_id, wa_user_id) VALUES (:o, 'US.13491208655302741918')"
            ),
            {"o": campaign["org"]},
        )


def test_a_template_has_one_active_generator(engine, campaign):
    with engine.begin() as conn:
        template = campaigns.create_template(conn, campaign["org"], "promo")
        assert (
            campaigns.add_generator(conn, template, "a.py", "def generate_asset(*a): return {}")
            == 1
        )
        assert (
            campaigns.add_generator(conn, template, "a.py", "def generate_asset(*a): return {}")
            == 2
        )
        active = (
            conn.execute(
                sa.text(
                    "SELECT version FROM asset_generate_files WHERE template_id = :t AND is_active"
                ),
                {"t": template},
            )
            .scalars()
            .all()
        )
    assert active == [2]
    with pytest.raises(IntegrityError), engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE asset_generate_files SET is_active = true WHERE template_id = :t"),
            {"t": template},
        )


def test_message_status_rank_in_sql_matches_the_status_machine(engine):
    from resources.status import MESSAGE_RANK

    with engine.connect() as conn:
        ranks = {
            s: conn.execute(sa.text("SELECT message_status_rank(:s)"), {"s": s}).scalar_one()
            for s in MESSAGE_RANK
        }
    assert ranks == MESSAGE_RANK
