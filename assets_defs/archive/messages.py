"""`message_archive`: a day of messages → gzipped JSON Lines files in S3, then out of Postgres.

Postgres serialises the rows (`row_to_json` streamed by COPY); Python only cuts the stream
into batch files, compresses them and uploads them while the next batch is being written.
Everything happens in one REPEATABLE READ transaction: the export and the range delete
see the same snapshot, so a row is deleted only if it is in a file that was read back and
matched, and the manifest is recorded in the same commit.
"""

import hashlib
import tempfile
import time
import zlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import dagster as dg
import sqlalchemy as sa

from assets_defs.archive import manifests
from assets_defs.archive.manifests import Manifest
from assets_defs.archive.objects import ArchiveMismatch, StoredObject, put_verified
from assets_defs.archive.policy import (
    ArchivePolicy,
    ArchiveRefused,
    day_bounds,
    day_prefix,
    days_between,
    refuse_too_new,
)
from assets_defs.partitions import archive_day_partitions
from resources import settings
from resources.postgres import PostgresResource
from resources.storage import S3Storage

KIND = "messages"
ROOT = "archived-messages"
# CSV with control characters as quote and delimiter: COPY then leaves the JSON text as it
# is (text format would double every backslash), and JSON never contains them raw.
EXPORT = (
    "COPY (SELECT row_to_json(m) FROM messages m"
    " WHERE m.created_at >= %(start)s AND m.created_at < %(end)s ORDER BY m.created_at, m.id)"
    " TO STDOUT WITH (FORMAT csv, DELIMITER E'\\x02', QUOTE E'\\x01')"
)
_GZIP_LEVEL = 6
_FLUSH_ROWS = 4096
_UPLOADERS = 2


def batch_key(day: date, number: int) -> str:
    return f"{day_prefix(ROOT, day)}messages-{day.isoformat()}-batch-{number:03d}.json.gz"


@dataclass
class DayArchive:
    """What one day's run did (or, in a dry run, would do)."""

    day: date
    rows: int = 0
    files: list[StoredObject] = field(default_factory=list)
    bytes_raw: int = 0
    rows_deleted: int = 0
    note: str = ""

    @property
    def bytes_compressed(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class _Batch:
    number: int
    path: Path
    rows: int
    bytes_raw: int
    sha256: str


class _BatchWriter:
    """The file COPY writes into (one row per call): cuts rows into gzipped batch files."""

    def __init__(
        self, directory: Path, batch_size: int, on_batch: Callable[["_Batch"], None]
    ) -> None:
        self._directory = directory
        self._batch_size = batch_size
        self._on_batch = on_batch
        self.rows = 0
        self.bytes_raw = 0
        self._number = 0
        self._pending: list[bytes] = []
        self._file = None

    def write(self, row: bytes) -> None:
        if self._file is None:
            self._open()
        self._pending.append(row)
        self._batch_rows += 1
        if len(self._pending) >= _FLUSH_ROWS:
            self._flush()
        if self._batch_rows == self._batch_size:
            self.close()

    def close(self) -> None:
        if self._file is None:
            return
        self._flush()
        self._write_compressed(self._compressor.flush())
        self._file.close()
        self._file = None
        self.rows += self._batch_rows
        self.bytes_raw += self._batch_raw
        self._on_batch(
            _Batch(
                self._number, self._path, self._batch_rows, self._batch_raw, self._hash.hexdigest()
            )
        )

    def _open(self) -> None:
        self._number += 1
        self._path = self._directory / f"batch-{self._number:03d}.json.gz"
        self._file = self._path.open("wb")
        self._compressor = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, 31)
        self._hash = hashlib.sha256()
        self._batch_rows = 0
        self._batch_raw = 0

    def _flush(self) -> None:
        if not self._pending:
            return
        chunk = b"".join(self._pending)
        self._pending.clear()
        self._batch_raw += len(chunk)
        self._write_compressed(self._compressor.compress(chunk))

    def _write_compressed(self, data: bytes) -> None:
        self._hash.update(data)
        self._file.write(data)


def count_day(engine: sa.Engine, day: date) -> int:
    start, end = day_bounds(day)
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT count(*) FROM messages WHERE created_at >= :s AND created_at < :e"),
            {"s": start, "e": end},
        ).scalar_one()


def archive_day(engine: sa.Engine, s3: S3Storage, day: date, batch_size: int) -> DayArchive:
    """Export, upload, verify, delete and record one day; all or nothing in Postgres."""
    start, end = day_bounds(day)
    result = DayArchive(day)
    with (
        engine.connect().execution_options(isolation_level="REPEATABLE READ") as conn,
        conn.begin(),
        tempfile.TemporaryDirectory(prefix="message-archive-") as scratch,
        ThreadPoolExecutor(_UPLOADERS, thread_name_prefix="archive-upload") as uploads,
    ):
        _lock_day(conn, day)
        pending: list[tuple[_Batch, Future[StoredObject]]] = []

        def upload(batch: _Batch) -> StoredObject:
            try:
                return put_verified(
                    s3, batch.path, batch_key(day, batch.number), batch.sha256, "application/gzip"
                )
            finally:
                batch.path.unlink(missing_ok=True)

        writer = _BatchWriter(
            Path(scratch), batch_size, lambda b: pending.append((b, uploads.submit(upload, b)))
        )
        cursor = conn.connection.dbapi_connection.cursor()
        cursor.copy_expert(cursor.mogrify(EXPORT, {"start": start, "end": end}).decode(), writer)
        writer.close()
        result.files = [future.result() for _, future in pending]
        result.rows, result.bytes_raw = writer.rows, writer.bytes_raw
        if result.rows == 0 and manifests.archived_days(conn, KIND, day, day):
            result.note = "already archived"
            return result
        result.rows_deleted = conn.execute(
            sa.text("DELETE FROM messages WHERE created_at >= :s AND created_at < :e"),
            {"s": start, "e": end},
        ).rowcount
        if result.rows_deleted != result.rows:
            raise ArchiveMismatch(
                f"{day}: {result.rows} rows archived but {result.rows_deleted} would be deleted;"
                " rolled back"
            )
        manifests.record(conn, _manifest(result, pending))
    return result


