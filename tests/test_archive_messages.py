import gzip
import hashlib
import json

import pytest
import sqlalchemy as sa

from assets_defs.archive.messages import batch_key, message_archive
from tests.archive_data import (
    day_ago,
    failure_message,
    insert_messages,
    keys,
    manifest_rows,
    message_rows,
    organisation,
    run_archive,
)

DAY = day_ago(120)


@pytest.fixture
def small_batches(monkeypatch):
    monkeypatch.setenv("ARCHIVE_BATCH_SIZE", "4")


def read_lines(s3, key: str) -> list[dict]:
    body = s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
    return [json.loads(line) for line in gzip.decompress(body).decode().splitlines()]


def columns(engine) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(
                sa.text(
                    "SELECT column_name FROM information_schema.columns WHERE table_name = 'messages'"
                )
            ).scalars()
        )


def test_a_day_is_archived_in_batches_with_a_manifest_then_deleted(
    engine, postgres, s3, small_batches
):
    org = organisation(engine)
    for day, count in ((DAY, 10), (day_ago(121), 2), (day_ago(119), 3)):
        insert_messages(engine, org, day, count)
    originals = message_rows(engine, DAY)

    result = run_archive(message_archive, postgres, s3, DAY)

    assert result.success
    expected = [batch_key(DAY, n) for n in (1, 2, 3)]
    assert keys(s3) == expected
    assert expected[0] == (
        f"archived-messages/year={DAY:%Y}/month={DAY:%m}/day={DAY:%d}/"
        f"messages-{DAY.isoformat()}-batch-001.json.gz"
    )
    archived = [row for key in expected for row in read_lines(s3, key)]
    assert [len(read_lines(s3, key)) for key in expected] == [4, 4, 2]
    assert {row["id"] for row in archived} == set(originals)
    assert all(set(row) == columns(engine) for row in archived)
    assert message_rows(engine, DAY) == {}
    assert len(message_rows(engine)) == 5  # the neighbouring days are untouched

    [manifest] = manifest_rows(engine, "messages")
    assert (manifest.day, manifest.row_count, manifest.rows_deleted) == (DAY, 10, 10)
    for entry, key in zip(manifest.files, expected, strict=True):
        body = s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
        assert entry["key"] == key
        assert entry["sha256"] == hashlib.sha256(body).hexdigest()
        assert entry["size"] == len(body)
    assert manifest.bytes_compressed == sum(f["size"] for f in manifest.files)
    assert manifest.bytes_raw > manifest.bytes_compressed

    metadata = result.asset_materializations_for_node("message_archive")[0].metadata
    assert metadata["rows"].value == 10
    assert metadata["files"].value == 3
    assert metadata["bytes_raw"].value == manifest.bytes_raw
    assert metadata["rows_per_second"].value > 0


def test_a_range_of_days_is_one_run_and_an_empty_day_has_no_file(engine, postgres, s3):
    org = organisation(engine)
    first, empty, last = day_ago(100), day_ago(99), day_ago(98)
    insert_messages(engine, org, first, 3)
    insert_messages(engine, org, last, 2)

    result = run_archive(message_archive, postgres, s3, first, last)

    assert result.success
    assert len(result.asset_materializations_for_node("message_archive")) == 3
    assert keys(s3) == [batch_key(first, 1), batch_key(last, 1)]
    manifests = {m.day: m for m in manifest_rows(engine, "messages")}
    assert (manifests[empty].row_count, manifests[empty].files) == (0, [])
    assert manifests[first].row_count == 3 and manifests[last].row_count == 2
    assert message_rows(engine) == {}


def test_a_dry_run_counts_and_touches_nothing(engine, postgres, s3):
    insert_messages(engine, organisation(engine), DAY, 7)
    before = message_rows(engine)

    result = run_archive(message_archive, postgres, s3, DAY, dry_run=True)

    assert result.success
    assert result.asset_materializations_for_node("message_archive") == []
    [observation] = result.asset_observations_for_node("message_archive")
    assert observation.metadata["rows"].value == 7
    assert observation.metadata["dry_run"].value is True
    assert message_rows(engine) == before
    assert keys(s3) == []
    assert manifest_rows(engine, "messages") == []


def test_a_partition_newer_than_the_threshold_is_refused_and_nothing_is_touched(
    engine, postgres, s3
):
    recent = day_ago(89)
    insert_messages(engine, organisation(engine), recent, 3)
    before = message_rows(engine)

    result = run_archive(message_archive, postgres, s3, day_ago(91), recent)

    assert not result.success
    message = failure_message(result)
    assert f"partition {recent.isoformat()} is newer than ARCHIVE_THRESHOLD_DAYS (90" in message
    assert "nothing was touched" in message
    assert message_rows(engine) == before
    assert keys(s3) == []
    assert manifest_rows(engine, "messages") == []


class Crash(RuntimeError):
    pass


def crash_on_call(s3, event: str, call: int):
    """Make the n-th S3 request of a kind fail the way a dying process or network would."""
    seen = {"calls": 0}

    def handler(**_kwargs):
        seen["calls"] += 1
        if seen["calls"] == call:
            raise Crash(f"simulated failure of {event} #{call}")

    s3.client.meta.events.register(event, handler)
    return lambda: s3.client.meta.events.unregister(event, handler)


def test_a_crash_between_upload_and_delete_loses_nothing_and_a_rerun_duplicates_nothing(
    engine, postgres, s3, small_batches
):
    insert_messages(engine, organisation(engine), DAY, 10)
    originals = message_rows(engine)
    # The third read-back is the last file's verification: every file is uploaded by then.
    restore = crash_on_call(s3, "before-send.s3.GetObject", 3)

    crashed = run_archive(message_archive, postgres, s3, DAY)

    assert not crashed.success
    assert "simulated failure" in failure_message(crashed)
    assert message_rows(engine) == originals
    assert len(keys(s3)) == 3
    assert manifest_rows(engine, "messages") == []

    restore()
    rerun = run_archive(message_archive, postgres, s3, DAY)

    assert rerun.success
    assert keys(s3) == [batch_key(DAY, n) for n in (1, 2, 3)]
    ids = [row["id"] for key in keys(s3) for row in read_lines(s3, key)]
    assert sorted(ids) == sorted(originals)
    assert message_rows(engine) == {}


def test_an_upload_that_fails_half_way_deletes_nothing(engine, postgres, s3, small_batches):
    insert_messages(engine, organisation(engine), DAY, 10)
    originals = message_rows(engine)
    restore = crash_on_call(s3, "before-send.s3.PutObject", 2)

    failed = run_archive(message_archive, postgres, s3, DAY)

    assert not failed.success
    assert message_rows(engine) == originals
    assert manifest_rows(engine, "messages") == []
    restore()
    assert run_archive(message_archive, postgres, s3, DAY).success
    assert message_rows(engine) == {}
    assert manifest_rows(engine, "messages")[0].row_count == 10


def test_a_rerun_of_an_archived_day_keeps_its_manifest_and_files(engine, postgres, s3):
    insert_messages(engine, organisation(engine), DAY, 5)
    assert run_archive(message_archive, postgres, s3, DAY).success
    before = (keys(s3), manifest_rows(engine, "messages"))

    again = run_archive(message_archive, postgres, s3, DAY)

    assert again.success
    assert (keys(s3), manifest_rows(engine, "messages")) == before
