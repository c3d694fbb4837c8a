"""The Dagster code location: each asset family's definitions, merged, with the shared resources.

Resource values resolve when a run starts (`EnvVar`), so loading the code location reads no
secret and talks to no server; an optional setting left unset keeps its documented default.
In production, loading it checks that the settings its runs need are there, so a missing
secret stops the code location at start-up rather than failing (or sending in dev mode) in
a run.
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

from assets_defs import archive, campaign_sensor, dispatch, media, reports, retention, templates
from resources import settings
from resources.chat import ChatModelResource
from resources.postgres import PostgresResource
from resources.queue import SQSResource
from resources.settings import BY_NAME
from resources.storage import S3Storage
from resources.whatsapp import WhatsAppResource

REQUIRED_IN_PRODUCTION = (
    "DATABASE_URL",
    "DAGSTER_POSTGRES_URL",
    "S3_BUCKET",
    "WHATSAPP_ACCESS_TOKEN",
    "WHATSAPP_PHONE_NUMBER_ID",
)


def _env(name: str) -> Any:
    """`EnvVar(name)` when the variable is set, else the documented default."""
    return dg.EnvVar(name) if os.environ.get(name) else BY_NAME[name].default


def resources() -> dict[str, dg.ConfigurableResource]:
    return {
        "postgres": PostgresResource(database_url=dg.EnvVar("DATABASE_URL")),
        "s3": S3Storage(
            bucket=_env("S3_BUCKET"),
            endpoint_url=_env("AWS_ENDPOINT_URL"),
            region_name=_env("AWS_REGION"),
        ),
        "sqs": SQSResource(
            queue_name=_env("SQS_QUEUE_NAME"),
            dlq_name=_env("SQS_DLQ_NAME"),
            max_receive_count=(
                dg.EnvVar.int("SQS_MAX_RECEIVE_COUNT")
                if os.environ.get("SQS_MAX_RECEIVE_COUNT")
                else int(BY_NAME["SQS_MAX_RECEIVE_COUNT"].default)
            ),
            region_name=_env("AWS_REGION"),
            endpoint_url=_env("AWS_ENDPOINT_URL"),
        ),
        "whatsapp": WhatsAppResource(
            access_token=_env("WHATSAPP_ACCESS_TOKEN"),
            phone_number_id=_env("WHATSAPP_PHONE_NUMBER_ID"),
            base_url=_env("WHATSAPP_API_BASE_URL"),
            api_version=_env("WHATSAPP_API_VERSION"),
        ),
        "chat_model": ChatModelResource(
            google_api_key=_env("GOOGLE_API_KEY"), model=_env("CHAT_MODEL")
        ),
    }


settings.check_production(REQUIRED_IN_PRODUCTION, "Dagster code location")

# Each run is one asset of one partition (and its checks): the steps run in the run's own
# process, as the benchmarks measure them, instead of a process each beside it.
defs = dg.Definitions.merge(
    dg.Definitions(resources=resources(), executor=dg.in_process_executor),
    media.defs,
    archive.defs,
    dispatch.defs,
    campaign_sensor.defs,
    reports.defs,
    templates.defs,
    retention.defs,
)
