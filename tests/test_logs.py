"""Every process's logs: readable lines by default, one JSON object a line with
`LOG_FORMAT=json`, ids as fields, and no Dagster beta warnings."""

from __future__ import annotations

import json
import os
import subprocess
import sys

LOG_A_SEND = """
import logging
from resources import logs
logs.configure("sender")
log = logging.getLogger("waflow.sender")
log.info("message %s sent", 42, extra={"message_id": 42, "campaign_id": "c-1"})
logging.getLogger("httpx").info("a library's chatter")
try:
    raise RuntimeError("boom")
except RuntimeError:
    log.exception("batch failed")
"""


def _run(repo_root, script: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "LOG_FORMAT": "", "LOG_LEVEL": "", **env},
    )


def test_json_logs_are_one_object_a_line_with_the_ids_as_fields(repo_root):
    done = _run(repo_root, LOG_A_SEND, LOG_FORMAT="json")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    sent, failed = lines  # the library's INFO line is not there
    assert {k: sent[k] for k in ("level", "process", "logger", "message")} == {
        "level": "INFO",
        "process": "sender",
        "logger": "waflow.sender",
        "message": "message 42 sent",
    }
    assert (sent["message_id"], sent["campaign_id"]) == (42, "c-1")
    assert sent["time"].endswith("+00:00")
    assert failed["level"] == "ERROR" and "RuntimeError: boom" in failed["exception"]


def test_text_logs_name_the_process_and_the_ids(repo_root):
    done = _run(repo_root, LOG_A_SEND)
    assert done.returncode == 0, done.stderr
    first = done.stderr.splitlines()[0]
    assert first.endswith(
        "sender INFO waflow.sender: message 42 sent campaign_id=c-1 message_id=42"
    )
    assert "a library's chatter" not in done.stderr


def test_a_wrong_log_format_is_refused_by_name(repo_root):
    done = _run(repo_root, LOG_A_SEND, LOG_FORMAT="xml")
    assert done.returncode != 0
    assert "LOG_FORMAT must be one of text, json" in done.stderr


def test_loading_the_code_location_prints_no_beta_warning(repo_root):
    done = _run(repo_root, "import pipelines.definitions")
    assert done.returncode == 0, done.stderr
    assert "BetaWarning" not in done.stderr
