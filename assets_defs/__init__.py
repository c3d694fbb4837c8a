"""The asset families. Dagster warns at every import that some parameters used here
(`backfill_policy`) are in beta; they are used knowingly, and the warning is filtered once,
here, before any decorator runs."""

from resources.logs import quiet_dagster_warnings

quiet_dagster_warnings()
