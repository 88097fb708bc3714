"""deploy/docker-compose.yml, deploy/Dockerfile and deploy/k8s: parsed and validated without a Docker engine or a
cluster (docker compose config; Kubernetes JSON schemas bundled by kubernetes-validate), plus the cross-references
that no schema checks (selectors, ports, volumes, settings names, the alert rules)."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from streams.settings import _ENV as SETTINGS_ENV
from tests.ops.support import ALERTS, DEPLOY, JOB, K8S, REPO, compose_command, load_yaml, load_yaml_all, run

KNOWN_SETTINGS = set(SETTINGS_ENV.values())
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}


def k8s_documents() -> dict[str, list[dict[str, Any]]]:
    return {path.name: load_yaml_all(path) for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml"}


def by_kind(kind: str) -> dict[str, Any]:
    found = [doc for docs in k8s_documents().values() for doc in docs if doc["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


# ------------------------------------------------------------------------------------------ compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The compose file as Docker Compose itself resolves it (anchors, merges, defaults, relative paths)."""
    result = run([*compose_command(), "-f", str(DEPLOY / "docker-compose.yml"), "config", "--format", "json"])
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def test_compose_has_the_whole_stack(compose: dict[str, Any]):
    services = compose["services"]
    assert set(services) == {"kafka", "redis", "worker-1", "worker-2", "prometheus", "grafana"}
    assert services["kafka"]["image"].startswith("apache/kafka:4.")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, one node
    for name in ("worker-1", "worker-2"):
        worker = services[name]
        assert Path(worker["build"]["context"]).resolve() == REPO
        assert (REPO / worker["build"]["dockerfile"]).resolve() == (DEPLOY / "Dockerfile").resolve()
        env = worker["environment"]
        assert set(env) <= KNOWN_SETTINGS, set(env) - KNOWN_SETTINGS
        assert env["FATIGUE_BOOTSTRAP"] == "kafka:9092" and env["FATIGUE_REDIS_URL"].startswith("redis://redis:")
        assert env["FATIGUE_WEB_HOST"] == worker["hostname"] == name  # bound and advertised on its own address
        assert env["FATIGUE_DATA_DIR"] == "/data"
        assert any(volume["target"] == "/data" and volume["type"] == "volume" for volume in worker["volumes"])
        assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert (
        services["worker-1"]["environment"]["FATIGUE_APP_ID"] == services["worker-2"]["environment"]["FATIGUE_APP_ID"]
    )
    assert services["worker-1"]["volumes"] != services["worker-2"]["volumes"]  # one RocksDB each


def test_compose_bind_mounts_exist(compose: dict[str, Any]):
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), (name, volume["source"])


def test_dockerfile_installs_the_project_and_runs_the_worker():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    for source in re.findall(r"^COPY (.+) \S+$", text, re.M):
        if source.startswith("--from="):
            continue  # a copy out of the build stage, not from the repository
        for path in source.split():
            assert (REPO / path).exists(), path
    assert 'ENTRYPOINT ["fatigue", "worker"]' in text
    # the worker's settings, and setup.py's switch (the dependency layer installs an empty package: nothing to build)
    assert set(re.findall(r"\b(FATIGUE_[A-Z_]+)=", text)) <= KNOWN_SETTINGS | {"FATIGUE_PURE_PYTHON"}
    # the runtime image runs the compiled core, built in a stage that has a compiler, and refuses to build without
    assert re.search(r"^FROM python:3\.11 AS build$", text, re.M) and "pip wheel" in text
    assert "core_flavour() == 'compiled'" in text
    assert "USER fatigue" in text and "/data" in text
    ignored = (REPO / ".dockerignore").read_text().splitlines()
    assert ignored[1:2] == ["*"] and {"!fatigue/", "!streams/", "!config/", "!pyproject.toml", "!setup.py"} <= set(
        ignored
    )


# ------------------------------------------------------------------------------------------ kubernetes


def test_kustomization_lists_every_manifest():
    kustomization = load_yaml(K8S / "kustomization.yaml")
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(k8s_documents())


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_builtin_resources_match_the_kubernetes_schemas(version: str):
    checked = 0
    for name, docs in k8s_documents().items():
        for doc in docs:
            if (doc["apiVersion"], doc["kind"]) in CRDS:
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{name}: {error}")
            checked += 1
    assert checked >= 5


def test_the_schema_check_does_reject_a_broken_manifest():
    broken = copy.deepcopy(by_kind("StatefulSet"))
    broken["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSIONS[-1], strict=True)
    unknown = copy.deepcopy(by_kind("Service"))
    unknown["spec"]["portz"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(unknown, K8S_VERSIONS[-1], strict=True)


def test_every_resource_is_named_and_namespaced():
    for name, docs in k8s_documents().items():
        for doc in docs:
            assert doc["metadata"]["name"], name
            if doc["kind"] != "Namespace":
                assert doc["metadata"]["namespace"] == "fatigue-guard", name


def test_statefulset_service_and_monitor_fit_together():
    statefulset, service, monitor = by_kind("StatefulSet"), by_kind("Service"), by_kind("ServiceMonitor")
    pod = statefulset["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert statefulset["spec"]["serviceName"] == service["metadata"]["name"] == JOB  # the `job` label of alerts
    assert service["spec"]["clusterIP"] == "None"  # headless: stable pod names, every pod scraped
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    container = pod["spec"]["containers"][0]
    port_names = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert {port["name"] for port in service["spec"]["ports"]} <= set(port_names)
    assert [endpoint["port"] for endpoint in monitor["spec"]["endpoints"]] == ["http"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    config = by_kind("ConfigMap")
    assert port_names["http"] == int(config["data"]["FATIGUE_WEB_PORT"])
    assert {ref["configMapRef"]["name"] for ref in container["envFrom"]} == {config["metadata"]["name"]}


def test_each_worker_keeps_its_rocksdb_on_its_own_volume():
    statefulset = by_kind("StatefulSet")
    claims = {claim["metadata"]["name"]: claim for claim in statefulset["spec"]["volumeClaimTemplates"]}
    mounts = {
        mount["name"]: mount["mountPath"]
        for mount in statefulset["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    }
    data_dir = by_kind("ConfigMap")["data"]["FATIGUE_DATA_DIR"]
    assert [name for name, path in mounts.items() if path == data_dir] == ["data"]
    assert claims["data"]["spec"]["accessModes"] == ["ReadWriteOnce"]
    security = statefulset["spec"]["template"]["spec"]["securityContext"]
    assert security["fsGroup"] == security["runAsUser"] == 10001  # the image's user can write the volume


def test_worker_settings_are_real_settings():
    config = by_kind("ConfigMap")["data"]
    assert set(config) <= KNOWN_SETTINGS, set(config) - KNOWN_SETTINGS
    env = by_kind("StatefulSet")["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {variable["name"] for variable in env} <= KNOWN_SETTINGS
    assert all(isinstance(value, str) for value in config.values())  # ConfigMap data must be strings


def test_prometheus_rule_carries_exactly_the_alert_rules():
    rule = by_kind("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["spec"] == load_yaml(ALERTS), "deploy/k8s/prometheusrule.yaml differs from deploy/prometheus/alerts.yml"
