"""Mistakes a user makes at start-up get one line naming the cause, never a traceback."""

import os
import socket
import subprocess
import sys

import pytest


def waflow(
    *args: str, env: dict[str, str], cwd, timeout: float = 120
) -> subprocess.CompletedProcess:
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "AWS_ENDPOINT_URL", "APP_ENV")
    }
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        env={**base, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_clear_line(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("waflow: error:")]
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0]


def test_an_invalid_database_url_is_named_and_its_secret_not_shown(tmp_path, repo_root):
    result = waflow(
        "--state-dir",
        str(tmp_path),
        "migrate",
        env={"DATABASE_URL": "mysql://user:s3cret@db/x"},
        cwd=repo_root,
    )
    assert_one_clear_line(result, "DATABASE_URL", "PostgreSQL")
    assert "s3cret" not in result.stderr + result.stdout


def test_an_unreachable_database(tmp_path, repo_root):
    result = waflow(
        "--state-dir",
        str(tmp_path),
        "migrate",
        env={"DATABASE_URL": "postgresql://postgres:pw@127.0.0.1:1/x"},
        cwd=repo_root,
    )
    assert_one_clear_line(result, "cannot connect to PostgreSQL", "Connection refused")
    assert ":pw@" not in result.stderr


def test_an_unreachable_s3_sqs_endpoint(tmp_path, repo_root, database_url):
    result = waflow(
        "--state-dir",
        str(tmp_path),
        "migrate",
        env={
            "APP_ENV": "development",  # production provisions no bucket or queue
            "DATABASE_URL": database_url,
            "AWS_ENDPOINT_URL": "http://127.0.0.1:1",
            "AWS_ACCESS_KEY_ID": "x",
            "AWS_SECRET_ACCESS_KEY": "x",
        },
        cwd=repo_root,
    )
    assert_one_clear_line(result, "cannot reach S3/SQS", "127.0.0.1:1")


def test_a_port_in_use(tmp_path, repo_root):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = waflow(
            "--state-dir", str(tmp_path), "dev", env={"DAGSTER_PORT": str(port)}, cwd=repo_root
        )
    assert_one_clear_line(result, f"port {port}", "in use")


@pytest.mark.parametrize(
    ("command", "env", "expected"),
    [
        ("dev", {"WEBHOOK_PORT": "eighty"}, "WEBHOOK_PORT must be a whole number"),
        ("webhook-worker", {"WEBHOOK_WORKER_NICE": "-5"}, "must be between 0 and 19"),
    ],
)
def test_an_unusable_number_setting_is_named(tmp_path, repo_root, command, env, expected):
    result = waflow("--state-dir", str(tmp_path), command, env=env, cwd=repo_root)
    assert_one_clear_line(result, expected)


def test_production_without_a_required_setting_names_it(tmp_path, repo_root):
    result = waflow(
        "--state-dir", str(tmp_path), "migrate", env={"APP_ENV": "production"}, cwd=repo_root
    )
    assert_one_clear_line(result, "DATABASE_URL", "APP_ENV=production")


def test_migrate_reports_the_schema_version(tmp_path, repo_root, database_url):
    result = waflow(
        "--state-dir", str(tmp_path), "migrate", env={"DATABASE_URL": database_url}, cwd=repo_root
    )
    assert result.returncode == 0, result.stderr
    assert "schema at version" in result.stdout
    assert "applied now: nothing" in result.stdout


def test_version_and_every_commands_help_shows_its_input_and_an_example(capsys):
    from importlib.metadata import version

    from pipelines import cli, cli_help

    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"waflow {version('waflow')}"
    commands = cli_help.commands(cli.parser())
    undocumented = [path for path, command in commands.items() if not command.epilog]
    assert undocumented == [], "add an input shape and an example to pipelines/cli_help.py"
    assert all("example" in command.epilog for command in commands.values())
    # The file inputs name their JSON fields and CSV columns.
    assert "message_type" in commands["campaigns create"].format_help()
    assert "template_id" in commands["campaigns create"].format_help()
    assert "valueType" in commands["campaigns create-template"].format_help()
    assert "opted_out" in commands["campaigns upload-contacts"].format_help()
    assert "phone" in commands["campaigns upload-audience"].format_help()


def test_the_cli_starts_without_dagster_or_the_web_stack():
    """`waflow --help` and every command's start import only the CLI: each command brings in
    Dagster, LangGraph, Starlette or uvicorn itself when it runs."""
    heavy = ("dagster", "langgraph", "langchain_core", "starlette", "uvicorn", "httpx", "moto")
    script = (
        "import json, sys\n"
        "import pipelines.cli\n"
        f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r}))))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"
