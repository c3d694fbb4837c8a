"""One logging setup for every process: human-readable lines by default, one JSON object a
line with `LOG_FORMAT=json` (for CloudWatch, Loki and the like).

Our loggers (`waflow.*`) log at `LOG_LEVEL`; libraries stay at WARNING (httpx and botocore
log every request at INFO). Ids passed as `extra` (`campaign_id`, `message_id`, `run_id`,
…) become fields of the JSON object, and are appended to the text line. Dagster's
Beta/Preview warnings, printed at every start, are filtered: they concern Dagster's APIs,
not anything an operator can act on.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from datetime import UTC, datetime

from resources import settings

# The platform's own loggers: `waflow.*` and the packages' `__name__` loggers.
OUR_LOGGERS = ("waflow", "pipelines", "resources", "webhook_app", "assets_defs")
# uvicorn's, which it sets up before our app starts: sent through our handler instead.
SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")
# The fields a log record may carry for the row it is about (never a phone or a text).
ID_FIELDS = (
    "campaign_id",
    "campaign_run_id",
    "message_id",
    "contact_id",
    "conversation_id",
    "organisation_id",
    "run_id",
    "breaker_id",
)


def configure(process: str) -> None:
    """Set up this process's logging; `process` names it in every line."""
    formats = {"text": TextFormatter, "json": JSONFormatter}
    chosen = settings.get("LOG_FORMAT")
    if chosen not in formats:
        raise settings.InvalidSetting(f"LOG_FORMAT must be one of {', '.join(formats)}")
    level = settings.get("LOG_LEVEL").upper()
    if level not in logging.getLevelNamesMapping():
        raise settings.InvalidSetting("LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
    root = logging.getLogger()
    # A host that set up logging its own way (a test runner) keeps it; ours is replaced.
    if all(getattr(h, "waflow", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(formats[chosen](process))
        handler.waflow = True
        root.handlers[:] = [handler]
        root.setLevel(logging.WARNING)
    for name in OUR_LOGGERS:
        logging.getLogger(name).setLevel(level)
    for name in SERVER_LOGGERS:
        server = logging.getLogger(name)
        server.handlers[:] = []
        server.propagate = True
    quiet_dagster_warnings()


def quiet_dagster_warnings() -> None:
    import dagster as dg

    for category in (dg.BetaWarning, dg.PreviewWarning):
        warnings.filterwarnings("ignore", category=category)


def _ids(record: logging.LogRecord) -> dict[str, object]:
    return {name: getattr(record, name) for name in ID_FIELDS if hasattr(record, name)}


class TextFormatter(logging.Formatter):
    def __init__(self, process: str) -> None:
        super().__init__(f"%(asctime)s {process} %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = _ids(record)
        return line + "".join(f" {name}={value}" for name, value in ids.items())


class JSONFormatter(logging.Formatter):
    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "process": self.process,
            "logger": record.name,
            "message": record.getMessage(),
            **_ids(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)
