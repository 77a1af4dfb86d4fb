"""The reference topology with real packets: the path works, and each break fails it the AWS way."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from labfixtures import endpoint_name, service_health

from agent.lab import faults
from agent.lab.lab import Lab
from agent.sources.topology import load_topology

pytestmark = pytest.mark.lab

TIMEOUT_S = 1.0
CLIENTS = ("client-1", "client-2")
NLB_IP = "10.3.0.100"


def get(lab: Lab, client: str) -> str:
    return lab.http_get(client, endpoint_name(lab), timeout=TIMEOUT_S)["result"]


def requests_seen(lab: Lab) -> list[dict]:
    out = []
    for path in sorted((lab.dir / "logs").glob("*.requests.jsonl")):
        out += [json.loads(line) for line in path.read_text().splitlines()]
    return sorted(out, key=lambda entry: entry["ts"])  # one timeline across the targets' logs


@pytest.mark.parametrize("client", CLIENTS)
def test_client_reaches_the_service_through_the_endpoint(reference_lab: Lab, client: str) -> None:
    result = reference_lab.http_get(client, endpoint_name(reference_lab), timeout=TIMEOUT_S)
    assert result["result"] == "ok", result
    assert result["status"] == 200


def test_the_target_sees_the_nlb_ip_as_the_source(reference_lab: Lab) -> None:
    before = len(requests_seen(reference_lab))
    assert get(reference_lab, "client-1") == "ok"
    new = requests_seen(reference_lab)[before:]
    assert [r["src"] for r in new] == [NLB_IP]
    assert 1024 <= new[0]["src_port"] <= 65535


@pytest.mark.parametrize("control", list(faults.FAULTS))
def test_break_fails_a_new_connection_the_aws_way_and_restore_heals_it(
    restore_after: Lab, control: str
) -> None:
    lab = restore_after
    fault = faults.FAULTS[control]
    expected = fault.expected(lab.topology)
    lab.break_control(control, client="client-1")
    seen = {c: get(lab, c) for c in CLIENTS}
    if fault.per_client:
        assert seen == {"client-1": expected, "client-2": "ok"}
    else:
        assert seen == {"client-1": expected, "client-2": expected}
    lab.restore()
    assert {c: get(lab, c) for c in CLIENTS} == {"client-1": "ok", "client-2": "ok"}


def test_enforce_flag_off_lets_the_nlb_sg_ingress_mistake_through(restore_after: Lab) -> None:
    lab = restore_after
    topo = faults.break_topology(lab.topology, "nlb-sg-ingress")
    for nlb in topo.nlbs.values():
        nlb.enforce_sg_inbound_on_privatelink = False
    lab.apply(topo)
    assert get(lab, "client-2") == "ok"


def test_an_existing_endpoint_survives_removing_the_principal(restore_after: Lab) -> None:
    lab = restore_after
    topo = lab.topology
    for svc in topo.endpoint_services.values():
        svc.allowed_principals = []
    assert lab.apply(topo) == "in place"
    assert get(lab, "client-2") == "ok"
    assert all(ep["created"] for ep in lab.status()["endpoints"])


def test_a_live_flow_survives_an_sg_edit_and_dies_on_a_nacl_edit(restore_after: Lab) -> None:
    lab = restore_after
    argv = [sys.executable, "-m", "agent.lab.httpcheck", endpoint_name(lab), "--hold"]
    argv += ["--timeout", str(TIMEOUT_S)]
    proc = lab.spawn("client-2", argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:

        def ask() -> str:
            proc.stdin.write("\n")
            proc.stdin.flush()
            return json.loads(proc.stdout.readline())["result"]

        assert json.loads(proc.stdout.readline())["result"] == "connected"
        assert ask() == "ok"
        lab.break_control("client-sg-egress", client="client-2")
        assert get(lab, "client-2") == "timeout", "the SG edit should block new flows"
        assert ask() == "ok", "an SG edit must not cut a tracked flow"
        lab.break_control("client-nacl", client="client-2")
        assert ask() == "timeout", "a NACL edit cuts live flows (stateless)"
    finally:
        proc.kill()
        proc.wait(timeout=5)


def test_target_sg_without_the_nlb_makes_targets_unhealthy_and_the_nlb_fail_open(
    restore_after: Lab,
) -> None:
    lab = restore_after
    lab.break_control("target-sg-ingress")
    assert lab.wait_health(
        lambda h: set(service_health(lab, h).values()) == {"unhealthy"}, timeout=20
    ), lab.target_health()
    health = next(iter(lab.status()["health"].values()))
    assert health["fail_open"]["80"] is True
    assert sorted(health["active"]["80"]) == ["server-1", "server-2"]
    assert get(lab, "client-2") == "timeout"


def test_targets_are_healthy_on_the_reference_topology(reference_lab: Lab) -> None:
    lab = reference_lab
    assert lab.wait_health(
        lambda h: set(service_health(lab, h).values()) == {"healthy"}, timeout=20
    )
    assert lab.healthy_targets() == {"ap-northeast-1a": ["server-1", "server-2"]}


def test_clients_cannot_reach_provider_addresses_directly(reference_lab: Lab) -> None:
    for ip in (NLB_IP, "10.3.1.10"):
        started = time.monotonic()
        assert reference_lab.http_get("client-2", ip, timeout=TIMEOUT_S)["result"] == "timeout"
        assert time.monotonic() - started < 5


def test_status_lists_every_node_with_namespace_ip_account_and_role(reference_lab: Lab) -> None:
    status = reference_lab.status()
    nodes = {n["node"]: n for n in status["nodes"]}
    assert nodes["client-1"]["ip"] == "10.1.0.10"
    assert nodes["client-1"]["role"] == "client"
    assert nodes["server-1"]["account"] == "provider"
    assert nodes["nlb-ap-northeast-1a"]["namespace"] == reference_lab.ns("nlb-ap-northeast-1a")
    assert all(p["alive"] for p in status["processes"])


def test_lab_up_refuses_a_second_lab_with_the_same_name(reference_lab: Lab) -> None:
    from agent.errors import LabError

    with pytest.raises(LabError, match="already up"):
        Lab(reference_lab.name).up(load_topology())
