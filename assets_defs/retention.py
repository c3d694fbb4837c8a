"""Retention of the webhook history: `webhook_inbox` and `message_receipts` grow with every
webhook WhatsApp sends, and nothing else removes their rows.

A daily job (not an asset: it produces nothing, it applies `resources.webhook_history`'s
rules) deletes what the rules let go and reports what it kept: events still to be processed
and events failed for good, which `waflow webhook redrive` sends back to processing.
"""

from dataclasses import asdict

import dagster as dg

from resources import settings
from resources.postgres import PostgresResource
from resources.webhook_history import Retention, prune


@dg.op(
    retry_policy=dg.RetryPolicy(max_retries=3, delay=30, backoff=dg.Backoff.EXPONENTIAL),
    tags={"kind": "postgres"},
)
def prune_webhook_history(
    context: dg.OpExecutionContext, postgres: PostgresResource
) -> dg.Output[dict]:
    """Delete settled inbox events and applied receipts older than WEBHOOK_RETENTION_DAYS,
    and unmatched receipts older than RECEIPT_RETENTION_DAYS; never an event still to be
    processed."""
    retention = settings.load(Retention)
    pruned = prune(postgres.engine, retention)
    context.log.info(
        f"pruned {pruned.events} inbox events, {pruned.applied_receipts} applied and"
        f" {pruned.unmatched_receipts} unmatched receipts; kept {pruned.unprocessed_events}"
        f" events still to be processed and {pruned.failed_events} failed for good"
    )
    return dg.Output(
        asdict(pruned),
        metadata={
            "webhook_retention_days": retention.webhook_days,
            "receipt_retention_days": retention.receipt_days,
            "events_pruned": pruned.events,
            "applied_receipts_pruned": pruned.applied_receipts,
            "unmatched_receipts_pruned": pruned.unmatched_receipts,
            "events_unprocessed": pruned.unprocessed_events,
            "events_failed_for_good": pruned.failed_events,
        },
    )


@dg.job(description="Delete the webhook history the retention settings let go.")
def webhook_retention_job() -> None:
    prune_webhook_history()


webhook_retention_schedule = dg.ScheduleDefinition(
    name="webhook_retention_schedule",
    job=webhook_retention_job,
    cron_schedule="30 4 * * *",
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily at 04:30 UTC, after the archives: prune webhook_inbox and message_receipts.",
)


def defs() -> dg.Definitions:
    return dg.Definitions(jobs=[webhook_retention_job], schedules=[webhook_retention_schedule])
