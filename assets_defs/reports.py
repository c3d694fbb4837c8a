"""Delivery reports: what became of each campaign run's messages, refreshed while receipts
arrive, and the checks that surface messages a crashed sender left in `sending` and circuit
breakers that hold sending."""

from datetime import UTC, date, datetime
from uuid import UUID

import dagster as dg

from assets_defs.partitions import campaign_partitions, campaign_run_partitions, run_date_partitions
from resources import breakers, campaign_runs, progress, settings
from resources.messages import Funnel, changed_runs, delivery_funnel, stuck_in_sending
from resources.postgres import PostgresResource

# Rows committed late carry an older `updated_at` than the cursor; re-reading this much
# behind it catches them, and the run_key (run + last change) keeps repeats from re-running.
CURSOR_OVERLAP_SECONDS = 60


def _funnel_table(funnel: Funnel) -> dg.TableMetadataValue:
    queued = funnel.stages["queued"] or 1
    return dg.MetadataValue.table(
        records=[
            dg.TableRecord(
                {"stage": stage, "messages": count, "share": f"{100 * count / queued:.1f}%"}
            )
            for stage, count in funnel.stages.items()
        ],
        schema=dg.TableSchema(
            columns=[
                dg.TableColumn("stage", "string"),
                dg.TableColumn("messages", "int"),
                dg.TableColumn("share", "string", description="of queued"),
            ]
        ),
    )


def _failures_table(funnel: Funnel) -> dg.TableMetadataValue:
    return dg.MetadataValue.table(
        records=[
            dg.TableRecord({"error_code": code, "title": title, "messages": count})
            for code, title, count in funnel.failed_by_code
        ],
        schema=dg.TableSchema(
            columns=[
                dg.TableColumn("error_code", "string"),
                dg.TableColumn("title", "string"),
                dg.TableColumn("messages", "int"),
            ]
        ),
    )


def _waiting_table(waiting: list[dict]) -> dg.TableMetadataValue:
    """What the messages not yet final wait for (see `resources.progress`)."""
    return dg.MetadataValue.table(
        records=[
            dg.TableRecord(
                {
                    "reason": wait["reason"],
                    "messages": wait["messages"],
                    "detail": ", ".join(
                        f"{key} {value}"
                        for key, value in wait.items()
                        if key not in ("reason", "messages") and value is not None
                    ),
                }
            )
            for wait in waiting
        ],
        schema=dg.TableSchema(
            columns=[
                dg.TableColumn("reason", "string"),
                dg.TableColumn("messages", "int"),
                dg.TableColumn("detail", "string"),
            ]
        ),
    )


def _bar_chart(funnel: Funnel) -> str:
    widest = max(funnel.stages.values()) or 1
    lines = [
        f"{stage:<9} {'█' * round(30 * count / widest):<30} {count}"
        for stage, count in funnel.stages.items()
    ]
    return "```\n" + "\n".join(lines) + "\n```"


@dg.asset(
    partitions_def=campaign_run_partitions,
    # The same campaign run's messages, as dispatch recorded them and receipts moved them.
    deps=[dg.AssetDep("dispatched_batches", partition_mapping=dg.IdentityPartitionMapping())],
    group_name="reports",
    kinds={"postgres"},
    owners=["team:campaigns"],
)
def campaign_delivery_report(
    context: dg.AssetExecutionContext, postgres: PostgresResource
) -> dg.MaterializeResult:
    """The funnel of one campaign run: queued → sent → delivered → read, failures by error
    code, and recipients who replied."""
    keys = context.partition_key.keys_by_dimension
    with postgres.engine.connect() as conn:
        run_id = campaign_runs.run_id_of(
            conn, UUID(keys["campaign"]), date.fromisoformat(keys["date"])
        )
        if run_id is None:
            raise dg.Failure(
                f"campaign {keys['campaign']} has no run on {keys['date']}: nothing to report"
            )
        funnel = delivery_funnel(conn, run_id)
        waits = progress.run_progress(conn, run_id, settings.number("SENDER_STUCK_AFTER_SECONDS"))
    return dg.MaterializeResult(
        metadata={
            "campaign_run_id": run_id,
            **{stage: dg.MetadataValue.int(count) for stage, count in funnel.stages.items()},
            "funnel": _funnel_table(funnel),
            "failed_by_code": _failures_table(funnel),
            "waiting": _waiting_table(waits["waiting"]),
            "estimated_finish_at": dg.MetadataValue.text(
                waits["estimated_finish_at"]
                or ("not while a breaker or a pause holds messages" if waits["waiting"] else "done")
            ),
            "chart": dg.MetadataValue.md(_bar_chart(funnel)),
        }
    )


