"""The platform's PostgreSQL connection, shared by Dagster assets, the webhook app and workers."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from dagster import ConfigurableResource
from pydantic import PrivateAttr

from resources import settings
from resources.migrations import migrate


def create_engine(database_url: str, pool_size: int = 5) -> sa.Engine:
    """A pooled engine that survives a server restart.

    `pool_pre_ping` replaces connections the server dropped; the short connect timeout
    turns an unreachable server into an error instead of a hang. `hide_parameters` keeps
    the statement's values (phone numbers, message text) out of every error's text, and
    so out of the logs.
    """
    try:
        url = sa.make_url(database_url)
    except sa.exc.ArgumentError:
        raise settings.InvalidSetting(
            "DATABASE_URL is not a database URL (expected postgresql://user:password@host:port/db)"
        ) from None
    if url.get_backend_name() != "postgresql":
        raise settings.InvalidSetting(
            f"DATABASE_URL must be a PostgreSQL URL, not {url.get_backend_name()}"
        )
    if url.drivername in ("postgres", "postgresql"):
        url = url.set(drivername="postgresql+psycopg2")
    return sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        hide_parameters=True,
        connect_args={"connect_timeout": 5, "application_name": "waflow"},
    )


class PostgresResource(ConfigurableResource):
    """SQLAlchemy engine over psycopg2; created lazily, on first use."""

    database_url: str
    pool_size: int = 5

    _engine: sa.Engine | None = PrivateAttr(default=None)

    @classmethod
    def from_settings(
        cls, source: settings.Source = settings.NOW, **tuning: Any
    ) -> PostgresResource:
        """The one way it is built, by the code location and by every process; `tuning`
        sets the fields that are no setting (a worker's pool size)."""
        return cls(database_url=source.required("DATABASE_URL"), **tuning)

    @property
    def engine(self) -> sa.Engine:
        if self._engine is None:
            self._engine = create_engine(self.database_url, self.pool_size)
        return self._engine

    def migrate(self) -> list[int]:
        return migrate(self.engine)

    def ping(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    def teardown_after_execution(self, context) -> None:
        if self._engine is not None:
            self._engine.dispose()
