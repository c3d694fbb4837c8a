"""One embedded stack per test session (Postgres + S3/SQS on loopback); each test that needs
the database gets a fresh, migrated copy, so tests never see each other's rows."""

from __future__ import annotations

import os
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest
import sqlalchemy as sa

warnings.filterwarnings("ignore", module="platformdirs")

from pipelines.dev.local_stack import APP_DATABASE, Stack, local_stack  # noqa: E402
from resources.postgres import PostgresResource, create_engine  # noqa: E402
from resources.queue import SQSResource  # noqa: E402
from resources.storage import S3Storage  # noqa: E402

# Settings a developer's shell may carry must not point the suite at real services.
_OUTSIDE = (
    "DATABASE_URL",
    "DAGSTER_POSTGRES_URL",
    "AWS_ENDPOINT_URL",
    "APP_ENV",
    "WHATSAPP_ACCESS_TOKEN",
    "GOOGLE_API_KEY",
    "DAGSTER_HOME",
)


# The modules whose tests start whole stacks or many processes, longest first. Handed out
# first, they run beside the short tests instead of becoming the tail of a parallel run.
_LONGEST_FIRST = (
    "test_production_topology.py",
    "test_demo_logs.py",
    "test_crash_windows.py",
    "test_production_install.py",
    "test_sender_breakers.py",
    "test_local_stack.py",
    "test_sender_failures.py",
    "test_media_asset.py",
    "test_production_start.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The embedded stack; it sets `APP_ENV=development` for the session, so the tests'
    `DATABASE_URL`s (and the processes they start) stay development."""
    for name in _OUTSIDE:
        os.environ.pop(name, None)
    with local_stack(tmp_path_factory.mktemp("state")) as running:
        yield running


def _admin(stack: Stack) -> psycopg2.extensions.connection:
    conn = psycopg2.connect(stack.postgres.url("postgres"))
    conn.autocommit = True
    return conn


@pytest.fixture
def make_database(stack: Stack) -> Iterator:
    """Factory of throwaway databases: migrated (a copy of the stack's) or empty."""
    created: list[str] = []
    admin = _admin(stack)

    def make(migrated: bool = True) -> str:
        name = f"t_{uuid.uuid4().hex[:12]}"
        template = APP_DATABASE if migrated else "template0"
        with admin.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
        created.append(name)
        return stack.postgres.url(name)

    yield make
    with admin.cursor() as cur:
        for name in created:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def database_url(make_database, monkeypatch: pytest.MonkeyPatch) -> str:
    url = make_database()
    monkeypatch.setenv("DATABASE_URL", url)
    return url


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def postgres(database_url: str) -> Iterator[PostgresResource]:
    resource = PostgresResource(database_url=database_url)
    yield resource
    resource.engine.dispose()


@pytest.fixture
def s3(stack: Stack) -> S3Storage:
    # Built from config, not `model_copy`: Dagster rebuilds resources from their config.
    base = S3Storage.from_settings()
    storage = S3Storage(
        bucket=f"test-{uuid.uuid4().hex[:12]}",
        endpoint_url=base.endpoint_url,
        region_name=base.region_name,
    )
    storage.ensure_bucket()
    return storage


@pytest.fixture
def sqs(stack: Stack) -> SQSResource:
    suffix = uuid.uuid4().hex[:10]
    base = SQSResource.from_settings()
    queue = SQSResource(
        queue_name=f"messages-{suffix}.fifo",
        dlq_name=f"dlq-{suffix}.fifo",
        max_receive_count=base.max_receive_count,
        region_name=base.region_name,
        endpoint_url=base.endpoint_url,
    )
    queue.ensure_queues()
    return queue


@pytest.fixture
def graph() -> Iterator:
    """The fake Graph API on loopback; its address is `graph.url`."""
    from tests.fake_graph import FakeGraph
    from tests.servers import serve

    fake = FakeGraph()
    with serve(fake.app()) as url:
        fake.url = url
        yield fake


@pytest.fixture
def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent
