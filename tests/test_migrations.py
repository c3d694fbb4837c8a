import multiprocessing

import pytest
import sqlalchemy as sa

from resources.migrations import SQL_DIR, discover, migrate
from resources.postgres import create_engine

TABLES = {
    "organisations",
    "phone_numbers",
    "contacts",
    "templates",
    "asset_generate_files",
    "campaigns",
    "campaign_audience",
    "campaign_runs",
    "conversations",
    "messages",
    "message_receipts",
    "webhook_inbox",
    "media",
    "archive_manifests",
    "schema_migrations",
}


def _tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def test_migrations_apply_on_an_empty_database_then_are_a_no_op(make_database):
    engine = create_engine(make_database(migrated=False))
    try:
        assert _tables(engine) == set()
        applied = migrate(engine)
        assert applied == [m.version for m in discover()]
        assert _tables(engine) >= TABLES
        assert migrate(engine) == []
        with engine.connect() as conn:
            recorded = (
                conn.execute(sa.text("SELECT version FROM schema_migrations")).scalars().all()
            )
        assert sorted(recorded) == applied
    finally:
        engine.dispose()


def _migrate_in_child(url: str, barrier, results) -> None:
    engine = create_engine(url)
    barrier.wait()
    results.put(migrate(engine))
    engine.dispose()


def test_two_processes_migrating_at_once_apply_each_migration_once(make_database):
    url = make_database(migrated=False)
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(2), context.Queue()
    children = [
        context.Process(target=_migrate_in_child, args=(url, barrier, results)) for _ in range(2)
    ]
    for child in children:
        child.start()
    for child in children:
        child.join(60)
        assert child.exitcode == 0
    outcomes = sorted([results.get(timeout=5), results.get(timeout=5)], key=len)
    assert outcomes[0] == []
    assert outcomes[1] == [m.version for m in discover()]


def test_a_badly_named_migration_file_is_refused(tmp_path):
    (tmp_path / "001_core.sql").write_text("SELECT 1;")
    (tmp_path / "add-things.sql").write_text("SELECT 1;")
    with pytest.raises(ValueError, match=r"add-things\.sql"):
        discover(tmp_path)


def test_two_migration_files_cannot_share_a_number(tmp_path):
    (tmp_path / "001_core.sql").write_text("SELECT 1;")
    (tmp_path / "001_more.sql").write_text("SELECT 1;")
    with pytest.raises(ValueError, match="share a number"):
        discover(tmp_path)


def test_the_shipped_migrations_start_at_one_and_increase():
    versions = [m.version for m in discover(SQL_DIR)]
    assert versions[0] == 1
    assert versions == sorted(set(versions))
