"""A real Prometheus scrapes the lab's agents and pages with the control that blocked the path.

End to end, nothing mocked: a reference lab; ``plprobe run`` (client role) inside client-2 with
a 2 s interval and the lab's snapshot as its configuration view; ``plprobe run`` (provider role)
inside server-1 and server-2; each agent's API exposed on 127.0.0.1 of the root namespace by
``agent.lab.expose`` (the lab's stand-in for a monitoring network: Prometheus has no route
into the VPC namespaces, by design); ``/usr/bin/prometheus`` (Debian package) with the shipped
``deploy/prometheus/alerts.yml``.

Test copy of the rules: the shipped alerts wait ``for: 1m`` (and longer) before firing, which
would make this test take minutes. The test loads alerts.yml and rewrites only the ``for:``
durations to ``FOR_S`` (every expression, label and annotation stays the shipped one); a
non-zero ``for`` keeps the pending -> firing step in the test.

The client daemon diagnoses from its packets plus its configuration view, as deployed: the
snapshot directories of both accounts (``agent.lab.snapshot.write_snapshot``) are re-written
after every break/restore and the daemon re-reads them every second
(``config_sources.refresh_interval``), which is how it can name ``nlb-sg-ingress``.

Runs in about a minute. Without ``/usr/bin/prometheus`` the module skips, or fails with a clear
message when ``PLPROBE_REQUIRE_TOOLS=1``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from labfixtures import lab_up

from agent.lab.expose import exposed
from agent.lab.lab import Lab
from agent.lab.snapshot import write_snapshot
from agent.sources.topology import load_topology

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = "/usr/bin/prometheus"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
CLIENT_CONFIG = REPO / "configs" / "lab" / "client-2.yaml"
PROVIDER_CONFIG = REPO / "configs" / "lab" / "provider.yaml"
PATH = "client-2/apne1-az4/80"
INTERVAL_S = 2
FOR_S = "2s"
AGENT_PORT = 9720
WAIT_S = 30.0


def require_prometheus() -> None:
    if os.access(PROMETHEUS, os.X_OK):
        return
    reason = f"{PROMETHEUS} not found (Debian package prometheus)"
    if os.environ.get("PLPROBE_REQUIRE_TOOLS") == "1":
        pytest.fail(f"PLPROBE_REQUIRE_TOOLS=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, fn: Callable[[], object], timeout: float = WAIT_S) -> object:
    """Poll ``fn`` until it returns something truthy; fail naming ``what`` and the last value."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            last = fn()
            if last:
                return last
        time.sleep(0.25)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


