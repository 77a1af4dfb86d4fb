"""The fault matrix (issue 4, scenarios 1-22; issue 14, 23-43) and diagnosis accuracy per
evidence level.

Each scenario is a topology edit on a running lab (``agent.lab.faults`` where the mistake is
there, else built here), the agents run one round per client inside the client nodes, and
each path's verdict is compared with the ground truth at four evidence levels:

    endpoint      both agents, evidence through the endpoint: client packets, the consumer
                  account's snapshot, and what the provider fleet answered on the responder
                  port (observations and its own findings) - what a deployment has
    side-channel  reference: provider observations handed over through ``ip netns exec`` + both
                  accounts' snapshots (no deployment has this)
    client        client packets + the consumer account's snapshot
    packets       client packets alone

Only service-port paths are scored (the responder-port paths carry the evidence channel). A
scenario whose mistake also blocks the responder port cuts the channel: the endpoint level
then keeps the stage and its verdicts name the cut (``channel cut`` in the table).

Per level: **exact control** (every path's status and ``blocked_at`` are the truth),
**right stage** (every path's stage is), **right or open stage** (every path's stage is the
truth, or ``unknown`` with the truth among ``Verdict.stages``: the honest answer where the
packets cannot separate stages), **false blame** (some path names a control that is not the
one broken — on a healthy path, any control). ``unknown``/no control is never a false
blame: saying "I cannot tell" is allowed, naming the wrong rule is not.

    sudo .venv/bin/python bench/diagnosis_accuracy.py [--write docs/DIAGNOSIS.md]

builds its own labs (random names, always removed), runs the matrix and prints the markdown
table; ``--write`` replaces the table between the markers in docs/DIAGNOSIS.md. The same
``SCENARIOS`` drive ``tests/lab/test_lab_faults_matrix.py``, so the table and the tests
cannot drift apart.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import secrets
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agent.lab import agents, faults
from agent.lab.agents import LEVELS, RESPONDER_PORT
from agent.lab.lab import Lab
from agent.model import (
    Endpoint,
    EndpointEni,
    NaclEntry,
    Peering,
    PrefixList,
    RouteTable,
    Rule,
    SecurityGroup,
    Topology,
    stable_id,
)
from agent.sources.topology import load_topology

REPO = Path(__file__).resolve().parent.parent
MULTI_AZ = REPO / "configs" / "lab" / "multi-az.yaml"
DOC = REPO / "docs" / "DIAGNOSIS.md"
BEGIN, END = "<!-- accuracy-table:begin -->", "<!-- accuracy-table:end -->"

#: probe settings for the matrix: a dropped SYN costs one timeout, no retry
PROBE_TIMEOUT_S = 0.5
PROBE_RETRIES = 0
#: the lab's health checker, faster than its default so health flips in well under a second
HEALTH_INTERVAL_S = 0.25
HEALTH_WAIT_S = 6.0

C1, C2 = "client-1/apne1-az4/80", "client-2/apne1-az4/80"


@dataclass(frozen=True)
class Expect:
    """The truth for one path."""

    status: str  # pass | fail | degraded
    blocked_at: str | None
    stage: str


PASS = Expect("pass", None, "pass")


def fail(control: str, stage: str = "forward") -> Expect:
    return Expect("fail", control, stage)


@dataclass(frozen=True)
class Scenario:
    number: int
    title: str
    #: edits a deep copy of the lab's topology (None: no edit)
    edit: Callable[[Topology], None] | None
    #: path id -> truth (every path of the lab's clients)
    expect: dict[str, Expect]
    #: "reference" or "multi-az"
    lab: str = "reference"
    #: instance name -> health state to wait for after the edit ("*" = every target)
    health: dict[str, str] = field(default_factory=dict)
    #: stop the provider agents for this scenario
    agents_down: bool = False
    recreate_endpoints: bool = False


# --- edits the FAULTS table does not have ----------------------------------------------------


def _fault(control: str, client: str | None = None) -> Callable[[Topology], None]:
    def edit(t: Topology) -> None:
        fault = faults.get(control)
        fault.edit(t, faults.affected_clients(t, control, client))

    return edit


def _sg_of(t: Topology, instance: str) -> SecurityGroup:
    inst = t.instance_by_name(instance)
    assert inst is not None, instance
    return t.security_groups[inst.sg_ids[0]]


def _egress_8080(t: Topology) -> None:
    """#2: client-2's egress rule to the endpoint allows 8080 instead of 80."""
    for r in _sg_of(t, "client-2").egress():
        if r.covers_port(80) and r.protocol != "-1":
            r.from_port = r.to_port = 8080


def _endpoint_wrong_cidr(t: Topology) -> None:
    """#4: the endpoint SG allows client-2 by a CIDR that is not client-2's subnet."""
    client_sg = _sg_of(t, "client-2").id
    for ep in t.endpoints.values():
        for sg_id in ep.sg_ids:
            for r in t.security_groups[sg_id].ingress():
                if r.sg_ref == client_sg and r.covers_port(80):
                    r.sg_ref = None
                    r.cidrs = ("10.2.2.0/24",)
                    r.description = "a wrong CIDR for client-2 (its subnet is 10.2.1.0/24)"


