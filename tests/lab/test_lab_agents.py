"""The agents in the lab, end to end: real probes from client nodes, real provider agents.

One lab per module (the reference topology, with provider agents); every test that breaks
something restores the lab and waits for healthy targets again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from labfixtures import assert_no_leftovers, lab_up, require_lab, unique_lab_name

from agent.lab import agents, faults
from agent.lab.deploy import deployment_status
from agent.lab.lab import Lab
from agent.sources.topology import load_topology

REPO = Path(__file__).resolve().parents[2]
NLB_IP = "10.3.0.100"
TIMEOUT_S = 0.5
FAST = {"timeout": TIMEOUT_S, "retries": 0}
OUTCOME_OF_SYMPTOM = {"timeout": "timeout", "refused": "refused", "no-dns": "dns_error"}
#: faults whose packets reach the target: the reply is lost (return path), is a reset, or
#: only the name is broken (the configs know the ENI IPs, so the connect probes still go)
SEEN_AT_TARGET = {"provider-nacl", "target-service", "dns"}
#: faults that block the responder port too: the evidence channel through the endpoint is cut,
#: so whether the probe arrived is unknown (and said to be), never guessed
CUT_CHANNEL = {"provider-nacl", "endpoint-acceptance", "service-principal", "route"}


def fast_reference():
    topology = load_topology()
    topology.lab.health_check_interval_s = 0.25
    return topology


def all_healthy(lab: Lab) -> bool:
    return lab.wait_health(lambda h: set(h.values()) == {"healthy"}, timeout=20)


@pytest.fixture(scope="module")
def agents_lab() -> Iterator[Lab]:
    with lab_up(fast_reference(), "ag") as lab:
        agents.start_agents(lab, lab.progress)
        assert all_healthy(lab)
        yield lab


@pytest.fixture
def lab(agents_lab: Lab) -> Iterator[Lab]:
    try:
        yield agents_lab
    finally:
        agents.start_agents(agents_lab, agents_lab.progress)
        agents_lab.restore()
        all_healthy(agents_lab)


def evidence(lab: Lab, client: str) -> dict:
    """The service-port path of ``client``'s round (the responder-port path is the channel's)."""
    paths = agents.probe_answers(lab, client, **FAST)[client]["round"]["paths"]
    assert [p["path"].rsplit("/", 1)[1] for p in paths] == ["80", "9721"]
    return paths[0]


def observations(lab: Lab, node: str) -> dict:
    script = (
        "import urllib.request;"
        "print(urllib.request.urlopen('http://127.0.0.1:9720/v1/observations?since=0',"
        " timeout=2).read().decode())"
    )
    proc = lab.exec(node, [sys.executable, "-c", script], timeout=10)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# --- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize("client", ["client-1", "client-2"])
def test_the_shipped_client_config_probes_exactly_the_reference_labs_endpoint(client: str) -> None:
    shipped = REPO / "configs" / "lab" / f"{client}.yaml"
    assert agents.shipped_config_matches(shipped, load_topology()), (
        f"{shipped} no longer matches the reference topology's endpoint names/IPs/ports: "
        f"{agents.endpoint_paths(load_topology())}"
    )


def test_a_topology_without_a_shipped_config_gets_one_generated_from_its_endpoints() -> None:
    topology = load_topology(REPO / "configs" / "lab" / "multi-az.yaml")
    config = agents.generated_client_config(topology, "client-2")
    (path,) = config["paths"]
    assert path["expected_ips"] == {"apne1-az1": "10.2.2.20", "apne1-az4": "10.2.0.20"}
    assert sorted(path["zonal"]) == ["apne1-az1", "apne1-az4"]


@pytest.mark.lab
def test_the_lab_uses_the_shipped_client_configs(agents_lab: Lab) -> None:
    for client in ("client-1", "client-2"):
        # agent/lab/topologies is configs/lab, shipped inside the package
        assert agents.client_config_path(agents_lab, client).resolve() == (
            REPO / "configs" / "lab" / f"{client}.yaml"
        )


@pytest.mark.lab
def test_the_lab_key_is_private_and_shared_by_every_agent(agents_lab: Lab) -> None:
    key_file = agents_lab.dir / "agents" / "key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    key = key_file.read_text().strip()
    running = agents.agents_running(agents_lab)
    assert running == {"server-1": True, "server-2": True}
    for node in running:
        pid = int((agents_lab.dir / "agents" / f"{node}.pid").read_text())
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert f"PLPROBE_KEY={key}".encode() in env
        assert f"PLPROBE_AGENT_ID={node}".encode() in env


# --- the healthy path --------------------------------------------------------------------------


@pytest.mark.lab
@pytest.mark.parametrize("client", ["client-1", "client-2"])
def test_every_path_is_ok_and_seen_at_the_target_from_the_nlb_ip(
    agents_lab: Lab, client: str
) -> None:
    ev = evidence(agents_lab, client)
    assert ev["outcome"] == "ok", ev
    assert ev["seen_at_target"] == "yes", ev
    assert ev["source_at_target"].rsplit(":", 1)[0] == NLB_IP


# --- every lab break ---------------------------------------------------------------------------


@pytest.mark.lab
@pytest.mark.parametrize("control", list(faults.FAULTS))
def test_a_break_gives_the_right_outcome_and_seen_at_target(lab: Lab, control: str) -> None:
    fault = faults.FAULTS[control]
    expected = OUTCOME_OF_SYMPTOM[fault.expected(lab.topology)]
    lab.break_control(control, client="client-1")
    ev = evidence(lab, "client-1")
    seen = "yes" if control in SEEN_AT_TARGET else "no"
    if control in CUT_CHANNEL:
        seen = "unknown"
        assert "evidence channel cut" in ev["provider_error"], ev
    assert (ev["outcome"], ev["seen_at_target"]) == (expected, seen), ev.get("provider_error")
    if control == "target-service":
        syn = next(r for r in ev["results"] if r["probe"] == "syn")
        assert syn["detail"]["reply"] == "rst", syn


# --- the responder refuses what it cannot authenticate -----------------------------------------

_SEND = """
import base64, os, socket, sys, time
from agent import wire
def send(data):
    with socket.create_connection(("127.0.0.1", 9721), timeout=2) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        try:
            return s.recv(4096)
        except OSError:
            return b""
