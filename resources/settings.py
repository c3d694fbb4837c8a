"""Every environment variable the platform reads, with its default (and a number's range),
in one table.

The README's configuration table, the production start-up check, the resources' defaults
and the checks on number settings are all derived from this table, so a setting is added in
exactly one place.

Nothing here reads the environment at import: a client resource is built from a `Source`
(`Resource.from_settings`), a group of policy settings by `load`, both when a process or a
run starts.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar


@dataclass(frozen=True)
class Setting:
    name: str
    default: str | None
    help: str
    secret: bool = False
    required_in_production: bool = False
    # A number setting: its type and range, both ends included (see `number`).
    kind: type[int] | type[float] | None = None
    low: float = 0
    high: float | None = None


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "APP_ENV",
        None,
        "`development` or `production` (anything else is refused). Unset: development on the "
        "embedded stack (`DATABASE_URL` unset), production otherwise. Production refuses to "
        "start while a setting it needs is missing; development fills gaps with embedded "
        "services and dev secrets.",
    ),
    Setting(
        "STATE_DIR",
        ".state",
        "Local state: the embedded Postgres data directory and `DAGSTER_HOME`.",
    ),
    Setting(
        "DATABASE_URL",
        None,
        "PostgreSQL URL of the platform's tables. Unset in development: embedded Postgres.",
        secret=True,
        required_in_production=True,
    ),
    Setting(
        "DAGSTER_POSTGRES_URL",
        None,
        "PostgreSQL URL of Dagster's runs, events and schedules (may equal `DATABASE_URL`). "
        "Unset in development: a `dagster` database on the embedded server.",
        secret=True,
        required_in_production=True,
    ),
    Setting(
        "AWS_ENDPOINT_URL",
        None,
        "S3/SQS endpoint. Unset in development: a local S3+SQS server on loopback; "
        "unset in production: AWS itself.",
    ),
    Setting(
        "AWS_REGION",
        None,
        "AWS region of the bucket and queues. Unset: botocore's own (`AWS_DEFAULT_REGION`,"
        " the profile's), else us-east-1.",
    ),
    Setting(
        "S3_BUCKET",
        "whatsapp-campaigns",
        "Bucket for generated media, inbound media and archives.",
        required_in_production=True,
    ),
    Setting(
        "SQS_QUEUE_NAME",
        "whatsapp-messages.fifo",
        "Queue of outbound message payloads; a `.fifo` name makes a FIFO queue.",
    ),
    Setting(
        "SQS_DLQ_NAME",
        "whatsapp-messages-dlq.fifo",
        "Dead-letter queue that receives payloads after `SQS_MAX_RECEIVE_COUNT` receives.",
    ),
    Setting(
        "SQS_MAX_RECEIVE_COUNT",
        "3",
        "Receives before a payload moves to the DLQ.",
        kind=int,
        low=1,
        high=1000,
    ),
    Setting(
        "WHATSAPP_ACCESS_TOKEN",
        None,
        "Graph API bearer token. Unset: dev mode, nothing is sent and ids are `dev_{phone}_{template}_{message id}`.",
        secret=True,
        required_in_production=True,
    ),
    Setting(
        "WHATSAPP_PHONE_NUMBER_ID",
        "dev-phone-number",
        "Sending phone number ID of the WhatsApp Business account.",
        required_in_production=True,
    ),
    Setting("WHATSAPP_BUSINESS_ACCOUNT_ID", None, "WhatsApp Business account (WABA) ID."),
    Setting(
        "WHATSAPP_APP_SECRET",
        None,
        "Meta app secret that signs webhooks (`X-Hub-Signature-256`).",
        secret=True,
        required_in_production=True,
    ),
    Setting(
        "WHATSAPP_VERIFY_TOKEN",
        "dev-verify-token",
        "Token echoed in the webhook verification handshake.",
        secret=True,
        required_in_production=True,
    ),
    Setting(
        "WHATSAPP_API_BASE_URL",
        "https://graph.facebook.com",
        "Graph API base URL (a local fake in tests and benchmarks).",
    ),
    Setting("WHATSAPP_API_VERSION", "v25.0", "Graph API version."),
    Setting(
        "GOOGLE_API_KEY",
        None,
        "Gemini API key. Unset: a clearly labelled offline responder answers instead.",
        secret=True,
    ),
    Setting("CHAT_MODEL", "gemini-2.5-flash", "Gemini model the agent uses."),
    Setting(
        "ADMIN_API_TOKEN",
        "dev-admin-token",
        "Bearer token of the operator API.",
        secret=True,
        required_in_production=True,
    ),
    Setting("HOST", "127.0.0.1", "Interface the local stack binds to."),
    Setting(
        "EMBEDDED_POSTGRES_PORT",
        "54329",
        "Port of the embedded PostgreSQL in `make dev`.",
        kind=int,
        low=1,
        high=65535,
    ),
    Setting(
        "DAGSTER_PORT",
        "3000",
        "Port of the Dagster UI in `make dev`.",
        kind=int,
        low=1,
        high=65535,
    ),
    Setting(
        "WEBHOOK_PORT",
        "8000",
        "Port of the webhook app in `make dev`.",
        kind=int,
        low=1,
        high=65535,
    ),
    # Personalised media (campaign_media)
    Setting(
        "MAX_CONCURRENT_GENERATIONS",
        None,
        "Sandbox worker processes that run media generators in parallel, per campaign run. "
        "Unset: one per CPU core the run may use (generators are CPU-bound; more workers "
        "than cores only add memory).",
        kind=int,
        low=1,
    ),
    Setting(
        "MEDIA_TIMEOUT_SECONDS",
        "60",
        "Wall-clock limit of one generator call; the worker is killed and replaced after it.",
        kind=float,
        low=0.1,
    ),
    Setting(
        "MEDIA_MEMORY_MB",
        "512",
        "Address-space limit (`RLIMIT_AS`) of each sandbox worker.",
        kind=int,
        low=1,
    ),
    Setting(
        "MEDIA_CPU_SECONDS",
        "30",
        "CPU-time limit of one generator call.",
        kind=int,
        low=1,
    ),
    Setting(
        "MEDIA_MAX_ATTEMPTS",
        "3",
        "Attempts per audience member before its media is `failed`.",
        kind=int,
        low=1,
    ),
    Setting(
        "MEDIA_RETRY_BACKOFF_SECONDS",
        "1",
        "First retry delay of a failed generation; doubles with each further attempt.",
        kind=float,
        low=0,
    ),
    Setting(
        "MEDIA_FAILURE_THRESHOLD",
        "0.1",
        "Share of failed members above which a campaign goes to `failed` instead of `asset_generated`.",
        kind=float,
        low=0,
        high=1,
    ),
    Setting(
        "MEDIA_SANDBOX",
        "auto",
        "`auto`: generators run in the strongest sandbox the host allows (root: a uid and "
        "namespaces of their own; else an unprivileged user namespace), and not at all in "
        "production when neither works. `trusted`: run them anyway without isolation (a "
        "warning at every run).",
    ),
    Setting(
        "MEDIA_RUNS_PER_CAMPAIGN",
        "1",
        "Runs that generate one campaign's media at once, sharing its members; with a cluster"
        " run launcher (ECS, Kubernetes) each runs on a machine of its own.",
        kind=int,
        low=1,
        high=64,
    ),
    Setting(
        "MEDIA_STUCK_MINUTES",
        "30",
        "Members in `asset_generating` this long, claimed by a run that is gone, are reset to"
        " `pending`.",
        kind=float,
        low=1,
    ),
    # Generator authoring (publish, preview)
    Setting(
        "GENERATOR_MAX_BYTES",
        "200000",
        "Largest generator source that may be published or previewed, in bytes of UTF-8.",
        kind=int,
        low=1,
        high=500_000,
    ),
    Setting(
        "GENERATOR_PREVIEW_SECONDS",
        "30",
        "Wall-clock limit of one preview (capped by `MEDIA_TIMEOUT_SECONDS`); a generator that"
        " runs longer is killed and the preview answers with the timeout as its error.",
        kind=float,
        low=0.1,
    ),
    Setting(
        "GENERATOR_PREVIEWS_AT_ONCE",
        "2",
        "Previews one webhook app process runs at once (each is a sandbox worker); a further"
        " one waits for a free slot up to its time limit, then answers 503.",
        kind=int,
        low=1,
    ),
    # Archival (message_archive, media_archive, restore)
    Setting(
        "ARCHIVE_THRESHOLD_DAYS",
        "90",
        "Messages of a day are archived (and deleted from Postgres) once the day is this many days old.",
        kind=int,
        low=0,
    ),
    Setting(
        "MEDIA_THRESHOLD_DAYS",
        "30",
        "Media of a day are moved to the archive prefix once the day is this many days old.",
        kind=int,
        low=0,
    ),
    Setting(
        "ARCHIVE_BATCH_SIZE",
        "100000",
        "Messages per archive file (seed 5's `BATCH_SIZE`); one gzipped JSON Lines file per batch.",
        kind=int,
        low=1,
    ),
    Setting(
        "MEDIA_MAX_BYTES",
        "104857600",
        "Largest media file the media archive downloads; a larger one is recorded as failed.",
        kind=int,
        low=1,
    ),
    Setting(
        "MEDIA_DOWNLOAD_TIMEOUT_SECONDS",
        "30",
        "Connect and read timeout of one media download attempt.",
        kind=float,
        low=0.1,
    ),
    # Campaign runs and dispatch to SQS
    Setting(
        "MEDIA_PUBLIC_BASE_URL",
        None,
        "Public base URL of the media bucket (e.g. a CDN); payloads then carry base URL + key. "
        "Unset: presigned S3 URLs.",
    ),
    Setting(
        "MEDIA_URL_EXPIRY_SECONDS",
        "604800",
        "Validity of the presigned media URLs in queued payloads (default 7 days).",
        kind=int,
        low=1,
        high=7 * 24 * 3600,  # the longest a presigned URL can live
    ),
    Setting(
        "CAMPAIGN_SENSOR_INTERVAL_SECONDS",
        "4",
        "How often the campaign sensor moves campaigns on: starts the media of approved"
        " campaigns, launches the campaign runs that are due (beside the media runs, so the"
        " first members go as soon as their media are ready), completes finished ones. The"
        " Dagster daemon looks at its sensors every 5 s: any value under 5 runs the sensor at"
        " every look. 5 itself misses every other look by a few milliseconds (its ticks"
        " came 5 or 10 s apart).",
        kind=int,
        low=1,
        high=3600,
    ),
    Setting(
        "DISPATCH_MEDIA_POLL_SECONDS",
        "5",
        "A dispatch run sending while its campaign's media are made is woken by each batch of"
        " members the media runs record (Postgres `NOTIFY`); it also looks this often.",
        kind=float,
        low=0.1,
        high=600,
    ),
    Setting(
        "DISPATCH_CONCURRENCY",
        "8",
        "`SendMessageBatch` calls a dispatch run keeps in flight at once.",
        kind=int,
        low=1,
    ),
    Setting(
        "DISPATCH_SQS_RETRY_SECONDS",
        "120",
        "How long a dispatch run keeps retrying an unreachable SQS endpoint before it fails "
        "(its unqueued messages stay pending for the retry).",
        kind=float,
        low=0,
    ),
    # Sender worker
    Setting(
        "SENDER_LANES",
        "8",
        "Receive loops per sender worker; each has up to 10 requests in flight.",
        kind=int,
        low=1,
        high=64,
    ),
    Setting(
        "SENDER_VISIBILITY_SECONDS",
        "60",
        "How long a received payload stays hidden from other workers while one sends it.",
        kind=int,
        low=1,
        high=12 * 3600,  # SQS's ceiling on visibility
    ),
    Setting(
        "SENDER_WAIT_SECONDS",
        "20",
        "SQS long-poll wait of each receive (0-20).",
        kind=int,
        low=0,
        high=20,
    ),
    Setting(
        "SENDER_MAX_ATTEMPTS",
        "3",
        "Attempts of a retryable send before the row fails.",
        kind=int,
        low=1,
        high=10,
    ),
    Setting(
        "SENDER_RETRY_BASE_SECONDS",
        "10",
        "First retry delay; it doubles with each attempt (by SQS visibility).",
        kind=float,
        low=0,
    ),
    Setting(
        "SENDER_STUCK_AFTER_SECONDS",
        "1800",
        "A row in `sending` longer than this is reported as stuck (never re-sent automatically).",
        kind=float,
        low=0,
    ),
    Setting(
        "SENDER_REQUEUE_AFTER_SECONDS",
        "3600",
        "A `pending` row whose payload was queued this long ago and never received is re-queued"
        " once from its stored payload (a payload SQS dead-lettered during a database outage,"
        " or a queue emptied); a copy that turns up anyway is dropped by the claim.",
        kind=float,
        low=60,
    ),
    Setting(
        "SENDER_RELEASE_SECONDS",
        "5",
        "How often a sender re-queues held messages whose hold was lifted (a resumed campaign,"
        " a closed circuit breaker, retried failures) and starts due breaker probes.",
        kind=float,
        low=0.1,
        high=300,
    ),
    Setting(
        "BREAKER_PROBE_SECONDS",
        "60",
        "Wait before a rate-limit circuit breaker lets one message through as a probe; it"
        " doubles after each failed probe, up to an hour.",
        kind=float,
        low=1,
        high=3600,
    ),
    # Webhook app: inbox processing, the conversation agent and operator handoff
    Setting(
        "WEBHOOK_WORKERS",
        "2",
        "Inbox loops per webhook worker process (processes share the inbox without double work).",
        kind=int,
        low=1,
        high=64,
    ),
    Setting(
        "WEBHOOK_WORKER_NICE",
        "19",
        "CPU niceness the webhook worker process adds to itself, so the app's request path"
        " comes first on a shared host.",
        kind=int,
        low=0,
        high=19,
    ),
    Setting(
        "CONSOLE_SESSION_HOURS",
        "12",
        "How long an operator console sign-in lasts; signing out, or revoking the token it "
        "was made with, ends it sooner.",
        kind=float,
        low=0.01,
        high=720,
    ),
    Setting(
        "AGENT_BUFFER_SECONDS",
        "3",
        "Quiet time after a customer's last message before the agent answers the buffered turn.",
        kind=float,
        low=0,
    ),
    Setting(
        "AGENT_BUFFER_MAX_SECONDS",
        "15",
        "Longest a turn is held while the customer keeps typing; it is answered after this.",
        kind=float,
        low=0,
    ),
    Setting(
        "AGENT_MODEL_TIMEOUT_SECONDS",
        "20",
        "Time limit of one chat model call; after it the customer gets the fallback reply.",
        kind=float,
        low=0.1,
    ),
    Setting(
        "AGENT_HISTORY_MAX_TOKENS",
        "4000",
        "Approximate tokens of conversation history given to the model (oldest trimmed first).",
        kind=int,
        low=1,
    ),
    Setting(
        "AGENT_SYSTEM_PROMPT",
        "You are the friendly customer-service assistant of a business on WhatsApp. "
        "Answer briefly and politely in the customer's language. If you cannot help, "
        "or the customer needs a person, answer with exactly [HANDOFF].",
        "System prompt of the conversation agent; `[HANDOFF]` in a reply hands over to a human.",
    ),
    Setting(
        "AGENT_HANDOFF_WORDS",
        "human,operator,person,representative",
        "Comma-separated words with which a customer asks for a human.",
    ),
    Setting(
        "OPT_OUT_WORDS",
        "STOP,UNSUBSCRIBE",
        "Comma-separated messages (whole message, any case) that opt a contact out of campaigns.",
    ),
    Setting("OPT_IN_WORDS", "START", "Comma-separated messages that opt a contact back in."),
    # Operator API input limits
    Setting(
        "CSV_MAX_ROWS",
        "200000",
        "Most rows one contacts or audience CSV may have (API and CLI); a longer file is"
        " refused whole, naming the limit: split it (each upload adds).",
        kind=int,
        low=1,
    ),
    # Templates read from Meta (whatsapp_templates)
    Setting(
        "TEMPLATE_SYNC_CRON",
        "0 * * * *",
        "Cron schedule (UTC) of the `whatsapp_templates` sync of every organisation's templates"
        " from its WhatsApp Business account.",
    ),
    # Logs (resources/logs.py)
    Setting(
        "LOG_FORMAT",
        "text",
        "`text` (one readable line per record) or `json` (one JSON object per line: time,"
        " level, process, logger, message and the row ids).",
    ),
    Setting("LOG_LEVEL", "INFO", "Level of the platform's own loggers (`waflow.*`)."),
    # Retention of the webhook history (webhook_retention_schedule)
    Setting(
        "WEBHOOK_RETENTION_DAYS",
        "30",
        "Inbox events are deleted this many days after they were processed or failed for good"
        " (redrive before then); applied receipts this long after they were applied.",
        kind=int,
        low=1,
    ),
    Setting(
        "RECEIPT_RETENTION_DAYS",
        "7",
        "Delivery receipts that never matched a message are deleted this many days after they"
        " arrived.",
        kind=int,
        low=1,
    ),
)

BY_NAME: dict[str, Setting] = {s.name: s for s in SETTINGS}


class MissingSetting(RuntimeError):
    """A required setting is absent; the message names the variable."""


class InvalidSetting(ValueError):
    """A setting's value cannot be used; the message names the variable, never the value."""