def _rejected(t: Topology) -> None:
    """#6: the provider rejected the endpoint connection."""
    for ep in t.endpoints.values():
        svc = t.endpoint_services.get(ep.service_id)
        if svc is not None:
            svc.acceptance_required = True
        ep.state = "rejected"


def _enforce_off(t: Topology) -> None:
    """#9: #8's mistake, with the NLB not enforcing its SG on PrivateLink traffic."""
    _fault("nlb-sg-ingress")(t)
    for nlb in t.nlbs.values():
        nlb.enforce_sg_inbound_on_privatelink = False


def _health_port_not_in_nlb_egress(t: Topology) -> None:
    """#11: health checks on 8080 (the targets listen, their SG allows the NLB), but the NLB
    SG egress allows only the traffic port 80: every target unhealthy -> the NLB fails open."""
    nlb_sgs = {sg for nlb in t.nlbs.values() for sg in nlb.sg_ids or []}
    for tg in t.target_groups.values():
        if tg.port != RESPONDER_PORT:
            tg.health_check.port = 8080
    for inst in t.targets():
        inst.services = sorted({*inst.services, 8080})
        sg = t.security_groups[inst.sg_ids[0]]
        if not any(r.direction == "ingress" and r.covers_port(8080) for r in sg.rules):
            sg.rules.append(
                Rule("server-health-from-nlb", "ingress", "tcp", 8080, 8080, sg_ref=min(nlb_sgs))
            )


def _one_target_sg_broken(t: Topology) -> None:
    """#13: server-2 gets an SG of its own that lets the clients in instead of the NLB; the NLB
    SG egress reaches it (so ⑤ on server-2 is the only fault): server-2 unhealthy -> degraded."""
    server2 = t.instance_by_name("server-2")
    assert server2 is not None
    old = t.security_groups[server2.sg_ids[0]]
    client_cidrs = tuple(sorted({t.subnets[c.subnet_id].cidr for c in t.clients()}))
    sg = SecurityGroup(
        id=stable_id("sg", "server-2-own"),
        name="server-2",
        account=old.account,
        vpc_id=old.vpc_id,
        description="server-2 only",
        rules=[
            Rule("server-2-from-clients", "ingress", "tcp", 80, 80, cidrs=client_cidrs),
            *[copy.deepcopy(r) for r in old.ingress() if r.covers_port(RESPONDER_PORT)],
            *[copy.deepcopy(r) for r in old.egress()],
        ],
    )
    t.security_groups[sg.id] = sg
    server2.sg_ids = [sg.id]
    for nlb in t.nlbs.values():
        for sg_id in nlb.sg_ids or []:
            t.security_groups[sg_id].rules.append(
                Rule("nlb-egress-server-2", "egress", "tcp", 80, 80, sg_ref=sg.id)
            )
            t.security_groups[sg_id].rules.append(
                Rule(
                    "nlb-egress-server-2-9721",
                    "egress",
                    "tcp",
                    RESPONDER_PORT,
                    RESPONDER_PORT,
                    sg_ref=sg.id,
                )
            )


def _own_nacl(t: Topology, instance: str, entries: list[NaclEntry]) -> None:
    inst = t.instance_by_name(instance)
    assert inst is not None
    nacl = faults._own_nacl(t, inst.subnet_id, "restricted")
    nacl.entries = entries


def _client_nacl_no_ephemeral_in(t: Topology) -> None:
    """#15: client-2's subnet NACL allows inbound 0-1023 only: replies to ephemeral ports die."""
    _own_nacl(
        t,
        "client-2",
        [
            NaclEntry(100, True, "-1", "allow", "0.0.0.0/0"),
            NaclEntry(100, False, "tcp", "allow", "0.0.0.0/0", 0, 1023),
        ],
    )


def _target_nacl_no_ephemeral_out(t: Topology) -> None:
    """#16: the target subnet's NACL has no outbound 1024-65535 (only 0-1023)."""
    for name in ("server-1", "server-2"):
        _own_nacl(
            t,
            name,
            [
                NaclEntry(100, False, "-1", "allow", "0.0.0.0/0"),
                NaclEntry(100, True, "tcp", "allow", "0.0.0.0/0", 0, 1023),
            ],
        )


def _table(t: Topology, name: str) -> RouteTable:
    return next(r for r in t.route_tables.values() if r.name == name)


def _no_way_back(t: Topology) -> None:
    """#24: the endpoint's VPC lost its route back to client-1's VPC (the replies die)."""
    table = _table(t, "vpc-2-private")
    table.routes = [r for r in table.routes if r.target == "local"]


def _peering_recreated(t: Topology) -> None:
    """#25: the peering was deleted and created again; the routes still name the deleted one,
    which AWS shows as blackhole routes."""
    old = next(iter(t.peerings.values()))
    old.status = "deleted"
    new = Peering(
        stable_id("pcx", old.name, "again"),
        f"{old.name}-again",
        old.requester_vpc_id,
        old.accepter_vpc_id,
    )
    t.peerings[new.id] = new


