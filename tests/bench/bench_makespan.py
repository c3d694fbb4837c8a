"""The time a user waits for a campaign: from the approve call to its last message `sent`.

- `campaign_makespan_s`: 5,000 members of the demo campaign (the demo image generator, the
  default 80 messages/s of its number, no messaging limit) through the processes `make dev`
  runs: Dagster as `make dev` starts it (`dagster dev`: the UI, the daemon with its sensors
  at `make dev`'s ticks, and one code server they share; the daemon launches the media and
  dispatch runs), and the sender worker, against the fake Graph API. Measured from the
  approve call until every message is `sent`. Baseline, same run: the bound, the slower of
  the two stages alone, `max(media-only time for the same members, 5,000 / 80 s)`, where
  the media-only time is a `campaign_media` run of another campaign of the same members
  (in process, without a sensor or a launch), timed before and after the campaign (their
  mean), as the webhook benchmark times its baseline: a drift of the machine's speed during
  the benchmark moves the bound with the campaign.
- `time_to_first_message_s`: from the first member's media (its row `asset_generated`) to
  the first message `sent`; the target is within 10 s.

Both processes' output goes to `.bench/makespan/`. Run it several times on a shared machine:
the figure moves with whatever else the cores are doing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, suppress
from pathlib import Path

import sqlalchemy as sa

from pipelines.dev.local_stack import free_port, local_stack
from resources.audience import GENERATED
from resources.postgres import PostgresResource
from tests.bench import Figure, benchmark
from tests.bench.cpu_split import CpuSplit, table

MEMBERS = int(os.environ.get("BENCH_MAKESPAN_MEMBERS", "5000"))
MESSAGES_PER_SECOND = 80
DEADLINE_SECONDS = 1800
# How often the benchmark looks at the campaign: the figures' resolution, and CPU taken from
# the campaign (its own and PostgreSQL's).
POLL_SECONDS = 0.5
REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LOGS = REPO / ".bench" / "makespan"
PHONE_NUMBER_ID = "1234567890"


def _demo_campaign(engine: sa.Engine, approved: bool) -> str:
    """A new demo campaign of `MEMBERS` (the demo's organisation, template and generator),
    with no messaging limit: the bound is the number's throughput."""
    from pipelines.dev.demo import add_demo_campaign
    from resources import campaigns

    with engine.begin() as conn:
        org = campaigns.create_organisation(conn, f"Makespan {time.time_ns()}", None)
        campaigns.add_phone_number(conn, org, PHONE_NUMBER_ID, MESSAGES_PER_SECOND)
        campaign = add_demo_campaign(conn, org, PHONE_NUMBER_ID, "Makespan", MEMBERS, approved)
    return str(campaign)


def media_only_seconds(engine: sa.Engine) -> float:
    """A `campaign_media` run alone, for another campaign of the same members."""
    import dagster as dg

    from assets_defs.media import campaign_media
    from pipelines.definitions import resources

    campaign_id = _demo_campaign(engine, approved=True)
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("campaigns", [campaign_id])
        started = time.perf_counter()
        result = dg.materialize(
            [campaign_media], partition_key=campaign_id, resources=resources(), instance=instance
        )
        elapsed = time.perf_counter() - started
    metadata = result.asset_materializations_for_node("campaign_media")[0].metadata
    assert metadata["generated"].value == MEMBERS, metadata
    # Out of the way of the measured campaign: its members would otherwise wait for a run.
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE campaigns SET status = 'cancelled' WHERE id = :c"), {"c": campaign_id}
        )
    return elapsed


class Progress:
    """When the campaign's first member had media, its first message was sent, and all."""

    def __init__(self, engine: sa.Engine, campaign_id: str) -> None:
        self.engine = engine
        self.campaign_id = campaign_id
        self.started = 0.0
        self.first_media: float | None = None
        self.first_sent: float | None = None
        self.all_media: float | None = None
        self.all_sent: float | None = None

    def look(self) -> None:
        with self.engine.connect() as conn:
            media, sent = conn.execute(
                # Each count reads its index (status) only: the look is the benchmark's, and
                # its CPU is taken from the campaign's.
                sa.text(
                    "SELECT (SELECT count(*) FROM campaign_audience WHERE campaign_id = :c"
                    "   AND status = ANY(:media)),"
                    " (SELECT count(*) FROM messages WHERE campaign_run_id IN"
                    "   (SELECT id FROM campaign_runs WHERE campaign_id = :c)"
                    "   AND status IN ('sent', 'delivered', 'read'))"
                ),
                {"c": self.campaign_id, "media": list(GENERATED)},
            ).one()
        now = time.perf_counter()
        if media and self.first_media is None:
            self.first_media = now
        if media >= MEMBERS and self.all_media is None:
            self.all_media = now
        if sent and self.first_sent is None:
            self.first_sent = now
        if sent >= MEMBERS:
            self.all_sent = now


