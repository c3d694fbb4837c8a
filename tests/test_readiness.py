"""Approval checks what a campaign needs (`resources.readiness`): every template parameter
resolvable for every member, the assets its generator returns, valid numbers, a message type
that fits the template, an audience. Against the real database, through the operator API
and the CLI; and an audience import's counts, which are for the whole file."""

from __future__ import annotations

import itertools
import json
import textwrap

import pytest
import sqlalchemy as sa
from starlette.testclient import TestClient

from pipelines.cli import main
from resources import campaign_runs, campaigns, readiness
from webhook_app import campaign_answers
from webhook_app.app import app

TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CSV = {**AUTH, "Content-Type": "text/csv"}
OFFER_BODY = [
    {"type": "body", "valueType": "text", "source": "contact.name"},
    {"type": "body", "valueType": "text", "source": "attributes.offer"},
]
IMAGE_HEADER = {"type": "header", "valueType": "image", "source": "asset.image"}
# Returns an image and a JSON file (as the demo generator does).
CARD = """
import os
def generate_asset(attributes, name, msisdn, temp_dir):
    image = os.path.join(temp_dir, "card.jpg")
    data = os.path.join(temp_dir, "card.json")
    return {"image": image, "json": data}
"""
# Returns only a JSON file.
DATA_ONLY = """
import json, os
def generate_asset(attributes, name, msisdn, temp_dir):
    path = os.path.join(temp_dir, "card.json")
    with open(path, "w") as f:
        json.dump({"name": name}, f)
    return {"json": path}
"""
# Builds its answer at run time: the types cannot be read from the source.
DYNAMIC = """
import os
KINDS = ("image",)
def generate_asset(attributes, name, msisdn, temp_dir):
    files = {}
    for kind in KINDS:
        files[kind] = os.path.join(temp_dir, kind + ".jpg")
    return files
"""


_NAMES = itertools.count(1)