def _peering_deleted(t: Topology) -> None:
    """#26: the peering was deleted: its routes are blackholes and the SG rules that
    reference the other VPC's groups are stale (they match nothing)."""
    next(iter(t.peerings.values())).status = "deleted"
    t.mark_stale_references()


def _nlb_subnet(t: Topology) -> str:
    nlb = next(iter(t.nlbs.values()))
    return nlb.nodes[0].subnet_id


def _nlb_nacl(t: Topology, entries: list[NaclEntry]) -> None:
    nacl = faults._own_nacl(t, _nlb_subnet(t), "restricted")
    nacl.entries = entries


def _nlb_nacl_denies_clients(t: Topology) -> None:
    """#27: the NLB subnet's NACL lets in only its own VPC: PrivateLink traffic carries the
    clients' addresses (lab setting nlb_subnet_nacl_on_privatelink)."""
    vpc = t.vpcs[t.subnets[_nlb_subnet(t)].vpc_id].cidr
    _nlb_nacl(
        t,
        [
            NaclEntry(100, False, "-1", "allow", vpc),
            NaclEntry(100, True, "-1", "allow", "0.0.0.0/0"),
        ],
    )


def _nlb_nacl_no_replies(t: Topology) -> None:
    """#28: the NLB subnet's NACL lets out only its own VPC: the replies to the clients'
    ephemeral ports die there (return stage)."""
    vpc = t.vpcs[t.subnets[_nlb_subnet(t)].vpc_id].cidr
    _nlb_nacl(
        t,
        [
            NaclEntry(100, False, "-1", "allow", "0.0.0.0/0"),
            NaclEntry(100, True, "-1", "allow", vpc),
        ],
    )


def _endpoint_nacl_denies_vpc_1(t: Topology) -> None:
    """#29: the endpoint subnet's NACL denies the peered VPC on the service port."""
    ep = next(iter(t.endpoints.values()))
    nacl = faults._own_nacl(t, ep.enis[0].subnet_id, "restricted")
    nacl.entries.append(NaclEntry(90, False, "tcp", "deny", "10.1.0.0/16", 80, 80))


def _target_nacl_denies_nlb(t: Topology) -> None:
    """#30: the target subnet's NACL lets in only 443: traffic and health checks from the NLB
    die (targets unhealthy, the NLB fails open, the path still fails)."""
    for name in ("server-1", "server-2"):
        _own_nacl(
            t,
            name,
            [
                NaclEntry(100, False, "tcp", "allow", "0.0.0.0/0", 443, 443),
                NaclEntry(100, True, "-1", "allow", "0.0.0.0/0"),
            ],
        )


def _endpoint_subnet_on_main_table(t: Topology) -> None:
    """#31: the endpoint subnet's association was removed: it falls back to the VPC's main
    table, which has the local route only (no way back to the peered VPC)."""
    ep = next(iter(t.endpoints.values()))
    subnet = ep.enis[0].subnet_id
    for table in t.route_tables.values():
        table.subnet_ids = [s for s in table.subnet_ids if s != subnet]


def _route_to_wrong_cidr(t: Topology) -> None:
    """#32: the peering route covers client-2's subnet only, not the endpoint's."""
    for r in _table(t, "vpc-1-private").routes:
        if r.target.startswith("pcx-"):
            r.destination = "10.2.1.0/24"


def _routes_missing_both_sides(t: Topology) -> None:
    """#33: neither consumer VPC routes to the other (the first missing route is named)."""
    _fault("route")(t)
    _no_way_back(t)


def _route_via_wrong_peering(t: Topology) -> None:
    """#34: vpc-1 is also peered with the provider's VPC and its route to vpc-2 takes that
    peering: the packets go to the wrong VPC (CANNOT_ROUTE)."""
    vpc_1 = next(v for v in t.vpcs.values() if v.name == "vpc-1")
    vpc_3 = next(v for v in t.vpcs.values() if v.name == "vpc-3")
    other = Peering(stable_id("pcx", "vpc-1-to-vpc-3"), "vpc-1-to-vpc-3", vpc_1.id, vpc_3.id)
    t.peerings[other.id] = other
    for r in _table(t, "vpc-1-private").routes:
        if r.target.startswith("pcx-"):
            r.target = other.id


def _blackhole_both_sides_recreated_routes_fixed_one_side(t: Topology) -> None:
    """#35: the peering was recreated and only vpc-1's route was re-pointed: the way back
    (vpc-2's route) is still a blackhole."""
    _peering_recreated(t)
    new = next(p for p in t.peerings.values() if p.status == "active")
    for r in _table(t, "vpc-1-private").routes:
        if r.target.startswith("pcx-"):
            r.target = new.id


def _nlb_without_fixed_ips(t: Topology) -> None:
    """#36: the NLB was created on plain subnets (Terraform's default): describe-load-balancers
    lists no node address, only its ENIs in describe-network-interfaces carry them."""
    for nlb in t.nlbs.values():
        nlb.fixed_ips = False


def _nlb_without_fixed_ips_sg_broken(t: Topology) -> None:
    """#37: #36's NLB with #8's mistake: the NLB SG must still be named, not target health."""
    _nlb_without_fixed_ips(t)
    _fault("nlb-sg-ingress")(t)


