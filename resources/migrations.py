"""Applies the numbered SQL files in `sql/` (the schema, below this layer) in order, once each.

Every process that needs the schema calls `migrate()` at start-up, so several may
race: a transaction-scoped advisory lock serialises them and the second finds
nothing left to do.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa

import sql

# A package of its own, installed beside this one: found the same way in a checkout, an
# editable install and the production image.
SQL_DIR = Path(sql.__file__).resolve().parent
_LOCK_KEY = 0x5741_4D49  # arbitrary, constant: "WAMI"
_NAME = re.compile(r"^(\d{3,})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path


def discover(sql_dir: Path = SQL_DIR) -> list[Migration]:
    found = []
    for path in sorted(sql_dir.glob("*.sql")):
        match = _NAME.match(path.name)
        if not match:
            raise ValueError(f"migration file name must look like 001_name.sql: {path.name}")
        found.append(Migration(int(match.group(1)), match.group(2), path))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"two migrations share a number in {sql_dir}")
    return found


def migrate(engine: sa.Engine, sql_dir: Path = SQL_DIR) -> list[int]:
    """Apply pending migrations; returns the versions applied by this call."""
    applied: list[int] = []
    with engine.begin() as conn:
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        conn.execute(
            sa.text(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
        )
        done = set(conn.execute(sa.text("SELECT version FROM schema_migrations")).scalars())
        for migration in discover(sql_dir):
            if migration.version in done:
                continue
            conn.exec_driver_sql(migration.path.read_text())
            conn.execute(
                sa.text("INSERT INTO schema_migrations (version, name) VALUES (:v, :n)"),
                {"v": migration.version, "n": migration.name},
            )
            applied.append(migration.version)
    return applied


def schema_version(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
        ).scalar_one()
