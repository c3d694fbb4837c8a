"""`archive_manifests`: one row per archived day and kind, the index of what S3 holds."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import sqlalchemy as sa

from assets_defs.archive.objects import StoredObject


@dataclass(frozen=True)
class Manifest:
    kind: str
    day: date
    files: list[dict[str, Any]] = field(default_factory=list)
    row_count: int = 0
    bytes_raw: int = 0
    bytes_compressed: int = 0
    rows_deleted: int = 0
    rows_failed: int = 0

    def objects(self) -> list[StoredObject]:
        return [StoredObject(f["key"], f["size"], f["sha256"]) for f in self.files]


def record(conn: sa.Connection, manifest: Manifest) -> None:
    """Insert or replace the day's manifest (a re-run of a day describes the same keys)."""
    conn.execute(
        sa.text(
            "INSERT INTO archive_manifests (kind, day, files, row_count, bytes_raw,"
            " bytes_compressed, rows_deleted, rows_failed)"
            " VALUES (:kind, :day, CAST(:files AS jsonb), :rows, :raw, :compressed, :deleted, :failed)"
            " ON CONFLICT (kind, day) DO UPDATE SET files = EXCLUDED.files,"
            " row_count = EXCLUDED.row_count, bytes_raw = EXCLUDED.bytes_raw,"
            " bytes_compressed = EXCLUDED.bytes_compressed, rows_deleted = EXCLUDED.rows_deleted,"
            " rows_failed = EXCLUDED.rows_failed, updated_at = now()"
        ),
        {
            "kind": manifest.kind,
            "day": manifest.day,
            "files": json.dumps(manifest.files),
            "rows": manifest.row_count,
            "raw": manifest.bytes_raw,
            "compressed": manifest.bytes_compressed,
            "deleted": manifest.rows_deleted,
            "failed": manifest.rows_failed,
        },
    )


_COLUMNS = "kind, day, files, row_count, bytes_raw, bytes_compressed, rows_deleted, rows_failed"


def load(conn: sa.Connection, kind: str, first: date, last: date) -> list[Manifest]:
    rows = conn.execute(
        sa.text(
            f"SELECT {_COLUMNS} FROM archive_manifests"
            " WHERE kind = :kind AND day BETWEEN :first AND :last ORDER BY day"
        ),
        {"kind": kind, "first": first, "last": last},
    ).mappings()
    return [Manifest(**row) for row in rows]


def load_all(conn: sa.Connection, kind: str) -> list[Manifest]:
    return load(conn, kind, date.min, date.max)


def archived_days(conn: sa.Connection, kind: str, first: date, last: date) -> set[date]:
    return set(
        conn.execute(
            sa.text(
                "SELECT day FROM archive_manifests"
                " WHERE kind = :kind AND day BETWEEN :first AND :last"
            ),
            {"kind": kind, "first": first, "last": last},
        ).scalars()
    )
