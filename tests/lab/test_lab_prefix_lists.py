"""Managed prefix lists and several security groups on one ENI, in the lab.

A prefix list in an SG rule is an nftables interval set of the list's CIDRs (AWS resolves
the list when it evaluates the rule); the groups of one ENI are one chain in which any
group's rule accepts (a union). The first tests read the rendered rulesets (no root); the
``lab`` ones send real packets and check that ``explain`` on the lab's own snapshot agrees.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from labfixtures import endpoint_name

from agent.diagnose.explain import explain
from agent.lab.lab import Lab
from agent.lab.plan import render
from agent.model import PrefixList, Rule, SecurityGroup, Topology, stable_id
from agent.sources.aws_snapshot import load_snapshot
from agent.sources.topology import load_topology

TIMEOUT_S = 1.0
CLIENT_2_SUBNET = "10.2.1.0/24"


def nlb_rules_from_a_list(t: Topology, cidrs: list[str]) -> str:
    """Replace the NLB SG's per-client rules with one rule naming a prefix list of ``cidrs``."""
    pid = stable_id("pl", "consumer-clients")
    t.prefix_lists[pid] = PrefixList(pid, "consumer-clients", "provider", list(cidrs))
    nlb_sg = t.sg_by_name("nlb")
    assert nlb_sg is not None
    nlb_sg.rules = [r for r in nlb_sg.rules if not r.id.startswith("nlb-from-client")]
    nlb_sg.rules.append(Rule("nlb-from-clients", "ingress", "tcp", 80, 80, prefix_list=pid))
    return pid


def second_group_on_the_targets(t: Topology) -> str:
    """Move the targets' only ingress rule (from the NLB) into a second group on each target."""
    server = t.sg_by_name("server")
    assert server is not None
    moved = [r for r in server.rules if r.direction == "ingress"]
    server.rules = [r for r in server.rules if r.direction != "ingress"]
    gid = stable_id("sg", "server-from-nlb-only")
    t.security_groups[gid] = SecurityGroup(gid, "server-extra", "provider", server.vpc_id, moved)
    for inst in t.instances.values():
        if server.id in inst.sg_ids:
            inst.sg_ids = [*inst.sg_ids, gid]
    return gid


def provider_ruleset(t: Topology) -> tuple[str, list[str]]:
    plan = render(t, "unit")
    router = next(n.ns for n in plan.nodes if n.name == "router-vpc-3")
    return plan.nft[router], plan.warnings


# --- rendering (no root) -------------------------------------------------------------------


def test_a_prefix_list_rule_renders_as_an_interval_set_of_the_lists_cidrs():
    t = load_topology()
    pid = nlb_rules_from_a_list(t, ["10.1.0.0/24", CLIENT_2_SUBNET])
    text, warnings = provider_ruleset(t)
    sets = re.findall(r"set (pl_consumer_clients_\w+) \{([^}]*)\}", text)
    assert len(sets) == 1 and pid[-6:] in sets[0][0]
    assert "elements = { 10.1.0.0/24, 10.2.1.0/24 }" in text
    assert re.search(rf"ip saddr @{sets[0][0]} meta l4proto tcp th dport 80 return", text)
    assert not [w for w in warnings if "prefix list" in w]


def test_a_rule_naming_a_list_the_lab_does_not_hold_matches_nothing_and_says_so():
    t = load_topology()
    pid = nlb_rules_from_a_list(t, [CLIENT_2_SUBNET])
    del t.prefix_lists[pid]
    text, warnings = provider_ruleset(t)
    assert "@pl_" not in text
    assert any(pid in w and "cannot match" in w for w in warnings)


def test_the_groups_of_one_eni_are_checked_as_one_union_chain():
    t = load_topology()
    second_group_on_the_targets(t)
    text, _ = provider_ruleset(t)
    chain = re.search(r"chain in_server_1 \{\n(.*?)\n  \}", text, re.S)
    assert chain is not None
    body = chain.group(1)
    assert "server-extra: server-from-nlb" in body and body.rstrip().endswith("drop")


def test_a_second_group_holding_the_only_allowing_rule_lets_the_analysis_pass():
    t = load_topology()
    second_group_on_the_targets(t)
    assert [v.status for v in explain(t, "client-2", 80)] == ["pass"]


# --- real packets -------------------------------------------------------------------------


@pytest.mark.lab
def test_a_prefix_list_lets_its_cidrs_through_and_drops_the_others(
    restore_after: Lab, tmp_path: Path
) -> None:
    lab = restore_after
    topo = lab.topology
    nlb_rules_from_a_list(topo, [CLIENT_2_SUBNET])
    lab.apply(topo)
    name = endpoint_name(lab)
    got = {c: lab.http_get(c, name, timeout=TIMEOUT_S)["result"] for c in ("client-1", "client-2")}
    assert got == {"client-1": "timeout", "client-2": "ok"}
    # the snapshot carries the health checker's view: let the service port's targets settle
    # after the re-render (a loaded machine can catch one in "initial")
    service_tgs = {tg.id for tg in topo.target_groups.values() if tg.port == 80}
    assert lab.wait_health(
        lambda h: all(state == "healthy" for (tg, _), state in h.items() if tg in service_tgs),
        timeout=20,
    )
    view = load_snapshot(lab.snapshot(tmp_path))
    assert [(v.status, v.blocked_at) for v in explain(view, "client-1", 80)] == [
        ("fail", "nlb-sg-ingress")
    ]
    assert [v.status for v in explain(view, "client-2", 80)] == ["pass"]


@pytest.mark.lab
def test_a_second_group_on_the_targets_is_enforced_as_a_union(
    restore_after: Lab, tmp_path: Path
) -> None:
    lab = restore_after
    topo = lab.topology
    second_group_on_the_targets(topo)
    lab.apply(topo)
    assert lab.http_get("client-2", endpoint_name(lab), timeout=TIMEOUT_S)["result"] == "ok"
    view = load_snapshot(lab.snapshot(tmp_path))
    server = view.instance_by_name("server-1")
    assert server is not None and len(server.sg_ids) == 2
    assert [v.status for v in explain(view, "client-2", 80)] == ["pass"]
