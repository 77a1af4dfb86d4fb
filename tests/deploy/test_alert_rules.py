"""deploy/ artifacts: Prometheus rules (promtool check + unit tests), example config, dashboard.

Every metric name that a rule or a dashboard panel queries must be one that ``make_metrics``
registers: a renamed metric would otherwise silently turn an alert into one that never fires.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from tools import promtool, registered_names

from agent.controls import CATALOGUE

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "deploy" / "prometheus"
ALERTS = PROM / "alerts.yml"
RULES_TEST = PROM / "rules.test.yml"
EXAMPLE = PROM / "prometheus.example.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "plprobe-dashboard.json"

EXPECTED_ALERTS = {
    "PrivateLinkPathDown",
    "PrivateLinkPathDegraded",
    "PlprobeProbesStale",
    "PlprobeProbeNotSeenAtTarget",
    "PlprobeConsumerProbesStopped",
    "PlprobeAgentDown",
    "PlprobeConfigReloadFailed",
}
#: series Prometheus itself creates for every scrape target
PROMETHEUS_SERIES = {"up"}
_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (a regex reading, enough for our rules)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", "", text)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def load_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", []) if "expr" in t]
    for var in dash["templating"]["list"]:
        query = var.get("query")
        if var["type"] == "query":
            text = query["query"] if isinstance(query, dict) else query
            inner = re.fullmatch(r"label_values\((.*),\s*\w+\)", text)
            exprs.append(inner.group(1) if inner else text)
    return exprs


# -- Prometheus rules ----------------------------------------------------------------------


def test_promtool_accepts_the_rules() -> None:
    proc = promtool("check", "rules", str(ALERTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_rule_unit_tests_pass() -> None:
    proc = promtool("test", "rules", str(RULES_TEST))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_example_prometheus_config_is_valid() -> None:
    proc = promtool("check", "config", str(EXAMPLE))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_of_the_issue_is_defined() -> None:
    assert {r["alert"] for r in load_rules() if "alert" in r} == EXPECTED_ALERTS


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    doc = yaml.safe_load(RULES_TEST.read_text())
    fired = {
        case["alertname"]
        for test in doc["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    quiet = {
        case["alertname"]
        for test in doc["tests"]
        for case in test.get("alert_rule_test", [])
        if not case.get("exp_alerts")
    }
    assert fired == EXPECTED_ALERTS
    assert quiet == EXPECTED_ALERTS


def test_path_down_has_a_fix_hint_for_every_control_of_the_catalogue() -> None:
    (down,) = [r for r in load_rules() if r.get("alert") == "PrivateLinkPathDown"]
    description = down["annotations"]["description"]
    for control in CATALOGUE:
        assert f'eq $labels.control "{control.id}" }}}}Fix ({control.title}): {control.fix}.' in (
            description
        ), control.id


def test_rules_query_only_metrics_that_the_agent_registers() -> None:
    known = registered_names() | PROMETHEUS_SERIES
    for rule in load_rules():
        assert metric_names(rule["expr"]) <= known, rule.get("alert") or rule.get("record")


def test_the_metric_name_reader_finds_selected_names_and_skips_functions() -> None:
    expr = 'sum by (path) (rate(a_total{x="b_total"}[5m])) * on (path) group_left (c) d_x'
    assert metric_names(expr) == {"a_total", "d_x"}


# -- Grafana dashboard ---------------------------------------------------------------------


def test_the_dashboard_is_a_grafana_dashboard_with_a_prometheus_datasource_variable() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["schemaVersion"] >= 36
    (ds,) = [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
    assert ds["query"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${" + ds["name"] + "}"


def test_the_dashboard_has_the_panels_the_issue_asks_for() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    kinds = {p["type"] for p in panels}
    assert {"table", "state-timeline", "heatmap", "timeseries"} <= kinds
    exprs = " ".join(t["expr"] for p in panels for t in p["targets"])
    assert '"client"' in exprs and '"endpoint_az"' in exprs  # the matrix splits the path id
    assert "plprobe_probe_duration_seconds_bucket" in exprs
    assert "plprobe_target_probes_seen_total" in exprs


def test_dashboard_queries_use_only_metrics_that_the_agent_registers() -> None:
    known = registered_names()
    for expr in dashboard_exprs():
        assert metric_names(expr), expr
        assert metric_names(expr) <= known, expr
