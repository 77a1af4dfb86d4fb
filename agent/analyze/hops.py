"""The walk's shared state and finding builders: who can be seen, SG and NACL hops.

``HopWalk`` holds one flow over one Topology and the findings so far; the consumer side
(``agent.analyze.consumer``) and the provider side (``agent.analyze.provider``) add their hops
through it, so both say "not visible", "allowed by" and "denied, fix" the same way. SGs are
evaluated only in the opening direction (stateful); NACLs in both (stateless).
"""

from __future__ import annotations

import ipaddress
from typing import Any

from agent import pathhops
from agent.analyze.fixes import nacl_fix, nacl_label, ports_text, sg_label, sgs_label
from agent.analyze.flows import Flow, client_subnet_of_ip, provider_services
from agent.analyze.nacl import NaclDecision, entry_text, evaluate_nacl, evaluate_nacl_range
from agent.analyze.sg import SgDecision
from agent.model import (
    LINUX_EPHEMERAL,
    NLB_EPHEMERAL,
    EndpointService,
    Instance,
    Nlb,
    NlbNode,
    Rule,
    Subnet,
    Topology,
)
from agent.results import HopFinding

PROTO = "tcp"

#: the role whose subnet holds the address a hop sees
_ROLE_OF_PEER: dict[str, pathhops.Role] = {
    "client": "client",
    "eni": "endpoint",
    "nlb": "nlb",
    "target": "target",
}


def host_cidr(ip: str) -> str:
    """The single-address CIDR of an IP: /32 for IPv4, /128 for IPv6 (never a wider block)."""
    return ipaddress.ip_network(ip).with_prefixlen


