"""deploy/grafana: the provisioned dashboard covers the worker's metrics and every panel query parses.

That every query also returns series from a real Prometheus scraping a real worker is checked in
test_live_prometheus.py.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.ops.support import (
    DEPLOY,
    dashboard,
    grafana_to_promql,
    load_yaml,
    metric_names_in,
    panel_queries,
    run,
    tool,
    worker_series_names,
)

# what the issue asks the dashboard to cover, by the series that show it
COVERED = {
    "fatigue_events_total",
    "fatigue_rejected_total",
    "fatigue_decisions_total",
    "fatigue_active_blocks",
    "fatigue_violations_total",
    "fatigue_event_to_decision_seconds_bucket",
    "fatigue_consumer_lag_messages",
    "fatigue_redis_failures_total",
    "fatigue_redis_reconciles_total",
    "fatigue_redis_writes_total",
    "fatigue_state_customers",
    "fatigue_state_store_bytes",
    "fatigue_state_bytes_bucket",
    "fatigue_core_info",
    "fatigue_input_skipped_records_total",
    "fatigue_transactions_total",
    "fatigue_transaction_seconds_bucket",
    "fatigue_restored_records_total",
}


def test_every_panel_query_parses(tmp_path: Path):
    """promtool parses PromQL in rule files: every query becomes a recording rule, variables substituted."""
    queries = panel_queries(dashboard())
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{n}", "expr": grafana_to_promql(expr)}
                    for n, (_, expr) in enumerate(queries)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = run([tool("promtool"), "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_queries_use_the_dashboard_variables_and_known_series():
    known = worker_series_names()
    used: set[str] = set()
    for title, expr in panel_queries(dashboard()):
        assert 'job=~"$job"' in expr and 'instance=~"$instance"' in expr, title
        names = metric_names_in(expr) | ({"up"} if "up{" in expr else set())
        assert names, title
        assert names <= known, (title, names - known)
        used |= names
    assert used >= COVERED, COVERED - used


def test_dashboard_structure():
    board = dashboard()
    assert board["uid"] == "fatigue-guard"
    ids = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            ids.append(panel["id"])
            assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
            assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
            if panel["type"] != "row":
                assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
                assert panel["targets"], panel["title"]
            walk(panel.get("panels", []))

    walk(board["panels"])
    assert len(ids) == len(set(ids))
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert set(variables) == {"datasource", "job", "instance"}
    assert variables["datasource"]["query"] == "prometheus"


def test_grafana_provisioning_points_at_the_dashboard_and_prometheus():
    compose = load_yaml(DEPLOY / "docker-compose.yml")["services"]
    grafana_volumes = {volume.split(":")[1]: volume.split(":")[0] for volume in compose["grafana"]["volumes"]}
    provider = load_yaml(DEPLOY / "grafana" / "provisioning" / "dashboards" / "fatigue-guard.yml")["providers"][0]
    mounted = grafana_volumes[provider["options"]["path"]]
    assert (DEPLOY / mounted / "fatigue-guard.json").is_file()
    assert (DEPLOY / grafana_volumes["/etc/grafana/provisioning"]).resolve() == (
        DEPLOY / "grafana" / "provisioning"
    ).resolve()
    datasource = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml")["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090" and "prometheus" in compose