#: the AWS-service endpoint of #38/#39: CloudWatch Logs, as ``com.amazonaws.REGION.logs``
AWS_SERVICE = "logs"
AWS_ENDPOINT_IP = "10.2.0.30"


def _aws_service_endpoint(t: Topology) -> None:
    """#39: the consumer VPC also has an interface endpoint to an AWS service (CloudWatch Logs),
    named so that it sorts first, whose SG lets the whole private range in: the endpoint of a
    path must be chosen by its service (and a probe's by its ENI), never by name order."""
    ep = next(iter(t.endpoints.values()))
    subnet = ep.enis[0].subnet_id
    sg = SecurityGroup(
        id=stable_id("sg", "aws-logs-endpoint"),
        name="aws-logs-endpoint",
        account=ep.account,
        vpc_id=ep.vpc_id,
        description="CloudWatch Logs endpoint",
        rules=[Rule("logs-from-private", "ingress", "-1", 0, 65535, cidrs=("10.0.0.0/8",))],
    )
    t.security_groups[sg.id] = sg
    logs = Endpoint(
        id=stable_id("vpce", "aws-logs"),
        name="aws-logs",
        account=ep.account,
        vpc_id=ep.vpc_id,
        service_id=AWS_SERVICE,
        sg_ids=[sg.id],
        enis=[EndpointEni(stable_id("eni", "vpce", "aws-logs", subnet), subnet, AWS_ENDPOINT_IP)],
        requester=ep.requester,
    )
    t.endpoints[logs.id] = logs


def _aws_service_endpoint_and_endpoint_sg_broken(t: Topology) -> None:
    """#38: #39's consumer VPC, and the service's endpoint SG lacks client-1 (the logs
    endpoint's SG would let client-1 in: picking it would call the path allowed)."""
    _aws_service_endpoint(t)
    _fault("endpoint-sg-ingress", "client-1")(t)


def _prefix_list(t: Topology, name: str, account: str, cidrs: list[str]) -> str:
    pid = stable_id("pl", name)
    t.prefix_lists[pid] = PrefixList(pid, name, account, list(cidrs))
    return pid


def _endpoint_sg_by_prefix_list(t: Topology) -> None:
    """#40: the endpoint SG lets the clients in by a customer-managed prefix list of the
    consumer's client subnets, which lacks vpc-1's (client-1 is 10.1.0.10)."""
    ep = next(iter(t.endpoints.values()))
    group = t.security_groups[ep.sg_ids[0]]
    pid = _prefix_list(t, "consumer-client-subnets", group.account, ["10.2.1.0/24"])
    group.rules = [r for r in group.rules if r.direction != "ingress"]
    group.rules.append(
        Rule("endpoint-from-client-subnets", "ingress", "tcp", 80, 80, prefix_list=pid)
    )


def _nlb_sg_by_prefix_list(t: Topology) -> None:
    """#41: the NLB SG lets the consumers in by a provider-managed prefix list that has
    client-2's address only (PrivateLink carries the client's address to the NLB)."""
    nlb = next(iter(t.nlbs.values()))
    assert nlb.sg_ids
    group = t.security_groups[nlb.sg_ids[0]]
    pid = _prefix_list(t, "privatelink-consumers", group.account, ["10.2.1.15/32"])
    group.rules = [r for r in group.rules if not r.id.startswith("nlb-from-client")]
    group.rules.append(Rule("nlb-from-consumers", "ingress", "tcp", 80, 80, prefix_list=pid))


#: #42/#43: the provider's VPC moved onto client-1's range (both 10.1.0.0/16, as two accounts
#: often are); its subnets keep their place in the new range
PROVIDER_RENUMBERED = {"10.3.0.": "10.1.100.", "10.3.1.": "10.1.101."}


def _renumbered(address: str) -> str:
    for old, new in PROVIDER_RENUMBERED.items():
        if address.startswith(old):
            return new + address[len(old) :]
    return address


def _provider_overlaps_vpc_1(t: Topology) -> None:
    """#42: the provider's VPC uses 10.1.0.0/16, client-1's VPC's range too. PrivateLink does
    not route between the two VPCs, so nothing breaks (the lab sends replies back over the
    link their connection came in on, not by address)."""
    vpc = next(v for v in t.vpcs.values() if v.name == "vpc-3")
    vpc.cidr = "10.1.0.0/16"
    for subnet in t.subnets.values():
        if subnet.vpc_id == vpc.id:
            subnet.cidr = _renumbered(subnet.cidr)
    for inst in t.instances.values():
        if t.subnets[inst.subnet_id].vpc_id == vpc.id:
            inst.ip = _renumbered(inst.ip)
    for nlb in t.nlbs.values():
        for node in nlb.nodes:
            node.ip = _renumbered(node.ip)
    for group in t.security_groups.values():
        for r in group.rules:
            r.cidrs = tuple(_renumbered(c) for c in r.cidrs)


