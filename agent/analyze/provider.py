"""The provider's side of the walk: NLB SGs, listener, AZ node, targets and their health.

In path order: ④ NLB SG ingress from the client's IP (only when enforced on PrivateLink), the
listener and its target group, the NLB node in the endpoint's AZ, then per target in scope
(cross-zone or same AZ): ④ NLB SG egress, the provider NACLs, ⑤ target SG ingress from the
NLB's IP, the service listening; the same for the health-check port when it differs; the
return NACLs on the NLB's 1024-65535; the target's health; and last the AZ's verdict (no
target in the AZ, or fail-open when no target is healthy).
"""

from __future__ import annotations

import ipaddress
from functools import partial

from agent.analyze.fixes import sg_fix, sg_label, sgs_label
from agent.analyze.flows import az_of_subnet
from agent.analyze.hops import PROTO, HopWalk, host_cidr
from agent.analyze.sg import SgDecision, evaluate_sg
from agent.model import Instance, Nlb, NlbNode, Target, TargetGroup
from agent.results import HopFinding

#: a finding of the target-health hop, whose control has the same id (the walk adds nine)
_target_health = partial(HopFinding, "target-health", "target-health")


class ProviderHops(HopWalk):
    """The provider's hops of one flow."""

    # -- provider side ---------------------------------------------------------------------
    def provider_hidden(self, why: str) -> None:
        for hop, control in (
            ("nlb-sg-ingress", "nlb-sg-ingress"),
            ("nlb-listener", "nlb-listener"),
            ("nlb-sg-egress", "nlb-sg-egress"),
            ("provider-nacl", "provider-nacl"),
            ("target-sg-ingress", "target-sg-ingress"),
            ("target-service", "target-service"),
            ("target-health", "target-health"),
        ):
            self.hidden(hop, control, why)
        self.hidden("return:provider-nacl", "provider-nacl", why, direction="return")

    def node_for_path(self, nlb: Nlb) -> NlbNode | None:
        if self.f.az_id is None or self.cross_region(nlb):
            return nlb.nodes[0] if nlb.nodes else None
        return next(
            (n for n in nlb.nodes if az_of_subnet(self.t, n.subnet_id) == self.f.az_id), None
        )

    def cross_region(self, nlb: Nlb) -> str:
        """``"consumer-region -> provider-region"`` when the endpoint is in another region
        than the NLB (cross-region PrivateLink), else ``""``.

        The endpoint's ENIs are in the consumer's AZs, the NLB's nodes in the provider's:
        AZ ids of two regions never match, so the "service not in the endpoint's AZ" and
        "no target in the AZ" checks do not apply (which node AWS hands the traffic to is
        not documented; every node's targets are in scope).
        """
        ep = self.f.endpoint
        if ep is None:
            return ""
        mine = self.t.accounts.get(ep.account)
        theirs = self.t.accounts.get(nlb.account)
        if mine is None or theirs is None or not mine.region or not theirs.region:
            return ""
        return "" if mine.region == theirs.region else f"{mine.region} -> {theirs.region}"

    def node_of_target(self, nlb: Nlb, node: NlbNode, inst: Instance | None) -> NlbNode:
        """Cross-region: the node in the target's AZ sends to it (cross-zone off), else the
        path's node."""
        if inst is None or not self.cross_region(nlb):
            return node
        az = az_of_subnet(self.t, inst.subnet_id)
        return next((n for n in nlb.nodes if az_of_subnet(self.t, n.subnet_id) == az), node)

    def provider_hops(self) -> None:
        f, t, nlb = self.f, self.t, self.nlb
        if nlb is None or not self.visible(nlb.account):
            self.provider_hidden("the provider's load balancer and targets are not visible")
            return
        nlb_label = f"{nlb.name}"
        # the NLB subnet's NACL on PrivateLink traffic (declared hop; a lab setting)
        node = self.node_for_path(nlb)
        if node is not None and f.endpoint is not None:
            for finding in self.leg_hops("privatelink", "forward", node=node):
                self.add(finding)
        # ④ NLB SG ingress: the source is the client's private IP
        if nlb.sg_ids is None:
            self.add(
                HopFinding(
                    "nlb-sg-ingress",
                    "nlb-sg-ingress",
                    "allowed",
                    resource=nlb_label,
                    rule="the NLB has no security groups",
                    detail="an NLB without security groups lets all client traffic reach "
                    "its listeners",
                )
            )
        elif not nlb.enforce_sg_inbound_on_privatelink:
            self.add(
                HopFinding(
                    "nlb-sg-ingress",
                    "nlb-sg-ingress",
                    "allowed",
                    resource=sgs_label(t, nlb.sg_ids),
                    rule="not enforced on PrivateLink traffic",
                    detail="EnforceSecurityGroupInboundRulesOnPrivateLinkTraffic is off",
                )
            )
        else:
            d = evaluate_sg(t, nlb.sg_ids, "ingress", f.client_ip, PROTO, f.port, refs_match=False)
            finding = self.sg_finding(
                "nlb-sg-ingress",
                "nlb-sg-ingress",
                nlb.sg_ids,
                d,
                fix=sg_fix(
                    t,
                    nlb.sg_ids,
                    ingress=True,
                    port=f.port,
                    peer=f"{host_cidr(f.client_ip)} ({f.client_name})",
                    note=self.nlb_ingress_note(d),
                ),
            )
            if d.unusable_refs and finding.status == "denied":
                finding.ra_code = "SG_REFERENCES_NOT_PRESERVED"
            self.add(finding)
        # listener and target group
        listener = t.listener_for(nlb.id, f.port)
        if listener is None or listener.protocol.upper() not in ("TCP", "TLS", "TCP_UDP"):
            ports = ", ".join(f"{li.protocol} {li.port}" for li in t.listeners_of(nlb.id))
            tgs = sorted(tg.name for tg in t.target_groups.values() if tg.vpc_id == nlb.vpc_id)
            to = f" forwarding to target group {tgs[0]}" if len(tgs) == 1 else ""
            self.add(
                HopFinding(
                    "nlb-listener",
                    "nlb-listener",
                    "denied",
                    resource=nlb_label,
                    checked=[ports or "(no listeners)"],
                    detail=f"{nlb.name} has no TCP listener on port {f.port}",
                    ra_code="ELBV2_LISTENERS_MISMATCH",
                    fix=f"add a TCP listener on port {f.port} to {nlb.name} ({nlb.id}){to}",
                )
            )
            return
        tg = t.target_groups.get(listener.target_group_id or "")
        if tg is None:
            self.add(
                HopFinding(
                    "nlb-listener",
                    "nlb-listener",
                    "denied" if listener.target_group_id is None else "not_visible",
                    resource=nlb_label,
                    rule=f"listener {listener.protocol} {listener.port}",
                    detail="the listener forwards to no visible target group",
                    ra_code="ELBV2_LISTENERS_MISMATCH" if listener.target_group_id is None else "",
                    fix=f"set the default action of the listener on {f.port} to forward to the "
                    "service's target group",
                )
            )
            return
        self.add(
            HopFinding(
                "nlb-listener",
                "nlb-listener",
                "allowed",
                resource=nlb_label,
                rule=f"listener {listener.protocol} {listener.port} -> {tg.name}",
            )
        )
        node = self.node_for_path(nlb)
        if node is None and not nlb.nodes:
            # no node of the NLB was read (no LoadBalancerAddresses, no ELB interface in the
            # snapshot): its AZs are unknown, which is not "no subnet in the AZ"
            self.hidden(
                "target-health",
                "target-health",
                f"the node addresses of {nlb.name} are not visible (no LoadBalancerAddresses "
                "and no ELB network interface in the snapshot): its AZs cannot be compared "
                "with the endpoint's",
                resource=nlb_label,
            )
            return
        if node is None:
            self.add(
                _target_health(
                    "denied",
                    resource=nlb_label,
                    detail=f"{nlb.name} has no subnet in {f.az_id}: the service is not "
                    "available in the endpoint's AZ",
                    ra_code="VPCE_SERVICE_NOT_INSTALLED_IN_AZ",
                    fix=f"add a subnet in {f.az_id} to {nlb.name} (and its endpoint service)",
                )
            )
            return
        self.targets_hops(nlb, node, tg)

    def nlb_ingress_note(self, d: SgDecision) -> str:
        notes = [
            "the NLB sees the client's private IP, not the endpoint's",
            "an NLB SG cannot reference the consumer's SG across accounts",
        ]
        eni_ip = self.f.eni_ip
        near = next(
            (
                r
                for r in d.checked
                if eni_ip
                and r.covers_port(self.f.port)
                and any(
                    ipaddress.ip_address(eni_ip) in ipaddress.ip_network(c, strict=False)
                    for c in r.cidrs
                )
            ),
            None,
        )
        if near is not None:
            notes[0] = (
                f"rule {near.id} allows {', '.join(near.cidrs)}, which covers the endpoint "
                "ENI, but the NLB sees the client's private IP"
            )
        if d.unusable_refs:
            notes.insert(0, f"rule {d.unusable_refs[0].id} references a security group")
        return "; ".join(notes)

    def scope(self, nlb: Nlb, node: NlbNode, tg: TargetGroup) -> list[Target]:
        if nlb.cross_zone or self.cross_region(nlb):
            return list(tg.targets)
        az = az_of_subnet(self.t, node.subnet_id)
        out = []
        for target in tg.targets:
            inst = self.t.instances.get(target.instance_id)
            if inst is None or az_of_subnet(self.t, inst.subnet_id) in (az, None):
                out.append(target)
        return out

    def targets_hops(self, nlb: Nlb, node: NlbNode, tg: TargetGroup) -> None:
        in_scope = self.scope(nlb, node, tg)
        healthy: list[str] = []
        unknown: list[str] = []
        for target in in_scope:
            own = self.node_of_target(nlb, node, self.t.instances.get(target.instance_id))
            verdict = self.one_target(nlb, own, tg, target)
            if verdict == "healthy":
                healthy.append(target.instance_id)
            elif verdict == "unknown":
                unknown.append(target.instance_id)
        names = {tt.instance_id: self.target_name(tt.instance_id) for tt in tg.targets}
        label = f"{tg.name} in {self.f.az_id or 'all AZs'}"
        regions = self.cross_region(nlb)
        if regions:
            label = f"{tg.name} in every AZ of the provider's region (cross-region {regions})"
        if not tg.targets:
            self.add(
                _target_health(
                    "denied",
                    resource=label,
                    detail=f"{tg.name} has no registered targets",
                    ra_code="ELBV2_NO_TARGETS_IN_AZ",
                    fix=f"register the service's instances in {tg.name}",
                )
            )
            return
        if not in_scope:
            elsewhere = ", ".join(sorted(names.values()))
            self.add(
                _target_health(
                    "denied",
                    resource=label,
                    detail=f"cross-zone load balancing is off and {tg.name} has no target in "
                    f"{self.f.az_id} (targets: {elsewhere})",
                    ra_code="ELBV2_NO_TARGETS_IN_AZ",
                    fix=f"register a target of {tg.name} in {self.f.az_id}, or enable cross-zone "
                    f"load balancing on {nlb.name}",
                )
            )
            return
        if healthy:
            self.add(
                _target_health(
                    "allowed",
                    resource=label,
                    rule="healthy: " + ", ".join(sorted(names[i] for i in healthy)),
                    detail=(
                        f"cross-region PrivateLink ({regions}): the endpoint's AZ "
                        f"{self.f.az_id} is not an AZ of the NLB's region, so AZ matching "
                        "does not apply"
                    )
                    if regions
                    else "",
                )
            )
            return
        if unknown:
            self.hidden(
                "target-health",
                "target-health",
                "target health cannot be told: "
                + ", ".join(sorted(names[i] for i in unknown))
                + " not visible",
                resource=label,
            )
            return
        others = [
            tt for tt in tg.targets if tt not in in_scope and (tt.health or "").lower() == "healthy"
        ]
        if others:
            self.add(
                _target_health(
                    "denied",
                    resource=label,
                    detail=f"no healthy target of {tg.name} in {self.f.az_id} and cross-zone "
                    "load balancing is off",
                    ra_code="ELB_NOT_CROSSZONE",
                    fix=f"make a target in {self.f.az_id} healthy, or enable cross-zone load "
                    f"balancing on {nlb.name}",
                )
            )
            return
        self.add(
            _target_health(
                "allowed",
                resource=label,
                rule="fail-open",
                detail="no target is healthy: the NLB fails open and sends traffic to all targets",
                degraded="every target is unhealthy; traffic passes only because the NLB "
                "fails open",
                ra_code="ELBV2_NO_TARGETS_IN_AZ",
            )
        )

    def target_name(self, instance_id: str) -> str:
        inst = self.t.instances.get(instance_id)
        return inst.name if inst else instance_id

    def one_target(self, nlb: Nlb, node: NlbNode, tg: TargetGroup, target: Target) -> str:
        """All hops of one target; returns ``healthy``, ``unhealthy`` or ``unknown``."""
        t = self.t
        name = self.target_name(target.instance_id)
        inst = t.instances.get(target.instance_id)
        if inst is None or not self.visible(inst.account):
            why = f"target {name} is not visible"
            for hop, control in (
                ("nlb-sg-egress", "nlb-sg-egress"),
                ("target-sg-ingress", "target-sg-ingress"),
                ("target-service", "target-service"),
            ):
                self.hidden(hop, control, why, target=name)
            return "unknown" if target.health is None else self.observed(target, name, [])
        tport = tg.target_port(target)
        hport = tg.health_port(target)
        traffic = self.target_forward(nlb, node, inst, tport, "forward")
        health = (
            traffic if hport == tport else self.target_forward(nlb, node, inst, hport, "health")
        )
        back = self.target_return(node, inst)
        if target.health is not None:
            return self.observed(target, name, health + back)
        hops = health + back
        # a partly denied ephemeral range fails some checks only: not predicted unhealthy
        first = next((h for h in hops if h.status == "denied" and not h.degraded), None)
        if first is not None:
            self.add(
                _target_health(
                    "denied",
                    resource=f"{name} in {tg.name}",
                    rule="predicted unhealthy",
                    detail=f"health checks to {name}:{hport} fail at {first.hop} "
                    f"({first.resource})",
                    ra_code="",
                    fix=first.fix,
                    direction="health",
                    target=name,
                )
            )
            return "unhealthy"
        if any(h.status == "not_visible" for h in hops):
            self.hidden(
                "target-health",
                "target-health",
                f"health of {name} cannot be predicted",
                direction="health",
                target=name,
            )
            return "unknown"
        self.add(
            _target_health(
                "allowed",
                resource=f"{name} in {tg.name}",
                rule="predicted healthy",
                detail=f"health checks to {name}:{hport} pass every hop",
                direction="health",
                target=name,
            )
        )
        return "healthy"

    def observed(self, target: Target, name: str, hops: list[HopFinding]) -> str:
        state = (target.health or "").lower()
        ok = state == "healthy"
        first = next((h for h in hops if h.status == "denied"), None)
        self.add(
            _target_health(
                "allowed" if ok else "denied",
                resource=name,
                rule=f"observed {target.health}",
                detail=""
                if ok or first is None
                else f"health checks fail at {first.hop} ({first.resource})",
                fix="" if ok or first is None else first.fix,
                direction="health",
                target=name,
            )
        )
        return "healthy" if ok else "unhealthy"

    def target_forward(
        self, nlb: Nlb, node: NlbNode, inst: Instance, port: int, direction: str
    ) -> list[HopFinding]:
        """NLB SG egress, provider NACLs, target SG ingress, the service: for one port."""
        t = self.t
        hops: list[HopFinding] = []
        what = "health checks" if direction == "health" else "traffic"
        suffix = ":health" if direction == "health" else ""
        target_peer = (
            sg_label(t, inst.sg_ids[0]) + f" (or {host_cidr(inst.ip)}, {inst.name})"
            if inst.sg_ids
            else f"{host_cidr(inst.ip)} ({inst.name})"
        )
        # ④ NLB SG egress: to the target port AND the health-check port
        if nlb.sg_ids is None:
            hops.append(
                HopFinding(
                    f"nlb-sg-egress{suffix}",
                    "nlb-sg-egress",
                    "allowed",
                    resource=nlb.name,
                    rule="the NLB has no security groups",
                )
            )
        else:
            d = evaluate_sg(t, nlb.sg_ids, "egress", inst.ip, PROTO, port)
            note = "health checks obey the NLB's egress rules" if direction == "health" else ""
            hops.append(
                self.sg_finding(
                    f"nlb-sg-egress{suffix}",
                    "nlb-sg-egress",
                    nlb.sg_ids,
                    d,
                    fix=sg_fix(
                        t, nlb.sg_ids, ingress=False, port=port, peer=target_peer, note=note
                    ),
                )
            )
        # provider NACLs: NLB subnet out, target subnet in (declared hops)
        hops += self.leg_hops(
            "nlb-target", "forward", node=node, inst=inst, port=port, suffix=suffix
        )
        # ⑤ target SG ingress from the NLB's private IP
        if not inst.sg_ids:
            hops.append(
                HopFinding(
                    f"target-sg-ingress{suffix}",
                    "target-sg-ingress",
                    "not_visible",
                    detail=f"{inst.name} lists no security groups",
                )
            )
        else:
            if nlb.sg_ids:
                peer = f"{sg_label(t, nlb.sg_ids[0])} (the NLB's IP {node.ip})"
            else:
                peer = f"{host_cidr(node.ip)} (the NLB's IP)"
            note = (
                "traffic and health checks arrive from the NLB's IPs, not the clients'"
                if direction == "forward"
                else "health checks arrive from the NLB's IPs"
            )
            d = evaluate_sg(t, inst.sg_ids, "ingress", node.ip, PROTO, port)
            hops.append(
                self.sg_finding(
                    f"target-sg-ingress{suffix}",
                    "target-sg-ingress",
                    inst.sg_ids,
                    d,
                    fix=sg_fix(t, inst.sg_ids, ingress=True, port=port, peer=peer, note=note),
                )
            )
        # the service (not an access control): is anything listening?
        listening = port in inst.services
        health_says = self.health_shows_listening(inst, port)
        if not listening and not inst.services_known and health_says:
            # no plprobe:services tag, but the NLB's own health check connects to this
            # port and passes: something listens there
            hops.append(
                HopFinding(
                    f"target-service{suffix}",
                    "target-service",
                    "allowed",
                    resource=f"{inst.name} ({inst.id})",
                    rule=f"listening on {port}",
                    detail=health_says,
                )
            )
        elif not listening and not inst.services_known:
            # a snapshot cannot tell which ports an instance listens on
            hops.append(
                HopFinding(
                    f"target-service{suffix}",
                    "target-service",
                    "not_visible",
                    resource=f"{inst.name} ({inst.id})",
                    detail=f"the ports {inst.name} listens on are not known from here",
                )
            )
        else:
            hops.append(
                HopFinding(
                    f"target-service{suffix}",
                    "target-service",
                    "allowed" if listening else "denied",
                    resource=f"{inst.name} ({inst.id})",
                    rule=f"listening on {port}" if listening else "",
                    checked=[f"listening: {', '.join(map(str, inst.services)) or 'nothing'}"],
                    detail="" if listening else f"nothing listens on {inst.name}:{port} ({what})",
                    fix="" if listening else f"start the service on {inst.name} port {port}",
                )
            )
        for h in hops:
            h.target = inst.name
            h.direction = direction
            self.add(h)
        return hops

    def health_shows_listening(self, inst: Instance, port: int) -> str:
        """Why the target listens on ``port``, from DescribeTargetHealth: a ``healthy`` target
        whose health check probes that very port. ``""`` when the health says nothing."""
        for tg in self.t.target_groups.values():
            for target in tg.targets:
                if target.instance_id != inst.id or (target.health or "").lower() != "healthy":
                    continue
                if tg.health_port(target) == port:
                    check = tg.health_check.protocol.upper()
                    return (
                        f"{inst.name} is healthy in {tg.name}, whose {check} health check "
                        f"connects to port {port} (DescribeTargetHealth)"
                    )
        return ""

    def target_return(self, node: NlbNode, inst: Instance) -> list[HopFinding]:
        """Replies from the target to the NLB node on its remapped 1024-65535 ports."""
        hops = self.leg_hops("nlb-target", "return", node=node, inst=inst)
        for h in hops:
            h.target = inst.name
            self.add(h)
        return hops

    def privatelink_return_hops(self) -> None:
        """Replies leaving the NLB node towards the client over PrivateLink (declared hops)."""
        nlb = self.nlb
        if self.f.endpoint is None or nlb is None or not self.visible(nlb.account):
            return
        node = self.node_for_path(nlb)
        if node is None:
            return
        for finding in self.leg_hops("privatelink", "return", node=node):
            self.add(finding)
