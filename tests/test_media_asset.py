"""`campaign_media` against the real Postgres and the local S3 server."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import dagster as dg
import pytest
import sqlalchemy as sa

from assets_defs.media.asset import objects_check
from assets_defs.media.runner import CampaignMediaRun, Policy, media_prefix
from resources import audience, campaigns
from resources.sandbox.pool import Limits
from resources.storage import S3Storage
from tests.media_campaigns import campaign_row, create_campaign, materialize, members, versioned


@pytest.fixture(autouse=True)
def fast_media(monkeypatch):
    monkeypatch.setenv("MAX_CONCURRENT_GENERATIONS", "2")
    monkeypatch.setenv("MEDIA_TIMEOUT_SECONDS", "10")
    monkeypatch.setenv("MEDIA_RETRY_BACKOFF_SECONDS", "0.01")


@pytest.fixture
def instance():
    with dg.instance_for_test() as running:
        yield running


def generate(engine, s3, campaign_id, workers: int = 2, log=lambda message: None):
    """The run's work without Dagster around it."""
    run = CampaignMediaRun(
        engine, s3, campaign_id, Limits(workers=workers), Policy(backoff_seconds=0.01), log
    )
    return run.run()


def stored_keys(s3, campaign_id) -> dict[str, str]:
    """Every object under the campaign's prefix, with its content type."""
    listing = s3.client.list_objects_v2(Bucket=s3.bucket, Prefix=media_prefix(campaign_id))
    return {
        item["Key"]: s3.client.head_object(Bucket=s3.bucket, Key=item["Key"])["ContentType"]
        for item in listing.get("Contents", ())
    }


def test_the_demo_generator_campaign_is_generated_uploaded_and_checked(
    engine, postgres, s3, instance, repo_root
):
    source = (repo_root / "assets_defs" / "generators" / "demo_offer.py").read_text()
    campaign_id, _ = create_campaign(engine, 4, source)

    result = materialize(instance, campaign_id, postgres, s3)

    assert result.success
    rows = members(engine, campaign_id)
    assert {r.status for r in rows} == {"asset_generated"}
    assert {r.generator_version for r in rows} == {1}
    for row in rows:
        assert row.generated_asset_urls == {
            "image": f"campaigns/{campaign_id}/{row.id}/image.jpg",
            "json": f"campaigns/{campaign_id}/{row.id}/json.json",
        }
    stored = stored_keys(s3, campaign_id)
    assert len(stored) == 8
    assert sorted(set(stored.values())) == ["application/json", "image/jpeg"]
    campaign = campaign_row(engine, campaign_id)
    assert campaign.status == "asset_generated"
    assert campaign.asset_generation_status == "completed"
    assert campaign.asset_failure_ratio == 0
    metadata = result.asset_materializations_for_node("campaign_media")[0].metadata
    assert metadata["generated"].value == 4 and metadata["failed"].value == 0
    assert metadata["s3_prefix"].value == f"s3://{s3.bucket}/campaigns/{campaign_id}/"
    assert metadata["preview"].value.startswith("![one generated image](data:image/jpeg;base64,")
    assert len(metadata["preview"].value) < 50_000
    check = result.get_asset_check_evaluations()[0]
    assert check.passed and check.metadata["members_checked"].value == 4

    again = materialize(instance, campaign_id, postgres, s3)
    assert (
        again.asset_materializations_for_node("campaign_media")[0].metadata["generated"].value == 0
    )
    assert stored_keys(s3, campaign_id) == stored
    assert members(engine, campaign_id) == rows


def test_a_raising_member_is_retried_then_failed_without_failing_the_campaign(
    engine, postgres, s3, instance
):
    campaign_id, _ = create_campaign(engine, 20, versioned(1), failing=1)

    result = materialize(instance, campaign_id, postgres, s3)

    assert result.success
    rows = members(engine, campaign_id)
    failed = [r for r in rows if r.status == "failed"]
    assert len(failed) == 1
    assert failed[0].attempts == 3
    assert failed[0].last_error.startswith("RuntimeError: cannot render +12025550000 at gen.py")
    assert failed[0].generated_asset_urls == {}
    campaign = campaign_row(engine, campaign_id)
    assert campaign.status == "asset_generated"
    assert campaign.asset_failure_ratio == pytest.approx(0.05)
    metadata = result.asset_materializations_for_node("campaign_media")[0].metadata
    assert metadata["failed"].value == 1 and metadata["retried"].value == 2
    assert metadata["first_failures"].value.records[0].data["attempts"] == 3


