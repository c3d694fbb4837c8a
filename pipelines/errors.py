"""The failures a `waflow` user can fix, each as one line naming the cause (a bad setting,
an unreachable server, a port in use, a refused input); anything else is a bug and keeps
its traceback."""

from __future__ import annotations

import json

import sqlalchemy as sa
from botocore.exceptions import BotoCoreError, ClientError

from pipelines.dev.local_stack import StackError
from resources import settings


def explain(error: BaseException) -> str | None:
    """One line for a failure a user can fix, or None for a bug."""
    # Imported once a command has failed: these modules bring in Dagster, which a command's
    # start (and `waflow --help`) should not wait for.
    from assets_defs.archive.objects import ArchiveMismatch
    from assets_defs.archive.restore import RestoreRefused
    from resources import errors, generators

    expected = (
        StackError,
        settings.MissingSetting,
        settings.InvalidSetting,
        errors.InvalidInput,
        errors.NotFound,
        errors.Conflict,
        generators.PreviewUnavailable,
        RestoreRefused,
        ArchiveMismatch,
    )
    if isinstance(error, expected):
        return str(error)
    if isinstance(error, json.JSONDecodeError):
        return f"the JSON input is not valid: {error}"
    if isinstance(error, FileNotFoundError):
        return f"no such file: {error.filename}"
    if isinstance(error, sa.exc.OperationalError):
        reason = str(error.orig).strip().splitlines()[0] if error.orig else str(error)
        return f"cannot connect to PostgreSQL (DATABASE_URL): {reason}"
    if isinstance(error, BotoCoreError):
        return f"cannot reach S3/SQS (AWS_ENDPOINT_URL): {error}"
    if isinstance(error, ClientError):
        return f"S3/SQS refused a request: {error}"
    return None
