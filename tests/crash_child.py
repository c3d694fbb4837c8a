"""One batch step in a process of its own, for the crash tests: the process a test kills with
SIGKILL at a crash point (`resources.crash_points`). Resources come from the environment, as
in a Dagster run.

    python -m tests.crash_child dispatch <campaign id>
    python -m tests.crash_child media-archive <YYYY-MM-DD>
"""

from __future__ import annotations

import sys
from datetime import date

import dagster as dg

from assets_defs.archive.media import media_archive
from resources.postgres import PostgresResource
from resources.queue import SQSResource
from resources.storage import S3Storage
from tests.dispatch_fixtures import materialize_run


def main(step: str, argument: str) -> int:
    postgres = PostgresResource.from_settings()
    if step == "dispatch":
        resources = {
            "postgres": postgres,
            "sqs": SQSResource.from_settings(),
            "s3": S3Storage.from_settings(),
        }
        return 0 if materialize_run(argument, resources).success else 1
    day = date.fromisoformat(argument)
    result = dg.materialize(
        [media_archive],
        resources={"postgres": postgres, "s3": S3Storage.from_settings()},
        tags={
            "dagster/asset_partition_range_start": day.isoformat(),
            "dagster/asset_partition_range_end": day.isoformat(),
        },
    )
    return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
