"""`waflow campaigns ...`: the operator API's operations from the command line."""

from __future__ import annotations

import json

import sqlalchemy as sa

from pipelines.cli import main
from resources.campaigns import set_campaign_status


def run(capsys, *argv: str) -> tuple[int, dict | list | None, str]:
    code = main(["campaigns", *argv])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else None, err


def test_a_campaign_through_the_cli(capsys, database_url, stack, engine, tmp_path):
    _, organisation, _ = run(
        capsys, "create-organisation", "--name", "Shop", "--phone-number-id", "555000"
    )
    template_file = tmp_path / "template.json"
    template_file.write_text(
        json.dumps({"organisation_id": organisation["id"], "name": "hello", "parameters": []})
    )
    _, template, _ = run(capsys, "create-template", str(template_file))
    campaign_file = tmp_path / "campaign.json"
    campaign_file.write_text(
        json.dumps(
            {
                "organisation_id": organisation["id"],
                "name": "Hello",
                "message_type": "template",
                "template_id": template["id"],
            }
        )
    )
    _, campaign, _ = run(capsys, "create", str(campaign_file))
    assert campaign["status"] == "draft"

    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("phone,name\n+12025550100,Ada\nnope,Bob\n")
    code, out, err = run(capsys, "upload-audience", campaign["id"], str(bad_csv))
    assert code == 1 and out is None
    assert err.startswith("waflow: error: 3: ") and "nope" in err
    good_csv = tmp_path / "good.csv"
    good_csv.write_text("phone,name\n+12025550100,Ada\n+12025550101,Bob\n")
    assert run(capsys, "upload-audience", campaign["id"], str(good_csv))[1]["imported"] == 2

    assert run(capsys, "approve", campaign["id"])[1]["status"] == "approved"
    with engine.begin() as conn:
        set_campaign_status(conn, campaign["id"], "asset_generated")
    _, processed, _ = run(capsys, "process", campaign["id"])
    _, status, _ = run(capsys, "status", campaign["id"])
    assert status["runs"][0]["id"] == processed["campaign_run_id"]
    assert status["status"] == "ready_to_launch"
    _, page, _ = run(capsys, "audience", campaign["id"], "--status", "pending", "--limit", "1")
    assert len(page["items"]) == 1 and page["next_after"]
    _, queue, _ = run(capsys, "sqs-status")
    assert queue["fifo"] is True
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM campaign_runs")).scalar_one() == 1


def test_cli_errors_are_one_line(capsys, database_url, stack, tmp_path):
    code, _, err = run(capsys, "status", "6f1d3c1e-0a4b-4a5e-9d59-1e9b1d2c3a4b")
    assert code == 1 and "does not exist" in err
    code, _, err = run(capsys, "create", str(tmp_path / "missing.json"))
    assert code == 1 and "no such file" in err
    assert "Traceback" not in err


def test_organisations_contacts_and_consent_through_the_cli(capsys, database_url, stack, tmp_path):
    _, shop, _ = run(capsys, "create-organisation", "--name", "Shop", "--phone-number-id", "555000")
    code, _, err = run(
        capsys, "create-organisation", "--name", "Copy", "--phone-number-id", "555000"
    )
    assert code == 1 and "555000 already belongs to organisation" in err
    _, listed, _ = run(capsys, "organisations", "--phone-number-id", "555000")
    assert [o["id"] for o in listed] == [shop["id"]]
    contacts = tmp_path / "contacts.csv"
    contacts.write_text("phone,name,opted_out\n+12025550100,Ada,true\n")
    assert run(capsys, "upload-contacts", shop["id"], str(contacts))[1]["opted_out"] == 1
    _, [ada], _ = run(capsys, "contacts", shop["id"], "--phone", "+12025550100")
    assert ada["opted_out"] is True
    assert [e["source"] for e in ada["consent_history"]] == ["csv"]
    opt_in = ["consent", shop["id"], str(ada["id"]), "--scope", "campaigns", "--opted-out", "false"]
    code, _, err = run(capsys, *opt_in)
    assert code == 1 and "by: is required" in err and "reason: is required" in err
    _, state, _ = run(capsys, *opt_in, "--by", "ops@shop", "--reason", "asked in store")
    assert (state["changed"], state["opted_out"]) == (True, False)
    assert state["consent_history"][0]["actor"] == "ops@shop"
