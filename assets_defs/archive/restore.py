"""Re-import archived messages into Postgres (seed 5's recovery procedure).

Every file of the range is read and checked against its manifest before the first row is
inserted, so a corrupted object refuses the whole restore and imports nothing. Rows keep
their ids (`OVERRIDING SYSTEM VALUE`) and a row that is already there is left alone, so a
restore can be repeated or resumed.
"""

import gzip
import hashlib
import tempfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import dagster as dg
import sqlalchemy as sa
from botocore.exceptions import ClientError
from botocore.response import StreamingBody

from assets_defs.archive import manifests
from assets_defs.archive.messages import KIND
from assets_defs.archive.objects import ArchiveMismatch
from resources.postgres import PostgresResource
from resources.storage import S3Storage

_INSERT_ROWS = 5000
_INSERT = (
    "INSERT INTO messages OVERRIDING SYSTEM VALUE"
    " SELECT r.* FROM json_populate_recordset(null::messages, CAST(:rows AS json)) r"
    " ON CONFLICT (id) DO NOTHING"
)


class RestoreRefused(RuntimeError):
    """The restore cannot start; the message says why. Nothing was imported."""


@dataclass(frozen=True)
class RestoreResult:
    days: int
    files: int
    rows_in_archive: int
    rows_inserted: int


def restore_range(engine: sa.Engine, s3: S3Storage, first: date, last: date) -> RestoreResult:
    if last < first:
        raise RestoreRefused(f"--to {last} is before --from {first}")
    with engine.connect() as conn:
        found = manifests.load(conn, KIND, first, last)
    if not found:
        raise RestoreRefused(f"no archived messages between {first} and {last}")
    with tempfile.TemporaryDirectory(prefix="message-restore-") as scratch:
        local = _download_verified(s3, found, Path(scratch))
        inserted = 0
        with engine.begin() as conn:
            for path in local:
                inserted += _import(conn, path)
    return RestoreResult(
        days=len(found),
        files=len(local),
        rows_in_archive=sum(m.row_count for m in found),
        rows_inserted=inserted,
    )


def _download_verified(s3: S3Storage, found: list[manifests.Manifest], scratch: Path) -> list[Path]:
    paths = []
    for manifest in found:
        for number, expected in enumerate(manifest.objects()):
            path = scratch / f"{manifest.day}-{number}.json.gz"
            digest = hashlib.sha256()
            body = _open(s3, expected.key)
            with path.open("wb") as out:
                for chunk in body.iter_chunks(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            size = path.stat().st_size
            if (size, digest.hexdigest()) != (expected.size, expected.sha256):
                raise ArchiveMismatch(
                    f"refusing to restore: s3://{s3.bucket}/{expected.key} does not match its"
                    f" manifest ({size} bytes with SHA-256 {digest.hexdigest()}, expected"
                    f" {expected.size} bytes with SHA-256 {expected.sha256}); nothing was imported"
                )
            paths.append(path)
    return paths


def _open(s3: S3Storage, key: str) -> StreamingBody:
    try:
        return s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"]
    except ClientError as error:
        code = error.response["Error"]["Code"]
        if code in ("404", "NoSuchKey"):
            reason = "is missing"
        elif code == "InvalidObjectState":
            reason = "is in Glacier/Deep Archive: restore it to S3 first (s3api restore-object)"
        else:
            raise
        raise ArchiveMismatch(
            f"refusing to restore: s3://{s3.bucket}/{key} {reason}; nothing was imported"
        ) from None


def _import(conn: sa.Connection, path: Path) -> int:
    inserted = 0
    batch: list[str] = []
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            batch.append(line.rstrip("\n"))
            if len(batch) == _INSERT_ROWS:
                inserted += _insert(conn, batch)
                batch = []
    if batch:
        inserted += _insert(conn, batch)
    return inserted


def _insert(conn: sa.Connection, lines: list[str]) -> int:
    return conn.execute(sa.text(_INSERT), {"rows": "[" + ",".join(lines) + "]"}).rowcount


def parse_day(value: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise RestoreRefused(f"not a date (YYYY-MM-DD): {value!r}") from None


class RestoreConfig(dg.Config):
    from_date: str
    """First day to restore (YYYY-MM-DD, UTC)."""
    to_date: str
    """Last day to restore, included."""


@dg.op
def restore_messages(
    context: dg.OpExecutionContext, config: RestoreConfig, postgres: PostgresResource, s3: S3Storage
) -> None:
    try:
        result = restore_range(
            postgres.engine, s3, parse_day(config.from_date), parse_day(config.to_date)
        )
    except (RestoreRefused, ArchiveMismatch) as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None
    context.add_output_metadata(
        {
            "days": result.days,
            "files": result.files,
            "rows_in_archive": result.rows_in_archive,
            "rows_inserted": result.rows_inserted,
        }
    )
    context.log.info(
        f"restored {result.rows_inserted} of {result.rows_in_archive} archived messages"
        f" ({result.days} days, {result.files} files)"
    )


@dg.job(description="Re-import archived messages of a date range (run config: from_date, to_date).")
def restore_messages_job() -> None:
    restore_messages()
