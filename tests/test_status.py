import pytest
import sqlalchemy as sa

from resources import campaigns
from resources.phone import InvalidPhoneNumber, stored_form, to_e164
from resources.status import CAMPAIGN_MOVES, message_may_move


@pytest.fixture
def campaign_id(engine):
    with engine.begin() as conn:
        org = campaigns.create_organisation(conn, "Acme")
        return campaigns.create_campaign(
            conn, org, "Hello", message_type="text", message_content="Hi"
        )


def test_a_campaign_moves_along_its_status_machine(engine, campaign_id):
    with engine.begin() as conn:
        for status in (
            "approved",
            "asset_generation",
            "asset_generated",
            "ready_to_launch",
            "running",
            "completed",
        ):
            campaigns.set_campaign_status(conn, campaign_id, status)
        assert campaigns.get_campaign(conn, campaign_id).status == "completed"


def test_a_campaign_cannot_skip_or_leave_a_final_state(engine, campaign_id):
    with (
        engine.begin() as conn,
        pytest.raises(campaigns.InvalidTransition, match="from draft to running"),
    ):
        campaigns.set_campaign_status(conn, campaign_id, "running")
    with engine.begin() as conn:
        campaigns.set_campaign_status(conn, campaign_id, "cancelled")
    with engine.begin() as conn, pytest.raises(campaigns.InvalidTransition, match="from cancelled"):
        campaigns.set_campaign_status(conn, campaign_id, "approved")


def test_every_campaign_status_in_the_machine_is_allowed_by_the_database(engine, campaign_id):
    with engine.begin() as conn:
        for status in CAMPAIGN_MOVES:
            conn.execute(
                sa.text("UPDATE campaigns SET status = :s WHERE id = :id"),
                {"s": status, "id": campaign_id},
            )


def test_member_status_moves_only_from_allowed_states(engine, campaign_id):
    with engine.begin() as conn:
        campaigns.add_audience(conn, campaign_id, [campaigns.Member("+12025550100")])
        member = conn.execute(sa.text("SELECT id FROM campaign_audience")).scalar_one()
        assert campaigns.set_member_status(conn, member, "asset_generating")
        assert not campaigns.set_member_status(conn, member, "ready_to_send")
        assert campaigns.set_member_status(conn, member, "failed", "generator raised")
        assert campaigns.audience_counts(conn, campaign_id) == {"failed": 1}


@pytest.mark.parametrize(
    ("current", "new", "allowed"),
    [
        ("pending", "sending", True),
        ("sent", "read", True),
        ("read", "delivered", False),
        ("delivered", "delivered", False),
        ("failed", "read", False),
        ("delivered", "failed", True),
    ],
)
def test_messages_only_move_forwards_and_failed_is_final(current, new, allowed):
    assert message_may_move(current, new) is allowed


def test_audience_import_links_valid_numbers_to_contacts_and_ignores_repeats(engine, campaign_id):
    members = [
        campaigns.Member("+12025550100", "Ann"),
        campaigns.Member("+12025550100", "Ann again"),
        campaigns.Member("12345", "Broken"),
    ]
    with engine.begin() as conn:
        assert campaigns.add_audience(conn, campaign_id, members) == 2
        linked = conn.execute(
            sa.text("SELECT msisdn, contact_id IS NOT NULL FROM campaign_audience ORDER BY msisdn")
        ).all()
    assert linked == [("+12025550100", True), ("12345", False)]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+1 (202) 555-0100", "+12025550100"),
        ("12025550100", "+12025550100"),
        ("+91 98765 43210", "+919876543210"),
    ],
)
def test_phone_numbers_normalise_to_e164(raw, expected):
    assert to_e164(raw) == expected


@pytest.mark.parametrize("raw", ["", "abc", "+1 202", "+999 123 456 789"])
def test_invalid_phone_numbers_say_why(raw):
    with pytest.raises(InvalidPhoneNumber):
        to_e164(raw)


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("+1 (202) 555-0100", "+12025550100"),  # parsed when added
        ("+12025550100", "+12025550100"),
        ("12345", "12345"),  # kept as given: approval refuses it, dispatch fails the member
        ("not a number", "not a number"),
    ],
)
def test_an_audience_number_is_stored_in_e164_when_it_is_one(raw, stored):
    assert stored_form(raw) == stored
