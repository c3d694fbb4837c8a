"""Production fails closed: a process pointed at a database of its own, without `APP_ENV`,
is production, and refuses to start without its secrets before it connects to anything."""

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

# Everything a developer's shell or the test session may carry that would fill a gap.
_CLEARED = (
    "APP_ENV",
    "DATABASE_URL",
    "DAGSTER_POSTGRES_URL",
    "DAGSTER_HOME",
    "AWS_ENDPOINT_URL",
    "S3_BUCKET",
    "WHATSAPP_ACCESS_TOKEN",
    "WHATSAPP_PHONE_NUMBER_ID",
    "WHATSAPP_APP_SECRET",
    "WHATSAPP_VERIFY_TOKEN",
    "ADMIN_API_TOKEN",
)


@pytest.fixture
def database() -> Iterator[socket.socket]:
    """A listening socket standing in for PostgreSQL: nothing may connect to it."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        yield listener


def _start(argv: list[str], database: socket.socket, cwd, **env: str) -> str:
    """Run the process to its end; the lines it wrote, once it is certain that it never
    connected to the database."""
    port = database.getsockname()[1]
    base = {k: v for k, v in os.environ.items() if k not in _CLEARED}
    result = subprocess.run(
        argv,
        env={**base, "DATABASE_URL": f"postgresql://waflow:pw@127.0.0.1:{port}/x", **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0, result.stdout + result.stderr
    with pytest.raises(BlockingIOError):
        database.accept()
    return result.stdout + result.stderr


def _line_naming(output: str, *names: str) -> str:
    lines = [line for line in output.splitlines() if all(name in line for name in names)]
    assert lines, output
    return lines[0]


WAFLOW = [sys.executable, "-m", "pipelines.cli"]


@pytest.mark.parametrize(
    ("argv", "process", "secrets"),
    [
        (
            [sys.executable, "-m", "uvicorn", "webhook_app.app:app", "--port", "0"],
            "webhook app",
            ("WHATSAPP_APP_SECRET", "WHATSAPP_VERIFY_TOKEN", "ADMIN_API_TOKEN"),
        ),
        ([*WAFLOW, "webhook-worker"], "webhook worker", ("WHATSAPP_ACCESS_TOKEN",)),
        ([*WAFLOW, "sender"], "sender", ("WHATSAPP_ACCESS_TOKEN",)),
        (
            [
                sys.executable,
                "-m",
                "dagster",
                "definitions",
                "validate",
                "-m",
                "pipelines.definitions",
            ],
            "Dagster code location",
            ("DAGSTER_POSTGRES_URL", "WHATSAPP_ACCESS_TOKEN"),
        ),
        ([*WAFLOW, "templates", "sync"], "waflow templates", ("WHATSAPP_ACCESS_TOKEN",)),
        ([*WAFLOW, "campaigns", "refresh-numbers"], "waflow campaigns", ("WHATSAPP_ACCESS_TOKEN",)),
    ],
)
def test_without_app_env_a_process_on_its_own_database_needs_its_secrets(
    repo_root, database, argv, process, secrets
):
    output = _start(argv, database, repo_root)
    line = _line_naming(output, f"{process} cannot start", *secrets)
    assert "production: DATABASE_URL is set and APP_ENV is not" in line
    assert ":pw@" not in output


def test_with_app_env_production_the_missing_secret_is_named_with_its_purpose(repo_root, database):
    output = _start(
        [*WAFLOW, "sender"],
        database,
        repo_root,
        APP_ENV="production",
        WHATSAPP_PHONE_NUMBER_ID="1234",
    )
    line = _line_naming(output, "sender cannot start", "WHATSAPP_ACCESS_TOKEN")
    assert "(APP_ENV=production): Graph API bearer token" in line


def test_a_misspelt_app_env_is_refused_by_every_process(repo_root, database):
    for argv in ([*WAFLOW, "sender"], [*WAFLOW, "migrate"]):
        output = _start(argv, database, repo_root, APP_ENV="prod")
        _line_naming(output, "APP_ENV must be `development` or `production`")


def test_the_demo_and_the_dev_stack_refuse_to_run_in_production(repo_root, database):
    for command in ("demo", "dev", "load-demo"):
        output = _start([*WAFLOW, command], database, repo_root)
        _line_naming(output, f"waflow {command} runs in development only", "APP_ENV=development")
