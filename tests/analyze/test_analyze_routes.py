"""Routes and stale references in the walk: the hop that denies names the route table or the
stale rule, and the fix says what to add or re-create."""

from __future__ import annotations

from scenarios import BY_N, broken, first_denied, reference

from agent.analyze.path import analyze_flow
from agent.model import Topology
from agent.results import HopFinding


def _route_hops(findings: list[HopFinding]) -> list[HopFinding]:
    return [f for f in findings if f.control == "route"]


def test_a_client_in_the_endpoints_vpc_has_no_route_hop() -> None:
    """The local route carries it, and it cannot be removed."""
    assert _route_hops(analyze_flow(reference(), "client-2", None, 80)) == []


def test_a_peered_client_is_routed_there_and_back() -> None:
    hops = _route_hops(analyze_flow(reference(), "client-1", None, 80))
    assert [(h.hop, h.direction, h.status) for h in hops] == [
        ("route:client", "forward", "allowed"),
        ("return:route:endpoint", "return", "allowed"),
    ]


def test_a_missing_route_is_denied_with_the_route_to_add() -> None:
    hop = first_denied(analyze_flow(broken(BY_N[23]), "client-1", None, 80))
    assert (hop.hop, hop.ra_code) == ("route:client", "NO_ROUTE_TO_DESTINATION")
    assert "add a route to 10.2.0.0/16 via pcx-" in hop.fix
    assert "(vpc-1-private)" in hop.fix


def test_a_missing_way_back_is_a_return_hop_of_the_endpoints_table() -> None:
    hop = first_denied(analyze_flow(broken(BY_N[24]), "client-1", None, 80))
    assert (hop.hop, hop.direction) == ("return:route:endpoint", "return")
    assert "10.1.0.0/16" in hop.fix and "vpc-2-private" in hop.fix


def test_a_route_to_a_deleted_peering_is_a_blackhole_pointing_at_the_live_one() -> None:
    hop = first_denied(analyze_flow(broken(BY_N[25]), "client-1", None, 80))
    assert (hop.hop, hop.ra_code) == ("route:client", "BAD_STATE_ROUTE")
    assert "blackhole" in hop.detail and "pcx-0recreated" in hop.fix


def _peering_deleted() -> Topology:
    t = reference()
    next(iter(t.peerings.values())).status = "deleted"
    t.mark_stale_references()
    return t


def test_a_stale_reference_matches_nothing_and_the_finding_names_it() -> None:
    findings = analyze_flow(_peering_deleted(), "client-1", "endpoint", 80)
    hop = first_denied(findings)
    assert hop.hop == "client-sg-egress"
    assert "stale rule client-1-egress-endpoint" in hop.detail
    assert "deleted" in hop.detail
    assert hop.fix.startswith("rule client-1-egress-endpoint is stale")
    assert "re-create the peering" in hop.fix


def test_the_stale_reference_of_the_endpoint_sg_is_named_too() -> None:
    findings = analyze_flow(_peering_deleted(), "client-1", "endpoint", 80)
    ingress = next(f for f in findings if f.hop == "endpoint-sg-ingress")
    assert ingress.status == "denied"
    assert "stale rule endpoint-from-client-1" in ingress.detail


def test_a_client_in_the_endpoints_vpc_is_untouched_by_the_deleted_peering() -> None:
    findings = analyze_flow(_peering_deleted(), "client-2", None, 80)
    assert not [f for f in findings if f.status == "denied"]
