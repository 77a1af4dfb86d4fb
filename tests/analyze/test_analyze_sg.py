"""Security group semantics: CIDRs, SG references, prefix lists, protocols, ports, union."""

from __future__ import annotations

import copy
from functools import cache

from agent.analyze.sg import evaluate_sg
from agent.model import PrefixList, Rule, SecurityGroup, Topology
from agent.sources.topology import load_topology


@cache
def _ref() -> Topology:
    return load_topology()


def topo() -> Topology:
    return copy.deepcopy(_ref())


def group(t: Topology, name: str) -> SecurityGroup:
    g = t.sg_by_name(name)
    assert g is not None
    return g


def add_group(t: Topology, gid: str, *rules: Rule) -> str:
    base = group(t, "nlb")
    t.security_groups[gid] = SecurityGroup(gid, gid, base.account, base.vpc_id, list(rules))
    return gid


def test_a_cidr_rule_allows_an_address_inside_it_and_names_the_rule() -> None:
    t = topo()
    d = evaluate_sg(t, [group(t, "nlb").id], "ingress", "10.2.1.15", "tcp", 80)
    assert d.allowed and d.rule is not None and d.rule.id == "nlb-from-client-2"
    assert d.status == "allowed"


def test_a_cidr_rule_denies_an_address_outside_it_listing_the_rules_checked() -> None:
    t = topo()
    d = evaluate_sg(t, [group(t, "nlb").id], "ingress", "10.2.1.99", "tcp", 80)
    assert not d.allowed and d.status == "denied"
    assert {r.id for r in d.checked} == {
        "nlb-from-client-1",
        "nlb-from-client-2",
        "nlb-from-client-1-9721",
        "nlb-from-client-2-9721",
    }


def test_an_sg_reference_matches_the_member_ips_of_the_group() -> None:
    t = topo()
    endpoint_ip = the_eni_ip(t)
    d = evaluate_sg(t, [group(t, "client-2").id], "egress", endpoint_ip, "tcp", 80)
    assert d.allowed and d.rule is not None and d.rule.sg_ref == group(t, "endpoint").id


def the_eni_ip(t: Topology) -> str:
    return next(iter(t.endpoints.values())).enis[0].ip


def test_an_sg_reference_does_not_match_an_address_outside_the_group() -> None:
    t = topo()
    d = evaluate_sg(t, [group(t, "client-2").id], "egress", "10.2.0.99", "tcp", 80)
    assert not d.allowed


def test_sg_references_never_match_where_the_identity_is_not_preserved() -> None:
    t = topo()
    nlb = group(t, "nlb")
    nlb.rules.append(
        Rule("nlb-from-client-sg", "ingress", "tcp", 80, 80, sg_ref=group(t, "client-2").id)
    )
    nlb.rules = [r for r in nlb.rules if r.id != "nlb-from-client-2"]
    d = evaluate_sg(t, [nlb.id], "ingress", "10.2.1.15", "tcp", 80, refs_match=False)
    assert d.status == "denied"
    assert [r.id for r in d.unusable_refs] == ["nlb-from-client-sg"]


def test_protocol_all_covers_every_port() -> None:
    t = topo()
    gid = add_group(t, "sg-all", Rule("all", "ingress", "-1", 0, 65535, cidrs=("10.0.0.0/8",)))
    assert evaluate_sg(t, [gid], "ingress", "10.9.9.9", "tcp", 31337).allowed


def test_a_port_range_covers_its_ends_and_nothing_outside() -> None:
    t = topo()
    gid = add_group(t, "sg-range", Rule("r", "ingress", "tcp", 8000, 8080, cidrs=("0.0.0.0/0",)))
    assert evaluate_sg(t, [gid], "ingress", "1.2.3.4", "tcp", 8000).allowed
    assert evaluate_sg(t, [gid], "ingress", "1.2.3.4", "tcp", 8080).allowed
    assert not evaluate_sg(t, [gid], "ingress", "1.2.3.4", "tcp", 8081).allowed


def test_a_udp_rule_does_not_allow_tcp() -> None:
    t = topo()
    gid = add_group(t, "sg-udp", Rule("u", "ingress", "udp", 80, 80, cidrs=("0.0.0.0/0",)))
    assert not evaluate_sg(t, [gid], "ingress", "1.2.3.4", "tcp", 80).allowed


def test_only_rules_of_the_asked_direction_count() -> None:
    t = topo()
    gid = add_group(t, "sg-egress", Rule("e", "egress", "tcp", 80, 80, cidrs=("0.0.0.0/0",)))
    d = evaluate_sg(t, [gid], "ingress", "1.2.3.4", "tcp", 80)
    assert not d.allowed and d.checked == []


def test_several_groups_on_an_eni_are_a_union() -> None:
    t = topo()
    a = add_group(t, "sg-a", Rule("a", "ingress", "tcp", 22, 22, cidrs=("0.0.0.0/0",)))
    b = add_group(t, "sg-b", Rule("b", "ingress", "tcp", 80, 80, cidrs=("0.0.0.0/0",)))
    d = evaluate_sg(t, [a, b], "ingress", "1.2.3.4", "tcp", 80)
    assert d.allowed and d.group is not None and d.group.id == b


def test_an_unknown_prefix_list_is_not_visible_rather_than_denied() -> None:
    t = topo()
    gid = add_group(t, "sg-pl", Rule("pl", "ingress", "tcp", 80, 80, prefix_list="pl-0abc"))
    d = evaluate_sg(t, [gid], "ingress", "10.2.1.15", "tcp", 80)
    assert d.status == "not_visible" and "pl-0abc" in d.reason


def test_a_known_prefix_list_matches_its_cidrs() -> None:
    t = topo()
    t.prefix_lists["pl-0abc"] = PrefixList("pl-0abc", "clients", "consumer", ["10.2.1.0/24"])
    gid = add_group(t, "sg-pl", Rule("pl", "ingress", "tcp", 80, 80, prefix_list="pl-0abc"))
    assert evaluate_sg(t, [gid], "ingress", "10.2.1.15", "tcp", 80).allowed
    assert evaluate_sg(t, [gid], "ingress", "10.2.2.15", "tcp", 80).status == "denied"


def test_a_rule_that_allows_wins_over_an_unresolvable_one() -> None:
    t = topo()
    gid = add_group(
        t,
        "sg-mixed",
        Rule("pl", "ingress", "tcp", 80, 80, prefix_list="pl-unknown"),
        Rule("cidr", "ingress", "tcp", 80, 80, cidrs=("10.2.1.15/32",)),
    )
    assert evaluate_sg(t, [gid], "ingress", "10.2.1.15", "tcp", 80).allowed


def test_a_group_absent_from_the_view_is_not_visible() -> None:
    t = topo()
    d = evaluate_sg(t, ["sg-0notthere"], "ingress", "10.2.1.15", "tcp", 80)
    assert d.status == "not_visible" and d.missing == ["sg-0notthere"]
