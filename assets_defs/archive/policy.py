"""When a day may be archived, and how big the pieces are: read from the settings at run time."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from resources import settings


class ArchiveRefused(RuntimeError):
    """A requested day cannot be archived (too recent, or busy); nothing was touched."""


@dataclass(frozen=True)
class ArchivePolicy:
    """Read by `settings.load(ArchivePolicy)` when a run or a tick starts."""

    message_threshold_days: int = settings.setting("ARCHIVE_THRESHOLD_DAYS")
    media_threshold_days: int = settings.setting("MEDIA_THRESHOLD_DAYS")
    batch_size: int = settings.setting("ARCHIVE_BATCH_SIZE")
    media_max_bytes: int = settings.setting("MEDIA_MAX_BYTES")
    media_timeout_seconds: float = settings.setting("MEDIA_DOWNLOAD_TIMEOUT_SECONDS")


def today() -> date:
    return datetime.now(UTC).date()


def last_eligible_day(threshold_days: int, on: date | None = None) -> date:
    """The newest day that is `threshold_days` old: every day up to it may be archived."""
    return (on or today()) - timedelta(days=threshold_days)


def refuse_too_new(days: list[date], threshold_days: int, setting: str) -> None:
    """Refuse the whole run before anything is read when any day is too recent."""
    newest = last_eligible_day(threshold_days)
    too_new = [day for day in days if day > newest]
    if too_new:
        raise ArchiveRefused(
            f"partition {too_new[0].isoformat()} is newer than {setting} ({threshold_days} days):"
            f" only days up to {newest.isoformat()} can be archived today; nothing was touched"
        )


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time.min, tzinfo=UTC)
    return start, start + timedelta(days=1)


def days_between(start: datetime, end: datetime) -> Iterator[date]:
    """The UTC days of a partition time window (end exclusive)."""
    day = start.astimezone(UTC).date()
    while datetime.combine(day, time.min, tzinfo=UTC) < end:
        yield day
        day += timedelta(days=1)


def day_prefix(root: str, day: date) -> str:
    return f"{root}/year={day:%Y}/month={day:%m}/day={day:%d}/"
