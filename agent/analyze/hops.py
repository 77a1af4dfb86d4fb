"""The walk's shared state and finding builders: who can be seen, SG and NACL hops.

``HopWalk`` holds one flow over one Topology and the findings so far; the consumer side
(``agent.analyze.consumer``) and the provider side (``agent.analyze.provider``) add their hops
through it, so both say "not visible", "allowed by" and "denied, fix" the same way. SGs are
evaluated only in the opening direction (stateful); NACLs in both (stateless).
"""

from __future__ import annotations

import ipaddress

from agent.analyze.fixes import nacl_fix, nacl_label, ports_text, sg_label, sgs_label
from agent.analyze.flows import Flow, client_subnet_of_ip, provider_services
from agent.analyze.nacl import NaclDecision, entry_text, evaluate_nacl, evaluate_nacl_range
from agent.analyze.sg import SgDecision
from agent.model import EndpointService, Nlb, Subnet, Topology
from agent.results import HopFinding

PROTO = "tcp"


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
        return HopFinding(
            hop,
            control,
            "denied",
            resource=resource,
            checked=checked or ["(no rules)"],
            detail=d.reason,
            ra_code="ENI_SG_RULES_MISMATCH" if d.checked else "SG_HAS_NO_RULES",
            fix=fix,
        )

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
    return ""