def _overlap_nlb_sg_own_range(t: Topology) -> None:
    """#43: #42's VPCs, and the NLB SG lets in only "our own VPC" (10.1.0.0/16): client-1 is in
    that range because its VPC overlaps, client-2 is not (④ ingress for client-2 only)."""
    _provider_overlaps_vpc_1(t)
    nlb = next(iter(t.nlbs.values()))
    assert nlb.sg_ids
    group = t.security_groups[nlb.sg_ids[0]]
    group.rules = [r for r in group.rules if not r.id.startswith("nlb-from-client")]
    group.rules.append(Rule("nlb-from-own-vpc", "ingress", "tcp", 80, 80, cidrs=("10.1.0.0/16",)))


# --- the matrix -------------------------------------------------------------------------------

ALL_UNHEALTHY = {"*": "unhealthy"}
ALL_HEALTHY = {"*": "healthy"}

SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        1,
        "client-2's SG egress removed (①)",
        _fault("client-sg-egress", "client-2"),
        {C1: PASS, C2: fail("client-sg-egress")},
    ),
    Scenario(
        2,
        "client SG egress allows 8080 instead of 80 (①)",
        _egress_8080,
        {C1: PASS, C2: fail("client-sg-egress")},
    ),
    Scenario(
        3,
        "endpoint SG lacks client-1's SG (②, client-1 only)",
        _fault("endpoint-sg-ingress", "client-1"),
        {C1: fail("endpoint-sg-ingress"), C2: PASS},
    ),
    Scenario(
        4,
        "endpoint SG allows client-2 by a wrong CIDR (②)",
        _endpoint_wrong_cidr,
        {C1: PASS, C2: fail("endpoint-sg-ingress")},
    ),
    Scenario(
        5,
        "endpoint connection pendingAcceptance (③ acceptance)",
        _fault("endpoint-acceptance"),
        {C1: fail("endpoint-acceptance", "endpoint"), C2: fail("endpoint-acceptance", "endpoint")},
    ),
    Scenario(
        6,
        "endpoint connection rejected (③ acceptance)",
        _rejected,
        {C1: fail("endpoint-acceptance", "endpoint"), C2: fail("endpoint-acceptance", "endpoint")},
    ),
    Scenario(
        7,
        "consumer principal not allowed: the endpoint was never created (③ principal)",
        _fault("service-principal"),
        # the name does not resolve, but ③ is the endpoint hop (stage order: docs/DIAGNOSIS.md)
        {C1: fail("service-principal", "endpoint"), C2: fail("service-principal", "endpoint")},
        recreate_endpoints=True,
    ),
    Scenario(
        8,
        "NLB SG allows the endpoint subnet instead of the client IPs (④ ingress)",
        _fault("nlb-sg-ingress"),
        {C1: fail("nlb-sg-ingress"), C2: fail("nlb-sg-ingress")},
    ),
    Scenario(
        9,
        "the same, enforce flag off -> pass",
        _enforce_off,
        {C1: PASS, C2: PASS},
    ),
    Scenario(
        10,
        "NLB SG egress lacks the target port (④ egress)",
        _fault("nlb-sg-egress"),
        {C1: fail("nlb-sg-egress"), C2: fail("nlb-sg-egress")},
        health=ALL_UNHEALTHY,
    ),
    Scenario(
        11,
        "NLB SG egress allows the traffic port, not the health-check port -> fail open",
        _health_port_not_in_nlb_egress,
        {
            C1: Expect("degraded", "nlb-sg-egress", "pass"),
            C2: Expect("degraded", "nlb-sg-egress", "pass"),
        },
        health=ALL_UNHEALTHY,
    ),
    Scenario(
        12,
        "target SG allows the client CIDRs instead of the NLB (⑤)",
        _fault("target-sg-ingress"),
        {C1: fail("target-sg-ingress"), C2: fail("target-sg-ingress")},
        health=ALL_UNHEALTHY,
    ),
    Scenario(
        13,
        "target SG broken on one of two targets -> degraded (⑤)",
        _one_target_sg_broken,
        {
            C1: Expect("degraded", "target-sg-ingress", "pass"),
            C2: Expect("degraded", "target-sg-ingress", "pass"),
        },
        health={"server-1": "healthy", "server-2": "unhealthy"},
    ),
    Scenario(
        14,
        "client subnet NACL denies outbound 80 (client-nacl)",
        _fault("client-nacl", "client-2"),
        {C1: PASS, C2: fail("client-nacl")},
    ),
    Scenario(
        15,
        "client subnet NACL without inbound ephemeral ports (client-nacl, return)",
        _client_nacl_no_ephemeral_in,
        {C1: PASS, C2: fail("client-nacl", "return")},
    ),
    Scenario(
        16,
        "target subnet NACL without outbound 1024-65535 (provider-nacl, return)",
        _target_nacl_no_ephemeral_out,
        {C1: fail("provider-nacl", "return"), C2: fail("provider-nacl", "return")},
    ),
    Scenario(
        17,
        "endpoint name not resolvable in client-2's VPC (dns)",
        _fault("dns", "client-2"),
        {C1: PASS, C2: fail("dns", "dns")},
    ),
    Scenario(
        18,
        "no NLB listener on the port (nlb-listener)",
        _fault("nlb-listener"),
        {C1: fail("nlb-listener"), C2: fail("nlb-listener")},
    ),
    Scenario(
        19,
        "target service stopped (target-service, not an access control)",
        _fault("target-service"),
        {C1: fail("target-service", "service"), C2: fail("target-service", "service")},
        health=ALL_UNHEALTHY,
    ),
    Scenario(
        20,
        "multi-AZ, cross-zone off, no targets in one AZ (target-health, that AZ only)",
        None,
        {
            "client-2/apne1-az1/80": fail("target-health"),
            "client-2/apne1-az4/80": PASS,
        },
        lab="multi-az",
    ),
    Scenario(21, "healthy baseline: nothing blamed", None, {C1: PASS, C2: PASS}),
    Scenario(
        22,
        "provider agent down (NLB SG ingress broken): keep the stage, blame nothing unseen",
        _fault("nlb-sg-ingress"),
        {C1: fail("nlb-sg-ingress"), C2: fail("nlb-sg-ingress")},
        agents_down=True,
    ),
    Scenario(
        23,
        "client-1's subnet lost its peering route to the endpoint's VPC (route)",
        _fault("route", "client-1"),
        {C1: fail("route"), C2: PASS},
    ),
    Scenario(
        24,
        "the endpoint's VPC lost its route back to client-1's VPC (route, return)",
        _no_way_back,
        {C1: fail("route", "return"), C2: PASS},
    ),
    Scenario(
        25,
        "peering recreated, routes still name the deleted one: blackhole routes (route)",
        _peering_recreated,
        {C1: fail("route"), C2: PASS},
    ),
    Scenario(
        26,
        "peering deleted: SG references across it are stale (client-sg-egress names it)",
        _peering_deleted,
        {C1: fail("client-sg-egress"), C2: PASS},
    ),
    Scenario(
        27,
        "NLB subnet NACL lets in only its own VPC: PrivateLink carries client IPs (provider-nacl)",
        _nlb_nacl_denies_clients,
        {C1: fail("provider-nacl"), C2: fail("provider-nacl")},
    ),
    Scenario(
        28,
        "NLB subnet NACL lets out only its own VPC: replies to the clients die "
        "(provider-nacl, return)",
        _nlb_nacl_no_replies,
        {C1: fail("provider-nacl", "return"), C2: fail("provider-nacl", "return")},
    ),
    Scenario(
        29,
        "endpoint subnet NACL denies the peered VPC on the service port (client-nacl)",
        _endpoint_nacl_denies_vpc_1,
        {C1: fail("client-nacl"), C2: PASS},
    ),
    Scenario(
        30,
        "target subnet NACL lets in only 443: traffic and health checks die (provider-nacl)",
        _target_nacl_denies_nlb,
        {C1: fail("provider-nacl"), C2: fail("provider-nacl")},
        health=ALL_UNHEALTHY,
    ),
    Scenario(
        31,
        "endpoint subnet lost its route table association: main table, no way back (route)",
        _endpoint_subnet_on_main_table,
        {C1: fail("route", "return"), C2: PASS},
    ),
    Scenario(
        32,
        "the peering route covers client-2's subnet, not the endpoint's (route)",
        _route_to_wrong_cidr,
        {C1: fail("route"), C2: PASS},
    ),
    Scenario(
        33,
        "both consumer VPCs lost their peering routes (route, each side)",
        _routes_missing_both_sides,
        {C1: fail("route"), C2: PASS},
    ),
    Scenario(
        34,
        "the route to vpc-2 takes a peering to another VPC (route, CANNOT_ROUTE)",
        _route_via_wrong_peering,
        {C1: fail("route"), C2: PASS},
    ),
    Scenario(
        35,
        "peering recreated, only vpc-1's route re-pointed: the way back is a blackhole "
        "(route, return)",
        _blackhole_both_sides_recreated_routes_fixed_one_side,
        {C1: fail("route", "return"), C2: PASS},
    ),
    Scenario(
        36,
        "NLB created without fixed private IPs (LoadBalancerAddresses: []): healthy, pass",
        _nlb_without_fixed_ips,
        {C1: PASS, C2: PASS},
    ),
    Scenario(
        37,
        "NLB without fixed private IPs and its SG allows the endpoint subnet (④ ingress)",
        _nlb_without_fixed_ips_sg_broken,
        {C1: fail("nlb-sg-ingress"), C2: fail("nlb-sg-ingress")},
    ),
    Scenario(
        38,
        "several endpoints in the consumer VPC (an AWS-service one sorts first), endpoint SG "
        "lacks client-1 (②)",
        _aws_service_endpoint_and_endpoint_sg_broken,
        {C1: fail("endpoint-sg-ingress"), C2: PASS},
    ),
    Scenario(
        39,
        "several endpoints in the consumer VPC: healthy, the AWS-service one is never the path",
        _aws_service_endpoint,
        {C1: PASS, C2: PASS},
    ),
    Scenario(
        40,
        "endpoint SG allows a customer-managed prefix list without client-1's subnet "
        "(②, prefix list)",
        _endpoint_sg_by_prefix_list,
        {C1: fail("endpoint-sg-ingress"), C2: PASS},
    ),
    Scenario(
        41,
        "NLB SG allows a prefix list with client-2 only (④ ingress, prefix list)",
        _nlb_sg_by_prefix_list,
        {C1: fail("nlb-sg-ingress"), C2: PASS},
    ),
    Scenario(
        42,
        "provider VPC overlaps client-1's (both 10.1.0.0/16): healthy, pass",
        _provider_overlaps_vpc_1,
        {C1: PASS, C2: PASS},
        # renumbering rebuilds the lab: wait for the new health checkers
        health=ALL_HEALTHY,
    ),
    Scenario(
        43,
        "overlapping VPCs, NLB SG allows only its own range: client-1 in it by overlap, client-2 "
        "denied (④ ingress)",
        _overlap_nlb_sg_own_range,
        {C1: PASS, C2: fail("nlb-sg-ingress")},
        # renumbering rebuilds the lab: wait for the new health checkers
        health=ALL_HEALTHY,
    ),
)


