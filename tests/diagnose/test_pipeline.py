"""agent/diagnose/pipeline.py: a probe round + a configuration view -> one verdict per path.

The topology is the reference lab's (configs/lab/reference.yaml) in memory; the packets are
synthetic PathEvidence as the runner would produce it (the probes themselves are tested in
test_runner.py), so each test says which evidence meets which configuration.
"""

from __future__ import annotations

import copy
import time
from functools import cache
from pathlib import Path

import pytest

from agent.diagnose.pipeline import (
    FindingsCache,
    SelfIdentity,
    diagnose_round,
    find_flow,
    route_source_ip,
)
from agent.diagnose.rounds import RoundResult
from agent.lab.faults import break_topology
from agent.lab.snapshot import write_snapshot
from agent.model import Topology
from agent.results import PathEvidence, PathRef, ProbeResult
from agent.sources.aws_snapshot import load_snapshot
from agent.sources.topology import load_topology
from agent.sources.views import ConfigView

ENI_IP = "10.2.0.20"
AZ = "apne1-az4"
PID = f"client-1/{AZ}/80"


@cache
def _reference() -> Topology:
    return load_topology()


def reference() -> Topology:
    return copy.deepcopy(_reference())


def ref(*, ip: str | None = ENI_IP, name: str = "", pid: str = PID) -> PathRef:
    return PathRef(id=pid, agent="client-1", name=name, ip=ip, port=80, az_id=AZ)


def evidence(outcome: str, seen: str, *, pid: str = PID) -> PathEvidence:
    result = ProbeResult(
        path=pid, probe="tcp", outcome=outcome, started_at=time.time(), target_ip=ENI_IP, port=80
    )
    return PathEvidence(path=pid, outcome=outcome, seen_at_target=seen, results=[result])


def a_round(*evs: PathEvidence, refs: list[PathRef] | None = None) -> RoundResult:
    now = time.time()
    return RoundResult(
        evidence=list(evs),
        results=[r for e in evs for r in e.results],
        observations=[],
        provider_error=None,
        started_at=now,
        finished_at=now,
        paths=refs if refs is not None else [ref()],
    )


ME = SelfIdentity(names=("client-1",))


def test_an_agent_named_after_its_instance_is_that_instances_flow() -> None:
    flow = find_flow(reference(), ref(), ME)
    assert (flow.client_name, flow.client_ip, flow.eni_ip, flow.port) == (
        "client-1",
        "10.1.0.10",
        ENI_IP,
        80,
    )


def test_an_agent_with_another_name_is_found_by_its_route_source_ip() -> None:
    me = SelfIdentity(names=("host-abc",), source_ip=lambda dst: "10.2.1.15")
    flow = find_flow(reference(), ref(), me)
    assert flow.client_name == "client-2"
    assert flow.client is not None and flow.client.ip == "10.2.1.15"


def test_an_agent_outside_the_view_is_analysed_as_a_bare_client_ip() -> None:
    me = SelfIdentity(names=("ecs-task",), ip="10.2.1.99")
    flow = find_flow(reference(), ref(), me)
    assert (flow.client_name, flow.client_ip, flow.client) == ("10.2.1.99", "10.2.1.99", None)


def test_the_endpoint_is_found_by_its_dns_name_when_the_name_gave_no_ip() -> None:
    topology = reference()
    endpoint = next(iter(topology.endpoints.values()))
    regional = next(iter(topology.endpoint_dns_names(endpoint)))
    flow = find_flow(topology, ref(ip=None, name=regional), ME)
    assert flow.endpoint is endpoint
    assert flow.eni_ip == ENI_IP


def test_a_timeout_unseen_at_the_target_names_the_broken_nlb_sg_ingress() -> None:
    broken = break_topology(reference(), "nlb-sg-ingress")
    diagnosis = diagnose_round(a_round(evidence("timeout", "no")), broken, ME)
    [verdict] = diagnosis.verdicts
    assert (verdict.status, verdict.stage, verdict.blocked_at) == (
        "fail",
        "forward",
        "nlb-sg-ingress",
    )
    assert "10.1.0.10" in verdict.fix  # the client's own IP, in the user's terms


def test_a_passing_path_on_a_healthy_view_blames_nothing() -> None:
    diagnosis = diagnose_round(a_round(evidence("ok", "yes")), reference(), ME)
    [verdict] = diagnosis.verdicts
    assert (verdict.status, verdict.blocked_at) == ("pass", None)
    assert diagnosis.all_pass and diagnosis.status == "pass"


def test_without_a_view_the_verdict_rests_on_packets_alone() -> None:
    diagnosis = diagnose_round(a_round(evidence("timeout", "no")), None, ME)
    [verdict] = diagnosis.verdicts
    assert verdict.status == "fail"
    assert verdict.findings == []
    assert verdict.blocked_at in (None, "unknown")


