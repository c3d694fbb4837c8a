"""Schedules, checks and lifecycle rules of the archive: what an operator relies on."""

from datetime import UTC, datetime, timedelta

import dagster as dg
import sqlalchemy as sa

from assets_defs.archive import defs as archive_defs
from assets_defs.archive.checks import (
    message_archive_checksums_check,
    message_archive_rows_check,
)
from assets_defs.archive.lifecycle import apply_lifecycle_rules, current_rules
from assets_defs.archive.manifests import Manifest, record
from assets_defs.archive.media import media_archive
from assets_defs.archive.messages import batch_key, message_archive
from assets_defs.archive.schedules import media_archive_schedule, message_archive_schedule
from tests.archive_data import (
    day_ago,
    insert_messages,
    midnight,
    organisation,
    run_archive,
    storage_config,
)

TICK = datetime.now(UTC).replace(hour=2, minute=0, second=0, microsecond=0)


def evaluate(schedule: dg.ScheduleDefinition, postgres) -> list[dg.RunRequest] | dg.SkipReason:
    with (
        dg.instance_for_test() as instance,
        dg.build_schedule_context(
            instance=instance, scheduled_execution_time=TICK, resources={"postgres": postgres}
        ) as context,
    ):
        result = schedule.evaluate_tick(context)
    return result.run_requests or result.skip_message


def ranges(requests: list[dg.RunRequest]) -> list[tuple[str, str]]:
    return [
        (r.tags["dagster/asset_partition_range_start"], r.tags["dagster/asset_partition_range_end"])
        for r in requests
    ]


def test_the_message_schedule_requests_each_eligible_unarchived_run_of_days(engine, postgres):
    org = organisation(engine)
    for age in (95, 94, 93, 91, 89):
        insert_messages(engine, org, day_ago(age), 2)
    with engine.begin() as conn:  # 94 days ago was archived, then restored: not again
        record(conn, Manifest("messages", day_ago(94), row_count=2, rows_deleted=2))

    requests = evaluate(message_archive_schedule, postgres)

    iso = lambda age: day_ago(age).isoformat()  # noqa: E731
    assert ranges(requests) == [(iso(95), iso(95)), (iso(93), iso(93)), (iso(91), iso(91))]
    assert requests[0].run_key == f"messages:{TICK.date()}:{iso(95)}:{iso(95)}"
    assert len({r.run_key for r in requests}) == 3


def test_contiguous_days_are_one_ranged_run_and_nothing_left_is_a_skip(engine, postgres):
    org = organisation(engine)
    for age in (200, 199, 198):
        insert_messages(engine, org, day_ago(age), 1)
    requests = evaluate(message_archive_schedule, postgres)
    assert ranges(requests) == [(day_ago(200).isoformat(), day_ago(198).isoformat())]
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM messages"))
    assert "no eligible day of messages" in evaluate(message_archive_schedule, postgres)


def test_the_media_schedule_skips_archived_media_and_recent_days(engine, postgres):
    org = organisation(engine)
    with engine.begin() as conn:
        for age, status in ((45, "archived"), (44, "pending"), (43, "failed"), (10, "pending")):
            conn.execute(
                sa.text(
                    "INSERT INTO media (organisation_id, media_type, source_url, status, created_at)"
                    " VALUES (:o, 'image', 'http://x/y.jpg', :s, :c)"
                ),
                {"o": org, "s": status, "c": midnight(day_ago(age)) + timedelta(hours=5)},
            )
    requests = evaluate(media_archive_schedule, postgres)
    assert ranges(requests) == [(day_ago(44).isoformat(), day_ago(43).isoformat())]


def test_schedules_run_every_two_days_in_utc_and_start_switched_on():
    assert message_archive_schedule.cron_schedule == "0 2 */2 * *"
    assert media_archive_schedule.cron_schedule == "0 3 */2 * *"
    for schedule in (message_archive_schedule, media_archive_schedule):
        assert schedule.execution_timezone == "UTC"
        assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    for asset in (message_archive, media_archive):
        assert asset.backfill_policy == dg.BackfillPolicy.single_run()
    assert {job.name for job in archive_defs().jobs} >= {"restore_messages_job"}