# --- running ----------------------------------------------------------------------------------


def fast_health(topology: Topology) -> Topology:
    """The lab's health checker sped up (lab-only setting; AWS's minimum is 5 s)."""
    topology.lab.health_check_interval_s = HEALTH_INTERVAL_S
    topology.lab.health_check_threshold = 2
    return topology


def lab_topology(kind: str) -> Topology:
    return fast_health(load_topology(MULTI_AZ if kind == "multi-az" else None))


def _health_ok(lab: Lab, want: dict[str, str]) -> Callable[[dict], bool]:
    """The service's target groups reach ``want`` (the responder port's group is the
    evidence channel's, not the scenario's)."""
    topo = lab.topology
    names = {i.id: i.name for i in topo.instances.values()}
    responder = {k for k, tg in topo.target_groups.items() if tg.port == RESPONDER_PORT}

    def ok(health: dict[tuple[str, str], str]) -> bool:
        states = {
            names.get(iid, iid): s
            for (tg, iid), s in health.items()
            if s != "unused" and tg not in responder
        }
        if not states:
            return False
        if "*" in want:
            return set(states.values()) == {want["*"]}
        return all(states.get(n) == s for n, s in want.items())

    return ok


def wait_healthy(lab: Lab) -> bool:
    return lab.wait_health(_health_ok(lab, {"*": "healthy"}), timeout=HEALTH_WAIT_S)


