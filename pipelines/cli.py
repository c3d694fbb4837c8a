"""`waflow`: the platform's command line (migrate, run the local stack, demo, workers).

Expected failures (a bad setting, an unreachable server, a port in use) print one line
naming the cause and exit 1; tracebacks are for bugs.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import sqlalchemy as sa
from botocore.exceptions import BotoCoreError, ClientError

from resources import settings


def _state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir or settings.get("STATE_DIR"))


def cmd_migrate(args: argparse.Namespace) -> int:
    from pipelines.local_stack import local_stack

    with local_stack(_state_dir(args)) as stack:
        print(
            f"schema at version {stack.schema_version}; applied now: {stack.migrated or 'nothing'}"
        )
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from pipelines.demo import load_demo
    from pipelines.local_stack import local_stack
    from pipelines.supervisor import Service, check_ports, supervise
    from resources.postgres import PostgresResource

    host = settings.get("HOST")
    services = [
        Service(
            "Dagster UI",
            [
                sys.executable,
                "-m",
                "dagster",
                "dev",
                "-w",
                "workspace.yaml",
                "-h",
                host,
                "-p",
                settings.get("DAGSTER_PORT"),
            ],
            host,
            int(settings.get("DAGSTER_PORT")),
            "/server_info",
        ),
        Service(
            "webhook app",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "webhook_app.app:app",
                "--host",
                host,
                "--port",
                settings.get("WEBHOOK_PORT"),
            ],
            host,
            int(settings.get("WEBHOOK_PORT")),
            "/health",
        ),
    ]
    check_ports(services)
    with local_stack(_state_dir(args), int(settings.get("EMBEDDED_POSTGRES_PORT"))) as stack:
        postgres = PostgresResource.from_env()
        campaign = load_demo(postgres.engine)
        postgres.engine.dispose()
        print(f"demo campaign {campaign} is approved; starting the stack…", flush=True)
        return supervise(services, stack.env)


def cmd_load_demo(args: argparse.Namespace) -> int:
    from pipelines.demo import load_demo
    from pipelines.local_stack import local_stack
    from resources.postgres import PostgresResource

    with local_stack(_state_dir(args)):
        print(load_demo(PostgresResource.from_env().engine))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.demo import print_summary, run_demo

    print_summary(run_demo())
    return 0


def cmd_archive_restore(args: argparse.Namespace) -> int:
    from assets_defs.archive.restore import parse_day, restore_range
    from pipelines.local_stack import local_stack
    from resources.postgres import PostgresResource
    from resources.storage import S3Storage

    first, last = parse_day(args.first), parse_day(args.last)
    with local_stack(_state_dir(args)):
        result = restore_range(
            PostgresResource.from_env().engine, S3Storage.from_env(), first, last
        )
    print(
        f"restored {result.rows_inserted} of {result.rows_in_archive} archived messages"
        f" ({result.days} days, {result.files} files; the rest were already there)"
    )
    return 0


def cmd_archive_setup(args: argparse.Namespace) -> int:
    from assets_defs.archive.lifecycle import apply_lifecycle_rules
    from pipelines.local_stack import local_stack
    from resources.storage import S3Storage

    with local_stack(_state_dir(args)):
        storage = S3Storage.from_env()
        rules = apply_lifecycle_rules(storage)
    print(f"bucket {storage.bucket}: {len(rules)} lifecycle rules in force")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="waflow", description=__doc__.splitlines()[0])
    top.add_argument("--state-dir", help="local state folder (default: $STATE_DIR or .state)")
    commands = top.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="apply pending schema migrations").set_defaults(
        run=cmd_migrate
    )
    commands.add_parser(
        "dev", help="run the whole stack locally with a demo campaign"
    ).set_defaults(run=cmd_dev)
    commands.add_parser("load-demo", help="load the demo campaign").set_defaults(run=cmd_load_demo)
    commands.add_parser(
        "demo", help="run the whole flow once, headless; JSON summary last"
    ).set_defaults(run=cmd_demo)
    archive = commands.add_parser("archive", help="message and media archive").add_subparsers(
        dest="archive_command", required=True
    )
    restore = archive.add_parser(
        "restore", help="re-import archived messages of a date range (checksums verified first)"
    )
    restore.add_argument("--from", dest="first", required=True, metavar="YYYY-MM-DD")
    restore.add_argument("--to", dest="last", required=True, metavar="YYYY-MM-DD")
    restore.set_defaults(run=cmd_archive_restore)
    archive.add_parser(
        "setup", help="apply the archive prefixes' lifecycle rules to the bucket (idempotent)"
    ).set_defaults(run=cmd_archive_setup)
    return top


def explain(error: BaseException) -> str | None:
    """One line for a failure a user can fix, or None for a bug."""
    from assets_defs.archive.objects import ArchiveMismatch
    from assets_defs.archive.restore import RestoreRefused
    from pipelines.local_stack import StackError

    expected = (StackError, settings.MissingSetting, settings.InvalidSetting)
    if isinstance(error, (*expected, RestoreRefused, ArchiveMismatch)):
        return str(error)
    if isinstance(error, sa.exc.OperationalError):
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        return f"cannot connect to PostgreSQL (DATABASE_URL): {reason}"
    if isinstance(error, BotoCoreError):
        return f"cannot reach S3/SQS (AWS_ENDPOINT_URL): {error}"
    if isinstance(error, ClientError):
        return f"S3/SQS refused a request: {error}"
    return None


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", module="platformdirs")
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except Exception as error:
        message = explain(error)
        if message is None:
            raise
        print(f"waflow: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
