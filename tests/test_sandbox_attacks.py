"""Hostile generators, one per attack on the media sandbox.

Each runs in a real campaign (Postgres, the local S3 server) of three members, attacking
for the first only: that member ends `failed` with a clear reason, the two others are
generated and the campaign completes, and no secret of this process (the one that plays
Dagster here) appears in any object, metadata entry, log line or error.
"""

from __future__ import annotations

import os
import socket
import textwrap
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlparse

import psutil
import pytest

from assets_defs.media.asset import report_metadata
from assets_defs.media.runner import CampaignMediaRun, Policy, Report, media_prefix
from resources.sandbox.isolation import candidates, resolve
from resources.sandbox.pool import Limits, MemberInput, run_sample
from tests.media_campaigns import campaign_row, create_campaign, members

LIMITS = Limits(workers=2, timeout_seconds=5, memory_mb=512, cpu_seconds=5)

# The attack runs for the member whose attributes say `fail`; the others get a JSON card.
HOSTILE = """
import json, os, signal, socket, sys, time

{attack}

def generate_asset(attributes, name, msisdn, temp_dir):
    if attributes.get("fail"):
        result = attack(attributes, temp_dir)
        if result is not None:
            return result
    path = os.path.join(temp_dir, "card.json")
    with open(path, "w") as f:
        json.dump({{"code": attributes["code"]}}, f)
    return {{"json": path}}
"""

pytestmark = pytest.mark.skipif(
    not resolve().confined, reason="this host allows no sandbox (see README: media sandbox)"
)