def test_an_endpoint_missing_from_a_visible_consumer_view_is_not_guessed() -> None:
    diagnosis = diagnose_round(
        a_round(evidence("timeout", "no"), refs=[ref(ip="10.9.9.9")]), reference(), ME
    )
    [verdict] = diagnosis.verdicts
    assert "10.9.9.9" in diagnosis.notes[PID]
    assert verdict.findings == []
    assert any("configuration not used" in line for line in verdict.evidence)


def test_a_provider_only_snapshot_still_evaluates_the_provider_hops(tmp_path: Path) -> None:
    broken = break_topology(reference(), "target-sg-ingress")
    dirs = {d.name: d for d in write_snapshot(broken, tmp_path)}
    provider_view = load_snapshot([dirs["provider"]])
    # client-1 is not in the provider's view: the agent's own IP stands for it
    me = SelfIdentity(names=("client-1",), ip="10.1.0.10")
    diagnosis = diagnose_round(a_round(evidence("timeout", "no")), provider_view, me)
    [verdict] = diagnosis.verdicts
    hops = {f.control: f.status for f in verdict.findings}
    assert hops["client-sg-egress"] == "not_visible"
    assert verdict.blocked_at == "target-sg-ingress"


def test_both_snapshots_written_by_the_lab_give_the_same_verdict_as_the_topology(
    tmp_path: Path,
) -> None:
    broken = break_topology(reference(), "endpoint-sg-ingress")
    view = load_snapshot(write_snapshot(broken, tmp_path))
    [verdict] = diagnose_round(a_round(evidence("timeout", "no")), view, ME).verdicts
    assert verdict.blocked_at == "endpoint-sg-ingress"


def test_a_stale_view_says_so_in_every_verdict() -> None:
    view = ConfigView(
        reference(),
        "aws",
        "aws consumer",
        loaded_at=time.time() - 600,
        error="throttled",
        stale_since=time.time() - 60,
    )
    [verdict] = diagnose_round(a_round(evidence("ok", "yes")), view, ME).verdicts
    assert any("refresh failing" in line and "throttled" in line for line in verdict.evidence)


def test_the_json_has_the_stable_verdict_field_names() -> None:
    body = diagnose_round(a_round(evidence("ok", "yes")), reference(), ME).to_json()
    assert body["status"] == "pass"
    stable = {"path", "status", "stage", "blocked_at", "candidates", "evidence", "explanation"}
    assert stable | {"fix", "checked_at"} <= set(body["verdicts"][0])
    assert body["evidence"][0]["path"] == PID


@pytest.mark.parametrize("dest", ["127.0.0.1", "::1"])
def test_the_route_source_ip_towards_loopback_is_loopback(dest: str) -> None:
    source = route_source_ip(dest)
    assert source in (dest, None)  # None only where the family is not configured


# --- the daemon's cache of static findings ---------------------------------------------------


def test_the_findings_cache_analyses_a_path_once_per_view() -> None:
    topology = break_topology(reference(), "nlb-sg-ingress")
    cache = FindingsCache()
    first = diagnose_round(a_round(evidence("timeout", "no")), topology, ME, cache=cache)
    again = diagnose_round(a_round(evidence("timeout", "no")), topology, ME, cache=cache)
    assert (cache.misses, cache.hits) == (1, 1)
    assert first.verdicts[0].blocked_at == again.verdicts[0].blocked_at == "nlb-sg-ingress"


def test_a_refreshed_view_is_analysed_again_and_its_change_shows() -> None:
    cache = FindingsCache()
    diagnose_round(a_round(evidence("timeout", "no")), reference(), ME, cache=cache)
    broken = break_topology(reference(), "endpoint-sg-ingress")
    diagnosis = diagnose_round(a_round(evidence("timeout", "no")), broken, ME, cache=cache)
    assert cache.misses == 2
    assert diagnosis.verdicts[0].blocked_at == "endpoint-sg-ingress"


def test_cached_and_uncached_diagnoses_agree() -> None:
    topology = break_topology(reference(), "target-sg-ingress")
    round_ = a_round(evidence("timeout", "yes"))
    cache = FindingsCache()
    diagnose_round(round_, topology, ME, cache=cache)
    cached = diagnose_round(round_, topology, ME, cache=cache, now=1.0).verdicts[0]
    plain = diagnose_round(round_, topology, ME, now=1.0).verdicts[0]
    assert cached.to_json() == plain.to_json()


def test_a_path_without_a_flow_keeps_its_note_when_cached() -> None:
    cache = FindingsCache()
    stray = ref(ip="10.9.9.9", name="nowhere.example")
    topology = reference()
    for _ in range(2):
        diagnosis = diagnose_round(
            a_round(evidence("timeout", "no"), refs=[stray]), topology, ME, cache=cache
        )
    assert "no endpoint" in diagnosis.notes[PID]
    assert (cache.misses, cache.hits) == (1, 1)
