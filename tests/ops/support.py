"""Shared helpers of the operations tests: the deploy/ files, the worker's metric names, the external tools."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ALERT_TESTS = DEPLOY / "prometheus" / "tests" / "alerts_test.yml"
OPERATIONS_DOC = REPO / "docs" / "operations.md"
SCRAPE_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "fatigue-guard.json"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
JOB = "fatigue-guard"

INSTALL_HINT = "run `make deps` (deploy/local/test-deps.sh installs the test tools), or `make test`"


def tool(name: str) -> str:
    """The path of an external tool the tests need; missing is a failure, never a skip."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: {INSTALL_HINT}", pytrace=False)
    return path


def compose_command() -> list[str]:
    docker = shutil.which("docker")
    if docker is not None and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    if standalone is not None:
        return [standalone]
    pytest.fail(f"docker compose not found: {INSTALL_HINT}", pytrace=False)


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, **kwargs)


def load_yaml(path: Path) -> Any:
    with open(path) as file:
        return yaml.safe_load(file)


def load_yaml_all(path: Path) -> list[Any]:
    with open(path) as file:
        return [doc for doc in yaml.safe_load_all(file) if doc is not None]


def dashboard() -> dict[str, Any]:
    with open(DASHBOARD) as file:
        data: dict[str, Any] = json.load(file)
    return data


def panel_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title / refId, PromQL) of every query in the dashboard, rows included."""
    found: list[tuple[str, str]] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            for target in panel.get("targets", []):
                found.append((f"{panel['title']} / {target['refId']}", target["expr"]))
            walk(panel.get("panels", []))

    walk(board["panels"])
    return found


def grafana_to_promql(expr: str, *, job: str = JOB, instance: str = ".*", rate_interval: str = "1m") -> str:
    """A dashboard query as Grafana sends it, with the dashboard's variables replaced."""
    return (
        expr.replace("$__rate_interval", rate_interval)
        .replace("${job}", job)
        .replace("$job", job)
        .replace("${instance}", instance)
        .replace("$instance", instance)
    )


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def worker_series_names() -> set[str]:
    """Every series name a worker can expose on /metrics (our metrics and the process collector)."""
    metrics = Metrics()
    names: set[str] = {"up"}
    for family in metrics.registry.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


_METRIC = re.compile(r"\b((?:fatigue|faust|process)_[a-z0-9_]+)\b")


def metric_names_in(expr: str) -> set[str]:
    return set(_METRIC.findall(expr))