@dg.asset_check(asset=campaign_delivery_report, blocking=False)
def messages_stuck_in_sending(postgres: PostgresResource) -> dg.AssetCheckResult:
    """Rows a sender left in `sending` longer than `SENDER_STUCK_AFTER_SECONDS`: never re-sent
    automatically (the request may have reached WhatsApp); an operator has to look."""
    threshold = settings.number("SENDER_STUCK_AFTER_SECONDS")
    with postgres.engine.connect() as conn:
        stuck = stuck_in_sending(conn, threshold)
    return dg.AssetCheckResult(
        passed=not stuck,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "stuck_messages": len(stuck),
            "message_ids": dg.MetadataValue.text(", ".join(str(s.id) for s in stuck[:50])),
            "listing": dg.MetadataValue.text("waflow sender-stuck"),
        },
    )


@dg.asset_check(asset=campaign_delivery_report, blocking=False)
def no_open_circuit_breakers(postgres: PostgresResource) -> dg.AssetCheckResult:
    """Fails while a circuit breaker holds sending: an error about the access token, the
    account, a phone number or a template stopped a scope. Rate limits close by themselves
    after a probe; the rest need the cause fixed and `POST /api/breakers/{id}/reset`."""
    with postgres.engine.connect() as conn:
        found = breakers.listing(conn)
    return dg.AssetCheckResult(
        passed=not found,
        metadata={
            "open_breakers": len(found),
            "breakers": dg.MetadataValue.table(
                records=[
                    dg.TableRecord(
                        {
                            "id": b["id"],
                            "scope": f"{b['scope']} {b['scope_key']}",
                            "error": f"{b['error_code']} {b['error_title'] or ''}".strip(),
                            "closes_by": b["closes_by"],
                            "held_messages": b["held_messages"],
                        }
                    )
                    for b in found
                ],
                schema=dg.TableSchema(
                    columns=[
                        dg.TableColumn("id", "int"),
                        dg.TableColumn("scope", "string"),
                        dg.TableColumn("error", "string"),
                        dg.TableColumn("closes_by", "string"),
                        dg.TableColumn("held_messages", "int"),
                    ]
                ),
            ),
        },
    )


@dg.sensor(
    asset_selection=[campaign_delivery_report],
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def campaign_delivery_report_sensor(
    context: dg.SensorEvaluationContext, postgres: PostgresResource
) -> dg.SensorResult:
    """Re-materialise the report of every campaign run whose messages changed (sends and
    receipts both touch `messages.updated_at`); one run per run and change."""
    since = (
        datetime.fromisoformat(context.cursor)
        if context.cursor
        else datetime(1970, 1, 1, tzinfo=UTC)
    )
    first_day = date.fromisoformat(run_date_partitions.get_first_partition_key())
    last_day = date.fromisoformat(run_date_partitions.get_last_partition_key())
    with postgres.engine.connect() as conn:
        changed = changed_runs(conn, since, CURSOR_OVERLAP_SECONDS, first_day, last_day)
    if not changed:
        return dg.SensorResult(skip_reason="no message changed since the last tick")
    campaigns = sorted({str(row.campaign_id) for row in changed})
    missing = [c for c in campaigns if not context.instance.has_dynamic_partition("campaigns", c)]
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(
                partition_key=dg.MultiPartitionKey(
                    {"campaign": str(row.campaign_id), "date": row.run_date.isoformat()}
                ),
                run_key=f"delivery-report-{row.id}-{row.changed_at.isoformat()}",
            )
            for row in changed
        ],
        dynamic_partitions_requests=[campaign_partitions.build_add_request(missing)]
        if missing
        else [],
        cursor=max(max(row.changed_at for row in changed), since).isoformat(),
    )


def defs() -> dg.Definitions:
    return dg.Definitions(
        assets=[campaign_delivery_report],
        asset_checks=[messages_stuck_in_sending, no_open_circuit_breakers],
        sensors=[campaign_delivery_report_sensor],
    )
