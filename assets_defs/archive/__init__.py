"""Archival: the `messages` and `media` tables (external assets) and their observation
sensor, the daily-partitioned `message_archive` and `media_archive` that drain them, their
checks and schedules, and the restore job."""

import dagster as dg

from assets_defs.archive.checks import (
    media_archive_checksums_check,
    message_archive_checksums_check,
    message_archive_rows_check,
)
from assets_defs.archive.media import media_archive
from assets_defs.archive.messages import message_archive
from assets_defs.archive.restore import restore_messages_job
from assets_defs.archive.schedules import (
    media_archive_job,
    media_archive_schedule,
    message_archive_job,
    message_archive_schedule,
)
from assets_defs.archive.tables import media_table, messages_table, table_observation_sensor


def defs() -> dg.Definitions:
    return dg.Definitions(
        assets=[messages_table, media_table, message_archive, media_archive],
        asset_checks=[
            message_archive_rows_check,
            message_archive_checksums_check,
            media_archive_checksums_check,
        ],
        jobs=[message_archive_job, media_archive_job, restore_messages_job],
        schedules=[message_archive_schedule, media_archive_schedule],
        sensors=[table_observation_sensor],
    )
