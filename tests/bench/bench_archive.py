"""One day of messages archived end to end (export, compress, upload to the local S3 server,
read back and verify, delete), against the same run's baseline: the same `COPY (SELECT …)`
piped through `gzip` into a file. The archive runs in a child process so that its peak
resident memory is its own (the S3 server, which keeps objects, stays in this process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import sqlalchemy as sa

from pipelines.dev.local_stack import local_stack
from tests.bench import Figure, benchmark

ROWS = int(os.environ.get("ARCHIVE_BENCH_ROWS", "1000000"))
DAY = date(2024, 3, 1)

_GENERATE = """
INSERT INTO messages (organisation_id, direction, sender_type, phone_number_id, peer_phone,
    message_type, body, payload, provider_message_id, status, sent_at, delivered_at, read_at,
    created_at, updated_at)
SELECT :org, 'outbound', 'campaign', 'pn-bench', '+1202555' || lpad((g % 10000)::text, 4, '0'),
    'template', 'Hi Customer ' || g || ', your offer is waiting: 20% off your next order.',
    jsonb_build_object('template', 'demo_offer', 'code', 'DEMO' || g),
    'wamid.bench.' || g, 'read',
    :start + (g * 86) * interval '1 millisecond',
    :start + (g * 86 + 900) * interval '1 millisecond',
    :start + (g * 86 + 5000) * interval '1 millisecond',
    :start + (g * 86) * interval '1 millisecond',
    :start + (g * 86) * interval '1 millisecond'
FROM generate_series(0, :rows - 1) g
"""

_CHILD = """
import json, sys, time
from datetime import date
from assets_defs.archive.messages import archive_day
from assets_defs.archive.policy import ArchivePolicy
from resources import settings
from resources.postgres import PostgresResource
from resources.storage import S3Storage

engine = PostgresResource.from_settings().engine
started = time.perf_counter()
result = archive_day(engine, S3Storage.from_settings(), date.fromisoformat(sys.argv[1]),
                     settings.load(ArchivePolicy).batch_size)
seconds = time.perf_counter() - started
peak_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
print(json.dumps({"seconds": seconds, "rows": result.rows, "deleted": result.rows_deleted,
                  "files": len(result.files), "peak_rss_mb": peak_kb / 1024}))
"""


def _generate(engine: sa.Engine) -> None:
    from assets_defs.archive.policy import day_bounds
    from resources import campaigns

    with engine.begin() as conn:
        org = campaigns.create_organisation(conn, "Bench")
        conn.execute(sa.text(_GENERATE), {"org": org, "start": day_bounds(DAY)[0], "rows": ROWS})
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text("VACUUM ANALYZE messages"))


def _baseline(engine: sa.Engine, target: Path) -> float:
    """The same export query, Postgres → `gzip` (default level) → a file."""
    from assets_defs.archive.messages import EXPORT
    from assets_defs.archive.policy import day_bounds

    start, end = day_bounds(DAY)
    started = time.perf_counter()
    with target.open("wb") as out:
        gzip = subprocess.Popen(["gzip", "-c"], stdin=subprocess.PIPE, stdout=out)
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            cursor.copy_expert(
                cursor.mogrify(EXPORT, {"start": start, "end": end}).decode(), gzip.stdin
            )
        finally:
            raw.close()
        gzip.stdin.close()
        gzip.wait()
    return time.perf_counter() - started


@benchmark("archive")
def archive_benchmark() -> list[Figure]:
    from resources.postgres import create_engine

    for name in ("DATABASE_URL", "AWS_ENDPOINT_URL", "DAGSTER_HOME", "DAGSTER_POSTGRES_URL"):
        os.environ.pop(name, None)
    with tempfile.TemporaryDirectory() as state, local_stack(Path(state)) as stack:
        engine = create_engine(stack.env["DATABASE_URL"])
        started = time.perf_counter()
        _generate(engine)
        print(f"  generated {ROWS} messages in {time.perf_counter() - started:.1f}s", flush=True)
        baseline = _baseline(engine, Path(state) / "baseline.json.gz")
        print(f"  baseline COPY | gzip: {baseline:.2f}s", flush=True)
        child = subprocess.run(
            [sys.executable, "-c", _CHILD, DAY.isoformat()],
            env=os.environ.copy(),
            capture_output=True,
            text=True,
            check=False,
        )
        if child.returncode != 0:
            raise RuntimeError(f"archive run failed: {child.stderr[-2000:]}")
        run = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"  archive: {run}", flush=True)
        if (run["rows"], run["deleted"]) != (ROWS, ROWS):
            raise RuntimeError(f"archived {run['rows']} and deleted {run['deleted']} of {ROWS}")
        engine.dispose()
    label = f"copy_gzip_baseline_s ({ROWS} rows)"
    return [
        Figure("archive_time_ratio", round(run["seconds"] / baseline, 3), "×", target="≤ 2.0"),
        Figure("archive_time_s", round(run["seconds"], 2), "s", label, round(baseline, 2)),
        Figure("archive_peak_rss_mb", round(run["peak_rss_mb"], 1), "MB", target="< 300 MB"),
    ]