ENVIRONMENTS = ("development", "production")


def environment() -> str:
    """`development` or `production`: `APP_ENV` if set, else development only on the
    embedded stack. A process pointed at a database of its own is production unless it
    says otherwise, so a forgotten `APP_ENV` fails closed instead of falling back to the
    well-known dev secrets."""
    value = os.environ.get("APP_ENV")
    if value:
        if value not in ENVIRONMENTS:
            raise InvalidSetting("APP_ENV must be `development` or `production` (or unset)")
        return value
    return "production" if os.environ.get("DATABASE_URL") else "development"


def is_production() -> bool:
    return environment() == "production"


def get(name: str) -> str | None:
    """The variable's value, or its documented default when unset or empty.

    A secret's default (`dev-admin-token`, …) is for development only: in production an
    unset secret stays unset.
    """
    value = os.environ.get(name)
    if value:
        return value
    setting = BY_NAME[name]
    if setting.secret and setting.default is not None and is_production():
        return None
    return setting.default


def number(name: str) -> int | float:
    """A number setting as its `kind`, from `low` to `high` (in the table).

    Anything else is refused with an error that names the variable (never its value, which
    may be a pasted secret), rather than a bare `ValueError` from deep inside a run.
    """
    setting = BY_NAME[name]
    if setting.kind is None:
        raise TypeError(f"{name} is not a number setting")
    try:
        value = setting.kind(get(name))
    except (TypeError, ValueError):
        what = "a whole number" if setting.kind is int else "a number"
        raise InvalidSetting(f"{name} must be {what}") from None
    low, high = setting.low, setting.high
    if not low <= value or (high is not None and not value <= high):
        bounds = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise InvalidSetting(f"{name} must be {bounds}")
    return value