@pytest.fixture
def client(database_url, stack, monkeypatch):
    monkeypatch.setenv("ADMIN_API_TOKEN", TOKEN)
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture
def organisation(client) -> str:
    response = client.post(
        "/api/organisations", json={"name": "Shop", "phone_number_id": "555000"}, headers=AUTH
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def template(client, organisation: str, parameters: list, **extra) -> int:
    response = client.post(
        "/api/templates",
        json={
            "organisation_id": organisation,
            "name": f"template_{next(_NAMES)}",
            "parameters": parameters,
            **extra,
        },
        headers=AUTH,
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def campaign(client, organisation: str, template_id: int | None, **extra) -> str:
    body = {
        "organisation_id": organisation,
        "name": "Spring offer",
        "message_type": "template",
        "template_id": template_id,
        "phone_number_id": "555000",
        **extra,
    }
    response = client.post("/api/campaigns", json=body, headers=AUTH)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def generator(engine, template_id: int, source: str) -> None:
    with engine.begin() as conn:
        campaigns.add_generator(conn, template_id, "gen.py", textwrap.dedent(source))


def upload(client, campaign_id: str, text: str) -> dict:
    response = client.post(f"/api/campaigns/{campaign_id}/audience", content=text, headers=CSV)
    assert response.status_code == 200, response.text
    return response.json()


def approve(client, campaign_id: str):
    return client.post(f"/api/campaigns/{campaign_id}/approve", headers=AUTH)


def status_of(client, campaign_id: str) -> str:
    return client.get(f"/api/campaigns/{campaign_id}/status", headers=AUTH).json()["status"]


def member_ids(engine, campaign_id: str) -> dict[str, str]:
    """msisdn → member id."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT msisdn, id::text FROM campaign_audience WHERE campaign_id = :c"),
            {"c": campaign_id},
        )
        return dict(rows.all())


def by_check(answer: dict) -> dict[str, dict]:
    return {(e["check"], e["field"]): e for e in answer["errors"]}


def phones(n: int, start: int = 0) -> list[str]:
    return [f"+1202555{start + i:04d}" for i in range(n)]


def test_a_missing_attribute_is_refused_with_counts_and_first_members(client, organisation, engine):
    offer = campaign(client, organisation, template(client, organisation, OFFER_BODY))
    numbers = phones(12)
    # Members 3, 6 and 9 have no offer of their own; 6's contact has one; 10's offer is blank.
    lacking = {numbers[3], numbers[9], numbers[10]}
    rows = [
        f"{n},Member {i},{'' if i in (3, 6, 9, 10) else f'{i}% off'}" for i, n in enumerate(numbers)
    ]
    assert upload(client, offer, "phone,name,offer\n" + "\n".join(rows) + "\n")["created"] == 12
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                'UPDATE campaign_audience SET attributes = \'{"offer": "  "}\' WHERE msisdn = :p'
            ),
            {"p": numbers[10]},
        )
    contacts = client.post(
        f"/api/organisations/{organisation}/contacts",
        content=f"phone,offer\n{numbers[6]},Free delivery\n",
        headers=CSV,
    )
    assert contacts.status_code == 200, contacts.text

    refused = approve(client, offer)

    assert refused.status_code == 422, refused.text
    answer = refused.json()
    assert (answer["error"], answer["ready"], answer["members"]) == (
        "campaign not ready",
        False,
        12,
    )
    [problem] = answer["errors"]
    assert (problem["check"], problem["field"], problem["scope"]) == (
        "parameter",
        "template.parameters[1]",
        "member",
    )
    assert problem["count"] == len(lacking)
    assert problem["error"] == (
        f"attributes.offer (template parameter 2) is missing for {len(lacking)} of 12 members"
    )
    ids = member_ids(engine, offer)
    assert [m["msisdn"] for m in problem["members"]] == sorted(lacking, key=ids.get)
    assert all(ids[m["msisdn"]] == m["id"] for m in problem["members"])
    # The one-line text (also the CLI's) counts and names no one.
    assert "3 of 12 members" in answer["detail"]
    assert not any(n in answer["detail"] for n in numbers)
    # Nothing moved: no media will be generated for it.
    assert status_of(client, offer) == "draft"
    audience = client.get(f"/api/campaigns/{offer}/audience", headers=AUTH).json()["items"]
    assert {m["status"] for m in audience} == {"pending"}

    # The offers come in with the contacts: approved, and the answer carries the report.
    fixed = client.post(
        f"/api/organisations/{organisation}/contacts",
        content="phone,offer\n" + "".join(f"{n},Gift\n" for n in sorted(lacking)),
        headers=CSV,
    )
    assert fixed.status_code == 200
    # Member 10's own blank offer still wins over the contact's, as at dispatch.
    still = approve(client, offer).json()
    assert [m["msisdn"] for m in still["errors"][0]["members"]] == [numbers[10]]
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE campaign_audience SET attributes = attributes - 'offer' WHERE msisdn = :p"
            ),
            {"p": numbers[10]},
        )
    approved = approve(client, offer)
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "approved"
    assert approved.json()["readiness"]["ready"] is True
    assert approved.json()["readiness"]["warnings"] == []


def test_contact_fields_follow_dispatch_and_a_blank_name_is_missing(client, organisation, engine):
    parameters = [
        {"type": "body", "valueType": "text", "source": "contact.first_name"},
        {"type": "body", "valueType": "text", "source": "contact.city"},
        {"type": "body", "valueType": "text", "source": "contact.phone"},
        {"type": "body", "valueType": "text", "source": "literal:Spring"},
    ]
    fields = campaign(client, organisation, template(client, organisation, parameters))
    numbers = phones(4)
    # No name anywhere for member 0; member 1's name is its contact's; cities: 1 and 3.
    upload(
        client,
        fields,
        f"phone,name\n{numbers[0]},\n{numbers[1]},\n{numbers[2]},Cy\n{numbers[3]},Di\n",
    )
    contacts = client.post(
        f"/api/organisations/{organisation}/contacts",
        content=f"phone,name,city\n{numbers[1]},Bo,Porto\n{numbers[3]},,Faro\n",
        headers=CSV,
    )
    assert contacts.status_code == 200

    answer = client.get(f"/api/campaigns/{fields}/readiness", headers=AUTH).json()

    found = by_check(answer)
    assert set(found) == {
        ("parameter", "template.parameters[0]"),
        ("parameter", "template.parameters[1]"),
    }
    names = found[("parameter", "template.parameters[0]")]
    assert [m["msisdn"] for m in names["members"]] == [numbers[0]]
    assert names["error"].startswith("contact.first_name (template parameter 1) is missing for 1")
    cities = found[("parameter", "template.parameters[1]")]
    assert sorted(m["msisdn"] for m in cities["members"]) == [numbers[0], numbers[2]]
    assert cities["count"] == 2
    # A contact attribute overrides the derived field, as `contact_fields` does.
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                'UPDATE contacts SET attributes = attributes || \'{"first_name": "Ann"}\''
                " WHERE phone = :p"
            ),
            {"p": numbers[0]},
        )
        conn.execute(
            sa.text("UPDATE campaign_audience SET contact_id = NULL WHERE msisdn = :p"),
            {"p": numbers[2]},
        )
    again = by_check(client.get(f"/api/campaigns/{fields}/readiness", headers=AUTH).json())
    cities = again[("parameter", "template.parameters[1]")]["members"]
    assert sorted(m["msisdn"] for m in cities) == [numbers[0], numbers[2]]
    assert ("parameter", "template.parameters[0]") not in again


def test_whitespace_is_missing_as_pythons_strip_says(client, organisation, engine):
    assert set(readiness.WHITESPACE) == {chr(c) for c in range(0x110000) if chr(c).isspace()}
    offer = campaign(client, organisation, template(client, organisation, OFFER_BODY))
    blanks = [" ", "\u3000", "\u00a0\t", "\u2028", "x\u3000"]
    members = [
        campaigns.Member(n, "Ann", {"offer": b}) for n, b in zip(phones(5), blanks, strict=True)
    ]
    with engine.begin() as conn:
        campaigns.add_audience(conn, offer, members)
    answer = client.get(f"/api/campaigns/{offer}/readiness", headers=AUTH).json()
    [problem] = answer["errors"]
    assert problem["count"] == sum(1 for b in blanks if not b.strip())


def test_an_asset_type_the_generator_does_not_return_is_refused(client, organisation, engine):
    image_template = template(
        client, organisation, [IMAGE_HEADER, *OFFER_BODY], message_type="image"
    )
    generator(engine, image_template, DATA_ONLY)
    offer = campaign(client, organisation, image_template)
    upload(client, offer, f"phone,name,offer\n{phones(1)[0]},Ann,10%\n")

    refused = approve(client, offer)

    assert refused.status_code == 422
    [problem] = refused.json()["errors"]
    assert (problem["check"], problem["field"], problem["scope"]) == (
        "asset",
        "template.parameters[0]",
        "campaign",
    )
    assert problem["error"] == (
        "asset.image needs an image asset, but generator gen.py (version 1) returns only json"
    )
    assert problem["count"] == 1 and problem["members"] == []
    assert status_of(client, offer) == "draft"

    # A media campaign needs its own type from the generator too.
    video = campaign(client, organisation, image_template, message_type="video")
    upload(client, video, f"phone\n{phones(1)[0]}\n")
    [problem] = approve(client, video).json()["errors"]
    assert (problem["field"], problem["error"]) == (
        "message_type",
        "the message needs a video asset, but generator gen.py (version 1) returns only json",
    )

    # A new version that returns the image: approved.
    generator(engine, image_template, CARD)
    assert approve(client, offer).status_code == 200


def test_an_asset_without_a_generator_and_a_media_campaign_without_a_template(
    client, organisation, engine
):
    no_generator = campaign(
        client,
        organisation,
        template(client, organisation, [IMAGE_HEADER, *OFFER_BODY], message_type="image"),
    )
    upload(client, no_generator, f"phone,name,offer\n{phones(1)[0]},Ann,10%\n")
    [problem] = approve(client, no_generator).json()["errors"]
    assert "asset.image needs each member's generated image" in problem["error"]
    assert "has no active generator" in problem["error"]

    bare = campaign(client, organisation, None, message_type="image")
    upload(client, bare, f"phone\n{phones(1)[0]}\n")
    [problem] = approve(client, bare).json()["errors"]
    assert problem["error"] == (
        "an image campaign sends each member's generated image, but the campaign has no template"
    )


def test_a_generator_whose_returns_cannot_be_read_is_approved_with_a_warning(
    client, organisation, engine
):
    image_template = template(
        client, organisation, [IMAGE_HEADER, *OFFER_BODY], message_type="image"
    )
    generator(engine, image_template, DYNAMIC)
    offer = campaign(client, organisation, image_template)
    upload(client, offer, f"phone,name,offer\n{phones(1)[0]},Ann,10%\n")

    approved = approve(client, offer)

    assert approved.status_code == 200, approved.text
    [warning] = approved.json()["readiness"]["warnings"]
    assert warning["check"] == "asset" and warning["field"] == "template.parameters[0]"
    assert "could not check that generator gen.py (version 1) returns image" in warning["warning"]
    assert "`files`, not a literal dict" in warning["warning"]
    assert approved.json()["status"] == "approved"


def test_a_generator_that_cannot_produce_anything_is_refused(client, organisation, engine):
    image_template = template(
        client, organisation, [IMAGE_HEADER, *OFFER_BODY], message_type="image"
    )
    offer = campaign(client, organisation, image_template)
    upload(client, offer, f"phone,name,offer\n{phones(1)[0]},Ann,10%\n")
    for source, says in (
        ("def generate_asset(attributes, name, msisdn, temp_dir)\n    pass\n", "does not compile"),
        (
            "def generate_asset(attributes, name, msisdn, temp_dir):\n    print(name)\n",
            "never returns",
        ),
        (
            "def generate_asset(a, n, m, t):\n    return {'png': t + '/x.png'}\n",
            "'png', not an asset type",
        ),
    ):
        generator(engine, image_template, source)
        errors = approve(client, offer).json()["errors"]
        assert any(e["field"] == "generator" and says in e["error"] for e in errors), errors


def test_generator_returns_are_read_from_the_source():
    returns = readiness.generator_returns(
        textwrap.dedent(
            """
            def generate_asset(attributes, name, msisdn, temp_dir):
                def helper():
                    return {"audio": "x"}  # not generate_asset's
                if attributes.get("short"):
                    return dict(image=temp_dir + "/a.jpg")
                if attributes.get("none"):
                    return None
                return {"image": temp_dir + "/a.jpg", "json": temp_dir + "/a.json"}
            """
        )
    )
    assert (returns.types, returns.always, returns.opaque, returns.broken) == (
        {"image", "json"},
        {"image"},
        None,
        None,
    )
    opaque = readiness.generator_returns("def generate_asset(a, n, m, t):\n    return build()\n")
    assert opaque.opaque and "`build()`" in opaque.opaque
    assert readiness.generator_returns("generate_asset = make()\n").opaque
    assert "does not compile" in readiness.generator_returns("def (:\n").broken


def test_an_image_from_some_returns_only_is_a_warning(client, organisation, engine):
    image_template = template(
        client, organisation, [IMAGE_HEADER, *OFFER_BODY], message_type="image"
    )
    generator(
        engine,
        image_template,
        """
        def generate_asset(attributes, name, msisdn, temp_dir):
            if attributes.get("plain"):
                return {"json": temp_dir + "/a.json"}
            return {"image": temp_dir + "/a.jpg"}
        """,
    )
    offer = campaign(client, organisation, image_template)
    upload(client, offer, f"phone,name,offer\n{phones(1)[0]},Ann,10%\n")
    answer = client.get(f"/api/campaigns/{offer}/readiness", headers=AUTH).json()
    assert answer["ready"] is True
    assert "returns image on some paths only" in answer["warnings"][0]["warning"]


def test_an_empty_audience_is_refused(client, organisation):
    empty = campaign(client, organisation, template(client, organisation, OFFER_BODY))
    refused = approve(client, empty)
    assert refused.status_code == 422
    answer = refused.json()
    assert (answer["members"], answer["ready"]) == (0, False)
    [problem] = answer["errors"]
    assert (problem["check"], problem["count"]) == ("audience", 0)
    assert problem["error"] == (
        f"the campaign has no members; add its audience first (POST /api/campaigns/{empty}/audience)"
    )
    assert status_of(client, empty) == "draft"


def test_an_invalid_number_slipped_in_by_sql_is_refused(client, organisation, engine):
    hello = campaign(client, organisation, template(client, organisation, []))
    upload(client, hello, "phone\n" + "\n".join(phones(3)) + "\n")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO campaign_audience (campaign_id, msisdn) VALUES (:c, '12345'),"
                " (:c, '+0123456789')"
            ),
            {"c": hello},
        )
    refused = approve(client, hello)
    assert refused.status_code == 422
    [problem] = refused.json()["errors"]
    assert (problem["check"], problem["field"], problem["count"]) == ("number", "msisdn", 2)
    assert sorted(m["msisdn"] for m in problem["members"]) == ["+0123456789", "12345"]
    assert problem["error"] == "the number is not a valid E.164 number for 2 of 5 members"


def test_the_message_type_must_fit_a_local_template(client, organisation, engine):
    no_header = campaign(
        client, organisation, template(client, organisation, OFFER_BODY, message_type="image")
    )
    upload(client, no_header, f"phone,name,offer\n{phones(1)[0]},Ann,10%\n")
    [problem] = approve(client, no_header).json()["errors"]
    assert problem["error"].endswith(
        "is an image template: it takes one header parameter with valueType image; configured: none"
    )
    image_on_text = campaign(
        client, organisation, template(client, organisation, [IMAGE_HEADER, *OFFER_BODY])
    )
    upload(client, image_on_text, f"phone,name,offer\n{phones(1)[0]},Ann,10%\n")
    errors = approve(client, image_on_text).json()["errors"]
    assert any(
        "is a text template: its header parameters must be text" in e["error"] for e in errors
    )
    mismatched = [{"type": "header", "valueType": "image", "source": "asset.json"}, *OFFER_BODY]
    wrong_asset = template(client, organisation, mismatched, message_type="image")
    generator(engine, wrong_asset, CARD)
    third = campaign(client, organisation, wrong_asset)
    upload(client, third, f"phone,name,offer\n{phones(1)[0]},Ann,10%\n")
    [problem] = approve(client, third).json()["errors"]
    assert problem["error"] == "parameter 1 is image but its source is asset.json"


def test_the_readiness_route_answers_what_approval_would_and_changes_nothing(
    client, organisation, engine
):
    offer = campaign(client, organisation, template(client, organisation, OFFER_BODY))
    upload(client, offer, "phone,name\n" + "\n".join(f"{n},Ann" for n in phones(7)) + "\n")

    dry = client.get(f"/api/campaigns/{offer}/readiness", headers=AUTH)
    assert dry.status_code == 200
    assert status_of(client, offer) == "draft"
    refused = approve(client, offer).json()
    assert {k: refused[k] for k in dry.json()} == dry.json()
    [problem] = dry.json()["errors"]
    assert problem["count"] == 7 and len(problem["members"]) == readiness.FIRST_MEMBERS
    assert dry.json()["checks"] == ["audience", "message_type", "template", "parameters", "numbers"]
    assert (
        client.get(
            "/api/campaigns/6f1d3c1e-0a4b-4a5e-9d59-1e9b1d2c3a4b/readiness", headers=AUTH
        ).status_code
        == 404
    )
    assert client.get(f"/api/campaigns/{offer}/readiness").status_code == 401


def test_the_cli_prints_the_refusal_in_one_line(capsys, client, organisation, engine, tmp_path):
    offer = campaign(client, organisation, template(client, organisation, OFFER_BODY))
    upload(client, offer, "phone,name\n" + "\n".join(f"{n},Ann" for n in phones(3)) + "\n")
    capsys.readouterr()

    code = main(["campaigns", "approve", offer])

    out, err = capsys.readouterr()
    assert (code, out) == (1, "")
    assert err.count("\n") == 1
    assert err == (
        f"waflow: error: campaign {offer} cannot be approved (1 problem): template.parameters[1]:"
        " attributes.offer (template parameter 2) is missing for 3 of 3 members\n"
    )
    assert main(["campaigns", "readiness", offer]) == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["errors"][0]["members"]) == 3


def test_100000_members_are_checked_in_the_database(engine):
    members = 100_000
    with engine.begin() as conn:
        org = campaigns.create_organisation(conn, "Big")
        parameters = [*OFFER_BODY, {"type": "body", "valueType": "text", "source": "contact.tier"}]
        template_id = campaigns.create_template(conn, org, "big", parameters=parameters)
        big = campaigns.create_campaign(
            conn, org, "Big", message_type="template", template_id=template_id
        )
        numbered = "CASE WHEN g % 25000 = 7 THEN 'x' || g ELSE '+1202' || lpad(g::text, 7, '0') END"
        conn.execute(
            sa.text(
                "INSERT INTO contacts (organisation_id, phone, name, attributes)"
                f" SELECT :o, {numbered},"
                " CASE WHEN g % 50 = 0 THEN NULL ELSE 'Contact ' || g END,"
                ' CASE WHEN g % 20 = 0 THEN \'{"offer": "5%"}\'::jsonb'
                "  WHEN g % 3 = 0 THEN '{\"tier\": \"gold\"}'::jsonb ELSE '{}' END"
                " FROM generate_series(1, :n) g WHERE g % 25000 <> 7"
            ),
            {"o": org, "n": members},
        )
        conn.execute(
            sa.text(
                "INSERT INTO campaign_audience (campaign_id, contact_id, msisdn, name, attributes)"
                " SELECT :c, ct.id, m.msisdn, CASE WHEN g % 100 = 0 THEN NULL ELSE 'M' || g END,"
                " CASE WHEN g % 10 = 0 THEN '{}'::jsonb WHEN g % 1000 = 1"
                '  THEN \'{"offer": "  "}\'::jsonb ELSE \'{"offer": "10%"}\'::jsonb END'
                f" FROM generate_series(1, :n) g CROSS JOIN LATERAL (SELECT {numbered} AS msisdn) m"
                " LEFT JOIN contacts ct ON ct.organisation_id = :o AND ct.phone = m.msisdn"
            ),
            {"c": big, "o": org, "n": members},
        )
    # What dispatch would find, from the rules the rows were made by.
    every = range(1, members + 1)
    no_contact = {g for g in every if g % 25000 == 7}
    expected = {
        "msisdn": {g for g in every if g % 25000 == 7},
        "template.parameters[0]": {g for g in every if g % 100 == 0},
        "template.parameters[1]": {
            g for g in every if (g % 10 == 0 and g % 20 != 0) or g % 1000 == 1
        },
        "template.parameters[2]": {
            g for g in every if g in no_contact or g % 3 != 0 or g % 20 == 0
        },
    }

    with pytest.raises(readiness.NotReady) as refused:
        campaign_answers.approved_campaign(engine, str(big))

    report = refused.value.report
    assert report.members == members
    found = {p.field: p for p in report.problems}
    assert set(found) == set(expected)
    for where, numbers in expected.items():
        problem = found[where]
        assert problem.count == len(numbers), where
        listed = [
            int(m["msisdn"].removeprefix("x"))
            if m["msisdn"].startswith("x")
            else int(m["msisdn"][5:])
            for m in problem.members
        ]
        assert len(listed) == min(len(numbers), readiness.FIRST_MEMBERS)
        assert set(listed) <= numbers, where
    assert campaign_runs.campaign_progress(engine, str(big))["status"] == "draft"


def test_audience_counts_are_for_the_whole_file(client, organisation, engine):
    target = campaign(client, organisation, template(client, organisation, []))
    first = phones(2500, start=1000)
    assert upload(client, target, "phone\n" + "\n".join(first) + "\n") == {
        "imported": 2500,
        "created": 2500,
        "already_present": 0,
    }
    # Every other row is already a member: repeats on every page of the insert.
    mixed = [n if i % 2 else f"+1303555{i:04d}" for i, n in enumerate(first)]
    again = upload(client, target, "phone,name\n" + "\n".join(f"{n},X" for n in mixed) + "\n")
    new = sum(1 for n in mixed if n not in first)
    assert again == {"imported": 2500, "created": new, "already_present": 2500 - new}
    with engine.connect() as conn:
        assert (
            conn.execute(
                sa.text("SELECT count(*) FROM campaign_audience WHERE campaign_id = :c"),
                {"c": target},
            ).scalar_one()
            == 2500 + new
        )
    # A number twice in one file, in two spellings pages apart, refuses the file whole.
    repeated = [*phones(2499, start=5000), "+1 202 555 5003"]
    refused = client.post(
        f"/api/campaigns/{target}/audience",
        content="phone\n" + "\n".join(repeated) + "\n",
        headers=CSV,
    )
    assert refused.status_code == 422
    assert refused.json()["errors"] == [
        {"line": 2501, "error": "+12025555003 is already on line 5"}
    ]
