"""`whatsapp_templates`: every organisation's message templates as Meta has them.

A template's status, category, quality score and components are Meta's decision, not
ours: this asset reads them from each organisation's WhatsApp Business account
(`resources.templates`, which `waflow templates sync` and the operator API's sync route
call too), on a schedule and on demand, with each organisation's phone numbers' status
(`resources.account.refresh_numbers`). Its checks fail while an active campaign relies on a
template Meta does not let it send, or on a configuration that does not fit Meta's
template: such campaigns would otherwise find out one failed message at a time.
"""

import dagster as dg

from resources import account, settings, templates
from resources.postgres import PostgresResource
from resources.whatsapp import WhatsAppResource

TABLE_ROWS = 500


def _table(rows: list[dict]) -> dg.TableMetadataValue:
    return dg.MetadataValue.table(
        records=[
            dg.TableRecord(
                {
                    "organisation": r["organisation"],
                    "template": r["name"],
                    "language": r["language"],
                    "status": r["status"],
                    "reason": r["status_reason"] or r["rejected_reason"] or "",
                    "category": r["category"],
                    "quality": r["quality_score"] or "",
                    "header": r["header_format"] or "",
                    "body_parameters": r["body_parameters"],
                    "at_meta": r["at_meta"],
                    "problems": "; ".join(r["config_problems"]),
                }
            )
            for r in rows
        ],
        schema=dg.TableSchema(
            columns=[
                dg.TableColumn("organisation", "string"),
                dg.TableColumn("template", "string"),
                dg.TableColumn("language", "string"),
                dg.TableColumn("status", "string", description="Meta's, or ours if local"),
                dg.TableColumn("reason", "string"),
                dg.TableColumn("category", "string"),
                dg.TableColumn("quality", "string"),
                dg.TableColumn("header", "string", description="Meta's header format"),
                dg.TableColumn("body_parameters", "int", description="in Meta's body"),
                dg.TableColumn("at_meta", "bool", description="listed by the last sync"),
                dg.TableColumn("problems", "string", description="our parameters vs Meta's"),
            ]
        ),
    )


@dg.asset(
    group_name="whatsapp",
    kinds={"whatsapp", "postgres"},
    owners=["team:campaigns"],
    description=(
        "Every organisation's message templates as Meta has them (status, category, quality"
        " score, components, rejection reason), read from its WhatsApp Business account:"
        " GET /{waba-id}/message_templates, every page, applied per organisation in one"
        " transaction."
    ),
)
def whatsapp_templates(
    context: dg.AssetExecutionContext, postgres: PostgresResource, whatsapp: WhatsAppResource
) -> dg.MaterializeResult:
    """Sync the templates of every organisation that has a WABA. An organisation whose read
    fails keeps what it had; the others are synced, and the run then fails with the Graph
    API's error code and title."""
    client = whatsapp.client
    with postgres.engine.connect() as conn:
        organisations = templates.organisations(conn)
    synced: list[templates.SyncResult] = []
    failed: list[templates.SyncFailed] = []
    numbers: list[dict] = []
    note = None
    try:
        if organisations and client.dev_mode:
            note = (
                "dev mode (no WHATSAPP_ACCESS_TOKEN): cannot read templates from Meta;"
                " nothing was changed"
            )
            context.log.warning(note)
        else:
            for organisation in organisations:
                try:
                    synced.append(
                        templates.sync_organisation(postgres.engine, client, organisation.id)
                    )
                except templates.SyncFailed as error:
                    context.log.error(str(error))
                    failed.append(error)
                # The numbers' throughput, quality and name status, read with the templates.
                numbers += account.refresh_numbers(postgres.engine, client, organisation.id)
    finally:
        client.close()
    with postgres.engine.connect() as conn:
        rows = templates.listing(conn, TABLE_ROWS)
        by_status = templates.counts_by_status(conn)
    metadata = {
        "organisations": len(organisations),
        "organisations_synced": len(synced),
        "templates_listed": sum(r.templates for r in synced),
        "created": sum(r.created for r in synced),
        "updated": sum(r.updated for r in synced),
        "no_longer_listed": sum(r.removed for r in synced),
        "mismatched": sum(r.mismatched for r in synced),
        "webhook_events_applied": sum(r.events_applied for r in synced),
        "breakers_opened": sum(len(r.breakers_opened) for r in synced),
        "breakers_closed": sum(len(r.breakers_closed) for r in synced),
        "phone_numbers_read": sum("error" not in n for n in numbers),
        "phone_numbers_unread": sum("error" in n for n in numbers),
        "by_status": dg.MetadataValue.json(by_status),
        "templates": _table(rows),
    }
    if note:
        metadata["note"] = dg.MetadataValue.text(note)
    if failed:
        raise dg.Failure(
            description="; ".join(
                f"Graph API error {e.code}: {e.title} (WABA {e.waba_id}, organisation"
                f" {e.organisation_id}; nothing of it was changed)"
                for e in failed
            ),
            metadata={
                **metadata,
                "error_codes": dg.MetadataValue.text(", ".join(str(e.code) for e in failed)),
            },
        )
    return dg.MaterializeResult(metadata=metadata)