def require(name: str) -> str:
    """The variable's value; missing → `MissingSetting` naming it."""
    value = get(name)
    if value is None:
        raise MissingSetting(f"missing required setting {name}: {BY_NAME[name].help}")
    return value


def check_production(names: tuple[str, ...], process: str) -> None:
    """In production, refuse to start `process` while one of the settings it needs is unset,
    naming both in one line. Call it before any connection is made.

    Defaults do not count: a production deployment states every required value. An
    `APP_ENV` that is neither environment is refused here too, in every environment.
    """
    if not is_production():
        return
    why = (
        "APP_ENV=production"
        if os.environ.get("APP_ENV")
        else "production: DATABASE_URL is set and APP_ENV is not"
    )
    missing = [name for name in names if not os.environ.get(name)]
    if len(missing) == 1:
        raise MissingSetting(
            f"{process} cannot start: missing required setting {missing[0]} ({why}):"
            f" {BY_NAME[missing[0]].help}"
        )
    if missing:
        raise MissingSetting(
            f"{process} cannot start: missing required settings {', '.join(missing)} ({why})"
        )


class Source(Protocol):
    """Where a client resource's settings come from: their values now (`NOW`, a process), or
    Dagster `EnvVar`s that a run resolves when it starts (the code location's)."""

    def text(self, name: str) -> Any: ...

    def required(self, name: str) -> Any: ...

    def number(self, name: str) -> Any: ...


