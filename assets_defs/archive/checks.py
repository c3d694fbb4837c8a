"""Asset checks over every manifest: nothing deleted that was not archived, and S3 still
holds exactly the bytes each manifest lists (a HEAD per object: works in Glacier too)."""

import dagster as dg
import sqlalchemy as sa

from assets_defs.archive import manifests
from assets_defs.archive.media import media_archive
from assets_defs.archive.messages import message_archive
from assets_defs.archive.objects import mismatch_by_head
from resources.postgres import PostgresResource
from resources.storage import S3Storage

_SHOWN = 20


@dg.asset_check(asset=message_archive, description="Every day's archived rows = deleted rows.")
def message_archive_rows_check(postgres: PostgresResource) -> dg.AssetCheckResult:
    with postgres.engine.connect() as conn:
        wrong = conn.execute(
            sa.text(
                "SELECT day, row_count, rows_deleted FROM archive_manifests"
                " WHERE kind = 'messages' AND row_count <> rows_deleted ORDER BY day"
            )
        ).all()
        days = conn.execute(
            sa.text("SELECT count(*) FROM archive_manifests WHERE kind = 'messages'")
        ).scalar_one()
    return dg.AssetCheckResult(
        passed=not wrong,
        metadata={
            "days_checked": days,
            "mismatched_days": len(wrong),
            "mismatches": dg.MetadataValue.text(
                "\n".join(f"{d}: archived {a}, deleted {b}" for d, a, b in wrong[:_SHOWN])
            ),
        },
    )


def checksum_result(postgres: PostgresResource, s3: S3Storage, kind: str) -> dg.AssetCheckResult:
    with postgres.engine.connect() as conn:
        found = manifests.load_all(conn, kind)
    problems = [
        f"{manifest.day}: {problem}"
        for manifest in found
        for problem in map(lambda obj: mismatch_by_head(s3, obj), manifest.objects())
        if problem
    ]
    return dg.AssetCheckResult(
        passed=not problems,
        metadata={
            "manifests_checked": len(found),
            "objects_checked": sum(len(m.files) for m in found),
            "problems": len(problems),
            "first_problems": dg.MetadataValue.text("\n".join(problems[:_SHOWN])),
        },
    )


@dg.asset_check(asset=message_archive, description="Every manifest's SHA-256s match S3.")
def message_archive_checksums_check(
    postgres: PostgresResource, s3: S3Storage
) -> dg.AssetCheckResult:
    return checksum_result(postgres, s3, "messages")


@dg.asset_check(asset=media_archive, description="Every manifest's SHA-256s match S3.")
def media_archive_checksums_check(postgres: PostgresResource, s3: S3Storage) -> dg.AssetCheckResult:
    return checksum_result(postgres, s3, "media")
