import hashlib

import pytest
import sqlalchemy as sa

from assets_defs.archive.checks import media_archive_checksums_check
from assets_defs.archive.media import media_archive, media_key
from tests.archive_data import (
    day_ago,
    failure_message,
    keys,
    manifest_rows,
    midnight,
    organisation,
    run_archive,
    storage_config,
)
from tests.media_server import JPEG, PDF, media_app
from tests.servers import serve

DAY = day_ago(40)
FAST_RETRIES = {"retries": 2, "retry_backoff_seconds": 0.01}


@pytest.fixture(scope="module")
def media_server():
    with serve(media_app()) as url:
        yield url


@pytest.fixture
def media_host(media_server, monkeypatch):
    monkeypatch.setenv("MEDIA_DOWNLOAD_TIMEOUT_SECONDS", "0.5")
    monkeypatch.setenv("MEDIA_MAX_BYTES", str(4 << 20))
    return media_server


def add_media(engine, org, day=DAY, **columns) -> int:
    columns = {"media_type": "image", "status": "pending", **columns}
    names = ", ".join(columns)
    values = ", ".join(f":{name}" for name in columns)
    with engine.begin() as conn:
        return conn.execute(
            sa.text(
                f"INSERT INTO media (organisation_id, created_at, {names})"
                f" VALUES (:org, :created, {values}) RETURNING id"
            ),
            {"org": org, "created": midnight(day), **columns},
        ).scalar_one()


def media_row(engine, media_id: int) -> sa.Row:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT * FROM media WHERE id = :id"), {"id": media_id}).one()


def test_a_day_of_media_is_archived_and_each_bad_url_fails_alone(engine, postgres, s3, media_host):
    org = organisation(engine)
    s3.client.put_object(Bucket=s3.bucket, Key="inbound/abc.png", Body=b"\x89PNG inbound")
    ids = {
        "photo": add_media(engine, org, source_url=f"{media_host}/photo.jpg"),
        "pdf": add_media(engine, org, media_type="document", source_url=f"{media_host}/menu.pdf"),
        "flaky": add_media(engine, org, source_url=f"{media_host}/flaky.jpg"),
        "stored": add_media(
            engine,
            org,
            s3_bucket=s3.bucket,
            s3_key="inbound/abc.png",
            mime_type="image/png",
            status="stored",
        ),
        "missing": add_media(engine, org, source_url=f"{media_host}/missing.jpg"),
        "hang": add_media(engine, org, source_url=f"{media_host}/hang.jpg"),
        "huge": add_media(engine, org, media_type="video", source_url=f"{media_host}/huge.mp4"),
        "html": add_media(engine, org, source_url=f"{media_host}/page"),
        "expired": add_media(engine, org, provider_media_id="wa-media-1"),
    }
    newer = add_media(engine, org, day=day_ago(20), source_url=f"{media_host}/photo.jpg")

    result = run_archive(media_archive, postgres, s3, DAY, **FAST_RETRIES)

    assert result.success, failure_message(result)
    rows = {name: media_row(engine, media_id) for name, media_id in ids.items()}
    expected = {
        "photo": (JPEG, f"{ids['photo']}.jpg"),
        "pdf": (PDF, f"{ids['pdf']}.pdf"),
        "flaky": (JPEG, f"{ids['flaky']}.jpg"),
        "stored": (b"\x89PNG inbound", f"{ids['stored']}.png"),
    }
    for name, (body, file_name) in expected.items():
        row = rows[name]
        assert (row.status, row.error) == ("archived", None), name
        assert row.s3_key == media_key(DAY, ids[name], file_name[file_name.index(".") :])
        assert row.s3_key.startswith(f"archived-media/year={DAY:%Y}/month={DAY:%m}/day={DAY:%d}/")
        stored = s3.client.get_object(Bucket=s3.bucket, Key=row.s3_key)["Body"].read()
        assert stored == body
        assert (row.size_bytes, row.sha256) == (len(body), hashlib.sha256(body).hexdigest())
        assert row.archived_at is not None
    assert "inbound/abc.png" not in keys(s3)  # the hot copy is gone once the archive holds it

    reasons = {name: rows[name].error for name in ("missing", "hang", "huge", "html", "expired")}
    assert all(rows[name].status == "failed" for name in reasons)
    assert reasons["missing"] == "HTTP 404 from the media URL"
    assert reasons["hang"] == "timed out downloading the media URL (after 3 attempts)"
    assert reasons["huge"] == f"more than MEDIA_MAX_BYTES ({4 << 20}) bytes; stopped"
    assert reasons["html"] == "content type text/html is not allowed for image media"
    assert reasons["expired"] == "no source URL and no stored object to archive"
    assert media_row(engine, newer).status == "pending"

    [manifest] = manifest_rows(engine, "media")
    assert (manifest.row_count, manifest.rows_failed) == (4, 5)
    assert sorted(f["key"] for f in manifest.files) == sorted(
        r.s3_key for r in rows.values() if r.status == "archived"
    )
    metadata = result.asset_materializations_for_node("media_archive")[0].metadata
    assert (metadata["archived"].value, metadata["failed"].value) == (4, 5)
    assert metadata["copied_in_bucket"].value == 1
    assert media_archive_checksums_check(postgres=postgres, s3=storage_config(s3)).passed


def test_a_rerun_retries_the_failures_and_leaves_the_archived_alone(
    engine, postgres, s3, media_host
):
    org = organisation(engine)
    done = add_media(engine, org, source_url=f"{media_host}/photo.jpg")
    failing = add_media(engine, org, source_url=f"{media_host}/missing.jpg")
    assert run_archive(media_archive, postgres, s3, DAY, **FAST_RETRIES).success
    first = media_row(engine, done)
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE media SET source_url = :url WHERE id = :id"),
            {"url": f"{media_host}/photo.jpg", "id": failing},
        )

    assert run_archive(media_archive, postgres, s3, DAY, **FAST_RETRIES).success

    assert media_row(engine, done) == first
    assert media_row(engine, failing).status == "archived"
    assert [(m.row_count, m.rows_failed) for m in manifest_rows(engine, "media")] == [(2, 0)]


def test_media_newer_than_the_threshold_is_refused_and_untouched(engine, postgres, s3, media_host):
    recent = day_ago(29)
    media_id = add_media(
        engine, organisation(engine), day=recent, source_url=f"{media_host}/photo.jpg"
    )
    before = media_row(engine, media_id)

    result = run_archive(media_archive, postgres, s3, recent, **FAST_RETRIES)

    assert not result.success
    assert (
        f"partition {recent.isoformat()} is newer than MEDIA_THRESHOLD_DAYS (30"
        in failure_message(result)
    )
    assert media_row(engine, media_id) == before
    assert keys(s3) == []
    assert manifest_rows(engine, "media") == []


def test_a_media_dry_run_counts_without_moving_anything(engine, postgres, s3, media_host):
    org = organisation(engine)
    media_id = add_media(engine, org, source_url=f"{media_host}/photo.jpg")
    before = media_row(engine, media_id)

    result = run_archive(media_archive, postgres, s3, DAY, dry_run=True)

    assert result.success
    [observation] = result.asset_observations_for_node("media_archive")
    assert observation.metadata["downloaded"].value == 1
    assert media_row(engine, media_id) == before
    assert keys(s3) == [] and manifest_rows(engine, "media") == []