def test_the_checks_pass_on_an_archive_and_name_a_corrupted_object(engine, postgres, s3):
    day = day_ago(150)
    insert_messages(engine, organisation(engine), day, 5)
    assert run_archive(message_archive, postgres, s3, day).success
    storage = storage_config(s3)
    assert message_archive_rows_check(postgres=postgres).passed
    assert message_archive_checksums_check(postgres=postgres, s3=storage).passed

    s3.client.put_object(Bucket=s3.bucket, Key=batch_key(day, 1), Body=b"tampered")
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE archive_manifests SET rows_deleted = rows_deleted - 1"))

    checksums = message_archive_checksums_check(postgres=postgres, s3=storage)
    assert not checksums.passed
    assert batch_key(day, 1) in checksums.metadata["first_problems"].value
    rows = message_archive_rows_check(postgres=postgres)
    assert not rows.passed
    assert f"{day}: archived 5, deleted 4" in rows.metadata["mismatches"].value


def test_lifecycle_rules_are_applied_once_and_keep_the_buckets_other_rules(s3):
    other = {
        "ID": "expire-tmp",
        "Filter": {"Prefix": "tmp/"},
        "Status": "Enabled",
        "Expiration": {"Days": 7},
    }
    s3.client.put_bucket_lifecycle_configuration(
        Bucket=s3.bucket, LifecycleConfiguration={"Rules": [other]}
    )

    apply_lifecycle_rules(s3)
    first = current_rules(s3)
    apply_lifecycle_rules(s3)

    assert current_rules(s3) == first
    by_id = {rule["ID"]: rule for rule in first}
    assert set(by_id) == {"expire-tmp", "waflow-archived-messages", "waflow-archived-media"}
    for prefix in ("archived-messages/", "archived-media/"):
        rule = by_id[f"waflow-{prefix[:-1]}"]
        assert rule["Filter"] == {"Prefix": prefix}
        assert [(t["Days"], t["StorageClass"]) for t in rule["Transitions"]] == [
            (30, "STANDARD_IA"),
            (90, "GLACIER"),
            (270, "DEEP_ARCHIVE"),
        ]


def test_the_demo_history_is_archived_by_the_assets(engine, postgres, s3, monkeypatch):
    from assets_defs.archive.demo import MEDIA_FILES, MESSAGE_DAYS, MESSAGES_PER_DAY
    from pipelines.dev.demo import archive_demo, load_demo

    campaign = load_demo(engine)
    monkeypatch.setenv("S3_BUCKET", s3.bucket)
    counts = archive_demo(postgres, campaign)

    assert counts == {
        "messages_archived": MESSAGE_DAYS * MESSAGES_PER_DAY,
        "media_archived": MEDIA_FILES,
    }
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM messages")).scalar_one() == 0
        statuses = conn.execute(sa.text("SELECT DISTINCT status FROM media")).scalars().all()
    assert statuses == ["archived"]


def test_the_code_location_module_holds_one_definitions_object():
    """`dagster … -m pipelines.definitions` refuses a module with two Definitions."""
    from dagster.components.definitions import LazyDefinitions

    import pipelines.definitions as module

    found = [
        value
        for value in vars(module).values()
        if isinstance(value, (dg.Definitions, LazyDefinitions))
    ]
    assert found == [module.defs]


def test_waflow_archive_setup_applies_the_rules(s3, database_url, tmp_path, monkeypatch, capsys):
    from pipelines.cli import main

    monkeypatch.setenv("S3_BUCKET", s3.bucket)
    assert main(["--state-dir", str(tmp_path), "archive", "setup"]) == 0
    assert f"bucket {s3.bucket}: 2 lifecycle rules in force" in capsys.readouterr().out
    assert {rule["ID"] for rule in current_rules(s3)} == {
        "waflow-archived-messages",
        "waflow-archived-media",
    }
