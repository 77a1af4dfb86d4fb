"""The hop-by-hop walk: path order, who sees which address, partial views, per-target hops."""

from __future__ import annotations

import pytest
from scenarios import (
    BY_N,
    SCENARIOS,
    allow_all,
    broken,
    consumer_only,
    multi_az,
    reference,
    rule,
    set_nacl,
    the_nlb,
    the_tg,
)

from agent import controls
from agent.analyze import analyze_flow, flows, walk
from agent.analyze.path import EMITTED_CONTROLS
from agent.diagnose.verdict import diagnose_static
from agent.errors import ConfigError
from agent.model import NaclEntry
from agent.results import HopFinding


def hops(findings: list[HopFinding], name: str) -> list[HopFinding]:
    return [f for f in findings if f.hop == name]


def one(findings: list[HopFinding], name: str, target: str = "") -> HopFinding:
    found = [f for f in findings if f.hop == name and f.target == target]
    assert len(found) == 1, (name, target, [f.hop for f in findings])
    return found[0]


def test_hops_come_in_path_order() -> None:
    order = [f.hop for f in analyze_flow(reference(), "client-2", None, 80) if not f.target]
    assert order[:9] == [
        "client-sg-egress",
        "client-nacl-out",
        "endpoint-nacl-in",
        "endpoint-sg-ingress",
        "endpoint-state",
        "service-principal",
        "privatelink:nlb-nacl-in",
        "nlb-sg-ingress",
        "nlb-listener",
    ]
    assert order[-3:] == [
        "return:privatelink:nlb-nacl-out",
        "return:endpoint-nacl-out",
        "return:client-nacl-in",
    ]


def test_the_healthy_reference_path_allows_every_hop() -> None:
    for client in ("client-1", "client-2"):
        findings = analyze_flow(reference(), client, None, 80)
        assert findings and all(f.status == "allowed" for f in findings)


def test_nlb_sg_ingress_sees_the_client_ip() -> None:
    f = one(analyze_flow(reference(), "client-1", None, 80), "nlb-sg-ingress")
    assert "nlb-from-client-1" in f.rule and "10.1.0.10/32" in f.rule


def test_nlb_sg_ingress_fix_names_the_client_ip_and_the_cross_account_limit() -> None:
    s = BY_N[8]
    f = one(analyze_flow(broken(s), "client-2", None, 80), "nlb-sg-ingress")
    assert f.status == "denied"
    assert "inbound rule TCP 80 from 10.2.1.15/32 (client-2)" in f.fix
    assert "cannot reference the consumer's SG across accounts" in f.fix


def test_an_nlb_without_security_groups_allows_all_client_traffic() -> None:
    t = broken(BY_N[8])
    the_nlb(t).sg_ids = None
    findings = analyze_flow(t, "client-2", None, 80)
    assert one(findings, "nlb-sg-ingress").status == "allowed"
    assert one(findings, "nlb-sg-egress", "server-1").status == "allowed"


def test_a_target_sg_cannot_reference_an_nlb_that_has_no_security_groups() -> None:
    t = reference()
    the_nlb(t).sg_ids = None
    f = one(analyze_flow(t, "client-2", None, 80), "target-sg-ingress", "server-1")
    assert f.status == "denied" and "10.3.0.100/32" in f.fix


def test_target_sg_ingress_is_evaluated_from_the_nlb_node_ip() -> None:
    t = reference()
    r = rule(t, "server", "server-from-nlb")
    r.sg_ref, r.cidrs = None, ("10.3.0.100/32",)
    findings = analyze_flow(t, "client-2", None, 80)
    assert one(findings, "target-sg-ingress", "server-1").status == "allowed"


def test_health_check_port_hops_appear_only_when_the_port_differs() -> None:
    assert not [
        f
        for f in analyze_flow(reference(), "client-2", None, 80)
        if f.direction == "health" and f.control != "target-health"
    ]
    findings = analyze_flow(broken(BY_N[11]), "client-2", None, 80)
    health = one(findings, "nlb-sg-egress:health", "server-1")
    assert health.status == "denied" and "8080" in health.fix
    assert one(findings, "nlb-sg-egress", "server-1").status == "allowed"


