"""`media_archive`: a day's media moved under `archived-media/`, one object per media record.

Media already in our bucket (generated assets, inbound media copied on arrival) is copied
server-side and its hot copy removed once the archived one has been read back and its
SHA-256 found equal to the source's; media known
only by URL is streamed down (timeouts, a size cap, the content type checked). A download
that keeps failing is recorded on its row with the reason and the rest of the day goes on.
Each row is committed as soon as its object is verified, with the hot copy still to delete
(`hot_key`), so a killed run resumes where it stopped and the next run deletes what it left.
"""

import hashlib
import mimetypes
import tempfile
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING
from urllib.parse import urlparse

import dagster as dg
import sqlalchemy as sa
from botocore.exceptions import ClientError

from assets_defs.archive import manifests
from assets_defs.archive.manifests import Manifest
from assets_defs.archive.messages import ArchiveRunConfig, partition_days
from assets_defs.archive.objects import StoredObject, copy_verified, put_verified
from assets_defs.archive.policy import (
    ArchivePolicy,
    ArchiveRefused,
    day_bounds,
    day_prefix,
    refuse_too_new,
)
from assets_defs.partitions import archive_day_partitions
from resources import crash_points, settings
from resources.postgres import PostgresResource
from resources.storage import S3Storage

if TYPE_CHECKING:
    # Imported where media are downloaded: the code location need not load an HTTP client.
    import httpx


KIND = "media"
ROOT = "archived-media"
CONTENT_TYPES: dict[str, tuple[str, ...]] = {
    "image": ("image/",),
    "sticker": ("image/",),
    "video": ("video/",),
    "audio": ("audio/",),
    "document": ("application/", "text/"),
    "data": ("application/", "text/", "image/"),
}
_CHUNK = 1 << 16


class MediaFailure(Exception):
    """A media record cannot be archived; `transient` failures are worth another attempt."""

    def __init__(self, reason: str, transient: bool = False) -> None:
        super().__init__(reason)
        self.transient = transient


@dataclass(frozen=True)
class MediaRow:
    id: int
    media_type: str
    mime_type: str | None
    source_url: str | None
    s3_bucket: str | None
    s3_key: str | None


@dataclass(frozen=True)
class Download:
    size: int
    sha256: str
    content_type: str


class MediaRunConfig(ArchiveRunConfig):
    retries: int = 3
    """Further attempts after a download fails with a timeout, a dropped connection or a 5xx."""
    retry_backoff_seconds: float = 2.0
    """Wait before the first retry; doubled before each next one."""


def media_key(day: date, media_id: int, extension: str) -> str:
    return f"{day_prefix(ROOT, day)}{media_id}{extension}"


def extension(content_type: str | None, name: str | None) -> str:
    guessed = mimetypes.guess_extension(content_type or "") if content_type else None
    if guessed:
        return guessed
    suffix = PurePosixPath(urlparse(name or "").path).suffix
    return suffix if 1 < len(suffix) <= 6 else ".bin"


