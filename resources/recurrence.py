"""When a campaign's occurrences fall (seed 2: once, daily, weekly, monthly between its start
and end), and which one is due now.

Only the occurrence whose period contains "now" is due: occurrences missed while nothing was
running are not sent late, so a recipient never gets a burst of stale messages.
"""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, timedelta

RECURRENCES = ("once", "daily", "weekly", "monthly")
_STEP_DAYS = {"daily": 1, "weekly": 7}


def occurrence(recurrence: str, start_at: datetime, index: int) -> datetime:
    """The `index`-th occurrence (0 is `start_at`); monthly ones keep the day, clamped to the
    month's last day (31 Jan → 28/29 Feb)."""
    if recurrence == "once":
        if index:
            raise ValueError("a campaign that runs once has a single occurrence")
        return start_at
    if recurrence in _STEP_DAYS:
        return start_at + timedelta(days=_STEP_DAYS[recurrence] * index)
    if recurrence == "monthly":
        months = start_at.month - 1 + index
        year, month = start_at.year + months // 12, months % 12 + 1
        day = min(start_at.day, calendar.monthrange(year, month)[1])
        return start_at.replace(year=year, month=month, day=day)
    raise ValueError(
        f"unknown recurrence {recurrence!r} (expected one of {', '.join(RECURRENCES)})"
    )


def _latest_index(recurrence: str, start_at: datetime, now: datetime) -> int:
    """Index of the latest occurrence at or before `now` (which is not before `start_at`)."""
    if recurrence == "once":
        return 0
    if recurrence in _STEP_DAYS:
        return (now - start_at) // timedelta(days=_STEP_DAYS[recurrence])
    index = (now.year - start_at.year) * 12 + now.month - start_at.month
    return index if occurrence(recurrence, start_at, index) <= now else index - 1


def due_occurrence(
    recurrence: str, start_at: datetime, end_at: datetime | None, now: datetime
) -> datetime | None:
    """The occurrence due at `now`, or None before the start and after the end."""
    if now < start_at or (end_at is not None and now > end_at):
        return None
    return occurrence(recurrence, start_at, _latest_index(recurrence, start_at, now))


def last_occurrence_date(
    recurrence: str, start_at: datetime, end_at: datetime | None
) -> date | None:
    """Date of the campaign's final occurrence; None when it recurs without an end."""
    if recurrence == "once":
        return utc_date(start_at)
    if end_at is None:
        return None
    return utc_date(occurrence(recurrence, start_at, _latest_index(recurrence, start_at, end_at)))


def utc_date(moment: datetime) -> date:
    """The run date of an occurrence: its calendar day in UTC, the partitions' timezone."""
    return moment.astimezone(UTC).date()
