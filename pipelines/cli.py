"""`waflow`: the platform's command line (migrate, run the local stack, demo, workers).

Expected failures (a bad setting, an unreachable server, a port in use) print one line
naming the cause and exit 1 (`pipelines.errors`); tracebacks are for bugs.

A command imports inside its function what only it uses and what would slow every other
command's start, and `waflow --help`: Dagster (every client in `resources` is a Dagster
resource, and the asset families are Dagster code), the webhook worker's LangGraph and
Starlette, uvicorn. Each such import names what it brings in.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path
from typing import Any
from uuid import UUID

import sqlalchemy as sa

from pipelines import cli_help
from pipelines.dev.local_stack import local_stack
from pipelines.errors import explain
from resources import logs, settings
from resources.messages import stuck_in_sending

# What a command needs in production (`check_settings`), or that it runs in development only.
DEVELOPMENT_ONLY = ("development only",)


def _state_dir(args: argparse.Namespace) -> Path:
    return Path(args.state_dir or settings.get("STATE_DIR"))


def cmd_migrate(args: argparse.Namespace) -> int:
    with local_stack(_state_dir(args)) as stack:
        print(
            f"schema at version {stack.schema_version}; applied now: {stack.migrated or 'nothing'}"
        )
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    # Brings in Dagster (see the module docstring).
    from pipelines.dev.processes import run_dev

    return run_dev(_state_dir(args))


def cmd_load_demo(args: argparse.Namespace) -> int:
    # Brings in Dagster (see the module docstring).
    from pipelines.dev.demo import load_demo
    from resources.postgres import PostgresResource

    with local_stack(_state_dir(args)):
        print(load_demo(PostgresResource.from_settings().engine))
    return 0


def cmd_sender(args: argparse.Namespace) -> int:
    # Brings in Dagster (see the module docstring).
    from pipelines.sender.service import run

    stats = run(drain=args.drain)
    print(" ".join(f"{key}={value}" for key, value in sorted(stats.items())) or "nothing to send")
    return 0


def cmd_webhook_worker(args: argparse.Namespace) -> int:
    # Brings in LangGraph, Starlette and Dagster (see the module docstring).
    from webhook_app.workers import run

    logs.configure("webhook-worker")
    run()
    return 0


def cmd_webhook_app(args: argparse.Namespace) -> int:
    """The webhook app under uvicorn, its logs (and uvicorn's) set up as every process's."""
    # Brings in uvicorn (see the module docstring).
    import uvicorn

    logs.configure("webhook-app")
    uvicorn.run(
        "webhook_app.app:app",
        host=args.host,
        port=args.port,
        log_config=None,
        proxy_headers=True,
        forwarded_allow_ips=args.forwarded_allow_ips,
    )
    return 0


def cmd_sender_stuck(args: argparse.Namespace) -> int:
    # Brings in Dagster (see the module docstring).
    from resources.postgres import PostgresResource

    engine = PostgresResource.from_settings().engine
    threshold = (
        args.older_than
        if args.older_than is not None
        else settings.number("SENDER_STUCK_AFTER_SECONDS")
    )
    with engine.connect() as conn:
        rows = stuck_in_sending(conn, threshold)
    engine.dispose()
    for row in rows:
        print(
            f"message {row.id}\trun {row.campaign_run_id}\tcontact {row.contact_id}"
            f"\tsending since {row.sending_at.isoformat()}\tattempts {row.attempts}"
        )
    print(f"{len(rows)} message(s) in sending for more than {threshold:g} s", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    # Brings in Dagster (see the module docstring).
    from pipelines.dev.demo import print_summary, run_demo

    print_summary(run_demo(Path(args.state_dir) if args.state_dir else None))
    return 0


def cmd_archive_restore(args: argparse.Namespace) -> int:
    # Brings in Dagster (see the module docstring).
    from assets_defs.archive.restore import parse_day, restore_range
    from resources.postgres import PostgresResource
    from resources.storage import S3Storage

    first, last = parse_day(args.first), parse_day(args.last)
    with local_stack(_state_dir(args)):
        result = restore_range(
            PostgresResource.from_settings().engine, S3Storage.from_settings(), first, last
        )
    print(
        f"restored {result.rows_inserted} of {result.rows_in_archive} archived messages"
        f" ({result.days} days, {result.files} files; the rest were already there)"
    )
    return 0


def cmd_archive_setup(args: argparse.Namespace) -> int:
    # Brings in Dagster (see the module docstring).
    from assets_defs.archive.lifecycle import apply_lifecycle_rules
    from resources.storage import S3Storage

    with local_stack(_state_dir(args)):
        storage = S3Storage.from_settings()
        rules = apply_lifecycle_rules(storage)
    print(f"bucket {storage.bucket}: {len(rules)} lifecycle rules in force")
    return 0


@contextmanager
def _platform_engine(args: argparse.Namespace) -> Iterator[sa.Engine]:
    """The platform database: `DATABASE_URL` when set (e.g. the one `make dev` runs),
    else the embedded stack in the state folder."""
    # Brings in Dagster (see the module docstring).
    from resources.postgres import PostgresResource

    if os.environ.get("DATABASE_URL"):
        postgres = PostgresResource.from_settings()
        postgres.migrate()
        yield postgres.engine
        postgres.engine.dispose()
        return
    with local_stack(_state_dir(args)):
        postgres = PostgresResource.from_settings()
        yield postgres.engine
        postgres.engine.dispose()


def _read_json(path: str) -> dict[str, Any]:
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    return json.loads(text)


def cmd_campaigns(args: argparse.Namespace) -> int:
    """The operator API's operations, printed as the API answers them
    (`webhook_app.campaign_answers`)."""
    # Brings in Dagster (see the module docstring).
    from resources import campaign_control as control
    from resources import campaigns, consent, operator_templates, organisations
    from resources.campaign_runs import campaign_progress
    from resources.fields import uuid_of
    from resources.queue import SQSResource
    from webhook_app import campaign_answers as answers
    from webhook_app.campaign_answers import jsonable

    def campaign() -> UUID:
        """The command's campaign id, refused as the API refuses it."""
        return uuid_of(args.campaign_id, "campaign_id")

    with _platform_engine(args) as engine:
        operations = {
            "create-organisation": lambda: organisations.create_organisation(
                engine,
                {
                    "name": args.name,
                    "phone_number_id": args.phone_number_id,
                    **_organisation_fields(args),
                },
            ),
            "templates": lambda: operator_templates.list_templates(engine, args.organisation),
            "create-template": lambda: operator_templates.create_template(
                engine, _read_json(args.file)
            ),
            "update-template": lambda: operator_templates.update_template(
                engine, args.template_id, _read_json(args.file)
            ),
            "create": lambda: answers.created_campaign(engine, _read_json(args.file)),
            "upload-contacts": lambda: consent.import_contacts(
                engine, args.organisation_id, Path(args.csv).read_text()
            ),
            "upload-audience": lambda: campaigns.import_audience(
                engine, campaign(), Path(args.csv).read_text()
            ),
            "approve": lambda: answers.approved_campaign(engine, campaign()),
            "readiness": lambda: answers.campaign_readiness(engine, campaign()),
            "status": lambda: campaign_progress(engine, campaign()),
            "audience": lambda: campaigns.list_audience(
                engine, campaign(), args.status, args.limit, args.after
            ),
            "process": lambda: answers.recorded_run(engine, campaign()),
            "sqs-status": lambda: answers.queue_depth(SQSResource.from_settings()),
            "organisations": lambda: organisations.list_organisations(engine, args.phone_number_id),
            "update-organisation": lambda: organisations.update_organisation(
                engine, args.organisation_id, _organisation_fields(args)
            ),
            "account-events": lambda: organisations.account_history(
                engine, args.organisation_id, args.kind, args.limit
            ),
            "refresh-numbers": lambda: _refresh_numbers(engine, args.organisation),
            "contacts": lambda: consent.look_up_contacts(
                engine, args.organisation_id, args.phone, args.user_id
            ),
            "consent": lambda: consent.set_consent(
                engine,
                args.organisation_id,
                args.contact_id,
                {
                    "scope": args.scope,
                    "opted_out": args.opted_out == "true",
                    "by": args.by,
                    "reason": args.reason,
                },
            ),
        }
        control_body = {"by": getattr(args, "by", None), "reason": getattr(args, "reason", None)}
        if getattr(args, "run", None) is not None:
            control_body["campaign_run_id"] = args.run
        operations.update(
            {
                name: lambda op=op: op(engine, campaign(), control_body)
                for name, op in (
                    ("pause", control.pause),
                    ("resume", control.resume),
                    ("cancel", control.cancel),
                    ("retry-failed", control.retry_failed),
                )
            }
        )
        operations["breakers"] = lambda: control.list_breakers(engine, args.include_closed)
        operations["reset-breaker"] = lambda: control.reset_breaker(
            engine, args.breaker_id, control_body
        )
        result = operations[args.operation]()
    print(json.dumps(jsonable(result), indent=2, sort_keys=True))
    return 0


def _messaging_limit(text: str) -> int | None:
    if text.strip().lower() in ("unlimited", "null", "none"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a number (50, 250, 1000, …) or unlimited") from None


def _organisation_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The organisation fields given on the command line (`waba_id` "" or none clears it)."""
    fields: dict[str, Any] = {}
    if args.waba_id is not None:
        fields["waba_id"] = None if args.waba_id.lower() in ("", "none") else args.waba_id
    if args.messaging_limit is not _UNSET:
        fields["messaging_limit"] = args.messaging_limit
    displays = getattr(args, "display_phone", None) or []
    if displays:
        fields["phone_numbers"] = [
            {"phone_number_id": number, "display_phone": display or None}
            for number, _, display in (d.partition("=") for d in displays)
        ]
    for name in ("by", "reason"):
        if getattr(args, name, None):
            fields[name] = getattr(args, name)
    return fields


def _refresh_numbers(engine: sa.Engine, organisation_id: str | None) -> list[dict[str, Any]]:
    # Brings in Dagster (see the module docstring).
    from resources import account
    from resources.whatsapp import WhatsAppResource

    client = WhatsAppResource.from_settings().client
    try:
        return account.refresh_numbers(engine, client, organisation_id)
    finally:
        client.close()


_UNSET = object()


def _organisation_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--waba-id", help="its WhatsApp Business account id (none clears it)")
    parser.add_argument(
        "--messaging-limit",
        type=_messaging_limit,
        default=_UNSET,
        help="one of WhatsApp's tiers: 50, 250, 1000, 2000, 10000, 100000 or unlimited",
    )


def _campaign_commands(commands: argparse._SubParsersAction) -> None:
    campaigns = commands.add_parser(
        "campaigns", help="operate campaigns (the operator API's operations)"
    )
    campaigns.set_defaults(run=cmd_campaigns, needs=("DATABASE_URL",))
    ops = campaigns.add_subparsers(dest="operation", required=True)
    org = ops.add_parser("create-organisation", help="create an organisation")
    org.add_argument("--name", required=True)
    org.add_argument("--phone-number-id", help="its sending phone number ID")
    _organisation_options(org)
    ops.add_parser("templates", help="list templates").add_argument("--organisation")
    ops.add_parser(
        "create-template", help="create a template from a JSON file (- for stdin)"
    ).add_argument("file")
    update = ops.add_parser("update-template", help="change a template from a JSON file")
    update.add_argument("template_id", type=int)
    update.add_argument("file")
    ops.add_parser(
        "create", help="create a draft campaign from a JSON file (- for stdin)"
    ).add_argument("file")
    contacts = ops.add_parser("upload-contacts", help="import contacts from CSV (all or nothing)")
    contacts.add_argument("organisation_id")
    contacts.add_argument("csv")
    audience_csv = ops.add_parser(
        "upload-audience", help="add a draft campaign's audience from CSV"
    )
    audience_csv.add_argument("campaign_id")
    audience_csv.add_argument("csv")
    for name, text in (
        ("approve", "approve a draft campaign (refused, with every problem, if it cannot send)"),
        ("readiness", "what approval checks, now, changing nothing: problems and first members"),
        ("status", "a campaign's status, audience counts and runs"),
        ("process", "record today's run now; the campaign-run sensor launches it"),
    ):
        ops.add_parser(name, help=text).add_argument("campaign_id")
    audience = ops.add_parser("audience", help="list a campaign's members, one page")
    audience.add_argument("campaign_id")
    audience.add_argument("--status")
    audience.add_argument("--limit", type=int, default=100)
    audience.add_argument("--after", help="the previous page's next_after")
    ops.add_parser("sqs-status", help="queue depth, in flight and dead-letter depth")
    organisations = ops.add_parser("organisations", help="list organisations and their numbers")
    organisations.add_argument("--phone-number-id", help="only the one holding this number ID")
    change = ops.add_parser(
        "update-organisation", help="change an organisation's WABA id, messaging limit, numbers"
    )
    change.add_argument("organisation_id")
    _organisation_options(change)
    change.add_argument(
        "--display-phone",
        action="append",
        metavar="PHONE_NUMBER_ID=NUMBER",
        help="a number's display number, as WhatsApp shows it (repeatable; empty clears it)",
    )
    change.add_argument("--by", help="who changes it (recorded with a limit change)")
    change.add_argument("--reason", help="why (recorded with a limit change)")
    history = ops.add_parser(
        "account-events", help="an organisation's account history: limit, throughput, standing"
    )
    history.add_argument("organisation_id")
    history.add_argument("--kind", help="messaging_limit, throughput, ban, restriction, …")
    history.add_argument("--limit", type=int, default=100)
    refresh = ops.add_parser(
        "refresh-numbers", help="read the numbers' status from the Graph API now"
    )
    refresh.add_argument("--organisation", help="only this organisation's numbers")
    refresh.set_defaults(needs=("DATABASE_URL", "WHATSAPP_ACCESS_TOKEN"))
    find = ops.add_parser("contacts", help="look contacts up, with their consent history")
    find.add_argument("organisation_id")
    who = find.add_mutually_exclusive_group(required=True)
    who.add_argument("--phone", help="E.164, e.g. +16505551234")
    who.add_argument("--user-id", help="WhatsApp's business-scoped user id")
    opt = ops.add_parser("consent", help="opt a contact out or back in, saying who and why")
    opt.add_argument("organisation_id")
    opt.add_argument("contact_id", type=int)
    opt.add_argument("--scope", required=True, choices=("campaigns", "marketing"))
    opt.add_argument("--opted-out", required=True, choices=("true", "false"))
    opt.add_argument("--by", help="who asks for the change (required)")
    opt.add_argument("--reason", help="why (required)")
    for name, text in (
        ("pause", "stop media, dispatch and sending until resumed (nothing is lost)"),
        ("resume", "carry on where a paused campaign stopped; each message is still sent once"),
        ("cancel", "end a campaign: its unsent messages are cancelled, its queued ones dropped"),
        ("retry-failed", "queue again the failed messages whose error could pass"),
    ):
        control = ops.add_parser(name, help=text)
        control.add_argument("campaign_id")
        control.add_argument("--by", help="who asks (recorded; default: operator)")
        control.add_argument("--reason", help="why (recorded with a cancel)")
        if name == "retry-failed":
            control.add_argument("--run", type=int, help="only this campaign run's messages")
    breakers = ops.add_parser("breakers", help="open circuit breakers and what they hold")
    breakers.add_argument("--include-closed", type=int, default=0, metavar="N")
    reset = ops.add_parser("reset-breaker", help="close a breaker once its cause is fixed")
    reset.add_argument("breaker_id", type=int)
    reset.add_argument("--by", help="who resets it (recorded; default: operator)")
    reset.add_argument("--reason", help="what was fixed")


def cmd_templates_sync(args: argparse.Namespace) -> int:
    """Read templates from Meta now: one organisation's, or every one's with a WABA id."""
    # Brings in Dagster (see the module docstring).
    from resources import templates
    from resources.whatsapp import WhatsAppResource

    synced: list[dict[str, Any]] = []
    failed: list[str] = []
    with _platform_engine(args) as engine:
        client = WhatsAppResource.from_settings().client
        try:
            with engine.connect() as conn:
                wanted = templates.organisations(conn, args.organisation)
            if args.organisation and not wanted:
                raise templates.NoSuchOrganisation(
                    f"organisation {args.organisation} does not exist"
                )
            for organisation in wanted:
                try:
                    result = templates.sync_organisation(engine, client, organisation.id)
                except templates.SyncFailed as error:
                    failed.append(str(error))
                    continue
                synced.append(templates.report(engine, result))
        except (templates.NoSuchOrganisation, templates.NoWABA, templates.CannotReadMeta) as error:
            print(f"waflow: error: {error}", file=sys.stderr)
            return 1
        finally:
            client.close()
    print(json.dumps(synced, indent=2, sort_keys=True))
    if not wanted:
        print("no organisation has a waba_id: nothing to sync", file=sys.stderr)
    for failure in failed:
        print(f"waflow: error: {failure}", file=sys.stderr)
    return 1 if failed else 0


def cmd_webhook_redrive(args: argparse.Namespace) -> int:
    """Send webhook events that failed for good back to processing (see Retention)."""
    # Brings in Dagster (see the module docstring).
    from resources import webhook_history

    with _platform_engine(args) as engine:
        result = webhook_history.redrive(engine, args.since, args.until)
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def _webhook_commands(commands: argparse._SubParsersAction) -> None:
    ops = commands.add_parser("webhook", help="the webhook inbox").add_subparsers(
        dest="webhook_command", required=True
    )
    redrive = ops.add_parser(
        "redrive",
        help="process again the events that failed for good (e.g. for a number registered since)",
    )
    redrive.add_argument(
        "--since", required=True, help="events received from this ISO date or time (UTC)"
    )
    redrive.add_argument("--until", help="and before this one (default: now)")
    redrive.set_defaults(run=cmd_webhook_redrive)


def _template_commands(commands: argparse._SubParsersAction) -> None:
    ops = commands.add_parser(
        "templates", help="message templates as Meta has them"
    ).add_subparsers(dest="templates_command", required=True)
    sync = ops.add_parser(
        "sync", help="read templates from Meta now (every organisation with a WABA id, or one)"
    )
    sync.add_argument("--organisation", help="only this organisation (its id)")
    sync.set_defaults(run=cmd_templates_sync, needs=("DATABASE_URL", "WHATSAPP_ACCESS_TOKEN"))


def cmd_generators(args: argparse.Namespace) -> int:
    """Generator authoring (`resources.generators`), printed as JSON; a preview also writes
    the files to a folder and exits 1 when the generator failed."""
    # Brings in Dagster (see the module docstring).
    from resources import generators

    with _platform_engine(args) as engine:
        command = args.generators_command
        if command == "publish":
            source = _read_text(args.file)
            file_name = args.file_name or _default_file_name(args.file)
            published = generators.publish(
                engine, args.template, source, file_name, args.description or ""
            )
            result: Any = _without_source(published)
        elif command == "list":
            result = [v.as_dict() for v in generators.list_versions(engine, args.template)]
        elif command == "show":
            shown = generators.get_version(engine, args.template, args.version)
            if args.source_only:
                print(shown.source, end="")
                return 0
            result = shown.as_dict()
        elif command == "activate":
            result = _without_source(generators.activate(engine, args.template, args.version))
        else:
            return _preview(engine, args)
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def _without_source(version: Any) -> dict[str, Any]:
    return {key: value for key, value in version.as_dict().items() if key != "source"}


def _read_text(path: str) -> str:
    return sys.stdin.read() if path == "-" else Path(path).read_text()


def _default_file_name(path: str) -> str:
    name = Path(path).name
    return name if path != "-" and name.endswith(".py") else "generator.py"


def _preview(engine: sa.Engine, args: argparse.Namespace) -> int:
    # Brings in Dagster (see the module docstring).
    from resources import generators

    draft = _read_text(args.file) if args.file else None
    result = generators.preview(
        engine,
        args.template,
        source=draft,
        version=args.version,
        member=_read_json(args.member) if args.member else None,
        campaign_id=args.campaign,
        file_name=args.file_name
        or (_default_file_name(args.file) if args.file else "generator.py"),
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = result.as_dict()
    for file, shown in zip(result.files, summary["files"], strict=True):
        path = out / _safe_name(file.name, file.asset_type)
        path.write_bytes(file.data)
        shown.update(path=str(path), data=None)
        if file.thumbnail_png:
            thumbnail = path.with_name(path.stem + ".thumbnail.png")
            thumbnail.write_bytes(file.thumbnail_png)
            shown.update(thumbnail_png=str(thumbnail))
    print(json.dumps(summary, indent=2, sort_keys=True))
    if not result.ok:
        print(f"waflow: error: the generator failed: {result.error}", file=sys.stderr)
        return 1
    return 0


def _safe_name(name: str, asset_type: str) -> str:
    """A returned file's name as a plain name inside the output folder (the generator
    chose it)."""
    plain = Path(name).name
    if plain in ("", ".", "..") or not plain.isprintable():
        return asset_type or "file"
    return plain


def _fill(text: str) -> str:
    return textwrap.fill(text, 88)


GENERATOR_SHAPE = """\
A generator is a Python file (at most GENERATOR_MAX_BYTES, default 200000 bytes) that
defines, at module level:

    def generate_asset(attributes, name, msisdn, temp_dir):
        path = os.path.join(temp_dir, "card.json")   # write inside temp_dir only
        ...
        return {"json": path}                        # {asset_type: path}

asset types: image, video, audio, document, json, text, csv.
"""


def _generator_commands(commands: argparse._SubParsersAction) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    group = commands.add_parser(
        "generators",
        help="publish, list, roll back and preview a template's media generator",
        description=_fill(
            "Author a template's media generator: each publish is a new version that"
            " becomes active; activate rolls back or forward; preview runs a draft or a version"
            " in the media sandbox for one sample member."
        )
        + "\n\n"
        + GENERATOR_SHAPE,
        epilog="example (publish, try, roll back):\n"
        "  waflow generators publish offer.py --template 3\n"
        "  waflow generators preview --template 3 --out preview/\n"
        "  waflow generators list --template 3\n"
        "  waflow generators activate 1 --template 3",
        formatter_class=raw,
    )
    group.set_defaults(run=cmd_generators, needs=("DATABASE_URL",))
    ops = group.add_subparsers(dest="generators_command", required=True)

    def template_option(parser: argparse.ArgumentParser) -> None:
        parser.add_argument(
            "--template", type=int, required=True, metavar="ID", help="the template's id"
        )

    publish = ops.add_parser(
        "publish",
        help="publish FILE as the template's next version (it becomes active)",
        description=_fill(
            "Check FILE (it compiles, defines generate_asset with four parameters,"
            " fits the size limit) and store it as the template's next, active version. A"
            " rejected file prints the line and the reason, exits 1 and stores nothing."
        )
        + "\n\n"
        + GENERATOR_SHAPE,
        epilog="example:\n  waflow generators publish offer.py --template 3"
        ' --description "spring card"',
        formatter_class=raw,
    )
    publish.add_argument("file", metavar="FILE", help="the generator's Python source (- for stdin)")
    template_option(publish)
    publish.add_argument("--file-name", help="name shown in tracebacks (default: FILE's name)")
    publish.add_argument("--description", help="what changed in this version")

    listing = ops.add_parser(
        "list",
        help="the template's versions, newest first",
        description=_fill(
            "The template's versions, newest first, as JSON: version, file_name,"
            " description, active, created_at."
        ),
        epilog="example:\n  waflow generators list --template 3",
        formatter_class=raw,
    )
    template_option(listing)

    show = ops.add_parser(
        "show",
        help="one version, with its source",
        epilog="example:\n  waflow generators show 2 --template 3 --source-only > offer.py",
        formatter_class=raw,
    )
    show.add_argument("version", type=int)
    template_option(show)
    show.add_argument("--source-only", action="store_true", help="print only the source")

    activate = ops.add_parser(
        "activate",
        help="make a stored version the active one (roll back or forward)",
        description=_fill(
            "Make VERSION the template's active generator. Members of a running"
            " campaign not yet generated get it; those already generated keep their media."
        ),
        epilog="example (roll back to version 2):\n  waflow generators activate 2 --template 3",
        formatter_class=raw,
    )
    activate.add_argument("version", type=int)
    template_option(activate)

    preview = ops.add_parser(
        "preview",
        help="run a draft FILE or a stored version for one sample member; files to a folder",
        description=_fill(
            "Run a draft FILE (checked, not stored), --version N, or else the active"
            " version, in the media sandbox for one member: --member FILE, the first member of"
            " --campaign, or a sample member. The files go to --out (an image also as"
            " NAME.thumbnail.png); the JSON printed holds the output, seconds, peak memory, and"
            " the error with the generator's own traceback lines. Exits 1 when the generator"
            " failed."
        )
        + "\n\n--member FILE is a JSON object:\n"
        '  {"name": "Ana", "msisdn": "+12025550100", "attributes": {"offer": "2 for 1"}}',
        epilog="examples:\n"
        "  waflow generators preview offer.py --template 3 --member ana.json --out preview/\n"
        "  waflow generators preview --template 3 --version 2 --campaign"
        " 6f1d3c1e-0a4b-4a5e-9d59-1e9b1d2c3a4b",
        formatter_class=raw,
    )
    preview.add_argument("file", metavar="FILE", nargs="?", help="a draft source (- for stdin)")
    template_option(preview)
    preview.add_argument("--version", type=int, help="a stored version instead of a draft")
    preview.add_argument("--file-name", help="the draft's name in tracebacks")
    who = preview.add_mutually_exclusive_group()
    who.add_argument("--member", metavar="FILE", help="the sample member as JSON (- for stdin)")
    who.add_argument("--campaign", metavar="ID", help="use this campaign's first member")
    preview.add_argument(
        "--out", default="generator-preview", help="folder for the files (default: %(default)s)"
    )


def cmd_tokens(args: argparse.Namespace) -> int:
    """An organisation's API tokens (`resources.tenants`), printed as JSON: the database is
    the platform's, so whoever runs this is the platform admin."""
    # Brings in Dagster (see the module docstring).
    from resources import tenants

    who = {"by": args.by} if getattr(args, "by", None) else {}
    with _platform_engine(args) as engine:
        if args.tokens_command == "create":
            result = tenants.create_token(engine, args.organisation_id, {"name": args.name, **who})
        elif args.tokens_command == "list":
            result = tenants.list_tokens(engine, args.organisation_id)
        else:
            result = tenants.revoke_token(engine, args.organisation_id, args.token_id, who)
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def _token_commands(commands: argparse._SubParsersAction) -> None:
    tokens = commands.add_parser("tokens", help="organisations' API tokens (platform admin)")
    tokens.set_defaults(run=cmd_tokens)
    ops = tokens.add_subparsers(dest="tokens_command", required=True)
    create = ops.add_parser("create", help="a new token for an organisation, printed once")
    create.add_argument("organisation_id")
    create.add_argument("--name", required=True, help="what the token is for")
    create.add_argument("--by", help="who asks (recorded; default: platform admin)")
    ops.add_parser(
        "list", help="an organisation's tokens (never the tokens themselves)"
    ).add_argument("organisation_id")
    revoke = ops.add_parser("revoke", help="revoke a token; it stops working at once")
    revoke.add_argument("organisation_id")
    revoke.add_argument("token_id", type=int)
    revoke.add_argument("--by", help="who asks (recorded; default: platform admin)")


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="waflow", description=__doc__.splitlines()[0])
    top.add_argument("--version", action="version", version=f"waflow {version('waflow')}")
    top.add_argument("--state-dir", help="local state folder (default: $STATE_DIR or .state)")
    # The sender and the webhook worker check their own settings (`run` of each).
    top.set_defaults(needs=())
    commands = top.add_subparsers(dest="command", required=True)
    commands.add_parser("migrate", help="apply pending schema migrations").set_defaults(
        run=cmd_migrate, needs=("DATABASE_URL",)
    )
    commands.add_parser(
        "dev", help="run the whole stack locally with a demo campaign"
    ).set_defaults(run=cmd_dev, needs=DEVELOPMENT_ONLY)
    commands.add_parser("load-demo", help="load the demo campaign").set_defaults(
        run=cmd_load_demo, needs=DEVELOPMENT_ONLY
    )
    commands.add_parser(
        "demo", help="run the whole flow once, headless; JSON summary last"
    ).set_defaults(run=cmd_demo, needs=DEVELOPMENT_ONLY)
    archive = commands.add_parser("archive", help="message and media archive").add_subparsers(
        dest="archive_command", required=True
    )
    restore = archive.add_parser(
        "restore", help="re-import archived messages of a date range (checksums verified first)"
    )
    restore.add_argument("--from", dest="first", required=True, metavar="YYYY-MM-DD")
    restore.add_argument("--to", dest="last", required=True, metavar="YYYY-MM-DD")
    restore.set_defaults(run=cmd_archive_restore, needs=("DATABASE_URL", "S3_BUCKET"))
    archive.add_parser(
        "setup", help="apply the archive prefixes' lifecycle rules to the bucket (idempotent)"
    ).set_defaults(run=cmd_archive_setup, needs=("DATABASE_URL", "S3_BUCKET"))
    _campaign_commands(commands)
    _template_commands(commands)
    _generator_commands(commands)
    _token_commands(commands)
    _webhook_commands(commands)
    sender = commands.add_parser(
        "sender", help="send queued messages until SIGTERM (the sender worker)"
    )
    sender.add_argument("--drain", action="store_true", help="exit once the queue is empty")
    sender.set_defaults(run=cmd_sender)
    commands.add_parser(
        "webhook-worker",
        help="process the webhook inbox, answer with the agent, copy media (until SIGTERM)",
    ).set_defaults(run=cmd_webhook_worker)
    app = commands.add_parser(
        "webhook-app", help="serve the webhook app and the operator API (uvicorn)"
    )
    app.add_argument("--host", default="127.0.0.1")
    app.add_argument("--port", type=int, default=8000)
    app.add_argument(
        "--forwarded-allow-ips",
        default="127.0.0.1",
        help="proxies whose X-Forwarded-* headers are trusted (uvicorn's option; * for all)",
    )
    app.set_defaults(run=cmd_webhook_app)
    stuck = commands.add_parser(
        "sender-stuck", help="list messages left in sending (never re-sent automatically)"
    )
    stuck.add_argument(
        "--older-than", type=float, help="seconds (default SENDER_STUCK_AFTER_SECONDS)"
    )
    stuck.set_defaults(run=cmd_sender_stuck, needs=("DATABASE_URL",))
    return cli_help.document(top)


def check_settings(args: argparse.Namespace) -> None:
    """Before a command connects to anything: `APP_ENV` is usable, a production command has
    every setting it needs, and a development command does not run in production."""
    process = f"waflow {args.command}"
    if args.needs is DEVELOPMENT_ONLY:
        if settings.is_production():
            raise settings.InvalidSetting(
                f"{process} runs in development only: unset DATABASE_URL (the embedded stack),"
                " or set APP_ENV=development to run it on your own servers"
            )
        return
    settings.check_production(args.needs, process)


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", module="platformdirs")
    args = parser().parse_args(argv)
    logs.configure("cli")  # a long-running command sets it up again under its own name
    try:
        check_settings(args)
        return args.run(args)
    except Exception as error:
        message = explain(error)
        if message is None:
            raise
        print(f"waflow: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
