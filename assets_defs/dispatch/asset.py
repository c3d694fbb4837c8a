"""`dispatched_batches`: one campaign run's messages on the SQS queue, partitioned by campaign
and run date, with the check that every eligible member was queued, failed or skipped."""

from datetime import date
from uuid import UUID

import dagster as dg

from assets_defs.dispatch.dispatcher import (
    AttemptStats,
    Dispatch,
    Halted,
    RunCounts,
    run_counts,
)
from assets_defs.partitions import campaign_run_partitions
from resources import campaign_runs as runs
from resources import settings
from resources.campaigns import campaign_spec
from resources.postgres import PostgresResource
from resources.queue import SQSResource
from resources.queue_message import MediaUrl
from resources.storage import S3Storage

ACCOUNTED_CHECK = "every_member_accounted_for"


def media_url_builder(s3: S3Storage) -> MediaUrl:
    """Public base URL + key when `MEDIA_PUBLIC_BASE_URL` is set, else a presigned URL."""
    base = settings.get("MEDIA_PUBLIC_BASE_URL")
    if base:
        return lambda key: f"{base.rstrip('/')}/{key.lstrip('/')}"
    expires_in = settings.number("MEDIA_URL_EXPIRY_SECONDS")
    return lambda key: s3.presigned_url(key, expires_in)


def partition_of(context: dg.AssetExecutionContext) -> tuple[UUID, date]:
    key = context.partition_key
    if not isinstance(key, dg.MultiPartitionKey):
        raise dg.Failure(f"expected a campaign × date partition, got {key!r}")
    dimensions = key.keys_by_dimension
    try:
        campaign_id = UUID(dimensions["campaign"])
    except ValueError:
        raise dg.Failure(f"partition {key!r} is not of a campaign id") from None
    return campaign_id, date.fromisoformat(dimensions["date"])


@dg.asset(
    partitions_def=campaign_run_partitions,
    # What the lineage shows, not an order: the sensor launches a run while its campaign's
    # media are still being made, and it sends each member as the member's media are ready.
    deps=[
        dg.AssetDep(
            "campaign_media",
            partition_mapping=dg.MultiToSingleDimensionPartitionMapping(
                partition_dimension_name="campaign"
            ),
        ),
        # Meta's name, language and category of the template it sends.
        dg.AssetDep("whatsapp_templates"),
    ],
    check_specs=[dg.AssetCheckSpec(ACCOUNTED_CHECK, asset="dispatched_batches")],
    retry_policy=dg.RetryPolicy(
        max_retries=3, delay=10, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
    ),
    pool="sqs_dispatch",
    group_name="dispatch",
    kinds={"sqs", "postgres"},
    owners=["team:campaigns"],
)
def dispatched_batches(
    context: dg.AssetExecutionContext,
    postgres: PostgresResource,
    sqs: SQSResource,
    s3: S3Storage,
) -> dg.MaterializeResult:
    """Every eligible member of the campaign run gets one message row and one SQS payload
    (or is failed / skipped with its reason); re-running the partition sends nothing twice."""
    campaign_id, run_date = partition_of(context)
    engine = postgres.engine
    with engine.begin() as conn:
        try:
            run = runs.record_run(conn, campaign_id, run_date)
        except runs.CannotRun as error:
            raise dg.Failure(str(error)) from None
    stopped_by = None
    with runs.dispatch_lock(engine, run.id):
        try:
            with engine.begin() as conn:
                runs.start_run(conn, run)
                spec = campaign_spec(conn, campaign_id, settings.get("WHATSAPP_PHONE_NUMBER_ID"))
        except runs.Stopped as error:
            return _stopped(context, run.id, error.status, None)
        except runs.CannotRun as error:
            raise dg.Failure(str(error)) from None
        dispatch = Dispatch(
            engine,
            sqs,
            spec,
            run.id,
            media_url_builder(s3),
            concurrency=settings.number("DISPATCH_CONCURRENCY"),
            retry_seconds=settings.number("DISPATCH_SQS_RETRY_SECONDS"),
            media_poll_seconds=settings.number("DISPATCH_MEDIA_POLL_SECONDS"),
            log=context.log.info,
        )
        try:
            stats = dispatch.run()
        except Halted as halted:
            stopped_by, stats = halted.status, dispatch.stats
            with engine.begin() as conn:
                runs.stop_run(conn, run.id, halted.status)
        except Exception as error:
            with engine.begin() as conn:
                runs.fail_run(conn, run.id, f"{type(error).__name__}: {error}")
            raise
        with engine.begin() as conn:
            if stopped_by is None:
                # It may have started while the media were being made: they are ready now.
                runs.launch_ready(conn, campaign_id)
            counts = run_counts(conn, campaign_id, run.id)
            if stopped_by is None:
                runs.finish_run(conn, run, counts.queued, counts.failed, counts.skipped)
    if stopped_by is not None:
        return _stopped(context, run.id, stopped_by, counts, stats)
    depth = sqs.depth()
    accounted = counts.queued + counts.failed + counts.skipped
    return dg.MaterializeResult(
        metadata={
            "campaign_run_id": run.id,
            "outcome": "dispatched",
            "category": spec.category,
            "queued": counts.queued,
            "failed": counts.failed,
            "skipped": counts.skipped,
            "eligible": counts.eligible,
            "sent_during_run": counts.sent,
            "batches": stats.batches,
            # Over the time spent dispatching, without the waits for media.
            "messages_per_second": dg.MetadataValue.float(
                round(stats.sent / stats.seconds, 1) if stats.seconds else 0.0
            ),
            "started_during_media": stats.started_during_media,
            "media_wait_s": dg.MetadataValue.float(round(stats.media_wait_seconds, 1)),
            "queue_depth_after": depth.visible,
            "queue_in_flight_after": depth.in_flight,
            "dead_letter_depth_after": depth.dead_letter,
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=ACCOUNTED_CHECK,
                passed=accounted == counts.eligible,
                metadata={"accounted": accounted, "eligible": counts.eligible},
                description="queued + failed + skipped = eligible members",
            )
        ],
    )


def _stopped(
    context: dg.AssetExecutionContext,
    run_id: int,
    status: str,
    counts: RunCounts | None,
    stats: AttemptStats | None = None,
) -> dg.MaterializeResult:
    """The run stopped because its campaign was paused, cancelled or failed (its media
    failure threshold crossed while it sent): say how far it got, and how many messages
    were already sent. A paused run is launched again when the campaign resumes, and goes
    on from there."""
    what = "waits for the campaign to resume" if status == "paused" else "ends with the campaign"
    context.log.info(f"campaign run {run_id}: campaign {status}; the run {what}")
    accounted = counts.queued + counts.failed + counts.skipped if counts else 0
    return dg.MaterializeResult(
        metadata={
            "campaign_run_id": run_id,
            "outcome": f"stopped: campaign {status}",
            "queued": counts.queued if counts else 0,
            "already_sent": counts.sent if counts else 0,
            "failed": counts.failed if counts else 0,
            "skipped": counts.skipped if counts else 0,
            "eligible": counts.eligible if counts else 0,
            "started_during_media": bool(stats and stats.started_during_media),
        },
        check_results=[
            dg.AssetCheckResult(
                check_name=ACCOUNTED_CHECK,
                passed=False,
                severity=dg.AssetCheckSeverity.WARN,
                metadata={"accounted": accounted, "eligible": counts.eligible if counts else 0},
                description=f"campaign {status} before every member was accounted for",
            )
        ],
    )