def download(client: "httpx.Client", row: MediaRow, max_bytes: int, target: IO[bytes]) -> Download:
    """Stream one URL into `target`, refusing what is too big or not the promised kind."""
    import httpx

    try:
        with client.stream("GET", row.source_url) as response:
            if response.status_code == 429 or response.status_code >= 500:
                raise MediaFailure(
                    f"HTTP {response.status_code} from the media URL", transient=True
                )
            if response.status_code != 200:
                raise MediaFailure(f"HTTP {response.status_code} from the media URL")
            content_type = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if not content_type.startswith(CONTENT_TYPES[row.media_type]):
                raise MediaFailure(
                    f"content type {content_type or 'missing'} is not allowed for {row.media_type} media"
                )
            declared = int(response.headers.get("content-length") or 0)
            if declared > max_bytes:
                raise MediaFailure(f"{declared} bytes is over MEDIA_MAX_BYTES ({max_bytes})")
            digest = hashlib.sha256()
            size = 0
            for chunk in response.iter_bytes(_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise MediaFailure(f"more than MEDIA_MAX_BYTES ({max_bytes}) bytes; stopped")
                digest.update(chunk)
                target.write(chunk)
    except httpx.TimeoutException:
        raise MediaFailure("timed out downloading the media URL", transient=True) from None
    except httpx.TransportError as error:
        raise MediaFailure(f"cannot download the media URL: {error}", transient=True) from None
    return Download(size, digest.hexdigest(), content_type)


def download_with_retries(
    client: "httpx.Client", row: MediaRow, max_bytes: int, target: IO[bytes], config: MediaRunConfig
) -> Download:
    attempt = 0
    while True:
        target.seek(0)
        target.truncate()
        try:
            return download(client, row, max_bytes, target)
        except MediaFailure as failure:
            if not failure.transient or attempt == config.retries:
                if attempt:
                    raise MediaFailure(f"{failure} (after {attempt + 1} attempts)") from None
                raise
        time.sleep(config.retry_backoff_seconds * 2**attempt)
        attempt += 1


def archive_one(
    s3: S3Storage,
    client: "httpx.Client",
    row: MediaRow,
    day: date,
    policy: ArchivePolicy,
    config: MediaRunConfig,
) -> tuple[StoredObject, str | None]:
    """Archive one record; returns the verified object and its content type."""
    if row.s3_key:
        key = media_key(day, row.id, extension(row.mime_type, row.s3_key))
        source_bucket = row.s3_bucket or s3.bucket
        try:
            return copy_verified(s3, source_bucket, row.s3_key, key), row.mime_type
        except ClientError as error:
            if error.response["Error"]["Code"] not in ("404", "NoSuchKey"):
                raise
            raise MediaFailure(
                f"stored object s3://{source_bucket}/{row.s3_key} is missing"
            ) from None
    if not row.source_url:
        raise MediaFailure("no source URL and no stored object to archive")
    with tempfile.NamedTemporaryFile(prefix="media-archive-") as target:
        fetched = download_with_retries(client, row, policy.media_max_bytes, target, config)
        target.flush()
        key = media_key(day, row.id, extension(fetched.content_type, row.source_url))
        stored = put_verified(s3, Path(target.name), key, fetched.sha256, fetched.content_type)
    return stored, fetched.content_type


def mark_archived(
    engine: sa.Engine, s3: S3Storage, row: MediaRow, stored: StoredObject, content_type: str | None
) -> None:
    """Point the row at the verified archive object and name the hot copy to delete in one
    commit, then delete it: a crash in between leaves `hot_key` for `delete_hot_copies`."""
    hot = row.s3_key if (row.s3_bucket or s3.bucket) == s3.bucket else None
    crash_points.reached("media_archive.copied")
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE media SET s3_bucket = :bucket, s3_key = :key, size_bytes = :size,"
                " sha256 = :sha, mime_type = COALESCE(mime_type, :mime), status = 'archived',"
                " error = NULL, archived_at = now(), hot_key = :hot WHERE id = :id"
            ),
            {
                "bucket": s3.bucket,
                "key": stored.key,
                "size": stored.size,
                "sha": stored.sha256,
                "mime": content_type,
                "hot": hot if hot != stored.key else None,
                "id": row.id,
            },
        )
    crash_points.reached("media_archive.recorded")
    delete_hot_copies(engine, s3, [row.id])


def delete_hot_copies(engine: sa.Engine, s3: S3Storage, media_ids: list[int] | None = None) -> int:
    """Delete the hot copies of archived media (these rows', or every one left by an earlier
    run that stopped before deleting); how many. Deleting a missing object is not an error,
    so a repeat does no harm."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT id, hot_key FROM media WHERE hot_key IS NOT NULL"
                " AND (CAST(:ids AS bigint[]) IS NULL OR id = ANY(:ids)) ORDER BY id"
            ),
            {"ids": media_ids},
        ).all()
    for media_id, hot_key in rows:
        s3.client.delete_object(Bucket=s3.bucket, Key=hot_key)
        with engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE media SET hot_key = NULL WHERE id = :id"), {"id": media_id}
            )
    return len(rows)


def mark_failed(engine: sa.Engine, row: MediaRow, reason: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE media SET status = 'failed', error = :reason WHERE id = :id"),
            {"reason": reason, "id": row.id},
        )


def pending_media(engine: sa.Engine, day: date) -> list[MediaRow]:
    start, end = day_bounds(day)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT id, media_type, mime_type, source_url, s3_bucket, s3_key FROM media"
                " WHERE created_at >= :s AND created_at < :e AND status <> 'archived' ORDER BY id"
            ),
            {"s": start, "e": end},
        ).mappings()
        return [MediaRow(**row) for row in rows]


def record_day(engine: sa.Engine, day: date) -> Manifest:
    """The day's manifest, rebuilt from the rows: a re-run describes everything archived so far."""
    start, end = day_bounds(day)
    with engine.begin() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT id, s3_key, size_bytes, sha256, status FROM media"
                " WHERE created_at >= :s AND created_at < :e AND status IN ('archived', 'failed')"
                " ORDER BY id"
            ),
            {"s": start, "e": end},
        ).all()
        files = [
            {"media_id": r.id, "key": r.s3_key, "size": r.size_bytes, "sha256": r.sha256}
            for r in rows
            if r.status == "archived"
        ]
        manifest = Manifest(
            KIND,
            day,
            files=files,
            row_count=len(files),
            bytes_raw=sum(f["size"] for f in files),
            bytes_compressed=sum(f["size"] for f in files),
            rows_failed=sum(1 for r in rows if r.status == "failed"),
        )
        manifests.record(conn, manifest)
    return manifest