def rules_for_test(work: Path) -> Path:
    """alerts.yml with every ``for:`` cut to FOR_S (see the module docstring)."""
    data = yaml.safe_load(ALERTS.read_text())
    for group in data["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = FOR_S
    out = work / "alerts.test.yml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


@dataclass
class Stack:
    lab: Lab
    work: Path
    prometheus: str  # base URL

    def snapshot(self) -> None:
        """Re-write the configuration view the client daemon reads (after break/restore)."""
        write_snapshot(self.lab.topology, self.work / "snapshot", self.lab.target_health())

    def api(self, path: str, **params: str) -> dict:
        url = f"{self.prometheus}{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = json.loads(resp.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("/api/v1/query", query=expr)["result"]

    def path_down_alerts(self, state: str | None = None) -> list[dict]:
        alerts = self.api("/api/v1/alerts")["alerts"]
        return [
            a
            for a in alerts
            if a["labels"].get("alertname") == "PrivateLinkPathDown"
            and a["labels"].get("path") == PATH
            and (state is None or a["state"] == state)
        ]


def spawn_agent(lab: Lab, node: str, config: Path, log: Path, env: dict[str, str]) -> None:
    """``plprobe run`` inside ``node``; returns once its API listens (``lab.down`` kills it)."""
    argv = [sys.executable, "-m", "agent", "run", "--config", str(config)]
    with open(log, "w") as fh:
        proc = lab.spawn(
            node, argv, env=env, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT
        )

    def listening() -> bool:
        if proc.poll() is not None:
            pytest.fail(f"agent in {node} exited: {log.read_text()[-800:]}", pytrace=False)
        return "plprobe run: API on" in log.read_text()

    wait_for(f"the agent in {node} to listen", listening, timeout=15)


@contextlib.contextmanager
def prometheus(work: Path, targets: dict[str, int]) -> Iterator[str]:
    """A real Prometheus on a free loopback port scraping ``targets`` (name -> local port)."""
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(rules_for_test(work))],
        "scrape_configs": [
            {
                "job_name": f"plprobe-{role}",
                "static_configs": [
                    {"targets": [f"127.0.0.1:{p}"], "labels": {"node": name}}
                    for name, p in targets.items()
                    if name.startswith(prefix)
                ],
            }
            for role, prefix in (("client", "client"), ("provider", "server"))
        ],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    log = open(work / "prometheus.log", "w")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={work / 'prometheus.yml'}",
            f"--storage.tsdb.path={work / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited: {(work / 'prometheus.log').read_text()[-800:]}")
            with urllib.request.urlopen(f"{url}/-/ready", timeout=2) as resp:
                return resp.status == 200

        wait_for("prometheus to be ready", ready, timeout=20)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        log.close()


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    require_prometheus()
    work = Path(tempfile.mkdtemp(prefix="plprobe-prom-"))
    try:
        with lab_up(load_topology(), "prom") as lab:
            assert lab.wait_health(lambda h: "healthy" in h.values(), timeout=15)
            st = Stack(lab=lab, work=work, prometheus="")
            st.snapshot()
            client = yaml.safe_load(CLIENT_CONFIG.read_text())
            client.update(
                interval=INTERVAL_S,
                config_sources={
                    "snapshot_dirs": [str(work / "snapshot" / d) for d in ("consumer", "provider")],
                    "refresh_interval": 1,
                },
            )
            (work / "client-2.yaml").write_text(yaml.safe_dump(client, sort_keys=False))
            key = {"PLPROBE_KEY": "lab-prometheus-test-key-0123456789abcdef"}
            spawn_agent(lab, "client-2", work / "client-2.yaml", work / "client-2.log", key)
            for node in ("server-1", "server-2"):
                env = {**key, "PLPROBE_AGENT_ID": node}
                spawn_agent(lab, node, PROVIDER_CONFIG, work / f"{node}.log", env)
            with contextlib.ExitStack() as ports:
                targets = {
                    node: ports.enter_context(exposed(lab.ns(node), AGENT_PORT))
                    for node in ("client-2", "server-1", "server-2")
                }
                with prometheus(work, targets) as url:
                    st.prometheus = url
                    yield st
    finally:
        shutil.rmtree(work, ignore_errors=True)
        assert not work.exists()


@pytest.fixture
def broken(stack: Stack) -> Iterator[Stack]:
    """nlb-sg-ingress broken (and the snapshot re-written); restored after the test."""
    try:
        stack.lab.break_control("nlb-sg-ingress")
        stack.snapshot()
        yield stack
    finally:
        stack.lab.restore()
        stack.snapshot()


def test_prometheus_scrapes_the_client_and_both_provider_agents_through_the_forwarder(
    stack: Stack,
) -> None:
    def all_up() -> list[dict] | None:
        up = stack.query('up{job=~"plprobe.*"}')
        nodes = {r["metric"]["node"]: r["value"][1] for r in up}
        return up if nodes == {"client-2": "1", "server-1": "1", "server-2": "1"} else None

    wait_for("all three agents up", all_up)
    path_up = wait_for(
        "the client's path to be up", lambda: stack.query(f'plprobe_path_up{{path="{PATH}"}} == 1')
    )
    assert path_up[0]["metric"]["node"] == "client-2"  # type: ignore[index]


def test_breaking_nlb_sg_ingress_fires_path_down_with_that_control(broken: Stack) -> None:
    firing = wait_for("PrivateLinkPathDown to fire", lambda: broken.path_down_alerts("firing"))
    alert = firing[0]  # type: ignore[index]
    assert alert["labels"]["control"] == "nlb-sg-ingress"
    assert alert["labels"]["severity"] == "critical"
    assert "nlb-sg-ingress" in alert["annotations"]["summary"]
    assert "NLB security group ingress" in alert["annotations"]["description"]


def test_path_down_alert_resolves_after_restore(stack: Stack) -> None:
    try:
        stack.lab.break_control("nlb-sg-ingress")
        stack.snapshot()
        wait_for("PrivateLinkPathDown to fire", lambda: stack.path_down_alerts("firing"))
    finally:
        stack.lab.restore()
        stack.snapshot()
    # right after the restore the packets pass while the client still holds the broken
    # snapshot: the verdict is briefly "unknown" (they disagree) and path_up has no sample
    wait_for(
        "plprobe_path_up to be 1 again",
        lambda: [
            r for r in stack.query(f'plprobe_path_up{{path="{PATH}"}}') if r["value"][1] == "1"
        ],
    )
    wait_for("PrivateLinkPathDown to resolve", lambda: not stack.path_down_alerts())
