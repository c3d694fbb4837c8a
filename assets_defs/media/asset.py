"""`campaign_media`: every audience member's personalised media in S3, one partition per campaign.

The asset check runs with each materialisation and compares the members' recorded keys
with what the bucket holds, so a lost or emptied bucket shows up in the UI.
"""

from uuid import UUID

import dagster as dg
import sqlalchemy as sa

from assets_defs.media.runner import CampaignMediaRun, Policy, Report, media_prefix
from assets_defs.partitions import campaign_partition_key, campaign_partitions
from resources import audience, settings
from resources.campaigns import campaign_exists
from resources.postgres import PostgresResource
from resources.sandbox.pool import Limits
from resources.storage import S3Storage

OBJECTS_CHECK = "all_objects_in_s3"
LIVE_RUN_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def live_runs(instance: dg.DagsterInstance, campaign_id: UUID) -> list[dg.DagsterRun]:
    """Runs of this campaign's partition that are queued or running."""
    return list(
        instance.get_runs(
            dg.RunsFilter(
                statuses=LIVE_RUN_STATUSES,
                tags={"dagster/partition": campaign_partition_key(campaign_id)},
            )
        )
    )


@dg.asset(
    partitions_def=campaign_partitions,
    pool="media_generation",
    group_name="media",
    kinds={"python", "s3", "postgres"},
    owners=["team:campaigns"],
    check_specs=[
        dg.AssetCheckSpec(
            OBJECTS_CHECK,
            asset="campaign_media",
            description="Every member with media has all of its objects in the bucket.",
        )
    ],
)
def campaign_media(
    context: dg.AssetExecutionContext, postgres: PostgresResource, s3: S3Storage
) -> dg.MaterializeResult:
    """Personalised media for every member of the campaign, rendered by the template's
    active generator in the sandbox and stored under `campaigns/<campaign>/<member>/`."""
    try:
        campaign_id = UUID(context.partition_key)
    except ValueError:
        raise dg.Failure(f"partition {context.partition_key!r} is not a campaign id") from None
    with postgres.engine.connect() as conn:
        exists = campaign_exists(conn, campaign_id)
    if not exists:
        raise dg.Failure(f"campaign {campaign_id} does not exist")
    run = CampaignMediaRun(
        postgres.engine,
        s3,
        campaign_id,
        settings.load(Limits),
        settings.load(Policy),
        context.log.info,
        context.log.warning,
    )
    # Sibling runs (MEDIA_RUNS_PER_CAMPAIGN) keep their claims; a dead run's go back.
    report = run.run(
        context.run.run_id, [r.run_id for r in live_runs(context.instance, campaign_id)]
    )
    if report.released:
        context.log.info(f"{report.released} members claimed by a dead run went back to pending")
    return dg.MaterializeResult(
        metadata=report_metadata(report, s3.bucket),
        check_results=[objects_check(postgres.engine, s3, campaign_id)],
    )


def report_metadata(report: Report, bucket: str) -> dict[str, dg.MetadataValue]:
    completion = report.completion
    metadata: dict[str, dg.MetadataValue] = {
        "campaign_status": dg.MetadataValue.text(completion.status if completion else "unknown"),
        "members": dg.MetadataValue.int(report.total),
        "generated": dg.MetadataValue.int(report.generated),
        "failed": dg.MetadataValue.int(report.failed),
        "retried": dg.MetadataValue.int(report.retried),
        "duration_s": dg.MetadataValue.float(round(report.seconds, 2)),
        "members_per_s": dg.MetadataValue.float(round(report.members_per_second, 2)),
        "s3_prefix": dg.MetadataValue.path(f"s3://{bucket}/{media_prefix(report.campaign_id)}"),
        "generator_versions": dg.MetadataValue.text(
            ", ".join(str(v) for v in sorted(report.versions)) or "none"
        ),
        "first_failures": dg.MetadataValue.table(
            records=[
                dg.TableRecord({"member": member, "attempts": attempts, "error": error[:300]})
                for member, attempts, error in report.failures
            ],
            schema=dg.TableSchema(
                columns=[
                    dg.TableColumn("member", "string"),
                    dg.TableColumn("attempts", "int"),
                    dg.TableColumn("error", "string"),
                ]
            ),
        ),
    }
    if completion and completion.failure_ratio is not None:
        metadata["failure_ratio"] = dg.MetadataValue.float(round(completion.failure_ratio, 4))
    if completion and completion.reason:
        metadata["status_reason"] = dg.MetadataValue.text(completion.reason)
    if report.preview:
        metadata["preview"] = dg.MetadataValue.md(
            f"![one generated image](data:image/jpeg;base64,{report.preview})"
        )
    return metadata


def objects_check(engine: sa.Engine, s3: S3Storage, campaign_id: UUID) -> dg.AssetCheckResult:
    """Every member whose media were generated has each recorded object in the bucket.

    Lists the campaign's prefix once and streams the members' keys against it, so the
    check costs a few requests per thousand members."""
    stored: set[str] = set()
    pages = s3.client.get_paginator("list_objects_v2").paginate(
        Bucket=s3.bucket, Prefix=media_prefix(campaign_id)
    )
    for page in pages:
        stored.update(item["Key"] for item in page.get("Contents", ()))
    checked = missing = 0
    examples: list[str] = []
    with engine.connect() as conn:
        for member_id, keys in audience.generated_media(conn, campaign_id):
            checked += 1
            absent = [key for key in keys.values() if key not in stored]
            if not keys:
                absent = [f"{member_id}: no media recorded"]
            missing += bool(absent)
            if absent and len(examples) < 10:
                examples.append(absent[0])
    return dg.AssetCheckResult(
        check_name=OBJECTS_CHECK,
        asset_key="campaign_media",
        passed=missing == 0,
        metadata={
            "members_checked": dg.MetadataValue.int(checked),
            "members_missing_objects": dg.MetadataValue.int(missing),
            "examples": dg.MetadataValue.text("\n".join(examples) or "none"),
        },
    )
