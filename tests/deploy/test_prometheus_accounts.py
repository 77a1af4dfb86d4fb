"""Prometheus across many accounts: federation, remote write, cross-account recording rules.

The configs must be complete Prometheus configurations (``promtool check config``), the
recording rules must pass their unit tests (``promtool test rules``), and the series filters
(federation ``match[]``, remote write ``write_relabel_configs``) must let through every series
the agent registers and nothing else, so a new metric can never silently stay in one account.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from tools import promtool, registered_names

PROM = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
FEDERATION = PROM / "federation.yml"
REMOTE_WRITE = PROM / "remote_write.yml"
RECORDING = PROM / "recording.yml"
RECORDING_TEST = PROM / "recording.test.yml"

#: a series of another exporter scraped by the same Prometheus; it must stay in its account
FOREIGN = "node_cpu_seconds_total"


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def anchored(regex: str) -> re.Pattern[str]:
    """Prometheus anchors every label regex at both ends."""
    return re.compile(f"^(?:{regex})$")


def name_selectors(match: str) -> dict[str, str]:
    """``{__name__=~"x",job=~"y"}`` -> {"__name__": "x", "job": "y"} (regexes; = as literal)."""
    out = {}
    for label, op, value in re.findall(r'(\w+)\s*(=~|=)\s*"([^"]*)"', match):
        out[label] = value if op == "=~" else re.escape(value)
    return out


def federated(series: str, job: str) -> bool:
    """Would the central server's ``match[]`` copy this series of this scrape job?"""
    (scrape,) = load(FEDERATION)["scrape_configs"]
    for match in scrape["params"]["match[]"]:
        sel = name_selectors(match)
        if anchored(sel["__name__"]).match(series) and anchored(sel.get("job", ".*")).match(job):
            return True
    return False


def written(remote: dict[str, Any], series: str, job: str) -> bool:
    """Would this remote_write entry's ``write_relabel_configs`` keep this series?"""
    labels = {"__name__": series, "job": job}
    for rule in remote["write_relabel_configs"]:
        value = rule.get("separator", ";").join(labels.get(s, "") for s in rule["source_labels"])
        matched = bool(anchored(rule["regex"]).match(value))
        if matched != (rule["action"] == "keep"):
            return False
    return True


# -- promtool ------------------------------------------------------------------------------


def test_promtool_accepts_the_federation_config_with_its_rule_files() -> None:
    proc = promtool("check", "config", str(FEDERATION))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "recording.yml" in proc.stdout + proc.stderr


def test_promtool_accepts_the_remote_write_config() -> None:
    proc = promtool("check", "config", str(REMOTE_WRITE))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_accepts_the_recording_rules() -> None:
    proc = promtool("check", "rules", str(RECORDING))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_recording_rule_unit_tests_pass() -> None:
    proc = promtool("test", "rules", str(RECORDING_TEST))
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- federation ----------------------------------------------------------------------------


def test_federation_keeps_the_accounts_labels() -> None:
    (scrape,) = load(FEDERATION)["scrape_configs"]
    assert scrape["honor_labels"] is True
    assert scrape["metrics_path"] == "/federate"


def test_federation_copies_every_plprobe_series_and_the_agents_up() -> None:
    for name in registered_names():
        assert federated(name, "plprobe-client"), name
    assert federated("up", "plprobe-provider")


def test_federation_copies_nothing_else() -> None:
    assert not federated(FOREIGN, "node")
    assert not federated("up", "node")
    assert not federated("plprobe:path_sent_not_arriving", "plprobe-client")


def test_the_central_server_evaluates_the_cross_account_rules() -> None:
    assert "recording.yml" in load(FEDERATION)["rule_files"]


# -- remote write --------------------------------------------------------------------------


def test_remote_write_to_amp_signs_with_sigv4_and_may_assume_a_role() -> None:
    remotes = {r["name"]: r for r in load(REMOTE_WRITE)["remote_write"]}
    amp = remotes["amp"]
    assert re.fullmatch(
        r"https://aps-workspaces\.[a-z0-9-]+\.amazonaws\.com/workspaces/ws-[0-9a-f-]+"
        r"/api/v1/remote_write",
        amp["url"],
    )
    assert amp["sigv4"]["region"] in amp["url"]
    assert amp["sigv4"]["role_arn"].startswith("arn:aws:iam::")


def test_remote_write_has_a_generic_receiver_example() -> None:
    remotes = [r for r in load(REMOTE_WRITE)["remote_write"] if "sigv4" not in r]
    assert remotes and all(r["url"].startswith("https://") for r in remotes)


def test_every_remote_write_keeps_every_plprobe_series_and_the_agents_up() -> None:
    for remote in load(REMOTE_WRITE)["remote_write"]:
        for name in registered_names():
            assert written(remote, name, "plprobe-client"), (remote["name"], name)
        assert written(remote, "up", "plprobe-client"), remote["name"]


def test_every_remote_write_drops_other_series() -> None:
    for remote in load(REMOTE_WRITE)["remote_write"]:
        assert not written(remote, FOREIGN, "node"), remote["name"]
        assert not written(remote, "up", "node"), remote["name"]


def test_each_account_labels_its_series_with_its_account() -> None:
    assert re.fullmatch(r"\d{12}", load(REMOTE_WRITE)["global"]["external_labels"]["account"])


# -- recording rules -----------------------------------------------------------------------


def recording_rules() -> list[dict[str, Any]]:
    return [rule for group in load(RECORDING)["groups"] for rule in group["rules"]]


def test_recording_rules_query_only_metrics_that_the_agent_registers() -> None:
    known = registered_names()
    for rule in recording_rules():
        assert set(re.findall(r"\bplprobe_\w+", rule["expr"])) <= known, rule["record"]


def test_recording_rules_join_client_and_provider_on_the_path_alone() -> None:
    for rule in recording_rules():
        for grouping in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", rule["expr"]):
            assert grouping.replace(" ", "") == "path", rule["record"]


def test_the_sent_but_not_arriving_rule_reads_both_sides() -> None:
    rules = {r["record"]: r["expr"] for r in recording_rules()}
    lost = rules["plprobe:probes_lost:increase15m"]
    seen = rules["plprobe:probes_seen_at_target:increase15m"]
    assert "plprobe_probes_total" in lost and "plprobe_target_probes_seen_total" in seen
    expr = rules["plprobe:path_sent_not_arriving"]
    assert "plprobe:probes_lost:increase15m" in expr
    assert "plprobe:probes_seen_at_target:increase15m" in expr


def test_every_recorded_series_has_a_unit_test() -> None:
    tested = {
        case["expr"]
        for test in load(RECORDING_TEST)["tests"]
        for case in test.get("promql_expr_test", [])
    }
    assert {rule["record"] for rule in recording_rules()} <= tested