class HopWalk:
    """One flow being walked: the Topology, the flow, the findings in path order."""

    def __init__(self, topology: Topology, flow: Flow) -> None:
        self.t = topology
        self.f = flow
        self.out: list[HopFinding] = []
        self.service: EndpointService | None = None
        #: the provider's NLB-fronted services when no endpoint names one and there are
        #: several: the walk cannot tell which the client means (``missing_endpoint`` says so)
        self.ambiguous_services: list[EndpointService] = []
        if flow.endpoint is not None:
            self.service = topology.endpoint_services.get(flow.endpoint.service_id)
        else:
            # no endpoint yet: the service is the provider's NLB service (a GWLB service
            # beside it is not a path to a TCP listener)
            services = provider_services(topology)
            if len(services) == 1:
                self.service = services[0]
            elif len(services) > 1:
                self.ambiguous_services = services
        self.nlb: Nlb | None = topology.nlb_of_service(self.service) if self.service else None

    # -- visibility ------------------------------------------------------------------------
    def visible(self, account: str | None) -> bool:
        if not self.t.visible_accounts:
            return True
        return account is not None and account in self.t.visible_accounts

    def consumer_visible(self) -> bool:
        acct = (
            self.f.client.account
            if self.f.client
            else (self.f.endpoint.account if self.f.endpoint else None)
        )
        if acct is None:
            consumer = self.t.account_of_role("consumer")
            acct = consumer.name if consumer else None
        return self.visible(acct)

    def add(self, finding: HopFinding) -> HopFinding:
        self.out.append(finding)
        return finding

    def hidden(
        self,
        hop: str,
        control: str,
        why: str,
        *,
        resource: str = "",
        fix: str = "",
        direction: str = "forward",
        target: str = "",
    ) -> HopFinding:
        """A hop the visible accounts cannot evaluate (keywords as on HopFinding)."""
        return self.add(
            HopFinding(
                hop,
                control,
                "not_visible",
                resource=resource,
                detail=why,
                fix=fix,
                direction=direction,
                target=target,
            )
        )

    # -- subnets ---------------------------------------------------------------------------
    def subnet_of(self, ip: str, subnet_id: str | None = None) -> Subnet | None:
        if subnet_id and subnet_id in self.t.subnets:
            return self.t.subnets[subnet_id]
        return self.t.subnet_of_ip(ip)

    def client_subnet(self) -> Subnet | None:
        """The client's subnet; for a bare IP, a consumer's subnet first (overlapping CIDRs)."""
        if self.f.client is not None and self.f.client.subnet_id in self.t.subnets:
            return self.t.subnets[self.f.client.subnet_id]
        return client_subnet_of_ip(self.t, self.f.client_ip)

    def eni_subnet(self) -> Subnet | None:
        if self.f.eni is None:
            return None
        return self.subnet_of(self.f.eni.ip, self.f.eni.subnet_id)

    # -- finding builders ------------------------------------------------------------------
    def sg_finding(
        self, hop: str, control: str, sg_ids: list[str], d: SgDecision, *, fix: str
    ) -> HopFinding:
        resource = sgs_label(self.t, sg_ids)
        # snapshot-derived rule ids already spell out the rule; do not say it twice
        checked = [
            r.id
            if r.port_text() in r.id
            else f"{r.id}: {r.direction} {r.port_text()} {_peer(self.t, r)}"
            for r in d.checked
        ]
        if d.allowed:
            assert d.rule is not None
            return HopFinding(
                hop,
                control,
                "allowed",
                resource=resource,
                rule=f"{d.rule.id} ({d.rule.port_text()} {_peer(self.t, d.rule)})",
                checked=checked,
            )
        if d.undetermined:
            return HopFinding(
                hop, control, "not_visible", resource=resource, checked=checked, detail=d.reason
            )
        finding = HopFinding(
            hop,
            control,
            "denied",
            resource=resource,
            checked=checked or ["(no rules)"],
            detail=d.reason,
            ra_code="ENI_SG_RULES_MISMATCH" if d.checked else "SG_HAS_NO_RULES",
            fix=fix,
        )
        stale = [r for r in d.checked if r.stale_ref]
        if stale:
            why = self.stale_why(sg_ids, stale[0])
            names = ", ".join(r.id for r in stale)
            finding.detail += f"; stale rule {names}: {why}, so it matches nothing"
            finding.fix = (
                f"rule {stale[0].id} is stale ({why}): re-create the peering (and its routes), "
                f"or {fix}"
            )
        return finding

    def stale_why(self, sg_ids: list[str], rule: Rule) -> str:
        """Why a stale rule matches nothing: whose group it names, and the peering's state."""
        t = self.t
        owner = next(
            (
                t.security_groups[g]
                for g in sg_ids
                if g in t.security_groups and rule in t.security_groups[g].rules
            ),
            None,
        )
        ref = t.security_groups.get(rule.stale_ref or "")
        label = sg_label(t, rule.stale_ref or "")
        if ref is None or owner is None:
            return f"it references {label}, a group across a peering that is gone"
        vpc = t.vpcs.get(ref.vpc_id)
        pcx = t.peering_between(owner.vpc_id, ref.vpc_id)
        where = f"in {vpc.name if vpc else ref.vpc_id}"
        state = f"peering {pcx.id} ({pcx.name}) is {pcx.status}" if pcx else "no peering"
        return f"it references {label} {where}, and {state}"

    def nacl_finding(
        self,
        hop: str,
        control: str,
        subnet: Subnet | None,
        *,
        egress: bool,
        peer_ip: str,
        peer_name: str,
        ports: tuple[int, int],
        why: str = "",
    ) -> HopFinding:
        if subnet is None or not self.visible(subnet.account):
            return HopFinding(hop, control, "not_visible", detail="the subnet is not visible")
        nacl = self.t.nacl_of_subnet(subnet.id)
        if nacl is None:
            return HopFinding(
                hop,
                control,
                "not_visible",
                resource=subnet.id,
                detail=f"the network ACL of {subnet.name} is not visible",
            )
        d: NaclDecision
        if ports[0] == ports[1]:
            d = evaluate_nacl(nacl, egress, peer_ip, PROTO, ports[0])
        else:
            d = evaluate_nacl_range(nacl, egress, peer_ip, PROTO, ports)
        checked = [entry_text(e) for e in d.checked]
        way = "out" if egress else "in"
        resource = f"{nacl_label(nacl)} {way}, subnet {subnet.name}"
        if d.allowed:
            return HopFinding(
                hop,
                control,
                "allowed",
                resource=resource,
                rule=entry_text(d.entry),
                checked=checked,
            )
        denied = ", ".join(ports_text(p) for p in d.denied_ports)
        finding = HopFinding(
            hop,
            control,
            "denied",
            resource=resource,
            rule=entry_text(d.entry),
            checked=checked + ([entry_text(None)] if d.entry is None else []),
            detail=f"{denied} {'to' if egress else 'from'} {peer_ip} ({peer_name}) denied",
            ra_code="SUBNET_ACL_RESTRICTION",
            fix=nacl_fix(
                nacl,
                d,
                egress=egress,
                peer_cidr=f"{host_cidr(peer_ip)}",
                peer_name=peer_name,
                why=why,
            ),
        )
        if d.partial:
            finding.degraded = (
                f"only {denied} of {ports_text(ports)} denied: the flows whose port falls "
                "there fail, the others pass"
            )
        return finding

    # -- declared hops (agent.pathhops) ------------------------------------------------------
    def leg_hops(
        self,
        leg: pathhops.Leg,
        direction: pathhops.Direction,
        *,
        node: NlbNode | None = None,
        inst: Instance | None = None,
        port: int | None = None,
        suffix: str = "",
    ) -> list[HopFinding]:
        """The declared NACL and route hops of one leg and direction, evaluated (not added).

        Within one subnet no boundary is crossed, so a leg whose two ends share a subnet has
        no NACL hop (the lab exempts intra-subnet traffic the same way); within one VPC the
        local route carries the packet, so only a leg between VPCs has a route hop.
        """
        ends = {
            "client-eni": (self.client_subnet(), self.eni_subnet()),
            "nlb-target": (self.node_subnet(node), self.subnet_of_target(inst)),
        }.get(leg)
        same_subnet = False
        if ends is not None:
            a, b = ends
            same_subnet = a is not None and b is not None and a.id == b.id
        out: list[HopFinding] = []
        for hop in pathhops.hops(leg=leg, direction=direction, settings=self.t.lab):
            if hop.kind == "route":
                route = self.route_finding(hop, node=node, inst=inst)
                if route is not None:
                    route.direction = direction
                    out.append(route)
                continue
            if hop.kind != "nacl" or same_subnet:
                continue
            peer_ip, peer_name = self.peer_of(hop.sees, node=node, inst=inst)
            finding = self.nacl_finding(
                hop.id + suffix,
                hop.control,
                self.subnet_at(hop.at, node=node, inst=inst),
                egress=hop.way == "out",
                peer_ip=peer_ip,
                peer_name=peer_name,
                ports=self.ports_of(hop.ports, port),
                why=hop.why,
            )
            finding.direction = "health" if suffix == ":health" else direction
            if finding.status == "denied" and hop.ra_code:
                finding.ra_code = hop.ra_code
            out.append(finding)
        return out

    def route_finding(
        self, hop: pathhops.Hop, *, node: NlbNode | None, inst: Instance | None
    ) -> HopFinding | None:
        """The route a declared route hop takes, or None when no route table is consulted.

        Within one VPC the local route applies (it cannot be removed); a VPC whose route
        tables were not read (a snapshot without describe-route-tables) is not walked.
        """
        src = self.subnet_at(hop.at, node=node, inst=inst)
        dst = self.subnet_at(_ROLE_OF_PEER[hop.sees], node=node, inst=inst)
        if src is None or dst is None or src.vpc_id == dst.vpc_id:
            return None
        t = self.t
        if not any(rt.vpc_id == src.vpc_id for rt in t.route_tables.values()):
            return None
        if not self.visible(src.account):
            return HopFinding(
                hop.id, hop.control, "not_visible", detail="the subnet is not visible"
            )
        peer_ip, peer_name = self.peer_of(hop.sees, node=node, inst=inst)
        table = t.route_table_of_subnet(src.id)
        if table is None:
            return HopFinding(
                hop.id,
                hop.control,
                "not_visible",
                resource=src.id,
                detail=f"the route table of {src.name} is not visible",
            )
        label = f"{table.id} ({table.name}), subnet {src.name}"
        checked = [f"{r.destination} -> {r.target}" for r in table.routes]
        dst_vpc = t.vpcs.get(dst.vpc_id)
        want = dst_vpc.cidr if dst_vpc else host_cidr(peer_ip)
        pcx = next(
            (
                p
                for p in sorted(t.peerings.values(), key=lambda p: p.name)
                if p.status == "active"
                and {p.requester_vpc_id, p.accepter_vpc_id} == {src.vpc_id, dst.vpc_id}
            ),
            None,
        )
        via = f"{pcx.id} ({pcx.name})" if pcx else "a peering connection between the two VPCs"
        route = table.lookup(peer_ip)
        why = f"to {peer_ip} ({peer_name})"

        def denied(**fields: Any) -> HopFinding:
            """A denial of this route hop: every one names the table and the routes checked."""
            return HopFinding(
                hop.id, hop.control, "denied", resource=label, checked=checked, **fields
            )

        if route is None or route.target == "local":
            return denied(
                detail=f"no route {why} in {table.name}",
                ra_code="NO_ROUTE_TO_DESTINATION",
                fix=f"add a route to {want} via {via} to route table {table.id} ({table.name})",
            )
        rule = f"{route.destination} -> {route.target}"
        if t.route_state(route) == "blackhole":
            return denied(
                rule=rule,
                detail=f"the route {why} is a blackhole: its target {route.target} is gone",
                ra_code="BAD_STATE_ROUTE",
                fix=f"replace the route to {route.destination} in route table {table.id} "
                f"({table.name}): point it at {via}",
            )
        target = t.peerings.get(route.target)
        if target is not None and {target.requester_vpc_id, target.accepter_vpc_id} == {
            src.vpc_id,
            dst.vpc_id,
        }:
            return HopFinding(hop.id, hop.control, "allowed", resource=label, rule=rule)
        if target is None and not route.target.startswith("pcx-"):
            return HopFinding(
                hop.id,
                hop.control,
                "not_visible",
                resource=label,
                rule=rule,
                detail=f"the route {why} goes to {route.target}, which plprobe does not follow",
            )
        return denied(
            rule=rule,
            detail=f"the route {why} goes to {route.target}, which does not lead to "
            f"{dst_vpc.name if dst_vpc else 'its VPC'}",
            ra_code="CANNOT_ROUTE",
            fix=f"point the route to {route.destination} in route table {table.id} "
            f"({table.name}) at {via}",
        )

    def node_subnet(self, node: NlbNode | None) -> Subnet | None:
        return self.t.subnets.get(node.subnet_id) if node is not None else None

    def subnet_of_target(self, inst: Instance | None) -> Subnet | None:
        return self.t.subnets.get(inst.subnet_id) if inst is not None else None

    def subnet_at(
        self, role: pathhops.Role, *, node: NlbNode | None, inst: Instance | None
    ) -> Subnet | None:
        """The subnet whose NACL a hop at ``role`` evaluates."""
        if role == "client":
            return self.client_subnet()
        if role == "endpoint":
            return self.eni_subnet()
        if role == "nlb":
            return self.node_subnet(node)
        return self.subnet_of_target(inst)

    def peer_of(
        self, peer: pathhops.Peer, *, node: NlbNode | None, inst: Instance | None
    ) -> tuple[str, str]:
        """The address a hop sees (docs/AWS-BEHAVIOUR.md "Addresses at each hop") and its name."""
        f = self.f
        if peer == "client":
            return f.client_ip, f.client_name
        if peer == "eni":
            ip = f.eni_ip or ""
            return ip, f"endpoint ENI {ip}"
        if peer == "nlb":
            assert node is not None
            name = self.nlb.name if self.nlb is not None else "NLB"
            return node.ip, f"{name} node"
        assert inst is not None
        return inst.ip, inst.name

    def ports_of(self, ports: pathhops.Ports, port: int | None) -> tuple[int, int]:
        if ports == "service":
            return (self.f.port, self.f.port)
        if ports == "target":
            assert port is not None
            return (port, port)
        return LINUX_EPHEMERAL if ports == "linux-ephemeral" else NLB_EPHEMERAL

    def nacl_hop(self, hop: str, control: str, subnet: Subnet | None, **kw: object) -> None:
        direction = str(kw.pop("direction", "forward"))
        finding = self.nacl_finding(hop, control, subnet, **kw)  # type: ignore[arg-type]
        finding.direction = direction
        self.add(finding)


def _peer(topology: Topology, rule: object) -> str:
    from agent.model import Rule

    assert isinstance(rule, Rule)
    prep = "from" if rule.direction == "ingress" else "to"
    if rule.cidrs:
        return f"{prep} {', '.join(rule.cidrs)}"
    if rule.sg_ref:
        return f"{prep} {sg_label(topology, rule.sg_ref)}"
    if rule.prefix_list:
        return f"{prep} {rule.prefix_list}"
    if rule.stale_ref:
        return f"{prep} {sg_label(topology, rule.stale_ref)} (stale)"
    return ""
