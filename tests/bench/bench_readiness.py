"""The approval check over a real-sized audience.

- `readiness_check_ms`: `resources.readiness.check` of a 100,000-member template campaign
  whose parameters read the contact's name, a member attribute (missing for 1 % of the
  members) and a literal; every number is checked too. Baseline, same run: reading the
  columns those checks need for every member into Python, the least a check made member by
  member would do before checking anything. Best of five of each.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from tests.bench import Figure, benchmark
from tests.bench.bench_dispatch import bench_campaign

MEMBERS = int(os.environ.get("BENCH_READINESS_MEMBERS", "100000"))
ROUNDS = 5


def _with_an_attribute(engine: sa.Engine, campaign_id: str) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE templates SET parameters = parameters || CAST(:p AS jsonb)"
                " WHERE id = (SELECT template_id FROM campaigns WHERE id = :c)"
            ),
            {
                "c": campaign_id,
                "p": '[{"type": "body", "valueType": "text", "source": "attributes.offer"}]',
            },
        )
        conn.execute(
            sa.text(
                'UPDATE campaign_audience SET attributes = \'{"offer": "10%"}\''
                " WHERE campaign_id = :c AND right(msisdn, 2) <> '00'"
            ),
            {"c": campaign_id},
        )
        conn.execute(sa.text("ANALYZE campaign_audience"))


def _best(measure) -> float:
    times = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        measure()
        times.append(time.perf_counter() - started)
    return min(times) * 1000


@benchmark("readiness")
def readiness() -> list[Figure]:
    from pipelines.dev.local_stack import local_stack
    from resources import readiness as checks
    from resources.postgres import PostgresResource

    for name in ("DATABASE_URL", "DAGSTER_HOME", "DAGSTER_POSTGRES_URL", "APP_ENV"):
        os.environ.pop(name, None)
    with tempfile.TemporaryDirectory() as state, local_stack(Path(state)):
        engine = PostgresResource.from_settings().engine
        campaign = bench_campaign(engine, MEMBERS)
        _with_an_attribute(engine, campaign)

        def check() -> None:
            with engine.connect() as conn:
                report = checks.check(conn, campaign, production=False)
            missing = [p for p in report.problems if p.field == "template.parameters[2]"]
            assert [p.count for p in missing] == [MEMBERS // 100], report.summary()

        def read_all() -> None:
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.text(
                        "SELECT a.id, a.msisdn, a.name, a.attributes, ct.name, ct.attributes"
                        " FROM campaign_audience a LEFT JOIN contacts ct ON ct.id = a.contact_id"
                        " WHERE a.campaign_id = :c"
                    ),
                    {"c": campaign},
                ).all()
            assert len(rows) == MEMBERS

        checked, baseline = _best(check), _best(read_all)
        engine.dispose()
    print(f"{MEMBERS:,} members: check {checked:.0f} ms, reading them all {baseline:.0f} ms")
    return [
        Figure(
            "readiness_check_ms",
            round(checked, 1),
            "ms",
            "read_audience_into_python_ms",
            round(baseline, 1),
            f"well under 1 s at {MEMBERS:,} members",
        )
    ]