def test_a_flaky_member_succeeds_on_a_later_attempt(engine, s3):
    flaky = """
        import os
        CALLS = []
        def generate_asset(attributes, name, msisdn, temp_dir):
            CALLS.append(msisdn)
            if CALLS.count(msisdn) == 1:
                raise ConnectionError("font server busy")
            open("ok.txt", "w").write("ok")
            return {"text": "ok.txt"}
        """
    campaign_id, _ = create_campaign(engine, 3, flaky)

    report = generate(engine, s3, campaign_id, workers=1)

    assert report.retried == 3

    rows = members(engine, campaign_id)
    assert {r.status for r in rows} == {"asset_generated"}
    assert {r.attempts for r in rows} == {2}


def test_uploads_the_storage_refuses_fail_their_members_with_the_reason(engine, s3):
    campaign_id, _ = create_campaign(engine, 3, versioned(1))
    refusing = S3Storage(bucket="no-such-bucket", endpoint_url=s3.endpoint_url)

    report = generate(engine, refusing, campaign_id)

    assert report.failed == 3
    rows = members(engine, campaign_id)
    assert {r.status for r in rows} == {"failed"}
    assert {r.attempts for r in rows} == {3}
    for row in rows:
        assert row.last_error.startswith("upload to S3 failed: An error occurred (NoSuchBucket)")
        assert row.generated_asset_urls == {}
    assert campaign_row(engine, campaign_id).status == "failed"


def test_failures_above_the_threshold_fail_the_campaign_with_the_reason(engine, s3):
    campaign_id, _ = create_campaign(engine, 10, versioned(1), failing=2)

    generate(engine, s3, campaign_id)

    campaign = campaign_row(engine, campaign_id)
    assert campaign.status == "failed"
    assert campaign.asset_generation_status == "failed"
    assert campaign.asset_failure_ratio == pytest.approx(0.2)
    assert campaign.status_reason == (
        "2 of 10 members (20.0%) failed media generation, above the 10% threshold"
    )


def test_a_generator_with_a_syntax_error_fails_every_member_once(engine, s3):
    campaign_id, _ = create_campaign(engine, 5, "def generate_asset(:\n")

    report = generate(engine, s3, campaign_id)

    assert report.failed == 5 and report.retried == 0
    rows = members(engine, campaign_id)
    assert {r.status for r in rows} == {"failed"}
    assert {r.attempts for r in rows} == {1}
    assert all("gen.py does not compile" in r.last_error for r in rows)
    assert campaign_row(engine, campaign_id).status == "failed"


def test_a_campaign_without_an_active_generator_needs_no_media(engine, postgres, s3, instance):
    campaign_id, _ = create_campaign(engine, 3, None)

    result = materialize(instance, campaign_id, postgres, s3)

    assert result.success
    assert campaign_row(engine, campaign_id).status == "asset_generated"
    assert {r.status for r in members(engine, campaign_id)} == {"pending"}
    assert stored_keys(s3, campaign_id) == {}


def test_an_unknown_campaign_fails_the_run_clearly(postgres, s3, instance):
    missing = "00000000-0000-4000-8000-000000000000"
    with pytest.raises(dg.Failure, match=f"campaign {missing} does not exist"):
        materialize(instance, missing, postgres, s3)


def test_a_new_version_mid_campaign_applies_to_the_members_not_yet_done(engine, s3):
    campaign_id, template = create_campaign(engine, 12, versioned(1))
    published = []

    class PublishingV2AfterTheFirstMember(CampaignMediaRun):
        def _count(self, result):
            if not published:
                with engine.begin() as conn:
                    published.append(
                        campaigns.add_generator(conn, template, "gen.py", versioned(2))
                    )
            return super()._count(result)

    PublishingV2AfterTheFirstMember(
        engine,
        s3,
        campaign_id,
        Limits(workers=1),
        Policy(backoff_seconds=0.01),
        lambda m: None,
    ).run()

    rows = members(engine, campaign_id)
    assert published == [2]
    assert {r.status for r in rows} == {"asset_generated"}
    versions = [r.generator_version for r in rows]
    assert versions.count(1) == 4  # the first batch was claimed with v1
    assert versions.count(2) == 8
    for row in rows:
        body = s3.client.get_object(Bucket=s3.bucket, Key=row.generated_asset_urls["json"])
        assert json.loads(body["Body"].read())["version"] == row.generator_version


