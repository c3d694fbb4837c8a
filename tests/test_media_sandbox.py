"""The sandbox on its own: what user generator code can and cannot do, and what it returns."""

import json
import os
import textwrap

import pytest

from assets_defs.media.runner import CampaignMediaRun, Policy
from resources import settings
from resources.sandbox.isolation import (
    SandboxUnavailable,
    _verdict,
    candidates,
    probe,
    resolve,
)
from resources.sandbox.pool import Generator, Limits, MemberInput, WorkerPool
from tests.media_campaigns import campaign_row, create_campaign, members, versioned

MEMBER = MemberInput({"offer": "10% off", "code": "C001"}, "Ada", "+12025550100")
FAST = Limits(workers=1, timeout_seconds=10, memory_mb=512, cpu_seconds=10)


def generator(source: str, version: int = 1) -> Generator:
    return Generator(
        template_id=1, version=version, file_name="gen.py", source=textwrap.dedent(source)
    )


@pytest.fixture
def pool(tmp_path):
    with WorkerPool(FAST, tmp_path) as running:
        yield running


def run(pool: WorkerPool, source: str, version: int = 1, preview: bool = False):
    return pool.generate(generator(source, version), MEMBER, preview)


def test_the_demo_generator_renders_an_image_and_a_json_file(pool, repo_root):
    source = (repo_root / "assets_defs" / "generators" / "demo_offer.py").read_text()
    outcome = run(pool, source, preview=True)
    assert outcome.ok, outcome.error
    by_type = {f.asset_type: f for f in outcome.files}
    assert set(by_type) == {"image", "json"}
    assert by_type["image"].content_type == "image/jpeg"
    assert by_type["image"].read()[:3] == b"\xff\xd8\xff"
    assert json.loads(by_type["json"].read())["code"] == "C001"
    assert outcome.preview and len(outcome.preview) < 50_000


def test_a_syntax_error_fails_with_the_line_and_is_not_retried(pool):
    outcome = run(pool, "def generate_asset(attributes, name, msisdn, temp_dir)\n    pass\n")
    assert not outcome.ok
    assert "gen.py does not compile" in outcome.error and "line 1" in outcome.error
    assert outcome.retryable is False


def test_a_module_without_generate_asset_is_refused(pool):
    outcome = run(pool, "x = 1\n")
    assert "defines no generate_asset" in outcome.error


def test_an_exception_is_reported_with_where_it_was_raised(pool):
    outcome = run(
        pool,
        """
        def generate_asset(attributes, name, msisdn, temp_dir):
            raise ValueError("no offer for " + name)
        """,
    )
    assert outcome.error == "ValueError: no offer for Ada at gen.py line 3"
    assert outcome.retryable


def test_an_endless_loop_is_killed_at_the_wall_clock_limit_and_the_worker_replaced(tmp_path):
    limits = Limits(workers=1, timeout_seconds=2, memory_mb=512, cpu_seconds=60)
    with WorkerPool(limits, tmp_path) as pool:
        outcome = run(pool, "def generate_asset(a, n, m, t):\n    while True:\n        pass\n")
        assert "timed out after 2 s" in outcome.error
        after = run(pool, "def generate_asset(a, n, m, t):\n    return None\n")
        assert "returned nothing" in after.error  # a fresh worker answered


def test_cpu_time_is_capped_per_member(tmp_path):
    limits = Limits(workers=1, timeout_seconds=30, memory_mb=512, cpu_seconds=1)
    with WorkerPool(limits, tmp_path) as pool:
        outcome = run(pool, "def generate_asset(a, n, m, t):\n    while True:\n        pass\n")
        assert outcome.error == "CPU time limit exceeded; worker replaced"


def test_allocating_4_gib_fails_the_member_not_the_worker(pool):
    outcome = run(
        pool,
        """
        def generate_asset(attributes, name, msisdn, temp_dir):
            blob = bytearray(4 * 1024 ** 3)
            return {"document": "x.pdf"}
        """,
    )
    assert outcome.error == "memory limit exceeded (MemoryError)"


