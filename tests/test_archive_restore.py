from datetime import date

import pytest
import sqlalchemy as sa

from assets_defs.archive.messages import batch_key, message_archive
from assets_defs.archive.objects import ArchiveMismatch
from assets_defs.archive.restore import RestoreRefused, restore_messages_job, restore_range
from pipelines.cli import main
from tests.archive_data import (
    day_ago,
    failure_message,
    insert_messages,
    message_rows,
    organisation,
    resources,
    run_archive,
)

FIRST, LAST = day_ago(130), day_ago(129)


@pytest.fixture
def archived(engine, postgres, s3, monkeypatch) -> dict[int, str]:
    """Two archived days (several files each); returns the original rows as JSON text."""
    monkeypatch.setenv("ARCHIVE_BATCH_SIZE", "7")
    org = organisation(engine)
    insert_messages(engine, org, FIRST, 12)
    insert_messages(engine, org, LAST, 9)
    originals = message_rows(engine)
    assert run_archive(message_archive, postgres, s3, FIRST, LAST).success
    assert message_rows(engine) == {}
    return originals


def test_archive_then_restore_gives_back_every_row_byte_for_byte(engine, s3, archived):
    result = restore_range(engine, s3, FIRST, LAST)

    assert (result.days, result.files, result.rows_inserted) == (2, 4, 21)
    assert message_rows(engine) == archived
    again = restore_range(engine, s3, FIRST, LAST)
    assert again.rows_inserted == 0
    assert message_rows(engine) == archived
    with engine.begin() as conn:  # the identity sequence still hands out fresh ids
        new_id = conn.execute(
            sa.text(
                "INSERT INTO messages (organisation_id, direction, sender_type, peer_phone,"
                " message_type, status) SELECT organisation_id, 'outbound', 'ai', peer_phone,"
                " 'text', 'pending' FROM messages LIMIT 1 RETURNING id"
            )
        ).scalar_one()
    assert new_id not in archived


def test_the_restore_job_takes_a_date_range_as_run_config(engine, postgres, s3, archived):
    result = restore_messages_job.execute_in_process(
        run_config={
            "ops": {
                "restore_messages": {
                    "config": {"from_date": LAST.isoformat(), "to_date": LAST.isoformat()}
                }
            }
        },
        resources=resources(postgres, s3),
    )
    assert result.success
    restored = message_rows(engine)
    assert len(restored) == 9
    assert message_rows(engine, LAST) == restored
    assert all(archived[id_] == row for id_, row in restored.items())


def test_a_corrupted_object_refuses_the_restore_with_the_reason_and_imports_nothing(
    engine, postgres, s3, archived
):
    key = batch_key(LAST, 2)
    s3.client.put_object(Bucket=s3.bucket, Key=key, Body=b"not what was archived")

    with pytest.raises(ArchiveMismatch, match="does not match its manifest") as refused:
        restore_range(engine, s3, FIRST, LAST)

    assert key in str(refused.value)
    assert "nothing was imported" in str(refused.value)
    assert message_rows(engine) == {}
    job = restore_messages_job.execute_in_process(
        run_config={
            "ops": {
                "restore_messages": {
                    "config": {"from_date": FIRST.isoformat(), "to_date": LAST.isoformat()}
                }
            }
        },
        resources=resources(postgres, s3),
        raise_on_error=False,
    )
    assert not job.success
    assert key in failure_message(job)
    assert message_rows(engine) == {}


def waflow(*args: str, s3, state, monkeypatch) -> int:
    """The CLI in-process, against the test's database (DATABASE_URL) and bucket."""
    monkeypatch.setenv("S3_BUCKET", s3.bucket)
    return main(["--state-dir", str(state), *args])


def test_the_cli_restores_a_range(engine, s3, archived, tmp_path, monkeypatch, capsys):
    code = waflow(
        "archive",
        "restore",
        "--from",
        FIRST.isoformat(),
        "--to",
        LAST.isoformat(),
        s3=s3,
        state=tmp_path,
        monkeypatch=monkeypatch,
    )
    assert code == 0
    assert "restored 21 of 21 archived messages (2 days, 4 files" in capsys.readouterr().out
    assert message_rows(engine) == archived


def test_the_cli_refuses_a_date_that_is_not_one_in_one_line(
    database_url, s3, tmp_path, monkeypatch, capsys
):
    code = waflow(
        "archive",
        "restore",
        "--from",
        "2024-02-30",
        "--to",
        "2024-03-01",
        s3=s3,
        state=tmp_path,
        monkeypatch=monkeypatch,
    )
    assert code == 1
    assert capsys.readouterr().err == "waflow: error: not a date (YYYY-MM-DD): '2024-02-30'\n"


@pytest.mark.parametrize(
    ("first", "last", "reason"),
    [
        (date(2024, 3, 2), date(2024, 3, 1), "--to 2024-03-01 is before --from 2024-03-02"),
        (
            date(2020, 1, 1),
            date(2020, 1, 2),
            "no archived messages between 2020-01-01 and 2020-01-02",
        ),
    ],
)
def test_a_range_without_an_archive_is_refused(engine, s3, first, last, reason):
    with pytest.raises(RestoreRefused) as refused:
        restore_range(engine, s3, first, last)
    assert str(refused.value) == reason
