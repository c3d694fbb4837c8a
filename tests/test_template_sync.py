"""The `whatsapp_templates` sync against the real Postgres and the fake Graph API: every page
read, each name and language stored as Meta lists it, nothing half-applied, the asset's
table and checks, our configuration checked against Meta's components, local templates and
approval, and the same sync from the operator API and the command line."""

from __future__ import annotations

import json

import dagster as dg
import pytest
import sqlalchemy as sa

from assets_defs import templates as template_assets
from pipelines.cli import main
from pipelines.definitions import defs as load_defs
from resources import (
    breakers,
    campaign_runs,
    campaigns,
    errors,
    operator_templates,
    settings,
    templates,
)
from resources.postgres import PostgresResource
from resources.whatsapp import WhatsAppClient, WhatsAppResource
from tests.fake_graph import Failure
from tests.template_payloads import WABA_ID, meta_template
from tests.webhook_support import ADMIN, webhook_client
from webhook_app import campaign_answers

defs = load_defs()

RATE_LIMITED = Failure(
    80008,
    "(#80008) There have been too many calls to this WhatsApp Business account. Wait a bit"
    " and try again.",
)
ASKED_FOR = {"name", "language", "status", "category", "quality_score", "components"}
ASKED_FOR |= {"rejected_reason", "id"}
TWO_BODY = [
    {"type": "body", "valueType": "text", "source": "contact.name"},
    {"type": "body", "valueType": "text", "source": "attributes.offer"},
]


@pytest.fixture
def instance():
    with dg.instance_for_test() as running:
        yield running


def add_organisation(engine, waba_id: str | None = WABA_ID, name: str = "Shop") -> str:
    with engine.begin() as conn:
        organisation = campaigns.create_organisation(conn, name)
        conn.execute(
            sa.text("UPDATE organisations SET waba_id = :w WHERE id = :o"),
            {"w": waba_id, "o": organisation},
        )
    return str(organisation)


def sync(engine, graph, organisation_id: str) -> templates.SyncResult:
    client = WhatsAppClient("test-token", "1234", graph.url, "v25.0", 10.0, 8)
    try:
        return templates.sync_organisation(engine, client, organisation_id)
    finally:
        client.close()


def stored(engine, organisation_id: str) -> dict[tuple[str, str], sa.Row]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT * FROM templates WHERE organisation_id = :o"), {"o": organisation_id}
        ).all()
    return {(r.name, r.language): r for r in rows}


def scalar(engine, sql: str, **params):
    with engine.connect() as conn:
        return conn.execute(sa.text(sql), params).scalar()


def resources_for(postgres: PostgresResource, graph, token: str | None = "test-token") -> dict:
    return {
        "postgres": PostgresResource(database_url=postgres.database_url),
        "whatsapp": WhatsAppResource(
            access_token=token, phone_number_id="1234", base_url=graph.url, api_version="v25.0"
        ),
    }


def materialize(instance, postgres, graph, token: str | None = "test-token"):
    return dg.materialize(
        [
            template_assets.whatsapp_templates,
            template_assets.active_campaigns_use_approved_templates,
            template_assets.templates_fit_meta,
        ],
        resources=resources_for(postgres, graph, token),
        instance=instance,
        raise_on_error=False,
    )