key = os.environ["PLPROBE_KEY"].encode()
forged = wire.encode_token(wire.Token.new("client-1/apne1-az4/80", "client-1"), os.urandom(32))
good_token = wire.Token.new("client-1/apne1-az4/80", "client-1")
good = wire.encode_token(good_token, key)
print(len(send(forged)), len(send(good)), len(send(good)), good_token.probe_id_hex)
"""


@pytest.mark.lab
def test_a_forged_and_a_replayed_token_are_rejected_and_counted(agents_lab: Lab) -> None:
    before = observations(agents_lab, "server-1")["counters"]["responder"]
    key = (agents_lab.dir / "agents" / "key").read_text().strip()
    proc = agents_lab.exec(
        "server-1", [sys.executable, "-c", _SEND], timeout=15, env={"PLPROBE_KEY": key}
    )
    assert proc.returncode == 0, proc.stderr
    _, first_reply, _, probe_id = proc.stdout.split()
    assert int(first_reply) > 0, "the genuine token gets an authenticated reply"
    after = observations(agents_lab, "server-1")
    counters = after["counters"]["responder"]
    assert counters["forged"] == before["forged"] + 1
    assert counters["replayed"] == before["replayed"] + 1
    believed = [o for o in after["observations"] if o["probe_id"] == probe_id]
    assert len(believed) == 1, "the replay must not become a second observation"


# --- the sniffer on the real service port -------------------------------------------------------


@pytest.mark.lab
def test_the_sniffer_sees_probes_on_the_service_port_while_the_service_answers(
    agents_lab: Lab,
) -> None:
    ev = evidence(agents_lab, "client-2")
    http = next(r for r in ev["results"] if r["probe"] == "http")
    assert http["outcome"] == "ok" and http["detail"]["status"] == 200
    sniffed = [o for o in ev["observations"] if o["probe_id"] == http["probe_id"]]
    assert [o["via"] for o in sniffed] == ["sniffer"]
    seen = sniffed[0]
    served = []
    for log in (agents_lab.dir / "logs").glob("*.requests.jsonl"):
        served += [json.loads(line) for line in log.read_text().splitlines()]
    assert any(
        (r["node"], r["src"], r["src_port"]) == (seen["target"], seen["src_ip"], seen["src_port"])
        for r in served
    ), "the service's own log shows the probe's request, answered as usual"
    assert agents_lab.http_get("client-2", http["target_ip"], timeout=TIMEOUT_S)["result"] == "ok"


# --- the commands -----------------------------------------------------------------------------


def plprobe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env={**os.environ, "NO_COLOR": "1"},
    )


@pytest.mark.lab
def test_lab_check_exits_1_and_names_the_nlb_sg_rule_and_fix(lab: Lab) -> None:
    lab.break_control("nlb-sg-ingress", client="client-2")
    proc = plprobe("lab", "check", "--name", lab.name, "--output", "json")
    assert proc.returncode == 1, proc.stderr
    clients = json.loads(proc.stdout)["clients"]
    assert clients["client-1"]["status"] == "pass"
    verdict, channel = clients["client-2"]["verdicts"]
    assert (verdict["path"], channel["path"]) == (
        "client-2/apne1-az4/80",
        "client-2/apne1-az4/9721",
    )
    assert channel["status"] == "pass", "the mistake is on port 80: the evidence channel works"
    assert verdict["blocked_at"] == "nlb-sg-ingress"
    assert "10.2.1.15/32" in verdict["fix"]


@pytest.mark.lab
def test_a_query_sent_to_one_target_returns_what_another_target_saw(agents_lab: Lab) -> None:
    """Whichever target the NLB hands the query to, the answer covers both targets, and a
    probe that only server-2 saw comes back in an answer written by server-1 (or the reverse)."""
    round_ = agents.probe_answers(agents_lab, "client-2", **FAST)["client-2"]["round"]
    shared = round_["provider_evidence"]
    assert shared["source"] == "endpoint" and shared["level"] == "findings"
    assert {t for t, c in shared["covers"].items() if c["ok"]} == {"server-1", "server-2"}
    key = (agents_lab.dir / "agents" / "key").read_text().strip()
    proc = agents_lab.exec(
        "server-1", [sys.executable, "-c", _ASK], timeout=20, env={"PLPROBE_KEY": key}
    )
    assert proc.returncode == 0, proc.stderr
    answered_by, targets, probe_id = proc.stdout.split()
    assert answered_by == "server-1" and "server-2" in targets.split(",")
    assert probe_id != "-", "server-1's answer carries the probe only server-2 saw"


# a token straight to server-2's responder, then a query straight to server-1's: server-1 must
# answer with what server-2 saw (it asks its peers inside the provider VPC)
_ASK = """
import asyncio, os, socket, time
from agent import wire
from agent.observe.evidence import ask
key = os.environ["PLPROBE_KEY"].encode()
tok = wire.Token.new("probe-x/apne1-az4/9721", "probe-x")
with socket.create_connection(("10.3.1.11", 9721), timeout=2) as s:
    s.sendall(wire.encode_token(tok, key))
    s.recv(4096)