def _wait_fresh_health(lab: Lab, since: float) -> None:
    """After a rebuild the old health checkers' files still say what they last saw (healthy):
    wait until the new checkers have written theirs, so a health wait means the new lab."""
    deadline = time.monotonic() + HEALTH_WAIT_S
    while time.monotonic() < deadline:
        files = lab._health_files()  # the lab's own state; no public reader of "updated"
        if files and all(f.get("updated", 0.0) > since for f in files.values()):
            return
        time.sleep(0.1)


def run_scenario(lab: Lab, scenario: Scenario) -> dict[str, dict[str, dict]]:
    """Apply the scenario, run every client's check; level -> path id -> verdict JSON.

    The lab is left broken: the caller restores it (``restore_scenario``).
    """
    if scenario.edit is not None:
        topo = lab.topology
        scenario.edit(topo)
        since = time.time()
        if lab.apply(topo, recreate_endpoints=scenario.recreate_endpoints) == "rebuilt":
            _wait_fresh_health(lab, since)
    if scenario.health:
        lab.wait_health(_health_ok(lab, scenario.health), timeout=HEALTH_WAIT_S)
    if scenario.agents_down:
        agents.stop_agents(lab)
    answers = agents.check_answers(
        lab, levels=LEVELS, timeout=PROBE_TIMEOUT_S, retries=PROBE_RETRIES
    )
    out: dict[str, dict[str, dict]] = {lv: {} for lv in LEVELS}
    channel = f"/{RESPONDER_PORT}"
    for answer in answers.values():
        for v in answer["check"]["verdicts"]:
            if not v["path"].endswith(channel):
                out["endpoint"][v["path"]] = v
        for lv, diagnosis in answer["levels"].items():
            for v in diagnosis["verdicts"]:
                if not v["path"].endswith(channel):
                    out[lv][v["path"]] = v
    return out


def names_cut(verdict: dict) -> bool:
    """Does the verdict say the evidence channel itself was cut?"""
    return any("evidence channel cut" in line for line in verdict.get("evidence", []))


def channel_cut(verdicts: dict[str, dict]) -> bool:
    """Was the evidence channel cut in this scenario (some verdict says so)?"""
    return any(names_cut(v) for v in verdicts.values())


def restore_scenario(lab: Lab, scenario: Scenario) -> None:
    if scenario.agents_down:
        agents.start_agents(lab, lab.progress)
    if scenario.edit is not None:
        lab.restore()
        wait_healthy(lab)


@dataclass
class Score:
    exact: bool
    stage: bool
    #: the stage is right, or ``unknown`` with the true stage among those it leaves open
    open_stage: bool
    false_blame: bool


