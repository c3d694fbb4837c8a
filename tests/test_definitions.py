import json
import subprocess
import sys

import dagster as dg
import pytest
import sqlalchemy as sa

from assets_defs.partitions import campaign_partition_key
from pipelines.definitions import defs, resources
from resources.chat import ChatModelResource
from resources.postgres import PostgresResource
from resources.queue import SQSResource
from resources.storage import S3Storage
from resources.whatsapp import WhatsAppResource


def test_definitions_load():
    dg.Definitions.validate_loadable(defs())


def test_workspace_validates_with_the_dagster_cli(repo_root):
    result = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-w", "workspace.yaml"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "All code locations passed validation" in result.stdout + result.stderr


def test_resources_resolve_from_the_environment_in_a_run(stack, database_url):
    """An asset run receives working resources built from the environment (EnvVar)."""

    @dg.asset
    def probe(
        postgres: PostgresResource,
        s3: S3Storage,
        sqs: SQSResource,
        whatsapp: WhatsAppResource,
        chat_model: ChatModelResource,
    ) -> dict:
        with postgres.engine.connect() as conn:
            version = conn.execute(
                sa.text("SELECT max(version) FROM schema_migrations")
            ).scalar_one()
        s3.ensure_bucket()
        return {
            "version": version,
            "dev_mode": whatsapp.client.dev_mode,
            "offline": chat_model.offline,
            "queue": sqs.url(),
        }

    result = dg.materialize([probe], resources=resources())
    assert result.success
    value = result.output_for_node("probe")
    assert value["version"] >= 1
    assert value["dev_mode"] and value["offline"]
    assert value["queue"].endswith(".fifo")


@pytest.mark.parametrize("bad", ["a,b", "a/b", "a|b", "[x]", "a...b", ""])
def test_campaign_partition_keys_refuse_what_dagster_cannot_hold(bad):
    with pytest.raises(ValueError):
        campaign_partition_key(bad)


def test_campaign_partition_keys_are_campaign_ids():
    assert (
        campaign_partition_key("0b5cbd2c-8d3e-4a55-9a63-0c4a3b6bb8c1")
        == "0b5cbd2c-8d3e-4a55-9a63-0c4a3b6bb8c1"
    )


# What a run of the code location never runs: the agent and its chat model, the web app and
# its async clients, the local stand-ins, dagster_aws's components.
NOT_IMPORTED_BY_THE_CODE_LOCATION = (
    "langchain_core",
    "langchain_google_genai",
    "langgraph",
    "webhook_app",
    "aiohttp",
    "psycopg",
    "httpx",
    "starlette",
    "uvicorn",
    "dagster_aws",
    "moto",
)


def test_the_code_location_imports_only_what_its_runs_need():
    """Every Dagster run process imports the definitions: what they import costs every run."""
    script = (
        "import json, sys\n"
        "import pipelines.definitions\n"
        "pipelines.definitions.defs()\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in"
        f" {NOT_IMPORTED_BY_THE_CODE_LOCATION!r} or m in {NOT_IMPORTED_BY_THE_CODE_LOCATION!r})))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


# Imports every module of the code location with `os.environ` watched, then builds the
# definitions, and prints the variables the project's own code read in each step (a
# library's reads, e.g. Dagster's, do not count).
IMPORT_WATCHED = """
import importlib, json, os, pkgutil, sys

import assets_defs

project = os.getcwd()
environ = type(os.environ)
# os.getenv, environ.get (from Mapping) and the like: the read is their caller's.
passing = {environ.__getitem__.__code__.co_filename, environ.get.__code__.co_filename}
reads = []


def watched(read):
    def wrapper(self, key):
        frame = sys._getframe(1)
        while frame.f_code.co_filename in passing:
            frame = frame.f_back
        name = frame.f_code.co_filename
        if name.startswith(project) and not name.startswith(sys.prefix):
            reads.append(f"{key} ({os.path.relpath(name, project)}:{frame.f_lineno})")
        return read(self, key)

    return wrapper


environ.__getitem__ = watched(environ.__getitem__)
environ.__contains__ = watched(environ.__contains__)
code_location = importlib.import_module("pipelines.definitions")
for module in pkgutil.walk_packages(assets_defs.__path__, "assets_defs."):
    importlib.import_module(module.name)
at_import = list(reads)
code_location.defs()
print(json.dumps({"at_import": at_import, "when_built": reads[len(at_import):]}))
"""


def test_importing_the_code_location_reads_no_setting(repo_root):
    """Settings are read when the definitions are built (the code server's start, each
    run's), never at import: a module imported by a test or a tool reads nothing."""
    result = subprocess.run(
        [sys.executable, "-c", IMPORT_WATCHED],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    reads = json.loads(result.stdout.strip().splitlines()[-1])
    assert reads["at_import"] == []
    assert any(read.startswith("CAMPAIGN_SENSOR_INTERVAL_SECONDS") for read in reads["when_built"])