q = wire.EvidenceQuery.new("probe-x", "10.3.1.10", time.time_ns() - 10**10)
a = asyncio.run(ask("10.3.1.10", 9721, q, key, timeout_s=5))
seen = [o for o in a.observations if o.get("probe_id") == tok.probe_id_hex]
print(a.agent_id, ",".join(c.target for c in a.covers if c.ok), seen[0]["target"] if seen else "-")
"""


@pytest.mark.lab
def test_lab_probe_prints_the_per_path_evidence_table(agents_lab: Lab) -> None:
    proc = plprobe("lab", "probe", "--name", agents_lab.name, "--client", "client-1")
    assert proc.returncode == 0, proc.stderr
    header, row = proc.stdout.splitlines()[1:3]
    assert header.split()[:2] == ["PATH", "OUTCOME"]
    assert row.split()[:3] == ["client-1/apne1-az4/80", "ok", "yes"]


@pytest.mark.lab
def test_lab_up_with_agents_starts_the_daemons_of_both_sides_and_down_removes_them() -> None:
    require_lab()
    name = unique_lab_name("wa")
    try:
        up = plprobe("lab", "up", "--name", name, "--with-agents")
        assert up.returncode == 0, up.stderr
        assert agents.agents_running(Lab(name)) == {"server-1": True, "server-2": True}
        clients = [a for a in deployment_status(Lab(name))["agents"] if a["role"] == "client"]
        assert {a["node"]: a["alive"] for a in clients} == {"client-1": True, "client-2": True}
        assert "client-2: plprobe run, API http://127.0.0.1:" in up.stdout
    finally:
        down = plprobe("lab", "down", "--name", name)
        assert down.returncode == 0, down.stderr
    assert_no_leftovers(name)