def test_no_healthy_target_is_flagged_as_fail_open() -> None:
    findings = analyze_flow(broken(BY_N[11]), "client-2", None, 80)
    aggregate = one(findings, "target-health")
    assert aggregate.status == "allowed" and "fails open" in aggregate.degraded


def test_observed_health_is_used_when_present() -> None:
    t = reference()
    the_tg(t).targets[1].health = "unhealthy"
    findings = analyze_flow(t, "client-2", None, 80)
    assert one(findings, "target-health", "server-2").status == "denied"
    assert one(findings, "target-health").rule == "healthy: server-1"
    v = diagnose_static(findings, path="p", now=0.0)
    assert (v.status, v.blocked_at) == ("degraded", "target-health")


def test_two_targets_one_blocked_gives_per_target_findings() -> None:
    findings = analyze_flow(broken(BY_N[13]), "client-2", None, 80)
    assert one(findings, "target-sg-ingress", "server-1").status == "allowed"
    assert one(findings, "target-sg-ingress", "server-2").status == "denied"


def test_same_subnet_skips_the_nacls() -> None:
    t = reference()
    client = t.instance_by_name("client-2")
    eni = next(iter(t.endpoints.values())).enis[0]
    assert client is not None
    client.subnet_id, client.ip = eni.subnet_id, "10.2.0.30"
    names = {f.hop for f in analyze_flow(t, "client-2", None, 80)}
    assert "client-nacl-out" not in names and "return:client-nacl-in" not in names


def test_a_partly_covered_nlb_ephemeral_range_degrades_the_path() -> None:
    t = reference()
    set_nacl(
        t,
        "vpc-3-server",
        [allow_all(False)],
        [
            NaclEntry(100, True, "tcp", "allow", "0.0.0.0/0", 80, 80),
            NaclEntry(110, True, "tcp", "allow", "0.0.0.0/0", 32768, 65535),
        ],
    )
    findings = analyze_flow(t, "client-2", None, 80)
    out = one(findings, "return:target-nacl-out", "server-1")
    assert out.status == "denied" and out.degraded and "1024-32767" in out.detail
    v = diagnose_static(findings, path="p", now=0.0)
    assert (v.status, v.blocked_at, v.stage) == ("degraded", "provider-nacl", "return")


def test_consumer_only_view_marks_every_provider_control_not_visible() -> None:
    findings = analyze_flow(consumer_only(reference()), "client-2", None, 80)
    hidden = {f.control for f in findings if f.status == "not_visible"}
    assert {
        "nlb-sg-ingress",
        "nlb-listener",
        "nlb-sg-egress",
        "target-sg-ingress",
        "provider-nacl",
        "target-health",
    } <= hidden
    assert one(findings, "client-sg-egress").status == "allowed"
    assert one(findings, "endpoint-sg-ingress").status == "allowed"
    assert one(findings, "service-principal").status == "allowed"


def test_consumer_only_view_still_names_a_consumer_fault() -> None:
    t = consumer_only(broken(BY_N[1]))
    v = diagnose_static(analyze_flow(t, "client-2", None, 80), path="p", now=0.0)
    assert (v.status, v.blocked_at) == ("fail", "client-sg-egress")


def test_consumer_only_view_of_a_healthy_path_is_not_verified() -> None:
    v = diagnose_static(
        analyze_flow(consumer_only(reference()), "client-2", None, 80), path="p", now=0.0
    )
    assert v.status == "unknown" and v.blocked_at is None
    assert "nlb-sg-ingress" in v.candidates


def test_a_provider_only_view_takes_the_client_by_ip() -> None:
    t = reference()
    consumer = {a.name for a in t.accounts.values() if a.role == "consumer"}
    t.visible_accounts -= consumer
    for table in (t.instances, t.security_groups, t.nacls, t.subnets):
        for k in [k for k, v in table.items() if v.account in consumer]:
            del table[k]
    t.endpoints.clear()
    findings = analyze_flow(t, "10.2.1.15", None, 80)
    assert one(findings, "client-sg-egress").status == "not_visible"
    assert one(findings, "nlb-sg-ingress").status == "allowed"
    assert one(findings, "target-sg-ingress", "server-1").status == "allowed"


