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
        Service("sender", [sys.executable, "-m", "pipelines.cli", "sender"]),
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


def cmd_sender(args: argparse.Namespace) -> int:
    from pipelines.sender.service import run

    stats = run(drain=args.drain)
    print(" ".join(f"{key}={value}" for key, value in sorted(stats.items())) or "nothing to send")
    return 0


def cmd_sender_stuck(args: argparse.Namespace) -> int:
    from pipelines.sender.store import stuck_in_sending
    from resources.postgres import create_engine

    engine = create_engine(settings.require("DATABASE_URL"))
    threshold = (
        args.older_than
        if args.older_than is not None
        else float(settings.get("SENDER_STUCK_AFTER_SECONDS"))
    )
    with engine.connect() as conn:
        rows = stuck_in_sending(conn, threshold)
    engine.dispose()
    for row in rows:
        print(
            f"message {row.id}\trun {row.campaign_run_id}\tto {row.peer_phone}"
            f"\tsending since {row.sending_at.isoformat()}\tattempts {row.attempts}"
        )
    print(f"{len(rows)} message(s) in sending for more than {threshold:g} s", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.demo import print_summary, run_demo

    print_summary(run_demo())
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
    sender = commands.add_parser(
        "sender", help="send queued messages until SIGTERM (the sender worker)"
    )
    sender.add_argument("--drain", action="store_true", help="exit once the queue is empty")
    sender.set_defaults(run=cmd_sender)
    stuck = commands.add_parser(
        "sender-stuck", help="list messages left in sending (never re-sent automatically)"
    )
    stuck.add_argument(
        "--older-than", type=float, help="seconds (default SENDER_STUCK_AFTER_SECONDS)"
    )
    stuck.set_defaults(run=cmd_sender_stuck)
    return top


def explain(error: BaseException) -> str | None:
    """One line for a failure a user can fix, or None for a bug."""
    from pipelines.local_stack import StackError

    if isinstance(error, (StackError, settings.MissingSetting, settings.InvalidSetting)):
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