def _manifest(result: DayArchive, pending: list[tuple[_Batch, Future[StoredObject]]]) -> Manifest:
    files = [
        {**stored.as_json(), "rows": batch.rows, "bytes_raw": batch.bytes_raw}
        for (batch, _), stored in zip(pending, result.files, strict=True)
    ]
    return Manifest(
        KIND,
        result.day,
        files=files,
        row_count=result.rows,
        bytes_raw=result.bytes_raw,
        bytes_compressed=result.bytes_compressed,
        rows_deleted=result.rows_deleted,
    )


def _lock_day(conn: sa.Connection, day: date) -> None:
    """One run per day at a time; a second one is refused rather than racing the first."""
    locked = conn.execute(
        sa.text("SELECT pg_try_advisory_xact_lock(hashtext(:kind), :day - date '2000-01-01')"),
        {"kind": f"archive:{KIND}", "day": day},
    ).scalar_one()
    if not locked:
        raise ArchiveRefused(f"{day}: another run is archiving this day's {KIND}")


class ArchiveRunConfig(dg.Config):
    dry_run: bool = False
    """Count what would be archived and report it; upload and delete nothing."""


def run_metadata(results: list[DayArchive], seconds: float, dry_run: bool) -> dict:
    rows = sum(r.rows for r in results)
    return {
        "dry_run": dry_run,
        "days": len(results),
        "rows": rows,
        "files": sum(len(r.files) for r in results),
        "bytes_raw": sum(r.bytes_raw for r in results),
        "bytes_compressed": sum(r.bytes_compressed for r in results),
        "duration_s": dg.MetadataValue.float(round(seconds, 3)),
        "rows_per_second": dg.MetadataValue.float(round(rows / seconds, 1) if seconds else 0.0),
    }


def partition_days(context: dg.AssetExecutionContext) -> list[date]:
    return list(days_between(*context.partition_time_window))


@dg.asset(
    partitions_def=archive_day_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool="archive",
    deps=["messages"],
    kinds={"postgres", "s3"},
    group_name="archive",
    owners=["team:platform"],
    output_required=False,
)
def message_archive(
    context: dg.AssetExecutionContext,
    config: ArchiveRunConfig,
    postgres: PostgresResource,
    s3: S3Storage,
):
    """Messages of each UTC day, once the day is ARCHIVE_THRESHOLD_DAYS old, as gzipped JSON
    Lines under `archived-messages/year=/month=/day=` with a manifest; deleted from Postgres."""
    policy = settings.load(ArchivePolicy)
    days = partition_days(context)
    try:
        refuse_too_new(days, policy.message_threshold_days, "ARCHIVE_THRESHOLD_DAYS")
    except ArchiveRefused as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None
    started = time.monotonic()
    results: list[DayArchive] = []
    for day in days:
        if config.dry_run:
            rows = count_day(postgres.engine, day)
            results.append(
                DayArchive(day, rows=rows, note=f"{-(-rows // policy.batch_size)} files")
            )
        else:
            results.append(archive_day(postgres.engine, s3, day, policy.batch_size))
        context.log.info(f"{day}: {results[-1].rows} messages {results[-1].note}".rstrip())
    metadata = {
        **run_metadata(results, time.monotonic() - started, config.dry_run),
        "per_day": day_table(results),
    }
    if config.dry_run:
        yield dg.AssetObservation(asset_key=context.asset_key, metadata=metadata)
        return
    metadata["location"] = dg.MetadataValue.path(f"s3://{s3.bucket}/{ROOT}/")
    yield dg.MaterializeResult(metadata=metadata)


def day_table(results: list[DayArchive]) -> dg.TableMetadataValue:
    return dg.MetadataValue.table(
        records=[
            dg.TableRecord(
                {
                    "day": r.day.isoformat(),
                    "rows": r.rows,
                    "files": len(r.files),
                    "bytes_compressed": r.bytes_compressed,
                    "note": r.note,
                }
            )
            for r in results[:100]
        ],
        schema=dg.TableSchema(
            columns=[
                dg.TableColumn("day", "string"),
                dg.TableColumn("rows", "int"),
                dg.TableColumn("files", "int"),
                dg.TableColumn("bytes_compressed", "int"),
                dg.TableColumn("note", "string"),
            ]
        ),
    )
