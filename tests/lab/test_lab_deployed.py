"""``lab up --with-agents --with-prometheus``: both daemons as deployed and a real Prometheus.

End to end through ``agent.lab.deploy`` (what ``plprobe lab up --with-prometheus`` calls) and
the ``plprobe lab`` CLI for the user's steps (``break``, ``restore``, ``status``): provider
agents on the targets, ``plprobe run`` in both clients with the lab's snapshot as its view,
each API forwarded to 127.0.0.1, ``/usr/bin/prometheus`` scraping them all.

Test-only settings, every one a duration: the shipped alerts wait ``for: 1m``; the test loads
a copy of alerts.yml with only the ``for:`` durations cut to ``FOR_S`` (expressions, labels and
annotations are the shipped ones), the client daemons probe every ``INTERVAL_S`` and Prometheus
scrapes and evaluates every second. ``lab_up`` then checks that nothing is left: namespaces,
state, and every process — Prometheus and the forwarders included.

Without ``/usr/bin/prometheus`` the module skips (fails with ``PLPROBE_REQUIRE_TOOLS=1``).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from labfixtures import lab_up

from agent import cli
from agent.lab.deploy import (
    PROMETHEUS,
    SHIPPED_RULES,
    deployment_status,
    ensure_deployment,
    start_deployment,
)
from agent.lab.lab import Lab
from agent.lab.procs import kill_pids, lab_pids
from agent.sources.topology import load_topology

pytestmark = pytest.mark.lab

CONTROL = "nlb-sg-ingress"
PATH = "client-2/apne1-az4/80"
INTERVAL_S = 2
FOR_S = "2s"
WAIT_S = 45.0


def require_prometheus() -> None:
    if os.access(PROMETHEUS, os.X_OK):
        return
    reason = f"{PROMETHEUS} not found (Debian package prometheus)"
    if os.environ.get("PLPROBE_REQUIRE_TOOLS") == "1":
        pytest.fail(f"PLPROBE_REQUIRE_TOOLS=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def wait_for(what: str, fn: Callable[[], object], timeout: float = WAIT_S) -> object:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            last = fn()
            if last:
                return last
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


def test_rules(work: Path) -> Path:
    """alerts.yml with every ``for:`` cut to FOR_S (module docstring)."""
    data = yaml.safe_load(SHIPPED_RULES.read_text())
    for group in data["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = FOR_S
    out = work / "alerts.test.yml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


test_rules.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def api(url: str, path: str, **params: str) -> dict:
    with urllib.request.urlopen(f"{url}{path}?{urllib.parse.urlencode(params)}", timeout=5) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]


def path_down(url: str, state: str | None = None) -> list[dict]:
    return [
        a
        for a in api(url, "/api/v1/alerts")["alerts"]
        if a["labels"].get("alertname") == "PrivateLinkPathDown"
        and a["labels"].get("path") == PATH
        and (state is None or a["state"] == state)
    ]


def lab_cli(lab: Lab, *argv: str) -> int:
    return cli.main(["lab", *argv, "--name", lab.name])


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, str]]:
    require_prometheus()
    work = tmp_path_factory.mktemp("deployed")
    with lab_up(load_topology(), "dep") as lab:
        assert lab.wait_health(lambda h: "healthy" in h.values(), timeout=15)
        status = start_deployment(
            lab,
            lambda line: None,
            prometheus=True,
            rules=test_rules(work),
            client_interval=INTERVAL_S,
            scrape_interval="1s",
        )
        yield lab, status["prometheus"]["url"]
    assert not lab_pids(lab.name)  # lab_up checked it too: Prometheus and forwarders are gone


def test_status_lists_every_agent_with_its_api_and_the_prometheus_url(
    deployed: tuple[Lab, str], capsys: pytest.CaptureFixture[str]
) -> None:
    lab, url = deployed
    assert lab_cli(lab, "status", "--output", "json") == 0
    status = json.loads(capsys.readouterr().out)["deployment"]
    agents = {a["node"]: a for a in status["agents"]}
    assert {n: (a["role"], a["command"]) for n, a in agents.items()} == {
        "client-1": ("client", "plprobe run"),
        "client-2": ("client", "plprobe run"),
        "server-1": ("provider", "plprobe observe"),
        "server-2": ("provider", "plprobe observe"),
    }
    assert all(a["alive"] for a in agents.values())
    assert agents["client-2"]["api"] == "http://10.2.1.15:9720"
    assert status["prometheus"]["url"] == url and status["prometheus"]["alive"]
    with urllib.request.urlopen(agents["client-2"]["host_url"] + "/healthz", timeout=5) as r:
        assert r.status == 200


def test_prometheus_scrapes_both_clients_and_both_providers(deployed: tuple[Lab, str]) -> None:
    _, url = deployed

    def all_up() -> dict[str, str] | None:
        up = api(url, "/api/v1/query", query='up{job=~"plprobe.*"}')["result"]
        nodes = {r["metric"]["node"]: r["value"][1] for r in up}
        return nodes if set(nodes.values()) == {"1"} and len(nodes) == 4 else None

    wait_for("all four agents up", all_up)
    wait_for(
        "the client daemon's path to be up",
        lambda: api(url, "/api/v1/query", query=f'plprobe_path_up{{path="{PATH}"}} == 1')["result"],
    )


def test_a_broken_control_fires_path_down_with_its_control_label_and_restore_resolves_it(
    deployed: tuple[Lab, str],
) -> None:
    lab, url = deployed
    try:
        assert lab_cli(lab, "break", CONTROL) == 0
        firing = wait_for("PrivateLinkPathDown to fire", lambda: path_down(url, "firing"))
        alert = firing[0]  # type: ignore[index]
        assert alert["labels"]["control"] == CONTROL
        assert alert["labels"]["node"] == "client-2"
        assert CONTROL in alert["annotations"]["summary"]
    finally:
        assert lab_cli(lab, "restore") == 0
    wait_for("PrivateLinkPathDown to resolve", lambda: not path_down(url))


def test_daemons_that_died_are_restarted_on_the_same_addresses(deployed: tuple[Lab, str]) -> None:
    """What a structural ``lab apply`` does to the lab's processes, and what follows it."""
    lab, url = deployed
    before = deployment_status(lab)
    pids = {int(p.read_text()) for p in (lab.dir / "deploy").glob("*.pid")}
    pids |= {int(p.read_text()) for p in (lab.dir / "agents").glob("*.pid")}
    kill_pids(pids)
    assert not any(a["alive"] for a in deployment_status(lab)["agents"])
    ensure_deployment(lab, lambda line: None)
    after = deployment_status(lab)
    assert [a["host_url"] for a in after["agents"]] == [a["host_url"] for a in before["agents"]]
    assert all(a["alive"] for a in after["agents"]) and after["prometheus"]["alive"]
    assert after["prometheus"]["url"] == url
    wait_for(
        "Prometheus to scrape the restarted agents",
        lambda: len(api(url, "/api/v1/query", query='up{job=~"plprobe.*"} == 1')["result"]) == 4,
    )
