"""The deployment files agree with the code: every wafleet container runs a command the CLI
accepts (parsed by `wafleet`'s own parser, and listed by `wafleet --help`), the gateway's ports
match its settings and its probes hit the gateway's health routes, Flower runs the Celery app
module that exists. Kubernetes manifests and docker-compose.yml are parsed as YAML."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from config.settings import Settings
from workers.cli import CliError, build_parser
from workers.gateway import build_api

ROOT = Path(__file__).resolve().parents[1]
K8S = sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
GATEWAY_PORT = Settings.model_fields["gateway_port"].default
FLOWER = ["celery", "-A", "workers.flower"]


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _containers() -> dict[str, dict[str, Any]]:
    found = {}
    for path in K8S:
        for doc in _docs(path):
            spec = doc.get("spec", {}).get("template", {}).get("spec", {})
            for c in spec.get("containers", []):
                found[f"{doc['metadata']['name']}/{c['name']}"] = {**c, "kind": doc["kind"]}
    return found


def _services() -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for path in K8S for d in _docs(path) if d["kind"] == "Service"}


def _cli_accepts(argv: list[str]) -> None:
    """The CLI's own parser takes argv (k8s `$(VAR)` expansions stand for a value)."""
    concrete = [re.sub(r"\$\(\w+\)", "pod-0", a) for a in argv]
    try:
        build_parser().parse_args(concrete)
    except (CliError, SystemExit) as exc:
        pytest.fail(f"wafleet does not accept {argv}: {exc}")


@pytest.fixture(scope="module")
def help_commands() -> set[str]:
    out = subprocess.run(
        [sys.executable, "-m", "workers.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        timeout=120,
    ).stdout
    (choices,) = re.findall(r"\{([a-z,]+)\}", out)[:1]
    return set(choices.split(","))


def test_manifests_parse_and_cover_every_process() -> None:
    assert K8S
    containers = _containers()
    assert set(containers) >= {
        "wafleet-migrate/migrate",
        "wafleet-gateway/gateway",
        "wafleet-routing/routing",
        "wafleet-session/session",
        "wafleet-beat/beat",
        "wafleet-flower/flower",
    }
    for name, c in containers.items():
        assert c["image"].startswith("wafleet:"), name
        assert c["envFrom"] == [{"secretRef": {"name": "wafleet"}}], name


def test_every_wafleet_command_exists(help_commands: set[str]) -> None:
    assert {"gateway", "worker", "beat", "db"} <= help_commands
    for name, c in _containers().items():
        if c.get("command") == FLOWER:
            continue
        assert "command" not in c, name  # the image's entry point is `wafleet`
        assert c["args"][0] in help_commands, name
        _cli_accepts(c["args"])
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, service in compose["services"].items():
        if service.get("image") != "wafleet:latest":
            continue
        if service.get("entrypoint") == FLOWER:
            continue
        assert service["command"][0] in help_commands, name
        _cli_accepts(service["command"])


def test_gateway_ports_and_probes_match_the_app() -> None:
    paths = set(build_api().openapi()["paths"])
    gateway = _containers()["wafleet-gateway/gateway"]
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    (port,) = gateway["ports"]
    assert port["containerPort"] == GATEWAY_PORT == int(env["WAFLEET_GATEWAY_PORT"])
    assert env["WAFLEET_GATEWAY_HOST"] == "0.0.0.0"
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["name"]}
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert {"/readyz", "/healthz"} <= paths
    Settings(log_format=env["WAFLEET_LOG_FORMAT"])  # a value the settings accept
    service = _services()["wafleet-gateway"]
    assert service["spec"]["selector"] == gateway_labels()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [port["name"]]

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["gateway"]
    assert int(compose["environment"]["WAFLEET_GATEWAY_PORT"]) == GATEWAY_PORT
    assert compose["ports"] == [f"{GATEWAY_PORT}:{GATEWAY_PORT}"]
    assert f"127.0.0.1:{GATEWAY_PORT}/readyz" in " ".join(compose["healthcheck"]["test"])


def test_session_workers_serve_their_metrics_where_scraped() -> None:
    """The session pods and the compose service turn the worker's metrics server on, on an
    address reachable from outside the container, on the port the scrape annotations name."""
    session = _containers()["wafleet-session/session"]
    env = {e["name"]: e.get("value") for e in session["env"] if "value" in e}
    settings = Settings(
        session_metrics_host=env["WAFLEET_SESSION_METRICS_HOST"],
        session_metrics_port=env["WAFLEET_SESSION_METRICS_PORT"],
    )
    assert settings.session_metrics_host == "0.0.0.0"
    (port,) = session["ports"]
    assert port == {"name": "metrics", "containerPort": settings.session_metrics_port}
    annotations = _template_metadata("wafleet-session")["annotations"]
    assert annotations["prometheus.io/port"] == str(settings.session_metrics_port)
    assert annotations["prometheus.io/path"] == "/metrics"
    assert Settings.model_fields["session_metrics_port"].default == 0  # off unless deployed on

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["session"]
    assert compose["environment"]["WAFLEET_SESSION_METRICS_HOST"] == "0.0.0.0"
    assert int(compose["environment"]["WAFLEET_SESSION_METRICS_PORT"]) == port["containerPort"]
    assert compose["expose"] == [str(port["containerPort"])]
    # The service still gets the fleet's common environment (database, broker, master key).
    assert "WAFLEET_DATABASE_URL" in compose["environment"]


def _template_metadata(deployment: str) -> dict[str, Any]:
    for path in K8S:
        for d in _docs(path):
            if d["kind"] == "Deployment" and d["metadata"]["name"] == deployment:
                metadata: dict[str, Any] = d["spec"]["template"]["metadata"]
                return metadata
    raise AssertionError(f"no {deployment} Deployment")


def gateway_labels() -> dict[str, str]:
    for path in K8S:
        for d in _docs(path):
            if d["kind"] == "Deployment" and d["metadata"]["name"] == "wafleet-gateway":
                labels: dict[str, str] = d["spec"]["template"]["metadata"]["labels"]
                assert d["spec"]["selector"]["matchLabels"] == labels
                return labels
    raise AssertionError("no gateway Deployment")


def test_flower_runs_the_fleets_celery_app() -> None:
    flower = _containers()["wafleet-flower/flower"]
    assert flower["command"] == FLOWER
    assert importlib.util.find_spec("workers.flower") is not None
    assert importlib.util.find_spec("flower") is not None
    assert flower["args"][0] == "flower"
    (port,) = flower["ports"]
    assert f"--port={port['containerPort']}" in flower["args"]
    service = _services()["wafleet-flower"]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [port["name"]]
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["flower"]
    assert compose["entrypoint"] == FLOWER
    assert compose["ports"] == [f"{port['containerPort']}:{port['containerPort']}"]