def _start(name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
    with open(LOGS / f"{name}.log", "wb") as log:
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(process: subprocess.Popen) -> None:
    """The process and its group (the runs the daemon launched, sandbox workers)."""
    with suppress(ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _wait_for_sensors(dagster_url: str, dagster: subprocess.Popen) -> None:
    """Until the daemon's sensor loop has reported in Dagster's storage."""
    storage = sa.create_engine(dagster_url)
    deadline = time.perf_counter() + 300
    try:
        while time.perf_counter() < deadline:
            if dagster.poll() is not None:
                raise RuntimeError(f"dagster dev exited; see {LOGS}/dagster.log")
            try:
                with storage.connect() as conn:
                    if conn.execute(
                        sa.text("SELECT 1 FROM daemon_heartbeats WHERE daemon_type = 'SENSOR'")
                    ).first():
                        return
            except sa.exc.ProgrammingError:
                pass  # its tables are not created yet
            time.sleep(0.5)
        raise RuntimeError("the daemon's sensors did not start in 300 s")
    finally:
        storage.dispose()


def makespan(
    engine: sa.Engine, env: dict[str, str], markers: tuple[str, ...]
) -> tuple[float, Progress, dict[str, float]]:
    """Seconds from the approve call to the last message sent, with Dagster and the sender
    running; the progress marks; the CPU spent in between (not the processes' start-up)."""
    from pipelines.dev.processes import dagster_ui
    from resources.campaigns import approve

    campaign_id = _demo_campaign(engine, approved=False)
    with ExitStack() as processes:
        dagster = _start("dagster", dagster_ui("127.0.0.1", free_port()).argv, env)
        processes.callback(_stop, dagster)
        sender = _start("sender", [str(BIN / "waflow"), "sender"], env)
        processes.callback(_stop, sender)
        _wait_for_sensors(env["DAGSTER_POSTGRES_URL"], dagster)
        progress = Progress(engine, campaign_id)
        split = CpuSplit(markers).start()
        started = progress.started = time.perf_counter()
        approve(engine, campaign_id)
        deadline = started + DEADLINE_SECONDS
        while progress.all_sent is None:
            for name, process in (("dagster", dagster), ("sender", sender)):
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited; see {LOGS / name}.log")
            if time.perf_counter() > deadline:
                raise RuntimeError(f"not every message sent in {DEADLINE_SECONDS} s")
            progress.look()
            time.sleep(POLL_SECONDS)
        cpu = split.stop()
    return progress.all_sent - started, progress, cpu


@benchmark("makespan")
def campaign_makespan() -> list[Figure]:
    from tests.fake_graph import FakeGraph
    from tests.servers import serve

    for name in (
        "DATABASE_URL",
        "AWS_ENDPOINT_URL",
        "DAGSTER_HOME",
        "DAGSTER_POSTGRES_URL",
        "APP_ENV",
        "WHATSAPP_ACCESS_TOKEN",
    ):
        os.environ.pop(name, None)
    LOGS.mkdir(parents=True, exist_ok=True)
    graph = FakeGraph()
    with (
        tempfile.TemporaryDirectory() as state,
        local_stack(Path(state)) as stack,
        serve(graph.app()) as graph_url,
    ):
        graph.url = graph_url
        # A standard-throughput number (80 messages/s) with no messaging limit.
        graph.add_phone_number(
            PHONE_NUMBER_ID, whatsapp_business_manager_messaging_limit="TIER_UNLIMITED"
        )
        env = {
            **os.environ,
            **stack.env,
            "WHATSAPP_API_BASE_URL": graph_url,
            "WHATSAPP_ACCESS_TOKEN": graph.access_token,
            "WHATSAPP_PHONE_NUMBER_ID": PHONE_NUMBER_ID,
        }
        engine = PostgresResource.from_settings().engine
        split = CpuSplit(markers=(state,)).start()
        before = media_only_seconds(engine)
        media_only_cpu = split.stop()
        elapsed, progress, makespan_cpu = makespan(engine, env, markers=(state,))
        after = media_only_seconds(engine)
        engine.dispose()
    media_only = (before + after) / 2
    bound = max(media_only, MEMBERS / MESSAGES_PER_SECOND)
    first = progress.first_sent - progress.first_media
    print(
        f"{MEMBERS:,} members: makespan {elapsed:.1f} s; media alone {before:.1f} s before the"
        f" campaign and {after:.1f} s after, sending alone {MEMBERS / MESSAGES_PER_SECOND:.1f} s;"
        f" first message {first:.1f} s after the first member's media"
    )
    print(f"all media {progress.all_media - progress.started:.1f} s after the approve call")
    print(f"CPU of the media-only run before the campaign:\n{table(media_only_cpu)}")
    print(f"CPU of the campaign, approve call to last message sent:\n{table(makespan_cpu)}")
    return [
        Figure(
            "campaign_makespan_s",
            round(elapsed, 1),
            "s",
            "slower_stage_alone_s",
            round(bound, 1),
            f"≤ 1.25× baseline ({MEMBERS:,} members, demo generator, 80 messages/s; approve"
            " call to the last message sent)",
        ),
        Figure(
            "time_to_first_message_s",
            round(first, 1),
            "s",
            target="≤ 10 s after the first member's media",
        ),
    ]
