"""One `campaign_media` run in a process of its own, importing what a Dagster run process
imports and nothing of the benchmarks: `python -m tests.bench.media_run CAMPAIGN MEMBERS`
prints its seconds as JSON."""

from __future__ import annotations

import json
import sys
import time

import dagster as dg


def materialize_campaign(campaign_id: str, members: int) -> float:
    """Seconds to materialise `campaign_media` for an existing campaign of `members`."""
    from assets_defs.media import campaign_media
    from pipelines.definitions import resources

    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions("campaigns", [campaign_id])
        started = time.perf_counter()
        result = dg.materialize(
            [campaign_media],
            partition_key=campaign_id,
            resources=resources(),
            instance=instance,
            raise_on_error=True,
        )
        elapsed = time.perf_counter() - started
    metadata = result.asset_materializations_for_node("campaign_media")[0].metadata
    assert metadata["generated"].value == members, metadata
    return elapsed


if __name__ == "__main__":
    seconds = materialize_campaign(sys.argv[1], int(sys.argv[2]))
    sys.stdout.write(json.dumps({"seconds": round(seconds, 2)}) + "\n")