@pytest.fixture
def secrets(monkeypatch, database_url) -> list[str]:
    """Credentials in this process's environment, as Dagster's would be."""
    values = {
        "WHATSAPP_ACCESS_TOKEN": f"wa-token-{uuid.uuid4().hex}",
        "AWS_SECRET_ACCESS_KEY": f"aws-secret-{uuid.uuid4().hex}",
        "GOOGLE_API_KEY": f"gemini-key-{uuid.uuid4().hex}",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return [*values.values(), database_url]


@dataclass
class Attacked:
    report: Report
    attacker: object  # the member row
    others: list
    campaign_status: str
    texts: list[str]  # every object, metadata entry, log line and error


def attack(engine, s3, body: str, **attributes) -> Attacked:
    source = HOSTILE.format(attack=textwrap.dedent(body))
    campaign_id, _ = create_campaign(
        engine, 3, source, failing=1, attributes={"pid": os.getpid(), **attributes}
    )
    lines: list[str] = []
    run = CampaignMediaRun(
        engine,
        s3,
        str(campaign_id),
        LIMITS,
        Policy(max_attempts=1, backoff_seconds=0.01, failure_threshold=0.5),
        lines.append,
    )
    report = run.run()
    rows = sorted(members(engine, campaign_id), key=lambda r: r.msisdn)
    listing = s3.client.list_objects_v2(Bucket=s3.bucket, Prefix=media_prefix(str(campaign_id)))
    objects = [
        s3.client.get_object(Bucket=s3.bucket, Key=item["Key"])["Body"].read().decode("latin-1")
        for item in listing.get("Contents", ())
    ]
    metadata = [repr(value) for value in report_metadata(report, s3.bucket).values()]
    errors = [row.last_error or "" for row in rows]
    return Attacked(
        report,
        rows[0],
        rows[1:],
        campaign_row(engine, campaign_id).status,
        [*objects, *metadata, *lines, *errors],
    )


def assert_contained(result: Attacked, reason: str, secrets: list[str]) -> None:
    assert result.attacker.status == "failed"
    assert reason in result.attacker.last_error
    assert [row.status for row in result.others] == ["asset_generated", "asset_generated"]
    assert result.campaign_status == "asset_generated"
    for text in result.texts:
        for secret in secrets:
            assert secret not in text


def test_reading_another_process_environment_finds_no_process(engine, s3, secrets):
    result = attack(
        engine,
        s3,
        """
        def attack(attributes, temp_dir):
            loot = []
            for pid in filter(str.isdigit, os.listdir("/proc")):
                for part in ("environ", "cmdline", "mem"):
                    try:
                        with open(f"/proc/{pid}/{part}", "rb") as f:
                            loot.append(f.read(1 << 16))
                    except OSError:
                        pass
            with open(f"/proc/{attributes['pid']}/environ", "rb") as f:
                raise RuntimeError(repr(loot) + repr(f.read()))
        """,
    )
    assert_contained(result, "FileNotFoundError: [Errno 2] No such file or directory", secrets)
    assert "/environ' at gen.py line" in result.attacker.last_error


def test_no_connection_leaves_the_sandbox(engine, s3, secrets):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        database = urlparse(secrets[-1])
        s3_endpoint = urlparse(s3.endpoint_url)
        result = attack(
            engine,
            s3,
            """
            def attack(attributes, temp_dir):
                failures = []
                for host, port in attributes["targets"]:
                    try:
                        socket.create_connection((host, port), timeout=2).close()
                    except OSError as error:
                        failures.append(f"{host}:{port} {error.strerror}")
                    else:
                        return None  # connected: the card is generated as if nothing happened
                raise ConnectionError("; ".join(failures))
            """,
            targets=[
                ["127.0.0.1", listener.getsockname()[1]],
                [database.hostname, database.port],
                [s3_endpoint.hostname, s3_endpoint.port],
                ["1.1.1.1", 443],
            ],
        )
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert_contained(result, "Network is unreachable", secrets)
    assert result.attacker.last_error.count("Network is unreachable") == 4


def processes_named(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if marker in " ".join(process.info["cmdline"] or ()):
            found.append(process)
    return found


def wait_until_gone(marker: str) -> list[psutil.Process]:
    deadline = time.monotonic() + 30
    while (left := processes_named(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def test_a_process_that_left_the_process_group_dies_with_the_timeout(engine, s3, secrets):
    seconds = str(700_000 + os.getpid() % 1000)
    result = attack(
        engine,
        s3,
        """
        def attack(attributes, temp_dir):
            if os.fork() == 0:
                os.setsid()
                if os.fork() == 0:
                    os.execv("/bin/sleep", ["sleep", attributes["marker"]])
                os._exit(0)
            while True:
                time.sleep(1)
        """,
        marker=seconds,
    )
    assert_contained(result, "timed out after 5 s (wall clock); worker replaced", secrets)
    assert wait_until_gone(f"sleep {seconds}") == []


def test_a_process_left_behind_after_returning_is_killed(engine, s3, secrets):
    seconds = str(800_000 + os.getpid() % 1000)
    result = attack(
        engine,
        s3,
        """
        def attack(attributes, temp_dir):
            if os.fork() == 0:
                os.setsid()
                os.execv("/bin/sleep", ["sleep", attributes["marker"]])
            time.sleep(0.2)
            return {"image": "missing.jpg"}
        """,
        marker=seconds,
    )
    assert_contained(result, "image: missing.jpg does not exist", secrets)
    assert wait_until_gone(f"sleep {seconds}") == []


def test_forking_without_limit_stops_at_the_process_limit(engine, s3, secrets):
    result = attack(
        engine,
        s3,
        """
        def attack(attributes, temp_dir):
            while True:
                if os.fork() == 0:
                    time.sleep(600)
                    os._exit(0)
        """,
    )
    assert_contained(
        result, "BlockingIOError: [Errno 11] Resource temporarily unavailable", secrets
    )


def test_the_cpu_time_limit_cannot_be_raised(engine, s3, secrets):
    result = attack(
        engine,
        s3,
        """
        import resource
        def attack(attributes, temp_dir):
            soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
            if hard == resource.RLIM_INFINITY:
                return None  # nothing to raise: the attack succeeded
            unlimited = resource.RLIM_INFINITY
            resource.setrlimit(resource.RLIMIT_CPU, (unlimited, unlimited))
        """,
    )
    assert_contained(result, "ValueError: not allowed to raise maximum limit", secrets)


def test_filling_the_disk_stops_at_the_members_write_budget(engine, s3, secrets):
    result = attack(
        engine,
        s3,
        """
        def attack(attributes, temp_dir):
            for outside in ("/var/tmp/fill", "/fill", os.path.expanduser("~/fill")):
                try:
                    open(outside, "wb").close()
                except OSError:
                    pass
                else:
                    return None  # wrote outside its tmpfs
            chunk = bytes(1 << 20)
            for i in range(100_000):
                with open(os.path.join(temp_dir, f"fill-{i}"), "wb") as f:
                    f.write(chunk)
        """,
    )
    assert_contained(result, "OSError: [Errno 28] No space left on device", secrets)


def test_a_hard_link_to_a_file_outside_temp_dir_is_refused(engine, s3, secrets):
    result = attack(
        engine,
        s3,
        """
        def attack(attributes, temp_dir):
            for target in ("/etc/passwd", "/etc/hostname"):
                try:
                    os.link(target, os.path.join(temp_dir, "leak.txt"))
                    break
                except OSError:
                    pass
            else:
                outside = os.path.join(os.path.dirname(temp_dir), "outside.txt")
                with open(outside, "w") as f:
                    f.write("from outside temp_dir")
                os.link(outside, os.path.join(temp_dir, "leak.txt"))
            return {"text": os.path.join(temp_dir, "leak.txt")}
        """,
    )
    assert_contained(result, "leak.txt has 2 links; a hard link is not accepted", secrets)


def test_a_file_swapped_after_returning_cannot_reach_the_upload(engine, s3, secrets):
    result = attack(
        engine,
        s3,
        """
        import threading
        def attack(attributes, temp_dir):
            path = os.path.join(temp_dir, "card.txt")
            with open(path, "w") as f:
                f.write("harmless")
            def swap():
                while True:
                    os.replace(path, path + ".old")
                    os.symlink("/etc/passwd", path)
                    os.unlink(path)
                    os.replace(path + ".old", path)
            threading.Thread(target=swap, daemon=True).start()
            return {"text": path}
        """,
    )
    assert_contained(
        result, "generate_asset returned while threads it started were still running", secrets
    )


def test_a_forged_preview_never_reaches_the_metadata(engine, s3, secrets):
    result = attack(
        engine,
        s3,
        """
        def attack(attributes, temp_dir):
            worker = sys.modules["__main__"]
            worker.preview = lambda *_: "AAAA)](javascript:alert(1)) ![x](http://evil.example/"
            with open(os.path.join(temp_dir, "card.jpg"), "wb") as f:
                f.write(b"\\xff\\xd8\\xff\\xe0" + bytes(64))
            return {"image": "card.jpg"}
        """,
    )
    # The image itself is acceptable; only the preview is forged, and it is dropped.
    assert result.attacker.status == "asset_generated"
    assert result.report.preview is None
    assert "preview" not in report_metadata(result.report, s3.bucket)
    for text in result.texts:
        assert "evil.example" not in text and all(secret not in text for secret in secrets)


@pytest.mark.parametrize("mechanism", [offered.mechanism for offered in candidates()])
def test_a_hostile_source_run_as_a_sample_returns_no_secret_and_no_connection(secrets, mechanism):
    [isolation] = [offered for offered in candidates() if offered.mechanism == mechanism]
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.setblocking(False)
        source = textwrap.dedent(
            """
            import json, os, socket
            def generate_asset(attributes, name, msisdn, temp_dir):
                loot = {"environ": [], "connected": []}
                for pid in filter(str.isdigit, os.listdir("/proc")):
                    try:
                        with open(f"/proc/{pid}/environ", "rb") as f:
                            loot["environ"].append(f.read().decode(errors="replace"))
                    except OSError:
                        pass
                for port in (attributes["port"], 5432, 443):
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=2).close()
                        loot["connected"].append(port)
                    except OSError:
                        pass
                loot["env"] = dict(os.environ)
                with open("loot.json", "w") as f:
                    json.dump(loot, f)
                if attributes.get("raise"):
                    raise RuntimeError(json.dumps(loot))
                return {"json": "loot.json"}
            """
        )
        port = listener.getsockname()[1]
        member = MemberInput({"port": port}, "Ada", "+12025550100")
        returned = run_sample(source, member, "gen.py", isolation=isolation)
        member = MemberInput({"port": port, "raise": True}, "Ada", "+12025550100")
        raised = run_sample(source, member, "gen.py", isolation=isolation)
        with pytest.raises(BlockingIOError):
            listener.accept()
    assert returned.error is None
    [(asset_type, content_type, data)] = returned.files
    assert (asset_type, content_type) == ("json", "application/json")
    assert b'"connected": []' in data
    assert raised.error.startswith("RuntimeError: ") and raised.files == []
    for text in (data.decode(), returned.output, raised.error, raised.output):
        for secret in secrets:
            assert secret not in text