@dg.asset_check(asset=whatsapp_templates, blocking=False)
def active_campaigns_use_approved_templates(postgres: PostgresResource) -> dg.AssetCheckResult:
    """Fails while a campaign between approval and its end (approved … running, or paused)
    uses a template Meta has not APPROVED (paused, disabled, rejected, deleted, …): its
    messages would be held or fail. In development a locally declared `approved` passes."""
    with postgres.engine.connect() as conn:
        found = templates.active_campaigns_on_unsendable_templates(conn, settings.is_production())
    return dg.AssetCheckResult(
        passed=not found,
        metadata={
            "campaigns": len(found),
            "listing": dg.MetadataValue.table(
                records=[
                    dg.TableRecord(
                        {
                            "campaign": f"{u.campaign} ({u.campaign_id})",
                            "campaign_status": u.campaign_status,
                            "template": f"{u.template} ({u.language})",
                            "template_status": u.status,
                        }
                    )
                    for u in found[:TABLE_ROWS]
                ],
                schema=dg.TableSchema(
                    columns=[
                        dg.TableColumn("campaign", "string"),
                        dg.TableColumn("campaign_status", "string"),
                        dg.TableColumn("template", "string"),
                        dg.TableColumn("template_status", "string"),
                    ]
                ),
            ),
        },
    )


@dg.asset_check(asset=whatsapp_templates, blocking=False)
def templates_fit_meta(postgres: PostgresResource) -> dg.AssetCheckResult:
    """Warns while a template that a campaign uses (a draft, or one not yet over) has
    parameters that do not fit Meta's components (body parameter count, media header): its
    sends would fail with 132000 or 132012, and approval refuses the campaign. Fix the
    parameters with PATCH /api/templates/{id}. (The table shows every template's problems,
    including those of templates no campaign uses yet.)"""
    with postgres.engine.connect() as conn:
        rows = templates.in_use_with_problems(conn, TABLE_ROWS)
    return dg.AssetCheckResult(
        passed=not rows,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "templates": len(rows),
            "problems": dg.MetadataValue.md(
                "\n".join(
                    f"- `{r['name']}` ({r['language']}, id {r['id']}): {p}"
                    for r in rows
                    for p in r["config_problems"]
                )
                or "none"
            ),
        },
    )


whatsapp_templates_job = dg.define_asset_job(
    "whatsapp_templates_job", selection=[whatsapp_templates]
)


def whatsapp_templates_schedule() -> dg.ScheduleDefinition:
    """Built when the code location loads, not at import: its cron is a setting."""
    cron = settings.get("TEMPLATE_SYNC_CRON")
    try:
        return dg.ScheduleDefinition(
            name="whatsapp_templates_schedule",
            job=whatsapp_templates_job,
            cron_schedule=cron,
            execution_timezone="UTC",
            default_status=dg.DefaultScheduleStatus.RUNNING,
            description="Sync every organisation's templates from Meta (TEMPLATE_SYNC_CRON).",
        )
    except dg.DagsterInvalidDefinitionError:
        raise settings.InvalidSetting(
            "TEMPLATE_SYNC_CRON must be a cron expression of five fields, e.g. '0 * * * *'"
        ) from None


def defs() -> dg.Definitions:
    return dg.Definitions(
        assets=[whatsapp_templates],
        asset_checks=[active_campaigns_use_approved_templates, templates_fit_meta],
        jobs=[whatsapp_templates_job],
        schedules=[whatsapp_templates_schedule()],
    )
