"""Every hop the lab enforces is walked by the analysis, and every hop the analysis walks is
enforced by the lab (both derive from ``agent.pathhops``).

No root needed: the lab side is read from the rendered nftables rulesets. A small interpreter
follows each packet of a flow (client -> endpoint ENI -> NLB node -> target, and the replies)
through the ``forward`` chain of every router it crosses and records the SG and NACL chains
that apply to it — a chain whose leading ``iifname``/``oifname ... return`` exempts the
packet (same subnet, or traffic the chain does not see) does not count — and, where the
packet leaves its VPC, the route table the router's policy rules pick for it. The analysis side is
the walk's findings, mapped through the declaration. The two sets must be equal.
"""

from __future__ import annotations

import copy
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent import pathhops
from agent.analyze.path import analyze_flow
from agent.lab.plan import ROUTE_TABLE_PRIORITY, LabPlan, Node, render
from agent.model import Topology
from agent.sources.topology import load_topology

MULTI_AZ = Path(__file__).resolve().parents[2] / "configs" / "lab" / "multi-az.yaml"

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import diagnosis_accuracy as matrix  # noqa: E402

#: (kind, at, way, direction, leg, target) — one enforcement point of one flow
Point = tuple[str, str, str, str, str, str]

#: findings that say the control does not apply to this flow at all
NOT_APPLIED = ("not enforced on PrivateLink traffic", "the NLB has no security groups")


# --- the lab side: a packet through the rendered forward chains ----------------------------