@dataclass
class MediaDay:
    day: date
    archived: int = 0
    failed: int = 0
    bytes: int = 0
    copied: int = 0
    downloaded: int = 0
    hot_copies_deleted: int = 0


def archive_media_day(
    engine: sa.Engine,
    s3: S3Storage,
    client: "httpx.Client",
    day: date,
    policy: ArchivePolicy,
    config: MediaRunConfig,
    log: dg.DagsterLogManager,
) -> MediaDay:
    result = MediaDay(day)
    if not config.dry_run:
        result.hot_copies_deleted = delete_hot_copies(engine, s3)
    for row in pending_media(engine, day):
        if config.dry_run:
            result.copied += bool(row.s3_key)
            result.downloaded += bool(not row.s3_key and row.source_url)
            continue
        try:
            stored, content_type = archive_one(s3, client, row, day, policy, config)
        except MediaFailure as failure:
            log.warning(f"media {row.id}: {failure}")
            mark_failed(engine, row, str(failure))
            result.failed += 1
            continue
        mark_archived(engine, s3, row, stored, content_type)
        result.archived += 1
        result.bytes += stored.size
        result.copied += bool(row.s3_key)
        result.downloaded += not row.s3_key
    if not config.dry_run:
        record_day(engine, day)
    return result


@dg.asset(
    partitions_def=archive_day_partitions,
    backfill_policy=dg.BackfillPolicy.single_run(),
    pool="archive",
    deps=["media"],
    kinds={"postgres", "s3"},
    group_name="archive",
    owners=["team:platform"],
    output_required=False,
)
def media_archive(
    context: dg.AssetExecutionContext,
    config: MediaRunConfig,
    postgres: PostgresResource,
    s3: S3Storage,
):
    """Media records of each UTC day, once the day is MEDIA_THRESHOLD_DAYS old, moved to
    `archived-media/year=/month=/day=/<id>.<ext>`; their rows point at the archived object."""
    policy = settings.load(ArchivePolicy)
    days = partition_days(context)
    try:
        refuse_too_new(days, policy.media_threshold_days, "MEDIA_THRESHOLD_DAYS")
    except ArchiveRefused as error:
        raise dg.Failure(description=str(error), allow_retries=False) from None
    import httpx

    started = time.monotonic()
    timeout = httpx.Timeout(policy.media_timeout_seconds)
    with httpx.Client(timeout=timeout, follow_redirects=True) as client:
        results = [
            archive_media_day(postgres.engine, s3, client, day, policy, config, context.log)
            for day in days
        ]
    seconds = time.monotonic() - started
    archived = sum(r.archived for r in results)
    metadata = {
        "dry_run": config.dry_run,
        "days": len(results),
        "archived": archived,
        "failed": sum(r.failed for r in results),
        "copied_in_bucket": sum(r.copied for r in results),
        "downloaded": sum(r.downloaded for r in results),
        "hot_copies_deleted_late": sum(r.hot_copies_deleted for r in results),
        "bytes": sum(r.bytes for r in results),
        "duration_s": dg.MetadataValue.float(round(seconds, 3)),
        "media_per_second": dg.MetadataValue.float(
            round(archived / seconds, 1) if seconds else 0.0
        ),
    }
    if config.dry_run:
        yield dg.AssetObservation(asset_key=context.asset_key, metadata=metadata)
        return
    metadata["location"] = dg.MetadataValue.path(f"s3://{s3.bucket}/{ROOT}/")
    yield dg.MaterializeResult(metadata=metadata)
