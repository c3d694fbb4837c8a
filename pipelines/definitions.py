"""The Dagster code location: each asset family's definitions, merged, with the shared resources.

Importing this module reads no setting: `defs` builds the definitions when Dagster loads
them. Resource values resolve when a run starts (`EnvVar`), so loading the code location
reads no secret and talks to no server; an optional setting left unset keeps its documented
default. In production, loading it checks that the settings its runs need are there, so a
missing secret stops the code location at start-up rather than failing (or sending in dev
mode) in a run.
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

FAMILIES = (media, archive, dispatch, campaign_sensor, reports, templates, retention)
REQUIRED_IN_PRODUCTION = (
    "DATABASE_URL",
    "DAGSTER_POSTGRES_URL",
    "S3_BUCKET",
    "WHATSAPP_ACCESS_TOKEN",
    "WHATSAPP_PHONE_NUMBER_ID",
)


class _AtRunStart:
    """The code location's `settings.Source`: a variable that is set becomes an `EnvVar`, which
    a run resolves when it starts (the value is never in the loaded definitions); one left
    unset is its documented default."""

    def text(self, name: str) -> Any:
        return dg.EnvVar(name) if os.environ.get(name) else BY_NAME[name].default

    def required(self, name: str) -> Any:
        return dg.EnvVar(name)

    def number(self, name: str) -> Any:
        # The clients' number settings are whole numbers.
        return dg.EnvVar.int(name) if os.environ.get(name) else int(BY_NAME[name].default)


def resources() -> dict[str, dg.ConfigurableResource]:
    """The clients the code location's runs get; tests and benchmarks run assets with them."""
    source = _AtRunStart()
    return {
        "postgres": PostgresResource.from_settings(source),
        "s3": S3Storage.from_settings(source),
        "sqs": SQSResource.from_settings(source),
        "whatsapp": WhatsAppResource.from_settings(source),
        "chat_model": ChatModelResource.from_settings(source),
    }


@dg.definitions
def defs() -> dg.Definitions:
    """The code location, built when Dagster loads it (the code server at start-up, each run
    in its process) rather than at import, so importing this module reads no setting."""
    settings.check_production(REQUIRED_IN_PRODUCTION, "Dagster code location")
    # Each run is one asset of one partition (and its checks): the steps run in the run's
    # own process, as the benchmarks measure them, instead of a process each beside it.
    return dg.Definitions.merge(
        dg.Definitions(resources=resources(), executor=dg.in_process_executor),
        *(family.defs() for family in FAMILIES),
    )
