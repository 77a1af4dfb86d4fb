"""The provider's own probes in the lab: provider agents in the provider nodes probe the NLB
listener through the NLB node and each target directly, and their results split a consumer's
failure into "provider side" or "consumer side / ④ ingress".

The topology is the reference one plus the rules the provider's probes need (target SG egress
to the NLB SG and to itself, NLB SG and target SG ingress from the target SG), as
deploy/terraform/security_groups.tf writes them. The provider agents run
configs/lab/provider.yaml (probes every 5 s); results are read from server-1's /metrics.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator

import pytest
from labfixtures import lab_up
from prometheus_client.parser import text_string_to_metric_families

from agent.diagnose.provider_probes import PROVIDER_INSIDE, narrow, summarize
from agent.lab import agents
from agent.lab.lab import Lab
from agent.model import Rule, Topology
from agent.sources.topology import load_topology

AZ = "apne1-az4"
NLB_PATH = f"server-1/{AZ}/80"
ROUND_WAIT_S = 30.0
EVERYTHING = ["client-sg-egress", "endpoint-sg-ingress", *sorted(PROVIDER_INSIDE), "nlb-sg-ingress"]


def with_probe_rules() -> Topology:
    t = load_topology()
    t.lab.health_check_interval_s = 0.25
    nlb, server = t.sg_by_name("nlb"), t.sg_by_name("server")
    assert nlb is not None and server is not None

    def rule(rid: str, direction: str, ref: str) -> Rule:
        return Rule(rid, direction, "tcp", 80, 80, sg_ref=ref)  # type: ignore[arg-type]

    server.rules += [
        rule("server-egress-nlb", "egress", nlb.id),
        rule("server-egress-server", "egress", server.id),
        rule("server-from-server", "ingress", server.id),
    ]
    nlb.rules.append(rule("nlb-from-server", "ingress", server.id))
    return t


@pytest.fixture(scope="module")
def probes_lab() -> Iterator[Lab]:
    with lab_up(with_probe_rules(), "pp") as lab:
        agents.start_agents(lab, lab.progress)
        assert lab.wait_health(lambda h: set(h.values()) == {"healthy"}, timeout=20)
        yield lab


@pytest.fixture
def lab(probes_lab: Lab) -> Iterator[Lab]:
    try:
        yield probes_lab
    finally:
        probes_lab.restore()
        probes_lab.wait_health(lambda h: set(h.values()) == {"healthy"}, timeout=20)


def metrics(lab: Lab, node: str = "server-1") -> dict[tuple[str, tuple], float]:
    code = (
        "import urllib.request;"
        "print(urllib.request.urlopen('http://127.0.0.1:9720/metrics', timeout=2).read().decode())"
    )
    proc = lab.exec(node, [sys.executable, "-c", code], timeout=10)
    assert proc.returncode == 0, proc.stderr
    out: dict[tuple[str, tuple], float] = {}
    for fam in text_string_to_metric_families(proc.stdout):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def rounds(m: dict[tuple[str, tuple], float]) -> float:
    return m.get(("plprobe_provider_probe_rounds_total", ()), 0.0)


def fresh_round(lab: Lab) -> dict[tuple[str, tuple], float]:
    """Metrics after two more rounds have finished (the first may have begun before a change)."""
    start = rounds(metrics(lab))
    deadline = time.monotonic() + ROUND_WAIT_S
    while time.monotonic() < deadline:
        m = metrics(lab)
        if rounds(m) >= start + 2:
            return m
        time.sleep(0.5)
    raise AssertionError("the provider agent ran no probe round")


def up(m: dict[tuple[str, tuple], float]) -> dict[tuple[str, str], float]:
    return {
        (dict(labels)["hop"], dict(labels)["path"]): v
        for (name, labels), v in m.items()
        if name == "plprobe_provider_path_up"
    }


def as_results(m: dict[tuple[str, tuple], float]) -> list[dict[str, object]]:
    """The round's results as ``summarize`` takes them (ok / failed from path_up)."""
    out = []
    for (hop, path), value in up(m).items():
        _, where, port = path.split("/")
        out.append(
            {"hop": hop, "where": where, "port": int(port), "outcome": "ok" if value else "timeout"}
        )
    return out


def test_provider_probes_pass_through_the_nlb_and_to_each_target(lab: Lab) -> None:
    assert up(fresh_round(lab)) == {
        ("nlb", NLB_PATH): 1.0,
        ("target", "server-1/server-1/80"): 1.0,
        ("target", "server-1/server-2/80"): 1.0,
    }


def test_nlb_egress_removed_fails_the_nlb_hop_and_narrows_to_the_provider_side(lab: Lab) -> None:
    lab.break_control("nlb-sg-egress")
    m = fresh_round(lab)
    assert up(m)[("nlb", NLB_PATH)] == 0.0
    assert up(m)[("target", "server-1/server-2/80")] == 1.0
    n = narrow(EVERYTHING, summarize(as_results(m), az_id=AZ, port=80))
    assert n.side == "provider"
    assert "nlb-sg-egress" in n.candidates
    assert "target-service" not in n.candidates and "client-sg-egress" not in n.candidates


def test_nlb_ingress_removed_for_a_client_leaves_the_consumer_side_or_ingress(lab: Lab) -> None:
    lab.break_control("nlb-sg-ingress", client="client-1")
    m = fresh_round(lab)
    assert up(m)[("nlb", NLB_PATH)] == 1.0
    n = narrow(EVERYTHING, summarize(as_results(m), az_id=AZ, port=80))
    assert n.side == "consumer"
    assert "nlb-sg-ingress" in n.candidates and "nlb-sg-egress" not in n.candidates


def test_a_stopped_service_is_refused_directly_and_named(lab: Lab) -> None:
    lab.break_control("target-service")
    m = fresh_round(lab)
    assert up(m)[("target", "server-1/server-2/80")] == 0.0
    counted = m[
        (
            "plprobe_provider_probes_total",
            (("hop", "target"), ("path", "server-1/server-2/80"), ("result", "refused")),
        )
    ]
    assert counted >= 1
