"""A real Prometheus server (Debian's package, run as a subprocess) scrapes a real worker under load.

Checks the issue's "done when": ``promtool check metrics`` is clean on live scrapes taken while the worker works
through a backlog; Prometheus ingests the key series; every Grafana panel query returns series; the alert rules
load and evaluate without errors. Also runs the image's HEALTHCHECK command against the live worker.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from fatigue.generate import generate_messages
from tests.e2e.harness import GuardDeployment, free_port
from tests.ops.support import ALERTS, DEPLOY, JOB, dashboard, grafana_to_promql, panel_queries, tool

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KEY_SERIES = {
    # query -> why it matters
    f'up{{job="{JOB}"}} == 1': "the worker is scraped",
    "sum(fatigue_events_total) > 0": "events by type, channel and category",
    "sum(fatigue_rejected_total) > 0": "rejected inputs by reason",
    'sum(fatigue_decisions_total{action="block"}) > 0': "decisions by action, reason and channel",
    "sum(fatigue_active_blocks) > 0": "active blocks by channel",
    "sum by (sender) (fatigue_violations_total) > 0": "sender violations by sender",
    "sum(fatigue_event_to_decision_seconds_count) > 0": "event-time-to-decision latency histogram",
    "fatigue_consumer_lag_messages": "processing lag per partition",
    "fatigue_redis_failures_total": "Redis write failures",
    "fatigue_redis_reconciles_total > 0": "Redis reconcile runs",
    "sum(fatigue_state_customers) > 0": "state size",
    "sum(faust_messages_received_per_topic_total) > 0": "faust's own sensor",
}


def http_get(url: str, timeout: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
        return body


def wait_for(what: str, check: Any, timeout_s: float, interval_s: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except Exception as error:  # not up yet
            last = error
        time.sleep(interval_s)
    raise AssertionError(f"timed out waiting for {what}: {last!r}")


class PrometheusServer:
    """``prometheus`` from Debian as a child process with its own config, storage and port."""

    def __init__(self, workdir: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "rule_files": [str(ALERTS)],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(workdir / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                tool("prometheus"),
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.workdir = workdir

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"prometheus exited:\n{(self.workdir / 'prometheus.log').read_text()[-3000:]}")
            return http_get(f"{self.url}/-/ready").startswith(b"Prometheus")

        wait_for("prometheus to be ready", ready, 30)

    def query(self, promql: str) -> list[dict[str, Any]]:
        body = http_get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        answer = json.loads(body)
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def rules(self) -> list[dict[str, Any]]:
        answer = json.loads(http_get(f"{self.url}/api/v1/rules"))
        return [rule for group in answer["data"]["groups"] for rule in group["rules"]]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        self.log.close()


class LiveTraffic:
    """Events stamped with the current time, a small batch every quarter second, until stopped (at most 90 s)."""

    def __init__(self, deployment: GuardDeployment) -> None:
        self.deployment = deployment
        self.stop_event = threading.Event()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        started = time.monotonic()
        seed = 1000
        while not self.stop_event.is_set() and time.monotonic() - started < 90:
            now_ms = int(time.time() * 1000)
            seed += 1
            self.sent += self.deployment.produce(
                generate_messages(60, 300, seed, start_ms=now_ms - 2_000, span_days=2 / 86_400)
            )
            self.stop_event.wait(0.25)

    def __enter__(self) -> LiveTraffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_event.set()
        self.thread.join(timeout=30)


@pytest.fixture
def guard(bootstrap_servers: str, redis_url: str, tmp_path: Path) -> Iterator[tuple[GuardDeployment, int]]:
    deployment = GuardDeployment(bootstrap_servers, redis_url, tmp_path / "guard")
    deployment.workdir.mkdir()
    web_port = free_port()
    try:
        deployment.create_topics()
        process = deployment.start_worker("w1", "--web-port", str(web_port))

        def healthy() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"worker exited {process.returncode}:\n{deployment.log_tail('w1')}")
            return b'"ok"' in http_get(f"http://127.0.0.1:{web_port}/health")

        wait_for("the worker's /health", healthy, 90)
        yield deployment, web_port
    finally:
        deployment.cleanup()


def lag_total(exposition: str) -> float:
    return sum(
        float(value) for value in re.findall(r"^fatigue_consumer_lag_messages\{[^}]*\} (\S+)$", exposition, re.M)
    )


def test_prometheus_scrapes_a_worker_under_load(guard: tuple[GuardDeployment, int], tmp_path: Path):
    deployment, web_port = guard
    metrics_url = f"http://127.0.0.1:{web_port}/metrics"
    prometheus = PrometheusServer(tmp_path, f"127.0.0.1:{web_port}")
    try:
        prometheus.wait_ready()
        now_ms = int(time.time() * 1000)
        # a backlog of the last two hours (with the generator's malformed messages, duplicates and late events)
        backlog = deployment.produce(generate_messages(20_000, 300, 7, start_ms=now_ms - 7_200_000, span_days=2 / 24))
        assert backlog == 20_000
        with LiveTraffic(deployment) as traffic:
            # --- promtool check metrics on live scrapes while the worker works through the backlog
            lags: list[float] = []
            for _ in range(4):
                exposition = http_get(metrics_url)
                lint = subprocess.run([tool("promtool"), "check", "metrics"], input=exposition, capture_output=True)
                assert lint.returncode == 0, (lint.stdout + lint.stderr).decode()
                assert b"fatigue_events_total{" in exposition or not lags  # traffic reaches the metrics
                lags.append(lag_total(exposition.decode()))
                time.sleep(1.5)
            assert max(lags) > 0, f"the worker was not under load while scraped (lag {lags})"

            # --- the key series, as Prometheus stored them
            def key_series_present() -> dict[str, str]:
                return {query: why for query, why in KEY_SERIES.items() if not prometheus.query(query)}

            wait_for("every key series in Prometheus", lambda: not key_series_present(), 90, 1.0)
            lag_topics = {series["metric"]["topic"] for series in prometheus.query("fatigue_consumer_lag_messages")}
            # the input's lag (the guard's group) and the Redis view's on the decisions and prefs topics (its own)
            assert {deployment.topics[key] for key in ("events", "decisions", "prefs")} <= lag_topics, lag_topics
            blocked = prometheus.query("sum by (channel) (fatigue_active_blocks) > 0")
            assert {series["metric"]["channel"] for series in blocked} >= {"email", "sms", "call"}
            senders = {series["metric"]["sender"] for series in prometheus.query("fatigue_violations_total")}
            assert senders >= {"crm", "newsletter"} and not any(name.startswith("cust-") for name in senders)

            # --- every dashboard query returns series
            queries = [
                (title, grafana_to_promql(expr, rate_interval="30s")) for title, expr in panel_queries(dashboard())
            ]

            def empty_panels() -> list[str]:
                return [title for title, query in queries if not prometheus.query(query)]

            try:
                wait_for("every dashboard query to return series", lambda: not empty_panels(), 60, 2.0)
            except AssertionError:
                pytest.fail(f"dashboard queries without series: {empty_panels()}")
            assert traffic.sent > 0

        # --- the alert rules are loaded and evaluate cleanly against real series
        def rules_evaluated() -> list[dict[str, Any]]:
            rules = prometheus.rules()
            return rules if rules and all(rule.get("lastEvaluation", "").startswith("20") for rule in rules) else []

        rules = wait_for("the alert rules to be evaluated", rules_evaluated, 30)
        assert {rule["name"] for rule in rules} == {
            rule["alert"] for rule in yaml.safe_load(ALERTS.read_text())["groups"][0]["rules"]
        }
        assert all(rule["health"] == "ok" and not rule.get("lastError") for rule in rules), rules
        firing = {series["metric"]["alertname"] for series in prometheus.query('ALERTS{alertstate="firing"}')}
        assert not firing & {"FatigueGuardWorkerDown", "FatigueGuardNoWorkers"}
    finally:
        prometheus.stop()


def test_the_image_healthcheck_command_passes_against_a_live_worker(guard: tuple[GuardDeployment, int]):
    _, web_port = guard
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    command = re.search(r"HEALTHCHECK .*?\\\n\s+CMD (.+)$", dockerfile, re.M)
    assert command is not None
    env = dict(os.environ, FATIGUE_WEB_HOST="127.0.0.1", FATIGUE_WEB_PORT=str(web_port))
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"  # the image's `python`
    result = subprocess.run(["sh", "-c", command.group(1)], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    env["FATIGUE_WEB_PORT"] = str(free_port())  # nothing listens there: the check must fail
    result = subprocess.run(["sh", "-c", command.group(1)], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert shlex.split(command.group(1))[0] == "python"