def test_unknown_client_is_bad_input() -> None:
    with pytest.raises(ConfigError, match="client-9"):
        analyze_flow(reference(), "client-9", None, 80)


def test_unknown_endpoint_is_bad_input() -> None:
    with pytest.raises(ConfigError, match="vpce-nope"):
        analyze_flow(reference(), "client-2", "vpce-nope", 80)


def test_eni_ip_selects_the_az_path() -> None:
    t = multi_az()
    az1 = next(f for f in flows(t, "client-2", 80) if f.az_id == "apne1-az1")
    findings = analyze_flow(t, "client-2", None, 80, eni_ip=az1.eni_ip)
    assert one(findings, "target-health").status == "denied"
    with pytest.raises(ConfigError):
        analyze_flow(t, "client-2", None, 80, eni_ip="10.9.9.9")


def test_path_ids_name_client_az_and_port() -> None:
    assert [f.path_id for f in flows(multi_az(), "client-2", 80)] == [
        "client-2/apne1-az1/80",
        "client-2/apne1-az4/80",
    ]


def _all_findings() -> list[HopFinding]:
    out = []
    for s in SCENARIOS:
        for view in (broken(s), consumer_only(broken(s))):
            out += analyze_flow(view, s.client, None, 80)
    t = multi_az()
    for f in flows(t, "client-2", 80):
        out += walk(t, f)
    return out


def test_every_emitted_control_is_in_the_catalogue() -> None:
    assert set(EMITTED_CONTROLS) <= set(controls.IDS)
    seen = {f.control for f in _all_findings()}
    assert seen <= set(EMITTED_CONTROLS)


def test_every_ra_code_belongs_to_its_control_in_the_catalogue() -> None:
    for f in _all_findings():
        if f.ra_code:
            assert f.ra_code in controls.get(f.control).ra_codes, (f.hop, f.ra_code)


def test_every_denial_carries_a_fix() -> None:
    for f in _all_findings():
        if f.status == "denied":
            assert f.fix, f.hop


def test_unknown_listening_ports_are_not_visible_rather_than_a_stopped_service() -> None:
    t = reference()
    for inst in t.targets():
        inst.services = []
        inst.services_known = False
    findings = analyze_flow(t, "client-2", None, 80)
    assert one(findings, "target-service", "server-1").status == "not_visible"
    assert diagnose_static(findings, path="p", now=0.0).blocked_at != "target-service"


def test_an_endpoint_of_unknown_creator_is_allowed_by_a_role_of_its_account() -> None:
    """A snapshot cannot say who created an endpoint: a role of that account counts."""
    from agent.sources.topology import load_topology

    t = load_topology()
    svc = next(iter(t.endpoint_services.values()))
    svc.allowed_principals = ["arn:aws:iam::111111111111:role/platform-deployer"]
    next(iter(t.endpoints.values())).requester = ""
    hop = next(f for f in analyze_flow(t, "client-2", None, 80) if f.hop == "service-principal")
    assert hop.status == "allowed"


def test_an_existing_endpoint_of_unknown_creator_is_not_blamed_when_its_account_was_removed() -> (
    None
):
    """Issue 14 (9): AWS keeps an existing connection when its principal is removed; an
    observed endpoint (creator unknown: a snapshot) exists, so permissions no longer decide."""
    from agent.sources.topology import load_topology

    t = load_topology()
    svc = next(iter(t.endpoint_services.values()))
    svc.allowed_principals = ["arn:aws:iam::333333333333:root"]
    next(iter(t.endpoints.values())).requester = ""
    hop = next(f for f in analyze_flow(t, "client-2", None, 80) if f.hop == "service-principal")
    assert hop.status == "allowed"
    assert "reject-vpc-endpoint-connections" in hop.detail


def test_fix_for_an_ipv6_client_names_a_single_address() -> None:
    from agent.sources.topology import load_topology

    findings = analyze_flow(load_topology(), "fd00::1", None, 80)
    fixes = " ".join(f.fix for f in findings if f.fix)
    assert "fd00::1/128" in fixes and "fd00::1/32" not in fixes
