"""The production topology on one machine, without containers: the processes compose.yaml
runs, with its environment and the production `dagster.yaml`, against the embedded Postgres
and the local S3/SQS (and the fake Graph API).

The demo campaign is approved through the operator API and must end with every message
`sent`: the daemon's sensors see it, launch the media and dispatch runs through the code
server over gRPC, and the sender sends what they queue. This checks that the production
configuration works, not just that it parses.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg2
import pytest

from pipelines.dev.demo import load_demo
from pipelines.dev.local_stack import free_port, local_stack
from resources.postgres import create_engine
from tests.fake_graph import FakeGraph
from tests.template_payloads import WABA_ID, meta_template

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DEADLINE_SECONDS = 300
MEMBERS = 10
ADMIN_TOKEN = "topology-admin-token"
PHONE_NUMBER_ID = "1234567890"
SENT = ("sent", "delivered", "read")
DEMO_BODY = "Hi {{1}}, {{2}}! Show the code in the picture at checkout."
# The session's stack sets these; this test runs a stack of its own.
_OUTSIDE = (
    "DATABASE_URL",
    "DAGSTER_POSTGRES_URL",
    "AWS_ENDPOINT_URL",
    "DAGSTER_HOME",
    "APP_ENV",
    "WHATSAPP_ACCESS_TOKEN",
    "GOOGLE_API_KEY",
)


class Processes:
    """Processes started in groups of their own, their output in files; all are killed on
    exit, and the tail of each output is printed when the test failed."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs = logs
        self.env = env
        self.started: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *command: str) -> subprocess.Popen:
        with open(self.logs / f"{name}.log", "wb") as log:
            process = subprocess.Popen(
                command,
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started[name] = process
        return process

    def check_alive(self) -> None:
        for name, process in self.started.items():
            assert process.poll() is None, f"{name} exited with {process.returncode}"

    def tails(self, lines: int = 40) -> str:
        out = []
        for name in self.started:
            text = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()
            out.append(f"----- {name} (last {lines} lines) -----")
            out.extend(text[-lines:])
        return "\n".join(out)

    def stop(self) -> None:
        for process in self.started.values():
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in self.started.values():
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            # The group too: runs the code server launched, sandbox workers.
            _signal_group(process, signal.SIGKILL)
            process.wait()


def _signal_group(process: subprocess.Popen, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def _wait_for(what: str, condition: Callable[[], object], processes: Processes) -> object:
    deadline = time.monotonic() + DEADLINE_SECONDS
    while time.monotonic() < deadline:
        processes.check_alive()
        result = condition()
        if result:
            return result
        time.sleep(1)
    raise AssertionError(f"timed out waiting for {what}")


def _grpc_healthy(port: int) -> bool:
    """compose.yaml's health check of the `code` service."""
    checked = subprocess.run(
        [
            str(BIN / "dagster"),
            "api",
            "grpc-health-check",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        capture_output=True,
    )
    return checked.returncode == 0


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _production_env(tmp_path: Path, graph_url: str, code_port: int) -> dict[str, str]:
    """What compose.yaml and the image give every process, with dummy secrets."""
    return {
        **os.environ,
        "APP_ENV": "production",
        "DAGSTER_HOME": str(REPO / "deploy" / "dagster" / "single-host"),
        "DAGSTER_STORAGE_DIR": str(tmp_path / "dagster_storage"),
        "DAGSTER_COMPUTE_LOGS_DIR": str(tmp_path / "dagster_storage" / "compute_logs"),
        "DAGSTER_MAX_CONCURRENT_RUNS": "4",
        "DAGSTER_CODE_HOST": "127.0.0.1",
        "DAGSTER_CODE_PORT": str(code_port),
        "S3_BUCKET": "whatsapp-campaigns",  # the one the stack created
        "WHATSAPP_API_BASE_URL": graph_url,
        "WHATSAPP_ACCESS_TOKEN": "test-token",  # the fake Graph API's
        "WHATSAPP_PHONE_NUMBER_ID": PHONE_NUMBER_ID,
        "WHATSAPP_APP_SECRET": "topology-app-secret",
        "WHATSAPP_VERIFY_TOKEN": "topology-verify-token",
        "ADMIN_API_TOKEN": ADMIN_TOKEN,
        "SENDER_WAIT_SECONDS": "1",
    }


@dataclass
class Topology:
    processes: Processes
    graph: FakeGraph
    api: str
    webserver: str
    dagster_url: str


LOCATIONS = (
    "{ workspaceOrError { ... on Workspace { locationEntries { name loadStatus"
    " locationOrLoadError { __typename ... on PythonError { message } } } } } }"
)


def _locations(webserver: str) -> list[dict] | None:
    """The webserver's code locations, once it answers."""
    try:
        answer = httpx.post(f"{webserver}/graphql", json={"query": LOCATIONS}, timeout=10)
    except httpx.HTTPError:
        return None
    if answer.status_code != 200:
        return None
    return answer.json()["data"]["workspaceOrError"]["locationEntries"]


def _daemon_runs(dagster_url: str) -> dict[str, set[str]]:
    """Each campaign tag's run statuses, as Dagster's run storage holds them."""
    conn = psycopg2.connect(dagster_url.replace("postgresql+psycopg2://", "postgresql://"))
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT t.key, r.status FROM runs r JOIN run_tags t ON t.run_id = r.run_id"
                " WHERE t.key IN ('media_campaign', 'dispatch_campaign')"
            )
            found: dict[str, set[str]] = {}
            for key, status in cur.fetchall():
                found.setdefault(key, set()).add(status)
            return found
    finally:
        conn.close()


@pytest.fixture
def production(tmp_path, monkeypatch, graph) -> Iterator[Topology]:
    for name in _OUTSIDE:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WHATSAPP_PHONE_NUMBER_ID", PHONE_NUMBER_ID)  # the demo's number
    graph.add_phone_number(PHONE_NUMBER_ID)
    with ExitStack() as cleanup:
        stack = cleanup.enter_context(local_stack(tmp_path / "state"))
        code_port, webserver_port, app_port = free_port(), free_port(), free_port()
        env = _production_env(tmp_path, graph.url, code_port)
        processes = Processes(tmp_path, env)
        cleanup.callback(processes.stop)
        migrate = subprocess.run(
            [str(BIN / "waflow"), "migrate"], cwd=REPO, env=env, capture_output=True, text=True
        )
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        processes.start(
            "code",
            str(BIN / "dagster"),
            *("api", "grpc", "--module-name", "pipelines.definitions"),
            *("--host", "127.0.0.1", "--port", str(code_port)),
        )
        processes.start(
            "webhook-app",
            str(BIN / "waflow"),
            *("webhook-app", "--host", "127.0.0.1", "--port", str(app_port)),
        )
        processes.start("webhook-worker", str(BIN / "waflow"), "webhook-worker")
        processes.start("sender", str(BIN / "waflow"), "sender")
        # As compose.yaml's `depends_on: code: service_healthy`.
        _wait_for("the code server", lambda: _grpc_healthy(code_port), processes)
        workspace = str(REPO / "deploy" / "workspace.yaml")
        processes.start(
            "dagster-webserver",
            str(BIN / "dagster-webserver"),
            *("-h", "127.0.0.1", "-p", str(webserver_port), "-w", workspace),
        )
        processes.start("dagster-daemon", str(BIN / "dagster-daemon"), "run", "-w", workspace)
        try:
            yield Topology(
                processes,
                graph,
                api=f"http://127.0.0.1:{app_port}",
                webserver=f"http://127.0.0.1:{webserver_port}",
                dagster_url=stack.env["DAGSTER_POSTGRES_URL"],
            )
        finally:
            print(processes.tails())  # pytest shows it when the test fails


def test_the_production_processes_send_a_campaign_approved_through_the_operator_api(
    production,
):
    processes, api = production.processes, production.api
    engine = create_engine(os.environ["DATABASE_URL"])
    try:
        campaign = load_demo(engine, members=MEMBERS, approved=False)
    finally:
        engine.dispose()
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    _wait_for("the webhook app", lambda: _answers(f"{api}/health"), processes)
    # Production approves a campaign only on a template Meta has APPROVED: Meta holds the
    # demo's, and the operator syncs the organisation's templates.
    draft = httpx.get(f"{api}/api/campaigns/{campaign}/status", headers=headers, timeout=10)
    assert draft.json()["status"] == "draft", draft.text
    organisation = draft.json()["organisation_id"]
    production.graph.set_templates(
        WABA_ID, [meta_template("demo_offer", "en", header="IMAGE", body=DEMO_BODY)]
    )
    waba = httpx.patch(
        f"{api}/api/organisations/{organisation}",
        headers=headers,
        json={"waba_id": WABA_ID},
        timeout=10,
    )
    assert waba.status_code == 200, waba.text
    synced = subprocess.run(
        [str(BIN / "waflow"), "templates", "sync"],
        cwd=REPO,
        env=processes.env,
        capture_output=True,
        text=True,
    )
    assert synced.returncode == 0, synced.stdout + synced.stderr
    approved = httpx.post(f"{api}/api/campaigns/{campaign}/approve", headers=headers, timeout=30)
    assert approved.status_code == 200, approved.text
    assert approved.json()["status"] == "approved"

    [location] = _wait_for("the webserver", lambda: _locations(production.webserver), processes)
    assert location["name"] == "waflow", location
    assert location["loadStatus"] == "LOADED", location
    assert location["locationOrLoadError"]["__typename"] == "RepositoryLocation", location

    def all_sent_by_finished_runs() -> bool:
        status = httpx.get(f"{api}/api/campaigns/{campaign}/status", headers=headers, timeout=10)
        assert status.status_code == 200, status.text
        messages = status.json()["messages"]
        assert not set(messages) - {"pending", "sending", *SENT}, messages
        if sum(messages.get(s, 0) for s in SENT) < MEMBERS:
            return False
        runs = _daemon_runs(production.dagster_url)
        assert not {"FAILURE", "CANCELED"} & set().union(*runs.values()), runs
        return runs == {"media_campaign": {"SUCCESS"}, "dispatch_campaign": {"SUCCESS"}}

    _wait_for(
        "every message sent by runs the daemon launched", all_sent_by_finished_runs, processes
    )
    accepted = production.graph.accepted()
    assert len(accepted) == MEMBERS
    assert {r["template"]["name"] for r in accepted} == {"demo_offer"}
