"""deploy/prometheus: the scrape config and alert rules parse, and the alerts behave (promtool unit tests)."""

from __future__ import annotations

import re
from pathlib import Path

from tests.ops.support import (
    ALERT_TESTS,
    ALERTS,
    DEPLOY,
    JOB,
    OPERATIONS_DOC,
    SCRAPE_CONFIG,
    alert_rules,
    load_yaml,
    metric_names_in,
    run,
    tool,
    worker_series_names,
)

REQUIRED_ALERTS = {
    "FatigueGuardWorkerDown",
    "FatigueGuardNoWorkers",
    "FatigueGuardConsumerLagGrowing",
    "FatigueGuardRedisUnreplicated",
    "FatigueGuardDeadLetterRate",
    "FatigueGuardRedisSinkFailing",
    "FatigueGuardInputSkipped",
    "FatigueGuardWorkerFenced",
    "FatigueGuardTransactionsFailing",
    "FatigueGuardTransactionsSlow",
    "FatigueGuardViolationSpike",
}


def test_alert_rules_parse():
    result = run([tool("promtool"), "check", "rules", str(ALERTS)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(REQUIRED_ALERTS)} rules found" in result.stdout


def test_alert_rule_unit_tests_pass():
    result = run([tool("promtool"), "test", "rules", str(ALERT_TESTS)], cwd=ALERT_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_is_unit_tested_and_documented():
    rules = alert_rules()
    assert {rule["alert"] for rule in rules} == REQUIRED_ALERTS
    tested = {case["alertname"] for test in load_yaml(ALERT_TESTS)["tests"] for case in test.get("alert_rule_test", [])}
    assert tested == REQUIRED_ALERTS
    firing = {
        case["alertname"]
        for test in load_yaml(ALERT_TESTS)["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert firing == REQUIRED_ALERTS, "each alert needs a case where it fires, not only cases where it stays quiet"
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
        assert f'job="{JOB}"' in rule["expr"], rule["alert"]


def test_docs_list_exactly_the_alerts():
    documented = set(re.findall(r"^\| `(FatigueGuard[A-Za-z]+)` \|", OPERATIONS_DOC.read_text(), re.M))
    assert documented == REQUIRED_ALERTS


def test_alerts_only_use_series_the_worker_exposes():
    known = worker_series_names()
    for rule in alert_rules():
        assert metric_names_in(rule["expr"]) <= known, rule["alert"]


def test_compose_scrape_config_is_valid(tmp_path: Path):
    """promtool check config also checks the rule files it names, so point it at the repository's copy."""
    config = SCRAPE_CONFIG.read_text().replace("/etc/prometheus/alerts.yml", str(ALERTS))
    (tmp_path / "prometheus.yml").write_text(config)
    result = run([tool("promtool"), "check", "config", str(tmp_path / "prometheus.yml")])
    assert result.returncode == 0, result.stdout + result.stderr
    scrape = load_yaml(SCRAPE_CONFIG)
    jobs = {job["job_name"]: job for job in scrape["scrape_configs"]}
    assert set(jobs) == {JOB}
    targets = [target for static in jobs[JOB]["static_configs"] for target in static["targets"]]
    compose = load_yaml(DEPLOY / "docker-compose.yml")["services"]
    assert targets == [f"{name}:6066" for name in ("worker-1", "worker-2")]
    assert all(name.split(":")[0] in compose for name in targets)
