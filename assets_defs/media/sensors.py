"""Starting and recovering media generation.

`start_media` turns approved campaigns into runs (the campaign sensor calls it each tick):
each gets a `campaigns` partition and `MEDIA_RUNS_PER_CAMPAIGN` runs named by the moment its
generation began, so a campaign approved again later gets a new run and a repeated tick gets
none. `media_recovery_sensor` is seed 1's startup and runtime recovery: members claimed long
ago by a run that is gone go back to `pending`, and a campaign left in `asset_generation`
with no live run is requested again.

Neither keeps a Dagster cursor: the campaign's own status is the mark. A campaign leaves
`approved` in the same statement that selects it, so each is read once, whatever the ticks do.
"""

from dataclasses import dataclass

import dagster as dg
import sqlalchemy as sa

from assets_defs.media.asset import campaign_media, live_runs
from assets_defs.partitions import campaign_partition_key, campaign_partitions
from resources import audience, media_generation, settings
from resources.postgres import PostgresResource

CAMPAIGNS_PER_TICK = 50
# A campaign the campaign sensor just moved has its run created within the same tick; give
# the daemon this long before treating the campaign as orphaned.
ORPHAN_GRACE_SECONDS = 120
# A campaign whose runs keep dying (not its members failing: those are recorded) is failed
# rather than retried for ever.
MAX_FAILED_RUNS = 3


def media_run_requests(partition_key: str, run_key: str) -> list[dg.RunRequest]:
    """`MEDIA_RUNS_PER_CAMPAIGN` runs of the campaign's partition, which share its members
    (each claims its own); the run launcher may start each on a machine of its own."""
    runs = int(settings.number("MEDIA_RUNS_PER_CAMPAIGN"))
    return [
        dg.RunRequest(
            run_key=f"campaign_media:{run_key}" + (f":{slot}" if slot else ""),
            partition_key=partition_key,
            asset_selection=[campaign_media.key],
            # `media_campaign`: the run coordinator allows one live run per value, so one
            # per slot of the campaign.
            tags={"campaign": partition_key, "media_campaign": f"{partition_key}:{slot}"},
        )
        for slot in range(runs)
    ]


@dataclass
class MediaStart:
    """Approved campaigns moved on by one tick: the media runs to request and their
    partitions, and how many went straight to `asset_generated` (no active generator)."""

    run_requests: list[dg.RunRequest]
    partition_keys: list[str]
    without_media: int


def start_media(engine: sa.Engine) -> MediaStart:
    """Approved campaigns: with a generator → `asset_generation` and its `campaign_media` runs;
    without → straight to `asset_generated`."""
    with engine.begin() as conn:
        without_media = media_generation.approve_without_media(conn, CAMPAIGNS_PER_TICK)
        starting = media_generation.begin_generation(conn, CAMPAIGNS_PER_TICK)
    keys = [campaign_partition_key(campaign_id) for campaign_id, _ in starting]
    return MediaStart(
        run_requests=[
            request
            for key, (_, began) in zip(keys, starting, strict=True)
            for request in media_run_requests(key, f"{key}:{began.isoformat()}")
        ],
        partition_keys=keys,
        without_media=len(without_media),
    )


@dg.sensor(
    asset_selection=[campaign_media],
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def media_recovery_sensor(
    context: dg.SensorEvaluationContext, postgres: PostgresResource
) -> dg.SensorResult:
    """Resets members stuck with a run that is gone, and re-requests campaigns left with no
    live run."""
    stuck_minutes = settings.number("MEDIA_STUCK_MINUTES")
    instance = context.instance
    requests = []
    orphans = []
    with postgres.engine.begin() as conn:
        for campaign_id in audience.campaigns_with_stuck_members(conn, stuck_minutes):
            live = [run.run_id for run in live_runs(instance, campaign_id)]
            reset = audience.reset_stuck_members(conn, campaign_id, stuck_minutes, live)
            if reset:
                context.log.info(f"campaign {campaign_id}: {reset} stuck member(s) back to pending")
        generating = media_generation.campaigns_generating(
            conn, ORPHAN_GRACE_SECONDS, CAMPAIGNS_PER_TICK
        )
        for campaign_id, began in generating:
            key = campaign_partition_key(campaign_id)
            if live_runs(instance, campaign_id):
                continue
            failed = instance.get_runs(
                dg.RunsFilter(
                    tags={"dagster/partition": key},
                    statuses=[dg.DagsterRunStatus.FAILURE],
                    created_after=began,
                ),
                limit=MAX_FAILED_RUNS,
            )
            if len(failed) >= MAX_FAILED_RUNS:
                media_generation.fail_generation(
                    conn,
                    campaign_id,
                    f"{MAX_FAILED_RUNS} campaign_media runs failed (last: {failed[0].run_id})",
                )
                continue
            last = instance.get_runs(dg.RunsFilter(tags={"dagster/partition": key}), limit=1)
            # One request per dead run: its id names the next one.
            after = f"after:{last[0].run_id}" if last else "orphaned"
            requests += media_run_requests(key, f"{key}:{after}")
            orphans.append(key)
            context.log.info(f"campaign {key} is in asset_generation with no live run")
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=(
            [campaign_partitions.build_add_request(orphans)] if orphans else []
        ),
    )