def checks(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def table(result) -> list[dict]:
    [materialization] = result.asset_materializations_for_node("whatsapp_templates")
    return [r.data for r in materialization.metadata["templates"].records]


def campaign_on(engine, organisation_id: str, template_id: int) -> str:
    created = campaign_answers.created_campaign(
        engine,
        {
            "organisation_id": organisation_id,
            "name": "Spring sale",
            "message_type": "template",
            "template_id": template_id,
        },
    )
    campaigns.import_audience(engine, created["id"], "phone,name,offer\n+12025550100,Ana,20%\n")
    return created["id"]


def test_every_page_is_read_and_each_name_and_language_is_stored_as_meta_lists_it(engine, graph):
    organisation = add_organisation(engine)
    graph.template_page_size = 2
    graph.set_templates(
        WABA_ID,
        [
            meta_template("spring_sale", "en_US", header="IMAGE", template_id="111"),
            # The same template in another language: a template of its own at Meta.
            meta_template(
                "spring_sale",
                "pt_BR",
                status="PENDING",
                category="UTILITY",
                body="Olá {{1}}, a promoção começou.",
                quality="UNKNOWN",
                template_id="222",
            ),
            meta_template(
                "order_update",
                category="UTILITY",
                header="Order {{1}}",
                body="Your order {{1}} ships {{2}} with {{3}}.",
                url_button=True,
            ),
            meta_template("old_promo", status="REJECTED", rejected_reason="PROMOTIONAL"),
            meta_template("login_code", category="AUTHENTICATION", body="{{1}} is your code."),
        ],
    )

    result = sync(engine, graph, organisation)

    assert (result.templates, result.created, result.updated, result.removed) == (5, 5, 0, 0)
    # Three pages of two, each page asked for by the cursor the previous one gave.
    assert len(graph.template_requests) == 3
    assert "after" not in graph.template_requests[0]
    assert all(r["after"] for r in graph.template_requests[1:])
    assert set(graph.template_requests[0]["fields"].split(",")) >= ASKED_FOR
    rows = stored(engine, organisation)
    english, portuguese = rows[("spring_sale", "en_US")], rows[("spring_sale", "pt_BR")]
    assert (english.status, english.category, english.quality_score) == (
        "APPROVED",
        "marketing",
        "GREEN",
    )
    assert (english.header_format, english.body_parameters, english.message_type) == (
        "IMAGE",
        2,
        "image",
    )
    assert (english.meta_template_id, english.origin, english.parameters) == ("111", "meta", [])
    assert english.body == "Hi {{1}}, our spring sale is on: {{2}} off everything."
    assert (portuguese.status, portuguese.category, portuguese.quality_score) == (
        "PENDING",
        "utility",
        "UNKNOWN",
    )
    assert (portuguese.body_parameters, portuguese.meta_template_id) == (1, "222")
    order = rows[("order_update", "en_US")]
    assert (order.header_format, order.header_parameters, order.body_parameters) == ("TEXT", 1, 3)
    assert [(b["type"], b["parameters"]) for b in order.buttons] == [
        ("URL", 1),
        ("QUICK_REPLY", 0),
    ]
    assert (rows[("old_promo", "en_US")].status, rows[("old_promo", "en_US")].rejected_reason) == (
        "REJECTED",
        "PROMOTIONAL",
    )
    assert rows[("login_code", "en_US")].category == "authentication"

    again = sync(engine, graph, organisation)
    assert (again.templates, again.created, again.updated) == (5, 0, 5)
    assert scalar(engine, "SELECT count(*) FROM templates") == 5
    assert scalar(engine, "SELECT count(*) FROM template_syncs") == 2


def test_a_sync_that_fails_half_way_changes_nothing(engine, graph):
    organisation = add_organisation(engine)
    graph.template_page_size = 2
    names = ["a_offer", "b_offer", "c_offer", "d_offer", "e_offer"]
    graph.set_templates(WABA_ID, [meta_template(n) for n in names])
    sync(engine, graph, organisation)
    before = stored(engine, organisation)

    # At Meta: the first page's template is paused and a new one appears; the second page fails.
    graph.set_templates(
        WABA_ID,
        [
            meta_template("a_offer", status="PAUSED"),
            *map(meta_template, names[1:]),
            meta_template("f"),
        ],
    )
    graph.fail_template_page(WABA_ID, 1, RATE_LIMITED)
    requests_before = len(graph.template_requests)
    with pytest.raises(templates.SyncFailed) as failed:
        sync(engine, graph, organisation)

    assert (failed.value.code, failed.value.title) == (RATE_LIMITED.code, RATE_LIMITED.title)
    assert len(graph.template_requests) - requests_before == 2  # the first page was read
    after = stored(engine, organisation)
    assert after.keys() == before.keys()
    assert {k: r.status for k, r in after.items()} == {k: "APPROVED" for k in before}
    assert {k: r.updated_at for k, r in after.items()} == {
        k: r.updated_at for k, r in before.items()
    }
    assert scalar(engine, "SELECT count(*) FROM template_syncs") == 1
    with engine.connect() as conn:
        assert breakers.open_breakers(conn) == []


def test_a_graph_api_error_fails_the_asset_with_its_code_and_title_and_the_others_sync(
    engine, postgres, graph, instance
):
    failing = add_organisation(engine, "900000000000001", "Failing")
    working = add_organisation(engine, WABA_ID, "Working")
    graph.set_templates("900000000000001", [meta_template("hello")])
    graph.set_templates(WABA_ID, [meta_template("hello")])
    graph.fail_template_page("900000000000001", 0, RATE_LIMITED)

    result = materialize(instance, postgres, graph)

    assert not result.success
    [failure] = result.get_step_failure_events()
    description = failure.step_failure_data.user_failure_data.description
    assert "Graph API error 80008" in description
    assert "There have been too many calls to this WhatsApp Business account" in description
    assert "900000000000001" in description
    assert stored(engine, failing) == {}
    assert stored(engine, working)[("hello", "en_US")].status == "APPROVED"


def test_the_materialisation_shows_the_templates_and_the_check_fails_on_a_paused_template(
    engine, postgres, graph, instance
):
    organisation = add_organisation(engine)
    graph.set_templates(
        WABA_ID,
        [meta_template("spring_sale"), meta_template("old_promo", status="REJECTED")],
    )
    first = materialize(instance, postgres, graph)
    assert first.success
    assert checks(first) == {
        "active_campaigns_use_approved_templates": True,
        "templates_fit_meta": True,
    }
    assert {(r["template"], r["status"]) for r in table(first)} == {
        ("spring_sale", "APPROVED"),
        ("old_promo", "REJECTED"),
    }
    template = operator_templates.create_template(
        engine,
        {
            "organisation_id": organisation,
            "name": "spring_sale",
            "language": "en_US",
            "parameters": TWO_BODY,
        },
    )
    campaign = campaign_on(engine, organisation, template["id"])
    assert campaign_answers.approved_campaign(engine, campaign)["status"] == "approved"

    # Meta pauses the template while the campaign is active.
    graph.set_templates(
        WABA_ID,
        [
            meta_template("spring_sale", status="PAUSED"),
            meta_template("old_promo", status="REJECTED"),
        ],
    )
    second = materialize(instance, postgres, graph)

    assert second.success
    assert checks(second) == {
        "active_campaigns_use_approved_templates": False,
        "templates_fit_meta": True,
    }
    [evaluation] = [
        e
        for e in second.get_asset_check_evaluations()
        if e.check_name == "active_campaigns_use_approved_templates"
    ]
    [listed] = [r.data for r in evaluation.metadata["listing"].records]
    assert listed["template_status"] == "PAUSED" and campaign in listed["campaign"]
    assert ("spring_sale", "PAUSED") in {(r["template"], r["status"]) for r in table(second)}
    # The sync found it paused: its breaker is open before any send met 132015.
    with engine.connect() as conn:
        [breaker] = breakers.open_breakers(conn)
    assert (breaker.scope, breaker.error_code) == ("template", 132015)
    assert breaker.scope_key == breakers.template_key(organisation, "spring_sale", "en_US")


def test_a_body_parameter_count_that_differs_from_ours_is_refused_recorded_and_shown(
    engine, postgres, graph, instance
):
    organisation = add_organisation(engine)
    graph.set_templates(WABA_ID, [meta_template("spring_sale", header="IMAGE")])
    sync(engine, graph, organisation)
    data = {"organisation_id": organisation, "name": "spring_sale", "language": "en_US"}

    with pytest.raises(errors.InvalidInput) as refused:
        operator_templates.create_template(engine, {**data, "parameters": TWO_BODY[:1]})
    messages = [e["error"] for e in refused.value.errors]
    assert "body: Meta's template has 2 body parameters (1, 2); 1 configured" in messages, messages
    assert any("IMAGE header; configure one header parameter" in m for m in messages)
    video = {"type": "header", "valueType": "video", "source": "asset.video"}
    with pytest.raises(errors.InvalidInput, match="header parameter is video but Meta's"):
        operator_templates.create_template(engine, {**data, "parameters": [video, *TWO_BODY]})
    image = {"type": "header", "valueType": "image", "source": "asset.image"}
    template = operator_templates.create_template(
        engine, {**data, "parameters": [image, *TWO_BODY]}
    )
    assert (template["origin"], template["config_problems"]) == ("meta", [])
    campaign_on(engine, organisation, template["id"])  # a draft uses it

    # Meta's body gains a third variable: the next sync records the mismatch.
    graph.set_templates(
        WABA_ID,
        [meta_template("spring_sale", header="IMAGE", body="Hi {{1}}, {{2}} off until {{3}}.")],
    )
    result = materialize(instance, postgres, graph)
    assert result.success
    [row] = [r for r in table(result) if r["template"] == "spring_sale"]
    assert row["problems"] == "body: Meta's template has 3 body parameters (1, 2, 3); 2 configured"
    assert checks(result)["templates_fit_meta"] is False
    assert operator_templates.get_template(engine, template["id"])["config_problems"] == [
        row["problems"]
    ]

    with pytest.raises(errors.InvalidInput, match="3 body parameters"):
        operator_templates.update_template(
            engine, template["id"], {"parameters": [image, *TWO_BODY[:1]]}
        )
    third = {"type": "body", "valueType": "text", "source": "literal:Sunday"}
    fixed = operator_templates.update_template(
        engine, template["id"], {"parameters": [image, *TWO_BODY, third]}
    )
    assert fixed["config_problems"] == []
    # What Meta decides is not ours to change.
    with pytest.raises(errors.InvalidInput) as owned:
        operator_templates.update_template(
            engine, template["id"], {"status": "approved", "category": "utility"}
        )
    assert {e["field"] for e in owned.value.errors} == {"status", "category"}


def test_a_campaign_needs_an_approved_template_in_production(engine, graph, monkeypatch):
    organisation = add_organisation(engine)
    graph.set_templates(WABA_ID, [meta_template("spring_sale", status="PAUSED")])
    sync(engine, graph, organisation)
    template = operator_templates.create_template(
        engine,
        {
            "organisation_id": organisation,
            "name": "spring_sale",
            "language": "en_US",
            "parameters": TWO_BODY,
        },
    )
    campaign = campaign_on(engine, organisation, template["id"])

    monkeypatch.setenv("APP_ENV", "production")
    with pytest.raises(errors.Conflict, match="'spring_sale' \\(en_US\\) is PAUSED"):
        campaign_answers.approved_campaign(engine, campaign)
    # A template declared approved here, without Meta's word, is not enough in production.
    local_organisation = add_organisation(engine, None, "Local")
    local = operator_templates.create_template(
        engine, {"organisation_id": local_organisation, "name": "hello", "parameters": []}
    )
    local_campaign = campaign_on(engine, local_organisation, local["id"])
    with pytest.raises(errors.Conflict, match="only declared approved locally"):
        campaign_answers.approved_campaign(engine, local_campaign)
    assert campaign_runs.campaign_progress(engine, local_campaign)["status"] == "draft"

    monkeypatch.setenv("APP_ENV", "development")
    assert campaign_answers.approved_campaign(engine, local_campaign)["status"] == "approved"
    with pytest.raises(errors.Conflict, match="is PAUSED"):
        campaign_answers.approved_campaign(engine, campaign)  # paused at Meta: refused here too

    graph.set_templates(WABA_ID, [meta_template("spring_sale")])
    sync(engine, graph, organisation)
    monkeypatch.setenv("APP_ENV", "production")
    assert campaign_answers.approved_campaign(engine, campaign)["status"] == "approved"


def test_a_template_whose_configuration_does_not_fit_meta_is_not_approved(engine, graph):
    organisation = add_organisation(engine)
    graph.set_templates(WABA_ID, [meta_template("spring_sale")])
    sync(engine, graph, organisation)
    template = operator_templates.create_template(
        engine,
        {
            "organisation_id": organisation,
            "name": "spring_sale",
            "language": "en_US",
            "parameters": TWO_BODY,
        },
    )
    campaign = campaign_on(engine, organisation, template["id"])
    graph.set_templates(WABA_ID, [meta_template("spring_sale", body="Hi {{1}}!")])
    assert sync(engine, graph, organisation).mismatched == 1

    with pytest.raises(errors.InvalidInput) as refused:
        campaign_answers.approved_campaign(engine, campaign)
    [error] = refused.value.errors
    assert error["field"] == "template"
    assert "body: Meta's template has 1 body parameter (1); 2 configured" in error["error"]


def test_a_template_meta_does_not_have_is_refused_in_production_only(engine, graph, monkeypatch):
    organisation = add_organisation(engine)
    graph.set_templates(WABA_ID, [meta_template("spring_sale")])
    sync(engine, graph, organisation)
    data = {"organisation_id": organisation, "name": "made_up", "language": "en_US"}

    monkeypatch.setenv("APP_ENV", "production")
    with pytest.raises(errors.InvalidInput) as refused:
        operator_templates.create_template(engine, data)
    [error] = refused.value.errors
    assert error["field"] == "name"
    assert f"Meta has no template 'made_up' in language 'en_US' in WABA {WABA_ID}" in error["error"]

    monkeypatch.setenv("APP_ENV", "development")
    created = operator_templates.create_template(engine, data)
    assert (created["origin"], created["status"]) == ("local", "approved")


def test_a_template_meta_no_longer_lists_is_deleted(engine, graph):
    organisation = add_organisation(engine)
    graph.set_templates(WABA_ID, [meta_template("spring_sale"), meta_template("winter_sale")])
    sync(engine, graph, organisation)
    graph.set_templates(WABA_ID, [meta_template("spring_sale")])

    assert sync(engine, graph, organisation).removed == 1

    gone = stored(engine, organisation)[("winter_sale", "en_US")]
    assert (gone.status, gone.synced_at) == ("DELETED", None)
    assert gone.status_reason.startswith("no longer listed by Meta")


def test_without_an_access_token_the_sync_reads_nothing_and_changes_nothing(
    engine, postgres, graph, instance, capsys, monkeypatch
):
    organisation = add_organisation(engine)
    graph.set_templates(WABA_ID, [meta_template("spring_sale")])

    result = materialize(instance, postgres, graph, token=None)

    assert result.success
    [materialization] = result.asset_materializations_for_node("whatsapp_templates")
    assert "cannot read templates from Meta" in materialization.metadata["note"].value
    assert graph.template_requests == [] and stored(engine, organisation) == {}
    monkeypatch.delenv("WHATSAPP_ACCESS_TOKEN", raising=False)
    assert main(["templates", "sync", "--organisation", organisation]) == 1
    assert "without WHATSAPP_ACCESS_TOKEN (dev mode)" in capsys.readouterr().err
    with webhook_client(graph.url, access_token=None) as client:
        answer = client.post(f"/api/organisations/{organisation}/templates/sync", headers=ADMIN)
    assert answer.status_code == 409 and "dev mode" in answer.json()["detail"]


def test_the_sync_route_answers_what_was_synced(engine, graph):
    organisation = add_organisation(engine)
    without_waba = add_organisation(engine, None, "No WABA")
    graph.set_templates(
        WABA_ID, [meta_template("spring_sale"), meta_template("spring_sale", "es", status="PAUSED")]
    )
    path = f"/api/organisations/{organisation}/templates/sync"
    with webhook_client(graph.url) as client:
        assert client.post(path).status_code == 401
        answer = client.post(path, headers=ADMIN)
        missing = client.post(
            "/api/organisations/6f1d3c1e-0a4b-4a5e-9d59-1e9b1d2c3a4b/templates/sync",
            headers=ADMIN,
        )
        no_waba = client.post(f"/api/organisations/{without_waba}/templates/sync", headers=ADMIN)
        graph.fail_template_page(WABA_ID, 0, RATE_LIMITED)
        failed = client.post(path, headers=ADMIN)

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert {k: body[k] for k in ("organisation_id", "waba_id", "templates", "created")} == {
        "organisation_id": organisation,
        "waba_id": WABA_ID,
        "templates": 2,
        "created": 2,
    }
    assert len(body["breakers_opened"]) == 1
    assert {(t["name"], t["language"], t["status"]) for t in body["items"]} == {
        ("spring_sale", "en_US", "APPROVED"),
        ("spring_sale", "es", "PAUSED"),
    }
    assert missing.status_code == 404
    assert no_waba.status_code == 409 and "has no waba_id" in no_waba.json()["detail"]
    assert failed.status_code == 502
    assert (failed.json()["code"], failed.json()["title"]) == (
        RATE_LIMITED.code,
        RATE_LIMITED.title,
    )


def test_waflow_templates_sync(engine, graph, capsys, monkeypatch, database_url):
    monkeypatch.setenv("WHATSAPP_ACCESS_TOKEN", "test-token")
    monkeypatch.setenv("WHATSAPP_API_BASE_URL", graph.url)
    first = add_organisation(engine)
    second = add_organisation(engine, "900000000000002", "Second")
    graph.set_templates(WABA_ID, [meta_template("spring_sale")])
    graph.set_templates("900000000000002", [meta_template("hello"), meta_template("bye")])

    assert main(["templates", "sync", "--organisation", second]) == 0
    [report] = json.loads(capsys.readouterr().out)
    assert (report["organisation_id"], report["templates"]) == (second, 2)
    assert stored(engine, first) == {}

    assert main(["templates", "sync"]) == 0
    reports = json.loads(capsys.readouterr().out)
    assert {r["organisation_id"]: r["created"] for r in reports} == {first: 1, second: 0}

    assert main(["templates", "sync", "--organisation", "not-an-id"]) == 1
    assert "organisation not-an-id does not exist" in capsys.readouterr().err

    graph.fail_template_page(WABA_ID, 0, RATE_LIMITED)
    assert main(["templates", "sync"]) == 1
    out, err = capsys.readouterr()
    assert [r["organisation_id"] for r in json.loads(out)] == [second]
    assert "Graph API error 80008" in err and "Traceback" not in err


def test_the_asset_and_its_schedule_are_in_the_code_location(monkeypatch):
    assert defs.get_assets_def("whatsapp_templates").group_names_by_key == {
        dg.AssetKey("whatsapp_templates"): "whatsapp"
    }
    (schedule,) = [s for s in defs.schedules if s.name == "whatsapp_templates_schedule"]
    assert schedule.cron_schedule == "0 * * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    monkeypatch.setenv("TEMPLATE_SYNC_CRON", "*/15 * * * *")
    assert template_assets.whatsapp_templates_schedule().cron_schedule == "*/15 * * * *"
    monkeypatch.setenv("TEMPLATE_SYNC_CRON", "every hour")
    with pytest.raises(settings.InvalidSetting, match="TEMPLATE_SYNC_CRON"):
        template_assets.whatsapp_templates_schedule()


def test_the_sync_reads_the_organisations_numbers_status_too(engine, postgres, graph, instance):
    organisation = add_organisation(engine)
    with engine.begin() as conn:
        campaigns.add_phone_number(conn, organisation, "5550001")
        campaigns.add_phone_number(conn, organisation, "5550002")
    graph.set_templates(WABA_ID, [meta_template("spring_sale")])
    graph.add_phone_number("5550001", quality_rating="YELLOW", throughput={"level": "HIGH"})
    graph.fail_phone_number("5550002", Failure(100, "Unsupported get request"))
    result = materialize(instance, postgres, graph)
    assert result.success
    [materialization] = result.asset_materializations_for_node("whatsapp_templates")
    assert materialization.metadata["phone_numbers_read"].value == 1
    assert materialization.metadata["phone_numbers_unread"].value == 1
    with engine.connect() as conn:
        read, unread = conn.execute(
            sa.text(
                "SELECT quality_rating, messages_per_second, status_error FROM phone_numbers"
                " ORDER BY phone_number_id"
            )
        ).all()
    assert (read.quality_rating, read.messages_per_second, read.status_error) == (
        "YELLOW",
        1000,
        None,
    )
    assert "Unsupported get request" in unread.status_error
