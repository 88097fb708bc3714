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
import shutil
import signal
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
from kafka import KafkaConsumer, TopicPartition

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
    'sum(fatigue_transactions_total{outcome="committed"}) > 0': "the pipeline's transactions by outcome",
    "sum(fatigue_transaction_seconds_count) > 0": "transaction time histogram",
    'fatigue_transactions_total{outcome=~"fenced|failed"} == 0': "fenced and failed transactions, from the start",
    "fatigue_restored_records_total": "changelog records restored (none here: see the wiped-store test)",
    "fatigue_input_skipped_records_total == 0": "input deleted before it was read (none here)",
    'fatigue_core_info{flavour=~"native|python-compiled|python-pure"} == 1': "the engine the worker runs",
}
# Faust only hosts the worker (web server, timers): it runs no consumer, so it has no series of its own to show
NOT_EXPORTED = re.compile(rb"^faust_", re.M)


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
        # gauges refreshed often: the worker drains a 20k backlog in about a second, the default 5 s would miss it
        process = deployment.start_worker("w1", "--web-port", str(web_port), "--gauge-interval", "0.25")

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
        # A backlog of the last two hours (with the generator's malformed messages, duplicates and late events),
        # produced while the worker is frozen (well within its session): it keeps up with a producer, so only a
        # backlog that is there when it wakes is one it works through while scraped.
        worker = deployment.workers["w1"]
        worker.send_signal(signal.SIGSTOP)
        try:
            backlog = deployment.produce(
                generate_messages(20_000, 300, 7, start_ms=now_ms - 7_200_000, span_days=2 / 24)
            )
        finally:
            worker.send_signal(signal.SIGCONT)
        assert backlog == 20_000
        with LiveTraffic(deployment) as traffic:
            # --- promtool check metrics on live scrapes while the worker works through the backlog
            lags: list[float] = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and (len(lags) < 4 or max(lags) == 0):
                exposition = http_get(metrics_url)
                lint = subprocess.run([tool("promtool"), "check", "metrics"], input=exposition, capture_output=True)
                assert lint.returncode == 0, (lint.stdout + lint.stderr).decode()
                assert not NOT_EXPORTED.search(exposition)
                lags.append(lag_total(exposition.decode()))
                time.sleep(0.1)
            assert max(lags) > 0, f"the worker was not under load while scraped (lag {lags})"
            assert b"fatigue_events_total{" in http_get(metrics_url)  # traffic reaches the metrics

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
            # the transactions Prometheus counted are the ones the worker committed: one per partition and batch,
            # at least one per partition that had input, each partition's whole input in them
            committed = prometheus.query('sum(fatigue_transactions_total{outcome="committed"})')
            assert float(committed[0]["value"][1]) >= deployment.partitions

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
        # one worker that owns every partition: nobody fences it, and its transactions commit
        assert not prometheus.query('sum(fatigue_transactions_total{outcome=~"fenced|failed"}) > 0')
        assert not firing & {"FatigueGuardWorkerFenced", "FatigueGuardTransactionsFailing", "FatigueGuardInputSkipped"}
    finally:
        prometheus.stop()


def scraped_value(exposition: str, series: str) -> float:
    found = re.search(rf"^{re.escape(series)} (\S+)$", exposition, re.M)
    assert found is not None, series
    return float(found.group(1))


def test_a_worker_with_a_wiped_store_counts_the_changelog_records_it_restores(guard: tuple[GuardDeployment, int]):
    """fatigue_restored_records_total moves when a worker sets a partition up from the changelog: after a restart
    with its local store wiped (a new volume), it counts exactly the records its restore log lines report, which
    are the changelog records the first run committed."""
    deployment, first_port = guard
    now_ms = int(time.time() * 1000)
    sent = deployment.produce(generate_messages(3_000, 200, 11, start_ms=now_ms - 3_600_000, span_days=1 / 24))
    deployment.wait_until_committed(sent)

    def views_reconciled() -> bool:  # both Redis views (decisions, prefs) are past their start-up reconcile
        exposition = http_get(f"http://127.0.0.1:{first_port}/metrics").decode()
        return scraped_value(exposition, "fatigue_redis_reconciles_total") >= 2

    wait_for("the Redis views' start-up reconciles", views_reconciled, 60)
    assert deployment.stop_worker("w1") == 0
    changelog = changelog_records(deployment)  # the restarted worker's quiet-partition timers may add to it later
    shutil.rmtree(deployment.data_dir("w1"))
    log_offset = deployment.log_size("w1")
    web_port = free_port()
    process = deployment.start_worker("w1", "--web-port", str(web_port))

    def every_partition_set_up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"worker exited {process.returncode}:\n{deployment.log_tail('w1')}")
        health = json.loads(http_get(f"http://127.0.0.1:{web_port}/health"))
        return len(health["partitions"]) == deployment.partitions

    wait_for("every partition set up again", every_partition_set_up, 120)
    exposition = http_get(f"http://127.0.0.1:{web_port}/metrics").decode()
    restored = scraped_value(exposition, "fatigue_restored_records_total")
    ready = r"partition (\d+) ready in \S+: .*?, (\d+) changelog records restored"
    logged = re.findall(ready, deployment.log_since("w1", log_offset))
    assert {int(partition) for partition, _ in logged} == set(range(deployment.partitions))
    assert restored == sum(int(count) for _, count in logged)
    assert restored == changelog > 0
    assert scraped_value(exposition, 'fatigue_transactions_total{outcome="fenced"}') == 0


def changelog_records(deployment: GuardDeployment) -> int:
    """The committed records of the guard's state changelog (transaction markers and aborted records left out)."""
    topic = f"{deployment.name}-customer-state-v1-changelog"
    consumer = KafkaConsumer(
        bootstrap_servers=deployment.bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    try:
        tps = [TopicPartition(topic, partition) for partition in range(deployment.partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        count = 0
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, "the changelog was not read in 60 s"
            for records in consumer.poll(timeout_ms=500).values():
                count += len(records)
        return count
    finally:
        consumer.close()


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