def stage_left_open(verdict: dict, truth: Expect) -> bool:
    """An ``unknown`` stage that lists the true one: not a claim, and not a wrong one."""
    return verdict["stage"] == "unknown" and truth.stage in verdict.get("stages", [])


def score(scenario: Scenario, verdicts: dict[str, dict]) -> Score:
    exact = stage = open_stage = True
    false_blame = False
    for path, truth in scenario.expect.items():
        v = verdicts.get(path)
        if v is None:
            exact = stage = open_stage = False
            continue
        exact &= v["status"] == truth.status and v["blocked_at"] == truth.blocked_at
        stage &= v["stage"] == truth.stage
        open_stage &= v["stage"] == truth.stage or stage_left_open(v, truth)
        blamed = v["blocked_at"]
        false_blame |= blamed not in (None, "unknown", truth.blocked_at)
    return Score(exact, stage, open_stage, false_blame)


@contextlib.contextmanager
def matrix_lab(kind: str) -> Iterator[Lab]:
    lab = Lab(f"da{secrets.token_hex(4)}")
    try:
        lab.up(lab_topology(kind))
        agents.start_agents(lab, lab.progress)
        wait_healthy(lab)
        yield lab
    finally:
        lab.down()


def run_matrix() -> dict[int, dict[str, dict[str, dict]]]:
    """Scenario number -> level -> path -> verdict, one lab per topology."""
    results: dict[int, dict[str, dict[str, dict]]] = {}
    for kind in ("reference", "multi-az"):
        with matrix_lab(kind) as lab:
            for s in (s for s in SCENARIOS if s.lab == kind):
                t0 = time.monotonic()
                try:
                    results[s.number] = run_scenario(lab, s)
                finally:
                    restore_scenario(lab, s)
                print(f"#{s.number:2} {time.monotonic() - t0:4.1f} s  {s.title}", file=sys.stderr)
    return dict(sorted(results.items()))


def _cell(v: dict | None) -> str:
    if v is None:
        return "(no verdict)"
    control = v["blocked_at"] or "-"
    stage = v["stage"]
    if stage == "unknown" and v.get("stages"):
        stage = "/".join(v["stages"]) + "?"
    return f"{v['status']} · {stage} · {control}"


def markdown(results: dict[int, dict[str, dict[str, dict]]], seconds: float) -> str:
    by_number = {s.number: s for s in SCENARIOS}
    n = len(results)
    lines = [
        "| evidence | exact control | right stage | right or open stage | false blame |",
        "|---|---|---|---|---|",
    ]
    names = {
        "endpoint": "both agents, evidence through the endpoint",
        "side-channel": "reference: evidence handed over + both snapshots",
        "client": "client packets + consumer snapshot",
        "packets": "client packets only",
    }
    for lv in LEVELS:
        scores = [score(by_number[k], r[lv]) for k, r in results.items()]
        exact = sum(s.exact for s in scores)
        stage = sum(s.stage for s in scores)
        open_stage = sum(s.open_stage for s in scores)
        blame = sum(s.false_blame for s in scores)
        lines.append(
            f"| {names[lv]} | {exact}/{n} | {stage}/{n} | {open_stage}/{n} | {blame}/{n} |"
        )
    cut = [k for k, r in results.items() if channel_cut(r["endpoint"])]
    kept = [k for k in cut if score(by_number[k], results[k]["endpoint"]).stage]
    uncut = [k for k in results if k not in cut]
    uncut_exact = sum(score(by_number[k], results[k]["endpoint"]).exact for k in uncut)
    lines += [
        "",
        f"Through the endpoint: {uncut_exact}/{len(uncut)} exact where the evidence channel "
        f"works; the channel is cut in {len(cut)} scenario(s) "
        f"({', '.join(f'#{k}' for k in cut) or 'none'}), whose verdicts name the cut and keep "
        f"the right stage in {len(kept)}/{len(cut)}.",
        "",
        f"Per scenario (status · stage · blocked_at; `a/b?`: stage unknown, a or b left open; "
        f"measured in {seconds:.0f} s):",
        "",
        "| # | scenario | path | truth | " + " | ".join(LEVELS) + " |",
        "|---|---|---|---|" + "---|" * len(LEVELS),
    ]
    for k, r in results.items():
        s = by_number[k]
        for path, truth in s.expect.items():
            want = f"{truth.status} · {truth.stage} · {truth.blocked_at or '-'}"
            cells = []
            for lv in LEVELS:
                v = r[lv].get(path)
                mark = ""
                if v is not None and v["blocked_at"] not in (None, "unknown", truth.blocked_at):
                    mark = " ✗"
                cells.append(_cell(v) + mark)
            lines.append(f"| {k} | {s.title} | `{path}` | {want} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_doc(table: str, doc: Path = DOC) -> None:
    text = doc.read_text()
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    doc.write_text(f"{head}{BEGIN}\n{table}{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--write", metavar="DOC", nargs="?", const=str(DOC), help="update DOC")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("diagnosis_accuracy: needs root (it builds labs)", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    results = run_matrix()
    table = markdown(results, time.monotonic() - t0)
    print(table)
    if args.write:
        write_doc(table, Path(args.write))
        print(f"updated {args.write}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