def test_a_member_returned_behind_a_runs_claims_is_generated_by_it(engine, s3):
    """Claims go on in id order; a member another run's recovery returns to `pending` behind
    them is found when the run looks from the start again."""
    campaign_id, _ = create_campaign(engine, 12, versioned(1))
    lowest = min(r.id for r in members(engine, campaign_id))
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE campaign_audience SET status = 'asset_generating',"
                " claimed_by_run = 'run-other' WHERE id = :m"
            ),
            {"m": lowest},
        )

    class ReleasingTheOtherRunsClaimAfterTheFirstMember(CampaignMediaRun):
        def _count(self, result):
            with engine.begin() as conn:
                audience.release_claims(conn, campaign_id, [self.run_id])
            return super()._count(result)

    report = ReleasingTheOtherRunsClaimAfterTheFirstMember(
        engine, s3, campaign_id, Limits(workers=1), Policy(), lambda m: None
    ).run("run-this", ["run-other"])

    assert report.generated == 12
    assert {r.status for r in members(engine, campaign_id)} == {"asset_generated"}
    assert campaign_row(engine, campaign_id).status == "asset_generated"


def test_a_run_killed_with_sigkill_loses_nothing_and_the_next_run_finishes(
    engine, postgres, s3, instance, database_url
):
    # Each call writes a fresh nonce: an object rewritten by a second generation changes.
    slow = """
        import time, uuid
        def generate_asset(attributes, name, msisdn, temp_dir):
            time.sleep(0.15)
            open("card.txt", "w").write(uuid.uuid4().hex)
            return {"text": "card.txt"}
        """
    campaign_id, _ = create_campaign(engine, 30, slow)
    script = textwrap.dedent(
        f"""
        from uuid import UUID
        from assets_defs.media.runner import CampaignMediaRun, Policy
        from resources.sandbox.pool import Limits
        from resources.postgres import create_engine
        from resources.storage import S3Storage
        s3 = S3Storage.from_settings().model_copy(update={{"bucket": "{s3.bucket}"}})
        CampaignMediaRun(create_engine("{database_url}"), s3, UUID("{campaign_id}"),
                         Limits(workers=2), Policy(), lambda m: None).run()
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy())
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done = [r for r in members(engine, campaign_id) if r.status == "asset_generated"]
        if len(done) >= 8:
            break
        time.sleep(0.1)
    child.send_signal(signal.SIGKILL)
    child.wait()
    before = {r.id: r for r in members(engine, campaign_id)}
    done_before = {i for i, r in before.items() if r.status == "asset_generated"}
    assert 8 <= len(done_before) < 30
    assert campaign_row(engine, campaign_id).status == "asset_generation"
    first_bodies = {i: stored_text(s3, before[i]) for i in done_before}

    result = materialize(instance, campaign_id, postgres, s3)

    after = members(engine, campaign_id)
    assert {r.status for r in after} == {"asset_generated"}
    assert all(before[r.id] == r for r in after if r.id in done_before)  # untouched
    metadata = result.asset_materializations_for_node("campaign_media")[0].metadata
    assert metadata["generated"].value == 30 - len(done_before)
    assert {i: stored_text(s3, before[i]) for i in done_before} == first_bodies
    assert len(stored_keys(s3, campaign_id)) == 30
    assert campaign_row(engine, campaign_id).status == "asset_generated"


def stored_text(s3, member) -> str:
    body = s3.client.get_object(Bucket=s3.bucket, Key=member.generated_asset_urls["text"])
    return body["Body"].read().decode()


def test_the_check_fails_when_an_object_is_missing(engine, postgres, s3, instance):
    campaign_id, _ = create_campaign(engine, 3, versioned(1))
    materialize(instance, campaign_id, postgres, s3)
    key = members(engine, campaign_id)[0].generated_asset_urls["json"]
    s3.client.delete_object(Bucket=s3.bucket, Key=key)

    check = objects_check(engine, s3, campaign_id)

    assert not check.passed
    assert check.metadata["members_missing_objects"].value == 1
    assert check.metadata["examples"].value == key


def test_the_run_log_shows_progress_and_generator_output(engine, s3):
    campaign_id, _ = create_campaign(
        engine, 3, 'def generate_asset(a, n, m, t):\n    print("hello from", n)\n'
    )
    lines: list[str] = []

    generate(engine, s3, campaign_id, workers=1, log=lines.append)

    assert any("hello from Customer 0" in line for line in lines)
    progress = [line for line in lines if line.startswith(f"media {campaign_id}:")]
    assert progress[-1].startswith(f"media {campaign_id}: 3/3 done (3 failed this run),")
    assert "members/s" in progress[-1] and "ETA" in progress[-1]


def test_a_paused_campaign_is_left_alone(engine, s3):
    campaign_id, _ = create_campaign(engine, 3, versioned(1))
    with engine.begin() as conn:
        campaigns.set_campaign_status(conn, campaign_id, "paused")

    generate(engine, s3, campaign_id)

    assert campaign_row(engine, campaign_id).status == "paused"
    assert {r.status for r in members(engine, campaign_id)} == {"pending"}


def _claimed_by(engine, campaign_id) -> dict[str, str | None]:
    with engine.connect() as conn:
        return dict(
            conn.execute(
                sa.text(
                    "SELECT id::text, claimed_by_run FROM campaign_audience WHERE campaign_id = :c"
                ),
                {"c": campaign_id},
            ).all()
        )


def test_three_runs_share_a_campaign_and_a_killed_ones_members_are_generated_once_more(
    engine, s3, database_url
):
    slow = """
        import time, uuid
        def generate_asset(attributes, name, msisdn, temp_dir):
            time.sleep(0.2)
            open("card.txt", "w").write(uuid.uuid4().hex)
            return {"text": "card.txt"}
        """
    campaign_id, _ = create_campaign(engine, 60, slow)
    # Every upload of a key is a version of its own: a member generated twice shows two.
    s3.client.put_bucket_versioning(Bucket=s3.bucket, VersioningConfiguration={"Status": "Enabled"})
    runs = ["run-a", "run-b", "run-c"]

    def start(run_id: str, live: list[str]) -> subprocess.Popen:
        script = textwrap.dedent(
            f"""
            from uuid import UUID
            from assets_defs.media.runner import CampaignMediaRun, Policy
            from resources.sandbox.pool import Limits
            from resources.postgres import create_engine
            from resources.storage import S3Storage
            s3 = S3Storage.from_settings().model_copy(update={{"bucket": "{s3.bucket}"}})
            CampaignMediaRun(create_engine("{database_url}"), s3, UUID("{campaign_id}"),
                             Limits(workers=1), Policy(), lambda m: None).run({run_id!r}, {live!r})
            """
        )
        return subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy())

    children = {run_id: start(run_id, runs) for run_id in runs}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        claimed = _claimed_by(engine, campaign_id)
        done = [r for r in members(engine, campaign_id) if r.status == "asset_generated"]
        if len(done) >= 12 and {"run-a", "run-b", "run-c"} <= set(claimed.values()):
            break
        time.sleep(0.1)
    children["run-b"].send_signal(signal.SIGKILL)
    for child in children.values():
        child.wait(timeout=300)
    assert children["run-a"].returncode == children["run-c"].returncode == 0
    # The two live runs left run-b's claims alone; the campaign waits for them.
    left_by_b = [r.id for r in members(engine, campaign_id) if r.status == "asset_generating"]
    assert left_by_b and all(_claimed_by(engine, campaign_id)[str(i)] == "run-b" for i in left_by_b)
    assert campaign_row(engine, campaign_id).status == "asset_generation"

    recovery = start("run-d", [])  # as the recovery sensor requests once no run is live
    assert recovery.wait(timeout=300) == 0

    after = members(engine, campaign_id)
    assert {r.status for r in after} == {"asset_generated"}
    assert campaign_row(engine, campaign_id).status == "asset_generated"
    claimed = _claimed_by(engine, campaign_id)
    assert {"run-a", "run-c", "run-d"} <= set(claimed.values())
    versions: dict[str, int] = {}
    pages = s3.client.get_paginator("list_object_versions").paginate(
        Bucket=s3.bucket, Prefix=media_prefix(campaign_id)
    )
    for page in pages:
        for version in page.get("Versions", ()):
            versions[version["Key"]] = versions.get(version["Key"], 0) + 1
    for member in after:
        count = versions[member.generated_asset_urls["text"]]
        if claimed[str(member.id)] == "run-d":
            # run-b may have uploaded before it was killed, never recorded: once more at most.
            assert member.id in left_by_b and count <= 2
        else:
            assert count == 1, (claimed[str(member.id)], count)