def _chains(ruleset: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for match in re.finditer(r"chain (\w+) \{\n(.*?)\n  \}", ruleset, re.S):
        lines = [ln.strip() for ln in match.group(2).splitlines()]
        out[match.group(1)] = [ln for ln in lines if ln and not ln.startswith("type ")]
    return out


def _names(rule: str, key: str) -> set[str] | None:
    """The interface names a rule's ``iifname``/``oifname`` matches, None without one."""
    m = re.search(rf'{key} (\{{[^}}]*\}}|"[^"]*")', rule)
    return set(re.findall(r'"([^"]+)"', m.group(1))) if m else None


def _iface_only(rule: str) -> bool:
    """Does the rule match on interfaces alone (no address, port or state)?"""
    return not re.search(r"\b(ip|ct|meta|th)\b", rule.split(" comment ")[0])


def _matches(rule: str, iif: str, oif: str) -> bool:
    ins, outs = _names(rule, "iifname"), _names(rule, "oifname")
    return (ins is None or iif in ins) and (outs is None or oif in outs)


def _exempt(chain: list[str], iif: str, oif: str) -> bool:
    """The chain's leading interface-only ``return`` rules let this packet through unchecked."""
    for rule in chain:
        names = _names(rule, "iifname") or _names(rule, "oifname")
        if not (names and _iface_only(rule) and rule.split(" comment ")[0].endswith("return")):
            return False
        if _matches(rule, iif, oif):
            return True
    return False


def trace(ruleset: str, iif: str, oif: str, *, established: bool) -> list[str]:
    """The SG/NACL chains that check a packet from ``iif`` to ``oif`` in this router."""
    chains = _chains(ruleset)
    seen: list[str] = []
    for rule in chains["forward"]:
        if rule.startswith("ct state established"):
            if established:
                break
            continue
        if not _iface_only(rule) or not _matches(rule, iif, oif):
            continue
        if " jump " in f" {rule}":
            name = rule.split(" jump ")[1].split()[0]
            if not _exempt(chains[name], iif, oif):
                seen.append(name)
        elif rule.split(" comment ")[0].endswith(("accept", "drop")):
            break
    return seen


@dataclass(frozen=True)
class Leg:
    """One router crossing of one packet: in and out interfaces, the roles at either end."""

    router: str
    iif: str
    oif: str
    src: str
    dst: str
    leg: str
    target: str = ""
    #: the packet leaves its VPC here: the router consults the source subnet's route table
    leaves_vpc: bool = False


def _link(plan: LabPlan, ns_a: str, ns_b: str, prefix: str) -> tuple[str, str]:
    """The interfaces of the router-to-router link between two namespaces (a side, b side)."""
    for lk in plan.links:
        if lk.id.startswith(prefix):
            if (lk.a_ns, lk.b_ns) == (ns_a, ns_b):
                return lk.a_if, lk.b_if
            if (lk.b_ns, lk.a_ns) == (ns_a, ns_b):
                return lk.b_if, lk.a_if
    raise AssertionError(f"no {prefix} link between {ns_a} and {ns_b}")


def _router(plan: LabPlan, node: Node) -> str:
    return next(n.ns for n in plan.nodes if n.kind == "router" and n.vpc_id == node.vpc_id)


def _between(plan: LabPlan, a: Node, b: Node, ra: str, rb: str, leg: str, target: str = ""):
    roles = {"client": "client", "endpoint": "endpoint", "nlb": "nlb", "target": "target"}
    src, dst = roles[a.role], roles[b.role]
    if ra == rb:
        return [Leg(ra, a.veth, b.veth, src, dst, leg, target)]
    prefix = "pl:" if leg == "privatelink" else "peer:"
    out_if, in_if = _link(plan, ra, rb, prefix)
    return [
        Leg(ra, a.veth, out_if, src, dst, leg, target, leaves_vpc=leg != "privatelink"),
        Leg(rb, in_if, b.veth, src, dst, leg, target),
    ]


def _route_table_rule(plan: LabPlan, leg: Leg) -> bool:
    """Does the router pick a VPC route table for packets arriving on ``leg.iif``?"""
    return any(
        c[:4] == ["rule", "add", "iif", leg.iif]
        and c[-2:] == ["priority", ROUTE_TABLE_PRIORITY]
        and "lookup" in c
        for c in plan.ip[leg.router]
    )


def lab_points(plan: LabPlan, client: Node, eni: Node, nlb: Node, targets: list[Node]):
    """Every enforcement point the rendered lab applies to one flow, both directions."""
    r = {n.name: _router(plan, n) for n in (client, eni, nlb, *targets)}
    forward = _between(plan, client, eni, r[client.name], r[eni.name], "client-eni")
    forward += _between(plan, eni, nlb, r[eni.name], r[nlb.name], "privatelink")
    back = _between(plan, eni, client, r[eni.name], r[client.name], "client-eni")
    back += _between(plan, nlb, eni, r[nlb.name], r[eni.name], "privatelink")
    for t in targets:
        forward += _between(plan, nlb, t, r[nlb.name], r[t.name], "nlb-target", t.name)
        back += _between(plan, t, nlb, r[t.name], r[nlb.name], "nlb-target", t.name)
    points: set[Point] = set()
    for direction, legs in (("forward", forward), ("return", back)):
        for leg in legs:
            if leg.leaves_vpc and _route_table_rule(plan, leg):
                points.add(("route", leg.src, "out", direction, leg.leg, leg.target))
            ruleset = plan.nft[leg.router]
            for chain in trace(ruleset, leg.iif, leg.oif, established=direction == "return"):
                kind = "nacl" if chain.startswith("nacl_") else "sg"
                way = "out" if chain.endswith("_out") or chain.startswith("eg_") else "in"
                at = leg.src if way == "out" else leg.dst
                points.add((kind, at, way, direction, leg.leg, leg.target))
    return points


# --- the analysis side ----------------------------------------------------------------------


def _walk(topology: Topology, client: str, eni: Node) -> list:
    return analyze_flow(topology, client, eni.owner, 80, eni_ip=eni.ip)


def analysis_points(topology: Topology, client: str, eni: Node) -> set[Point]:
    points: set[Point] = set()
    for f in _walk(topology, client, eni):
        if f.direction == "health" or not pathhops.declared(f.hop):
            continue
        if f.status == "allowed" and f.rule in NOT_APPLIED:
            continue
        hop = pathhops.get(f.hop)
        target = f.target if hop.leg == "nlb-target" else ""
        points.add((hop.kind, hop.at, hop.way, hop.direction, hop.leg, target))
    return points


def flows(topology: Topology, plan: LabPlan):
    """(client, ENI node, NLB node, target nodes) for every client and endpoint ENI.

    The NLB node is one of the endpoint's service's NLB in the ENI's AZ; an endpoint with no
    NLB behind it (an AWS service, ``logs``) carries no path of the lab and is skipped.
    """
    nodes = {n.name: n for n in plan.nodes}
    for client in (n for n in plan.nodes if n.role == "client"):
        for eni in (n for n in plan.nodes if n.kind == "endpoint-eni"):
            svc = topology.endpoint_services.get(topology.endpoints[eni.owner].service_id)
            service_nlb = topology.nlb_of_service(svc) if svc else None
            nlb = next(
                (
                    n
                    for n in plan.nodes
                    if n.kind == "nlb-node"
                    and n.az_id == eni.az_id
                    and service_nlb is not None
                    and n.owner == service_nlb.id
                ),
                None,
            )
            if nlb is None:
                continue
            walked = {
                f.target
                for f in _walk(topology, client.name, eni)
                if f.target and pathhops.declared(f.hop)
            }
            targets = [nodes[n] for n in sorted(walked)]
            yield client, eni, nlb, targets


def _reference() -> Topology:
    return load_topology()


def _no_nlb_nacl_on_privatelink() -> Topology:
    t = load_topology()
    t.lab.nlb_subnet_nacl_on_privatelink = False
    return t


def _enforce_off() -> Topology:
    t = load_topology()
    for nlb in t.nlbs.values():
        nlb.enforce_sg_inbound_on_privatelink = False
    return t


def _multi_az() -> Topology:
    return load_topology(MULTI_AZ)


TOPOLOGIES = {
    "reference": _reference,
    "nlb-subnet-nacl-off": _no_nlb_nacl_on_privatelink,
    "nlb-sg-not-enforced": _enforce_off,
    "multi-az": _multi_az,
}


@pytest.mark.parametrize("name", sorted(TOPOLOGIES))
def test_the_lab_enforces_exactly_the_hops_the_analysis_walks(name: str) -> None:
    assert_same_points(TOPOLOGIES[name]())


#: matrix faults after which the lab has no path left to trace (nothing to compare)
NO_PATH = {
    7: "the endpoint was never created: no ENI",
    26: "the peering is gone: no link between the consumer VPCs",
}


@pytest.mark.parametrize(
    "scenario",
    [s for s in matrix.SCENARIOS if s.edit is not None and s.number not in NO_PATH],
    ids=lambda s: f"{s.number:02d}",
)
def test_every_fault_of_the_matrix_breaks_a_hop_both_sides_know(scenario) -> None:
    """The same equality on each broken topology of the fault matrix."""
    topology = matrix.lab_topology(scenario.lab)
    scenario.edit(topology)
    assert_same_points(topology)


def assert_same_points(topology: Topology) -> None:
    plan = render(copy.deepcopy(topology), "hops")
    checked = 0
    for client, eni, nlb, targets in flows(topology, plan):
        lab = lab_points(plan, client, eni, nlb, targets)
        walked = analysis_points(topology, client.name, eni)
        assert lab - walked == set(), f"{client.name} via {eni.name}: enforced, never walked"
        assert walked - lab == set(), f"{client.name} via {eni.name}: walked, never enforced"
        checked += 1
    assert checked >= 2


def test_the_nlb_subnet_nacl_on_privatelink_is_a_hop_of_both_or_of_neither() -> None:
    on = _reference()
    off = _no_nlb_nacl_on_privatelink()
    hop = ("nacl", "nlb", "in", "forward", "privatelink", "")
    for topology, present in ((on, True), (off, False)):
        plan = render(copy.deepcopy(topology), "hops")
        client, eni, nlb, targets = next(flows(topology, plan))
        assert (hop in lab_points(plan, client, eni, nlb, targets)) is present
        assert (hop in analysis_points(topology, client.name, eni)) is present


def test_a_peered_client_is_routed_both_ways_by_route_tables_in_the_lab_and_the_walk() -> None:
    topology = _reference()
    plan = render(copy.deepcopy(topology), "hops")
    client, eni, nlb, targets = next(f for f in flows(topology, plan) if f[0].name == "client-1")
    routes = {p for p in lab_points(plan, client, eni, nlb, targets) if p[0] == "route"}
    assert routes == {
        ("route", "client", "out", "forward", "client-eni", ""),
        ("route", "endpoint", "out", "return", "client-eni", ""),
    }
    assert routes <= analysis_points(topology, client.name, eni)


def test_every_sg_and_nacl_hop_the_analysis_emits_is_declared() -> None:
    kinds = {h.control for h in pathhops.HOPS}
    for client in ("client-1", "client-2"):
        for f in analyze_flow(_reference(), client, None, 80):
            if f.control in kinds and f.control not in ("target-health",):
                assert pathhops.declared(f.hop), f.hop