class _Now:
    def text(self, name: str) -> str | None:
        return get(name)

    def required(self, name: str) -> str:
        return require(name)

    def number(self, name: str) -> int | float:
        return number(name)


NOW: Source = _Now()

T = TypeVar("T")
_SETTING = "setting"
_PARSE = "parse"


def setting(
    name: str,
    parse: Callable[[str], Any] = str,
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    """A field of a group of settings (`load`): the setting it is read from, and its table
    default, so the group's own defaults and the documented ones cannot drift apart.

    A number setting is read by `number` (its kind, bounded); another is given to `parse`.
    `default_factory` stands in for a setting documented without a default.
    """
    metadata = {_SETTING: name, _PARSE: parse}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    documented = BY_NAME[name]
    convert = documented.kind or parse
    return dataclasses.field(default=convert(documented.default), metadata=metadata)


def load(group: type[T]) -> T:
    """A group of settings (a dataclass whose fields are `setting`s) with the values the
    environment gives now; a field whose setting is unset and undocumented keeps its
    `default_factory`. Called when a process or a run starts, never at import."""
    values = {}
    for field in dataclasses.fields(group):
        name = field.metadata[_SETTING]
        text = get(name)
        if text is None:
            continue
        values[field.name] = number(name) if BY_NAME[name].kind else field.metadata[_PARSE](text)
    return group(**values)
