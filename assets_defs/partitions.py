"""Partition definitions shared by the asset families.

Campaign partition keys are campaign ids (UUIDs), never user-typed names: Dagster breaks on
`,` `/` `|` `[` `]` and `...` in keys.
"""

from __future__ import annotations

import re

import dagster as dg

campaign_partitions = dg.DynamicPartitionsDefinition(name="campaigns")

# `end_offset=1`: today's run date is a partition from the start of the day, not tomorrow.
run_date_partitions = dg.DailyPartitionsDefinition(
    start_date="2025-01-01", timezone="UTC", end_offset=1
)

# One partition per campaign run: the campaign, and the date of the occurrence.
campaign_run_partitions = dg.MultiPartitionsDefinition(
    {"campaign": campaign_partitions, "date": run_date_partitions}
)

_FORBIDDEN = re.compile(r"[,/|\[\]]|\.\.\.")


def campaign_partition_key(campaign_id: object) -> str:
    key = str(campaign_id)
    if not key or _FORBIDDEN.search(key):
        raise ValueError(f"not a valid campaign partition key: {key!r}")
    return key


# One partition per UTC day of archived messages and media.
archive_day_partitions = dg.DailyPartitionsDefinition(start_date="2024-01-01", timezone="UTC")
