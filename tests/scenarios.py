"""The fault matrix as data shared by the analysis and diagnosis tests.

Each scenario edits the reference topology in memory (the same edit ``plprobe lab break``
would make) and says what the packets would show (docs/DIAGNOSIS.md, "what a failure looks
like on the wire"). ``tests/diagnose/test_diagnose.py`` feeds the scenarios to ``diagnose``
with synthetic evidence; ``tests/diagnose/test_diagnose_scenarios.py`` checks that the static
findings alone name the control and the rule.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from agent.analyze.path import analyze_flow
from agent.lab import faults
from agent.model import (
    Endpoint,
    EndpointEni,
    Nacl,
    NaclEntry,
    Peering,
    PrefixList,
    Rule,
    SecurityGroup,
    Topology,
)
from agent.results import HopFinding
from agent.sources.topology import load_topology

MULTI_AZ = Path(__file__).resolve().parents[1] / "configs" / "lab" / "multi-az.yaml"


@cache
def _reference() -> Topology:
    return load_topology()


@cache
def _multi_az() -> Topology:
    return load_topology(MULTI_AZ)


def reference() -> Topology:
    """A private copy of the reference topology (loading once keeps the suite fast)."""
    return copy.deepcopy(_reference())


def multi_az() -> Topology:
    return copy.deepcopy(_multi_az())


# --- edits --------------------------------------------------------------------------------


def sg(t: Topology, name: str) -> SecurityGroup:
    group = t.sg_by_name(name)
    assert group is not None, name
    return group


def rule(t: Topology, sg_name: str, rule_id: str) -> Rule:
    return next(r for r in sg(t, sg_name).rules if r.id == rule_id)


def drop_rule(t: Topology, sg_name: str, rule_id: str) -> None:
    group = sg(t, sg_name)
    group.rules = [r for r in group.rules if r.id != rule_id]


def set_nacl(
    t: Topology, subnet_name: str, ingress: list[NaclEntry], egress: list[NaclEntry]
) -> Nacl:
    """Give a subnet its own NACL (taking it off the VPC's default one)."""
    subnet = next(s for s in t.subnets.values() if s.name == subnet_name)
    for n in t.nacls.values():
        n.subnet_ids = [s for s in n.subnet_ids if s != subnet.id]
    nacl = Nacl(
        f"acl-{subnet_name}",
        f"{subnet_name}-acl",
        subnet.account,
        subnet.vpc_id,
        [subnet.id],
        [*ingress, *egress],
    )
    t.nacls[nacl.id] = nacl
    return nacl


def allow_all(egress: bool, number: int = 100) -> NaclEntry:
    return NaclEntry(number, egress, "-1", "allow", "0.0.0.0/0")


def the_tg(t: Topology):
    return next(iter(t.target_groups.values()))


def the_nlb(t: Topology):
    return next(iter(t.nlbs.values()))


def the_endpoint(t: Topology):
    return next(iter(t.endpoints.values()))


def s1(t: Topology) -> None:
    drop_rule(t, "client-2", "client-2-egress-endpoint")


def s2(t: Topology) -> None:
    r = rule(t, "client-2", "client-2-egress-endpoint")
    r.from_port = r.to_port = 8080


def s3(t: Topology) -> None:
    drop_rule(t, "endpoint", "endpoint-from-client-1")


def s4(t: Topology) -> None:
    r = rule(t, "endpoint", "endpoint-from-client-2")
    r.sg_ref, r.cidrs = None, ("10.9.0.0/16",)


def s5(t: Topology) -> None:
    the_endpoint(t).state = "pendingAcceptance"


def s6(t: Topology) -> None:
    the_endpoint(t).state = "rejected"


def s7(t: Topology) -> None:
    next(iter(t.endpoint_services.values())).allowed_principals = ["arn:aws:iam::333333333333:root"]


def s8(t: Topology) -> None:
    for rid in ("nlb-from-client-1", "nlb-from-client-2"):
        rule(t, "nlb", rid).cidrs = ("10.2.0.0/24",)


def s9(t: Topology) -> None:
    s8(t)
    the_nlb(t).enforce_sg_inbound_on_privatelink = False


def s10(t: Topology) -> None:
    r = rule(t, "nlb", "nlb-egress-server")
    r.from_port = r.to_port = 8080


def s11(t: Topology) -> None:
    """Health checks on 8080: the targets allow it, the NLB SG egress does not."""
    the_tg(t).health_check.port = 8080
    sg(t, "server").rules.append(
        Rule("server-from-nlb-health", "ingress", "tcp", 8080, 8080, sg_ref=sg(t, "nlb").id)
    )
    for name in ("server-1", "server-2"):
        inst = t.instance_by_name(name)
        assert inst is not None
        inst.services = [80, 8080]


def s12(t: Topology) -> None:
    r = rule(t, "server", "server-from-nlb")
    r.sg_ref, r.cidrs = None, ("10.1.0.10/32", "10.2.1.15/32")


def s13(t: Topology) -> None:
    """server-2 gets its own group without the NLB rule (the NLB may still send to it)."""
    server = sg(t, "server")
    egress = [r for r in server.rules if r.direction == "egress"]
    broken = SecurityGroup("sg-0broken", "server-2-broken", server.account, server.vpc_id, egress)
    t.security_groups[broken.id] = broken
    sg(t, "nlb").rules.append(Rule("nlb-egress-broken", "egress", "tcp", 80, 80, sg_ref=broken.id))
    inst = t.instance_by_name("server-2")
    assert inst is not None
    inst.sg_ids = [broken.id]


def s14(t: Topology) -> None:
    set_nacl(
        t,
        "vpc-2-client",
        [allow_all(False)],
        [NaclEntry(90, True, "tcp", "deny", "0.0.0.0/0", 80, 80), allow_all(True)],
    )


def s15(t: Topology) -> None:
    set_nacl(
        t,
        "vpc-2-client",
        [NaclEntry(100, False, "tcp", "allow", "0.0.0.0/0", 22, 22)],
        [allow_all(True)],
    )


def s16(t: Topology) -> None:
    set_nacl(
        t,
        "vpc-3-server",
        [allow_all(False)],
        [NaclEntry(100, True, "tcp", "allow", "0.0.0.0/0", 443, 443)],
    )


def s18(t: Topology) -> None:
    t.listeners.clear()


def s19(t: Topology) -> None:
    for name in ("server-1", "server-2"):
        inst = t.instance_by_name(name)
        assert inst is not None
        inst.services = []


def s23(t: Topology) -> None:
    """client-1's subnet lost its route over the peering to the endpoint's VPC."""
    faults.get("route").edit(t, faults.affected_clients(t, "route", "client-1"))


def s24(t: Topology) -> None:
    """The endpoint's VPC lost its route back to client-1's VPC: the replies die."""
    table = next(r for r in t.route_tables.values() if r.name == "vpc-2-private")
    table.routes = [r for r in table.routes if r.target == "local"]


def s25(t: Topology) -> None:
    """The peering was deleted and recreated; the routes still name the deleted one."""
    old = next(iter(t.peerings.values()))
    old.status = "deleted"
    new = Peering(
        "pcx-0recreated", "vpc-1-to-vpc-2-again", old.requester_vpc_id, old.accepter_vpc_id
    )
    t.peerings[new.id] = new


#: the AWS-service interface endpoint of s38/s39 (CloudWatch Logs)
LOGS_ENDPOINT = "vpce-0aws0logs000000"


def s39(t: Topology) -> None:
    """The consumer VPC also has an endpoint to an AWS service, named to sort first, whose SG
    lets the whole private range in: it is never the path to the provider's service."""
    ep = the_endpoint(t)
    subnet = ep.enis[0].subnet_id
    logs_sg = SecurityGroup(
        "sg-0awslogs", "aws-logs-endpoint", ep.account, ep.vpc_id,
        [Rule("logs-from-private", "ingress", "-1", 0, 65535, cidrs=("10.0.0.0/8",))],
    )  # fmt: skip
    t.security_groups[logs_sg.id] = logs_sg
    t.endpoints[LOGS_ENDPOINT] = Endpoint(
        LOGS_ENDPOINT, "aws-logs", ep.account, ep.vpc_id, "logs", [logs_sg.id],
        [EndpointEni("eni-0awslogs", subnet, "10.2.0.30")], requester=ep.requester,
    )  # fmt: skip


def s38(t: Topology) -> None:
    """s39's VPC, and the service's endpoint SG lacks client-1 (the logs one would allow it)."""
    s39(t)
    s3(t)


def s40(t: Topology) -> None:
    """The endpoint SG allows a customer-managed prefix list that lacks vpc-1's subnets."""
    group = sg(t, "endpoint")
    t.prefix_lists["pl-0clientsubnets"] = PrefixList(
        "pl-0clientsubnets", "consumer-client-subnets", group.account, ["10.2.1.0/24"]
    )
    group.rules = [r for r in group.rules if r.direction != "ingress"]
    group.rules.append(
        Rule(
            "endpoint-from-client-subnets",
            "ingress",
            "tcp",
            80,
            80,
            prefix_list="pl-0clientsubnets",
        )
    )


def s41(t: Topology) -> None:
    """The NLB SG allows a provider prefix list that has client-2's address only."""
    group = sg(t, "nlb")
    t.prefix_lists["pl-0consumers"] = PrefixList(
        "pl-0consumers", "privatelink-consumers", group.account, ["10.2.1.15/32"]
    )
    group.rules = [r for r in group.rules if not r.id.startswith("nlb-from-client")]
    group.rules.append(
        Rule("nlb-from-consumers", "ingress", "tcp", 80, 80, prefix_list="pl-0consumers")
    )


def s42(t: Topology) -> None:
    """The provider's VPC uses client-1's range too (both 10.1.0.0/16); subnets renumbered."""
    moves = {"10.3.0.": "10.1.100.", "10.3.1.": "10.1.101."}

    def moved(address: str) -> str:
        for old, new in moves.items():
            if address.startswith(old):
                return new + address[len(old) :]
        return address

    vpc = next(v for v in t.vpcs.values() if v.name == "vpc-3")
    vpc.cidr = "10.1.0.0/16"
    for subnet in t.subnets.values():
        if subnet.vpc_id == vpc.id:
            subnet.cidr = moved(subnet.cidr)
    for inst in t.instances.values():
        if t.subnets[inst.subnet_id].vpc_id == vpc.id:
            inst.ip = moved(inst.ip)
    for node in the_nlb(t).nodes:
        node.ip = moved(node.ip)


def s43(t: Topology) -> None:
    """s42's VPCs, and the NLB SG lets in only its own range: client-1 is in it by overlap."""
    s42(t)
    group = sg(t, "nlb")
    group.rules = [r for r in group.rules if not r.id.startswith("nlb-from-client")]
    group.rules.append(Rule("nlb-from-own-vpc", "ingress", "tcp", 80, 80, cidrs=("10.1.0.0/16",)))


def noop(t: Topology) -> None:
    return None


@dataclass(frozen=True)
class Scenario:
    """One row of the fault matrix: the edit, the client, what the verdict must say."""

    n: int
    edit: Callable[[Topology], None]
    client: str
    control: str | None  # blocked_at
    status: str  # static status
    stage: str
    #: (client outcome, seen at target) the packets would show
    wire: tuple[str, str]
    #: which account's configuration names the control
    side: str = "provider"
    #: a second client that must be unaffected
    bystander: str | None = None
    rule_text: tuple[str, ...] = field(default=())


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(1, s1, "client-2", "client-sg-egress", "fail", "forward", ("timeout", "no"),
             "consumer", "client-1", ("client-2-egress-https",)),
    Scenario(2, s2, "client-2", "client-sg-egress", "fail", "forward", ("timeout", "no"),
             "consumer", "client-1", ("TCP 8080",)),
    Scenario(3, s3, "client-1", "endpoint-sg-ingress", "fail", "forward", ("timeout", "no"),
             "consumer", "client-2", ("endpoint-from-client-2",)),
    Scenario(4, s4, "client-2", "endpoint-sg-ingress", "fail", "forward", ("timeout", "no"),
             "consumer", "client-1", ("10.9.0.0/16",)),
    Scenario(5, s5, "client-2", "endpoint-acceptance", "fail", "endpoint", ("timeout", "no"),
             "consumer", None, ("pendingAcceptance",)),
    Scenario(6, s6, "client-2", "endpoint-acceptance", "fail", "endpoint", ("timeout", "no"),
             "consumer", None, ("rejected",)),
    Scenario(7, s7, "client-2", "service-principal", "fail", "endpoint", ("timeout", "no"),
             "provider", None, ("333333333333",)),
    Scenario(8, s8, "client-2", "nlb-sg-ingress", "fail", "forward", ("timeout", "no"),
             "provider", None, ("10.2.0.0/24",)),
    Scenario(9, s9, "client-2", None, "pass", "pass", ("ok", "yes")),
    Scenario(10, s10, "client-2", "nlb-sg-egress", "fail", "forward", ("timeout", "no"),
             "provider", None, ("TCP 8080",)),
    Scenario(11, s11, "client-2", "nlb-sg-egress", "degraded", "pass", ("ok", "yes"),
             "provider", None, ("nlb-egress-server",)),
    Scenario(12, s12, "client-2", "target-sg-ingress", "fail", "forward", ("timeout", "no"),
             "provider", None, ("10.2.1.15/32",)),
    Scenario(13, s13, "client-2", "target-sg-ingress", "degraded", "pass", ("ok", "yes"),
             "provider", None, ("server-2",)),
    Scenario(14, s14, "client-2", "client-nacl", "fail", "forward", ("timeout", "no"),
             "consumer", "client-1", ("#90 deny",)),
    Scenario(15, s15, "client-2", "client-nacl", "fail", "return", ("timeout", "yes"),
             "consumer", "client-1", ("32768-60999",)),
    Scenario(16, s16, "client-2", "provider-nacl", "fail", "return", ("timeout", "yes"),
             "provider", None, ("1024-65535",)),
    Scenario(18, s18, "client-2", "nlb-listener", "fail", "forward", ("timeout", "no"),
             "provider", None, ("port 80",)),
    Scenario(19, s19, "client-2", "target-service", "fail", "service", ("refused", "yes"),
             "provider", None, ("server-1",)),
    Scenario(21, noop, "client-2", None, "pass", "pass", ("ok", "yes")),
    Scenario(23, s23, "client-1", "route", "fail", "forward", ("timeout", "no"),
             "consumer", "client-2", ("no route to 10.2.0.20", "10.2.0.0/16", "vpc-1-private")),
    Scenario(24, s24, "client-1", "route", "fail", "return", ("timeout", "yes"),
             "consumer", "client-2", ("10.1.0.0/16", "vpc-2-private")),
    Scenario(25, s25, "client-1", "route", "fail", "forward", ("timeout", "no"),
             "consumer", "client-2", ("blackhole", "pcx-0recreated")),
    Scenario(38, s38, "client-1", "endpoint-sg-ingress", "fail", "forward", ("timeout", "no"),
             "consumer", "client-2", ("endpoint-from-client-2", "(endpoint)")),
    Scenario(39, s39, "client-1", None, "pass", "pass", ("ok", "yes"), bystander="client-2"),
    Scenario(40, s40, "client-1", "endpoint-sg-ingress", "fail", "forward", ("timeout", "no"),
             "consumer", "client-2", ("pl-0clientsubnets",)),
    Scenario(41, s41, "client-1", "nlb-sg-ingress", "fail", "forward", ("timeout", "no"),
             "provider", "client-2", ("pl-0consumers",)),
    Scenario(42, s42, "client-1", None, "pass", "pass", ("ok", "yes"), bystander="client-2"),
    Scenario(43, s43, "client-2", "nlb-sg-ingress", "fail", "forward", ("timeout", "no"),
             "provider", "client-1", ("10.1.0.0/16", "10.2.1.15")),
)  # fmt: skip

BY_N = {s.n: s for s in SCENARIOS}


def broken(s: Scenario) -> Topology:
    t = reference()
    s.edit(t)
    return t


def consumer_only(t: Topology) -> Topology:
    """What the consumer's credentials can read: drop every provider resource."""
    t = copy.deepcopy(t)
    provider = {a.name for a in t.accounts.values() if a.role == "provider"}
    t.visible_accounts = set(t.accounts) - provider
    for table in (t.vpcs, t.subnets, t.security_groups, t.nacls, t.instances, t.route_tables):
        for key in [k for k, v in table.items() if v.account in provider]:
            del table[key]
    t.endpoint_services.clear()
    t.nlbs.clear()
    t.listeners.clear()
    t.target_groups.clear()
    return t


def findings_for(t: Topology, client: str, port: int = 80) -> list[HopFinding]:
    return analyze_flow(t, client, None, port)


def first_denied(findings: list[HopFinding]) -> HopFinding:
    return next(f for f in findings if f.status == "denied")
