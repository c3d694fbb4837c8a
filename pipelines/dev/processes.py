"""The processes `waflow dev` runs side by side: the Dagster UI (webserver, daemon and code
server), the webhook app, the webhook worker and the sender, on the local stack with the
demo campaign loaded."""

from __future__ import annotations

import sys
from pathlib import Path

from pipelines.dev.demo import load_demo, messaging_limit_note
from pipelines.dev.local_stack import local_stack
from pipelines.dev.supervisor import Service, check_ports, supervise
from resources import settings
from resources.postgres import PostgresResource


def dagster_ui(host: str, port: int) -> Service:
    """`dagster dev`: the UI, the daemon and the one code server both of them use."""
    return Service(
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
            str(port),
        ],
        host,
        port,
        "/server_info",
    )


def dev_services(host: str, dagster_port: int, webhook_port: int) -> list[Service]:
    """Each process as a command of its own, run by the supervisor."""
    waflow = [sys.executable, "-m", "pipelines.cli"]
    return [
        dagster_ui(host, dagster_port),
        Service(
            "webhook app",
            [*waflow, "webhook-app", "--host", host, "--port", str(webhook_port)],
            host,
            webhook_port,
            "/health",
        ),
        Service("webhook worker", [*waflow, "webhook-worker"]),
        Service("sender", [*waflow, "sender"]),
    ]


def run_dev(state_dir: Path) -> int:
    """Start the local stack, load the demo campaign, and supervise every process until
    Ctrl-C (exit 0) or until one of them exits (exit 1)."""
    host = settings.get("HOST")
    dagster_port = settings.number("DAGSTER_PORT")
    webhook_port = settings.number("WEBHOOK_PORT")
    postgres_port = settings.number("EMBEDDED_POSTGRES_PORT")
    services = dev_services(host, dagster_port, webhook_port)
    check_ports(services)
    with local_stack(state_dir, postgres_port) as stack:
        postgres = PostgresResource.from_settings()
        campaign = load_demo(postgres.engine)
        print(messaging_limit_note(postgres.engine, campaign, f"http://{host}:{webhook_port}"))
        postgres.engine.dispose()
        print(f"demo campaign {campaign} is approved; starting the stack…", flush=True)
        return supervise(services, stack.env)