def test_no_secret_reaches_the_generator(pool, monkeypatch):
    secrets = {
        "DATABASE_URL": "postgresql://u:hunter2@db/x",
        "AWS_SECRET_ACCESS_KEY": "aws-secret",
        "AWS_ACCESS_KEY_ID": "aws-id",
        "WHATSAPP_ACCESS_TOKEN": "wa-token",
        "WHATSAPP_APP_SECRET": "wa-secret",
        "GOOGLE_API_KEY": "gemini-key",
        "SOME_NEW_TOKEN": "unlisted",
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    # Workers inherit nothing from the parent's environment but the allow-list, whenever
    # they started.
    with WorkerPool(FAST, pool.work_dir) as fresh:
        outcome = run(
            fresh,
            """
            import json, os
            def generate_asset(attributes, name, msisdn, temp_dir):
                with open("env.json", "w") as f:
                    json.dump(dict(os.environ), f)
                return {"json": "env.json"}
            """,
        )
    seen = json.loads(outcome.files[0].read())
    assert not set(seen) & set(secrets)
    assert not set(seen.values()) & set(secrets.values())
    allowed = {"PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR"}
    assert set(seen) <= allowed | {"OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"}


def test_a_path_outside_temp_dir_is_refused(pool):
    outcome = run(
        pool,
        """
        def generate_asset(attributes, name, msisdn, temp_dir):
            return {"document": "/etc/hostname"}
        """,
    )
    assert outcome.error == "document: /etc/hostname is outside temp_dir"


def test_a_symlink_out_of_temp_dir_is_refused(pool):
    outcome = run(
        pool,
        """
        import os
        def generate_asset(attributes, name, msisdn, temp_dir):
            os.symlink("/etc/hostname", "leak.txt")
            return {"text": "leak.txt"}
        """,
    )
    assert outcome.error == (
        "text: leak.txt goes through a symbolic link; only files inside temp_dir are accepted"
    )


def test_a_directory_is_refused(pool):
    outcome = run(
        pool,
        """
        import os
        def generate_asset(attributes, name, msisdn, temp_dir):
            os.mkdir("pictures.jpg")
            return {"image": os.path.join(temp_dir, "pictures.jpg")}
        """,
    )
    assert outcome.error.endswith("pictures.jpg is not a regular file")


def test_a_50_mb_image_is_over_whatsapps_limit(pool):
    outcome = run(
        pool,
        """
        def generate_asset(attributes, name, msisdn, temp_dir):
            with open("big.jpg", "wb") as f:
                f.write(b"\\xff\\xd8\\xff" + bytes(50 * 1024 * 1024))
            return {"image": "big.jpg"}
        """,
    )
    assert outcome.error == "image: big.jpg is 50.0 MB, over WhatsApp's 5 MB limit for image"


def test_returning_nothing_is_refused(pool):
    outcome = run(pool, "def generate_asset(attributes, name, msisdn, temp_dir):\n    pass\n")
    assert outcome.error == "generate_asset returned nothing (None); expected {asset_type: path}"


@pytest.mark.parametrize(
    ("result", "message"),
    [
        ({}, "generate_asset returned no files"),
        (["a.jpg"], "generate_asset returned list; expected {asset_type: path}"),
        ({"sticker": "a.webp"}, "unknown asset type 'sticker'"),
        ({"image": "a.gif"}, "a.gif has an extension that is not allowed for image"),
        ({"image": "fake.jpg"}, "image: fake.jpg does not hold image/jpeg data"),
        ({"image": "real.png.jpg"}, "image: real.png.jpg does not hold image/jpeg data"),
        ({"document": "fake.pdf"}, "document: fake.pdf does not hold application/pdf data"),
        ({"json": "binary.json"}, "json: binary.json does not hold application/json data"),
        ({"video": "missing.mp4"}, "video: missing.mp4 does not exist"),
        ({"image": 42}, "image: expected a file path, got 42"),
        ({"text": "../a.txt"}, "text: ../a.txt is outside temp_dir"),
    ],
)
def test_returned_values_are_validated(pool, result, message):
    outcome = run(
        pool,
        f"""
        def generate_asset(attributes, name, msisdn, temp_dir):
            for name, data in [("a.gif", b"GIF89a"), ("fake.jpg", b"not an image"),
                               ("real.png.jpg", b"\\x89PNG\\r\\n\\x1a\\n" + bytes(8)),
                               ("fake.pdf", b"<html>"), ("binary.json", b"\\x00\\x01")]:
                with open(name, "wb") as f:
                    f.write(data)
            return {result!r}
        """,
    )
    assert message in outcome.error


def test_output_is_captured_and_the_source_compiled_once_per_worker_and_version(pool):
    source = """
        import os, sys
        print("module loaded")
        CALLS = []
        def generate_asset(attributes, name, msisdn, temp_dir):
            CALLS.append(name)
            print(f"call {len(CALLS)} for {name}")
            print("warning!", file=sys.stderr)
            with open("calls.txt", "w") as f:
                f.write(str(len(CALLS)))
            return {"text": "calls.txt"}
        """
    first, second = run(pool, source), run(pool, source)
    assert first.output == "module loaded\ncall 1 for Ada\nwarning!\n"
    assert second.output == "call 2 for Ada\nwarning!\n"
    assert second.files[0].read() == b"2"
    newer = run(pool, source, version=2)
    assert newer.output.startswith("module loaded\ncall 1")


def test_each_member_gets_a_fresh_temp_dir_as_working_directory(pool):
    source = """
        import os
        def generate_asset(attributes, name, msisdn, temp_dir):
            listing = os.listdir(".")
            with open("seen.txt", "w") as f:
                f.write(os.getcwd() + "|" + ",".join(listing))
            return {"text": "seen.txt"}
        """
    first, second = run(pool, source), run(pool, source)
    cwd_first, listed_first = first.files[0].read().decode().split("|")
    cwd_second, listed_second = second.files[0].read().decode().split("|")
    assert cwd_first != cwd_second
    assert listed_first == listed_second == ""
    assert os.path.basename(cwd_second).startswith("member-")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("MAX_CONCURRENT_GENERATIONS", "five", "MAX_CONCURRENT_GENERATIONS must be a whole number"),
        ("MAX_CONCURRENT_GENERATIONS", "2.5", "MAX_CONCURRENT_GENERATIONS must be a whole number"),
        ("MAX_CONCURRENT_GENERATIONS", "0", "MAX_CONCURRENT_GENERATIONS must be at least 1"),
        ("MEDIA_TIMEOUT_SECONDS", "-1", "MEDIA_TIMEOUT_SECONDS must be at least 0.1"),
        ("MEDIA_FAILURE_THRESHOLD", "1.5", "MEDIA_FAILURE_THRESHOLD must be between 0 and 1"),
    ],
)
def test_unusable_settings_are_refused_by_name(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(settings.InvalidSetting, match=message):
        settings.load(Limits)
        settings.load(Policy)


def test_the_defaults_are_the_documented_ones(monkeypatch):
    for name in ("MAX_CONCURRENT_GENERATIONS", "MEDIA_TIMEOUT_SECONDS", "MEDIA_MEMORY_MB"):
        monkeypatch.delenv(name, raising=False)
    assert settings.load(Limits) == Limits(
        workers=len(os.sched_getaffinity(0)), timeout_seconds=60, memory_mb=512, cpu_seconds=30
    )


def test_the_worker_count_follows_the_cores_unless_set(monkeypatch):
    monkeypatch.setenv("MAX_CONCURRENT_GENERATIONS", "7")
    assert settings.load(Limits).workers == 7
    monkeypatch.delenv("MAX_CONCURRENT_GENERATIONS")
    assert settings.load(Limits).workers == len(os.sched_getaffinity(0)) >= 1


def test_every_mechanism_this_host_offers_passes_its_probe():
    offered = candidates()
    if not offered:
        pytest.skip("no unshare command on this host")
    assert [probe(mechanism) for mechanism in offered] == [None] * len(offered)
    assert resolve() == offered[0]


def test_a_probe_report_that_shows_a_leak_is_refused_with_its_cause():
    sealed = {"processes": ["1"], "interfaces": ["lo"], "capabilities": 0, "read_only_root": True}
    assert _verdict(sealed, None) is None
    assert _verdict({**sealed, "processes": ["1", "42"]}, None) == "other processes are visible"
    assert "network interface" in _verdict({**sealed, "interfaces": ["lo", "eth0"]}, None)
    assert _verdict({**sealed, "uid": 0}, 64_999) == "the worker did not switch to uid 64999"


@pytest.fixture
def no_sandbox(monkeypatch, tmp_path):
    """A host without util-linux `unshare`: no mechanism can isolate generators."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("MEDIA_SANDBOX", raising=False)


def test_production_refuses_generators_without_isolation_and_names_the_cause(
    no_sandbox, monkeypatch, engine, s3
):
    monkeypatch.setenv("APP_ENV", "production")
    with pytest.raises(SandboxUnavailable) as refused:
        resolve()
    assert "the unshare command (util-linux) is not on PATH" in str(refused.value)
    assert "MEDIA_SANDBOX=trusted" in str(refused.value)
    campaign_id, _ = create_campaign(engine, 2, versioned(1))
    run = CampaignMediaRun(engine, s3, str(campaign_id), FAST, Policy(), lambda line: None)
    with pytest.raises(SandboxUnavailable):
        run.run()
    assert campaign_row(engine, campaign_id).status == "approved"  # untouched
    assert {row.status for row in members(engine, campaign_id)} == {"pending"}


def test_trusted_runs_without_isolation_and_warns_at_every_run(no_sandbox, monkeypatch, engine, s3):
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("MEDIA_SANDBOX", "trusted")
    warnings: list[str] = []
    for _ in range(2):
        campaign_id, _ = create_campaign(engine, 2, versioned(1))
        CampaignMediaRun(
            engine, s3, str(campaign_id), FAST, Policy(), lambda line: None, warnings.append
        ).run()
        assert {row.status for row in members(engine, campaign_id)} == {"asset_generated"}
    assert len(warnings) == 2
    assert warnings[0].startswith("MEDIA_SANDBOX=trusted: generator code runs without isolation")


def test_development_falls_back_to_a_plain_process_with_a_warning(no_sandbox, tmp_path, repo_root):
    fallback = resolve()
    assert fallback.mechanism == "none" and not fallback.confined
    assert fallback.warning.startswith("development fallback: generator code runs without")
    source = (repo_root / "assets_defs" / "generators" / "demo_offer.py").read_text()
    with WorkerPool(FAST, tmp_path, fallback) as pool:
        outcome = run(pool, source)
    assert outcome.ok, outcome.error
    assert {f.asset_type for f in outcome.files} == {"image", "json"}


def test_an_unknown_media_sandbox_value_is_refused_by_name(monkeypatch):
    monkeypatch.setenv("MEDIA_SANDBOX", "off")
    with pytest.raises(settings.InvalidSetting, match="MEDIA_SANDBOX must be one of auto, trusted"):
        resolve()
