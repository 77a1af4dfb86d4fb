"""Walk one flow (client -> endpoint ENI -> NLB -> targets, and back) over a Topology.

Every hop of the PrivateLink path becomes a ``HopFinding``: *allowed* (by which rule),
*denied* (which rules were checked, the Reachability Analyzer code, the smallest fix) or
*not_visible* (the resource's account was not read, or the object is absent from a partial
view). Findings come in path order:

    forward  client SG egress, client subnet NACL out, endpoint subnet NACL in, endpoint SG
             ingress, endpoint state, allowed principals, NLB SG ingress (client IP; only when
             enforced), listener, then per target: NLB SG egress, provider NACLs (NLB subnet
             out, target subnet in), target SG ingress from the NLB's IP, the service listening
    health   per target, when the health-check port differs from the traffic port: the same
             hops for the health-check port (health checks obey NLB SG *egress*)
    return   per target: target subnet NACL out / NLB subnet NACL in on the NLB's 1024-65535;
             then endpoint subnet NACL out / client subnet NACL in on Linux's 32768-60999
    target-health per target (observed ``Target.health`` or predicted from the health hops),
             then the AZ's verdict: no target in the AZ (cross-zone off), or fail-open when no
             target is healthy (traffic still goes to all of them: ``degraded`` is set)

Per-target hops carry ``target`` so diagnosis can tell "one of two targets" (degraded) from
"every target" (fail). SGs are evaluated only in the opening direction (stateful); NACLs in
both (stateless). The NLB subnet's NACL towards the *client* side is not evaluated: AWS does
not document whether PrivateLink traffic crosses it.
"""

from __future__ import annotations

import ipaddress

from agent import controls
from agent.analyze.fixes import nacl_fix, nacl_label, ports_text, sg_fix, sg_label, sgs_label
from agent.analyze.flows import Flow, az_of_subnet, flows
from agent.analyze.nacl import NaclDecision, entry_text, evaluate_nacl, evaluate_nacl_range
from agent.analyze.sg import SgDecision, evaluate_sg
from agent.errors import ConfigError
from agent.model import (
    LINUX_EPHEMERAL,
    NLB_EPHEMERAL,
    EndpointService,
    Instance,
    Nlb,
    NlbNode,
    Subnet,
    Target,
    TargetGroup,
    Topology,
)
from agent.results import HopFinding

PROTO = "tcp"

#: every catalogue id the analysis can put in ``HopFinding.control`` (the catalogue's
#: ``Control.emitted``; tested against what the walk emits)
EMITTED_CONTROLS: tuple[str, ...] = controls.EMITTED

#: endpoint states and the fix for each (AWS-FACTS.md "States and APIs")
_STATE_FIX = {
    "pendingacceptance": "accept the connection",
    "rejected": "accept the connection (or delete and recreate the endpoint)",
    "expired": "delete and recreate the endpoint, then accept it within the acceptance window",
    "failed": "delete and recreate the endpoint",
    "pending": "wait for the endpoint to become available",
    "deleting": "recreate the endpoint",
    "deleted": "recreate the endpoint",
}


def _host(ip: str) -> str:
    """The single-address CIDR of an IP: /32 for IPv4, /128 for IPv6 (never a wider block)."""
    return ipaddress.ip_network(ip).with_prefixlen


# --- the walk -------------------------------------------------------------------------------


def analyze_flow(
    topology: Topology,
    client: str,
    endpoint: str | None,
    port: int,
    *,
    eni_ip: str | None = None,
) -> list[HopFinding]:
    """Findings for ``client`` -> ``endpoint`` (default: the one it routes to) on ``port``.

    ``eni_ip`` selects one AZ path; by default the ENI in the client's AZ, else the first.
    """
    candidates = flows(topology, client, port, endpoint)
    flow = candidates[0]
    if eni_ip is not None:
        chosen = [f for f in candidates if f.eni_ip == eni_ip]
        if not chosen:
            known = ", ".join(f.eni_ip or "?" for f in candidates)
            raise ConfigError(f"endpoint has no ENI {eni_ip} (its ENIs: {known})")
        flow = chosen[0]
    elif len(candidates) > 1 and flow.client is not None:
        client_az = az_of_subnet(topology, flow.client.subnet_id)
        flow = next((f for f in candidates if f.az_id == client_az), flow)
    return walk(topology, flow)


def walk(topology: Topology, flow: Flow) -> list[HopFinding]:
    """All findings for one Flow, in path order (see the module docstring)."""
    return _Walker(topology, flow).run()


class _Walker:
    def __init__(self, topology: Topology, flow: Flow) -> None:
        self.t = topology
        self.f = flow
        self.out: list[HopFinding] = []
        self.service: EndpointService | None = None
        if flow.endpoint is not None:
            self.service = topology.endpoint_services.get(flow.endpoint.service_id)
        elif len(topology.endpoint_services) == 1:
            self.service = next(iter(topology.endpoint_services.values()))
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

    def hidden(self, hop: str, control: str, why: str, **kw: str) -> HopFinding:
        return self.add(HopFinding(hop, control, "not_visible", detail=why, **kw))

    # -- entry -----------------------------------------------------------------------------
    def run(self) -> list[HopFinding]:
        self.consumer_hops()
        self.endpoint_hops()
        self.provider_hops()
        self.consumer_return_hops()
        return self.out

    # -- consumer side ---------------------------------------------------------------------
    def subnet_of(self, ip: str, subnet_id: str | None = None) -> Subnet | None:
        if subnet_id and subnet_id in self.t.subnets:
            return self.t.subnets[subnet_id]
        return self.t.subnet_of_ip(ip)

    def client_subnet(self) -> Subnet | None:
        return self.subnet_of(self.f.client_ip, self.f.client.subnet_id if self.f.client else None)

    def eni_subnet(self) -> Subnet | None:
        if self.f.eni is None:
            return None
        return self.subnet_of(self.f.eni.ip, self.f.eni.subnet_id)

    def consumer_hops(self) -> None:
        f, t = self.f, self.t
        eni_ip = f.eni_ip
        # ① client SG egress to the ENI IP (an SG reference to the endpoint SG matches through
        # membership: the ENI is a member of the endpoint's groups)
        if f.client is None or not self.visible(f.client.account):
            self.hidden(
                "client-sg-egress",
                "client-sg-egress",
                f"the client {f.client_name}'s instance and security groups are not visible",
            )
        elif eni_ip is None:
            self.hidden("client-sg-egress", "client-sg-egress", "no endpoint ENI to evaluate")
        else:
            d = evaluate_sg(t, f.client.sg_ids, "egress", eni_ip, PROTO, f.port)
            peer = self.endpoint_peer_text()
            self.add(
                self.sg_finding(
                    "client-sg-egress",
                    "client-sg-egress",
                    f.client.sg_ids,
                    d,
                    fix=sg_fix(t, f.client.sg_ids, ingress=False, port=f.port, peer=peer),
                )
            )
        # client subnet NACL out, endpoint subnet NACL in (same subnet: no boundary crossed)
        cs, es = self.client_subnet(), self.eni_subnet()
        if cs is not None and es is not None and cs.id == es.id:
            return
        if eni_ip is not None:
            self.nacl_hop(
                "client-nacl-out",
                "client-nacl",
                cs,
                egress=True,
                peer_ip=eni_ip,
                peer_name=f"endpoint ENI {eni_ip}",
                ports=(f.port, f.port),
            )
            self.nacl_hop(
                "endpoint-nacl-in",
                "client-nacl",
                es,
                egress=False,
                peer_ip=f.client_ip,
                peer_name=f.client_name,
                ports=(f.port, f.port),
            )
        else:
            self.hidden("client-nacl-out", "client-nacl", "no endpoint ENI to evaluate")

    def endpoint_peer_text(self) -> str:
        ep = self.f.endpoint
        if ep is not None and ep.sg_ids:
            return f"{sg_label(self.t, ep.sg_ids[0])} (or {_host(self.f.eni_ip)}, the endpoint ENI)"
        return f"{_host(self.f.eni_ip)} (the endpoint ENI)"

    def client_peer_text(self) -> str:
        """How the endpoint SG should name the client: its SG when referenceable, else its IP."""
        f = self.f
        ip = f"{_host(f.client_ip)} ({f.client_name})"
        if f.client is None or not f.client.sg_ids or f.endpoint is None:
            return ip
        group = self.t.security_groups.get(f.client.sg_ids[0])
        if group is not None and self.t.routed(group.vpc_id, f.endpoint.vpc_id):
            return f"{sg_label(self.t, group.id)} (or {ip})"
        return ip

    def endpoint_hops(self) -> None:
        f, t = self.f, self.t
        ep = f.endpoint
        if ep is None:
            self.missing_endpoint()
            return
        # ② endpoint SG ingress from the client IP
        if not self.visible(ep.account):
            self.hidden(
                "endpoint-sg-ingress",
                "endpoint-sg-ingress",
                "the endpoint's security groups are not visible",
            )
        elif not ep.sg_ids:
            self.hidden(
                "endpoint-sg-ingress",
                "endpoint-sg-ingress",
                f"{ep.id} lists no security groups (the VPC default group applies)",
            )
        else:
            d = evaluate_sg(t, ep.sg_ids, "ingress", f.client_ip, PROTO, f.port)
            self.add(
                self.sg_finding(
                    "endpoint-sg-ingress",
                    "endpoint-sg-ingress",
                    ep.sg_ids,
                    d,
                    fix=sg_fix(
                        t, ep.sg_ids, ingress=True, port=f.port, peer=self.client_peer_text()
                    ),
                )
            )
        # ③b connection state: known to whoever sees the endpoint object
        label = f"{ep.id} ({ep.name})"
        if ep.is_available():
            self.add(
                HopFinding(
                    "endpoint-state",
                    "endpoint-acceptance",
                    "allowed",
                    resource=label,
                    rule="state available",
                )
            )
        else:
            svc = ep.service_id
            todo = _STATE_FIX.get(ep.state.lower(), "recreate the endpoint")
            fix = f"{todo}: {label} is {ep.state}"
            if "accept" in todo:
                fix += (
                    f" (aws ec2 accept-vpc-endpoint-connections --service-id {svc} "
                    f"--vpc-endpoint-ids {ep.id}, in the provider account)"
                )
            self.add(
                HopFinding(
                    "endpoint-state",
                    "endpoint-acceptance",
                    "denied",
                    resource=label,
                    rule=f"state {ep.state}",
                    checked=[f"state {ep.state}"],
                    detail=f"the endpoint connection is {ep.state}, not available",
                    ra_code="BAD_STATE",
                    fix=fix,
                )
            )
        # ③a allowed principals
        svc_obj = self.service
        if svc_obj is None or not self.visible(svc_obj.account):
            # an endpoint that exists was created, so its requester was allowed then
            self.add(
                HopFinding(
                    "service-principal",
                    "service-principal",
                    "allowed",
                    resource=ep.service_id,
                    rule="the endpoint exists",
                    detail="the service's permissions are not visible; the endpoint exists, "
                    "so its requester was allowed when it was created",
                )
            )
            return
        svc_label = f"{svc_obj.id} ({svc_obj.name})"
        if ep.requester:
            requester = ep.requester
            allowed = t.service_allows(svc_obj, requester)
        else:
            # a snapshot does not say which principal created the endpoint: any principal of
            # its owner account (or "*") may have; blaming the account root would be a guess
            acct = t.accounts.get(ep.account)
            acct_id = acct.id if acct else ep.account
            allowed = t.service_allows_account(svc_obj, acct_id)
            requester = f"arn:aws:iam::{acct_id}:root"
        if allowed:
            self.add(
                HopFinding(
                    "service-principal",
                    "service-principal",
                    "allowed",
                    resource=svc_label,
                    rule=f"{requester} allowed",
                    checked=list(svc_obj.allowed_principals),
                )
            )
        else:
            note = ""
            if ep.is_available():
                note = (
                    "; on AWS an endpoint accepted before the principal was removed keeps "
                    f"working: to cut it off, reject {ep.id}"
                )
            self.add(
                HopFinding(
                    "service-principal",
                    "service-principal",
                    "denied",
                    resource=svc_label,
                    checked=list(svc_obj.allowed_principals) or ["(no allowed principals)"],
                    detail=f"{requester} is not an allowed principal of {svc_obj.id}{note}",
                    ra_code="BAD_STATE",
                    fix=self.principal_fix(svc_obj, requester),
                )
            )

    def consumer_root(self) -> str:
        acct = self.t.accounts.get(self.f.client.account) if self.f.client else None
        acct = acct or self.t.account_of_role("consumer")
        return acct.root_arn if acct else "arn:aws:iam::CONSUMER:root"

    def principal_fix(self, svc: EndpointService, principal: str) -> str:
        return (
            f"add {principal} to the allowed principals of {svc.id} ({svc.name}) "
            f"(aws ec2 modify-vpc-endpoint-service-permissions --service-id {svc.id} "
            f"--add-allowed-principals {principal}), then create the endpoint"
        )

    def missing_endpoint(self) -> None:
        """No endpoint for this client in a consumer view: say why only as far as we can see.

        AWS refuses CreateVpcEndpoint for a principal the service does not allow, so a missing
        endpoint *may* be the principal — but that is only known with the provider's view.
        """
        if not self.consumer_visible():
            self.hidden("endpoint-state", "endpoint-acceptance", "the endpoint is not visible")
            return
        svc = self.service
        detail = f"no interface endpoint in a VPC that {self.f.client_name} can route to"
        if svc is None or not self.visible(svc.account):
            self.hidden(
                "endpoint-exists",
                "service-principal",
                f"{detail}: it was never created (AWS refuses to create an endpoint when the "
                "consumer is not an allowed principal of the service) or it was deleted; the "
                "service's allowed principals are not visible from here",
                fix="ask the provider to allow this account's principal on the endpoint "
                "service, then create the interface endpoint",
            )
            return
        principal = self.consumer_root()
        if self.t.service_allows(svc, principal):
            self.add(
                HopFinding(
                    "endpoint-exists",
                    "dns",
                    "denied",
                    resource=svc.id,
                    detail=f"{detail}, although {principal} is allowed on {svc.id}",
                    fix=f"create an interface endpoint to {svc.id} in {self.f.client_name}'s VPC",
                )
            )
            return
        self.add(
            HopFinding(
                "endpoint-exists",
                "service-principal",
                "denied",
                resource=f"{svc.id} ({svc.name})",
                checked=list(svc.allowed_principals) or ["(no allowed principals)"],
                detail=f"{detail}: {principal} is not an allowed principal of {svc.id}, so "
                "AWS refused to create it",
                ra_code="BAD_STATE",
                fix=self.principal_fix(svc, principal),
            )
        )

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
        if self.f.az_id is None:
            return nlb.nodes[0] if nlb.nodes else None
        return next(
            (n for n in nlb.nodes if az_of_subnet(self.t, n.subnet_id) == self.f.az_id), None
        )

    def provider_hops(self) -> None:
        f, t, nlb = self.f, self.t, self.nlb
        if nlb is None or not self.visible(nlb.account):
            self.provider_hidden("the provider's load balancer and targets are not visible")
            return
        nlb_label = f"{nlb.name}"
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
                    peer=f"{_host(f.client_ip)} ({f.client_name})",
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
        if node is None:
            self.add(
                HopFinding(
                    "target-health",
                    "target-health",
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
        if nlb.cross_zone:
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
            verdict = self.one_target(nlb, node, tg, target)
            if verdict == "healthy":
                healthy.append(target.instance_id)
            elif verdict == "unknown":
                unknown.append(target.instance_id)
        names = {tt.instance_id: self.target_name(tt.instance_id) for tt in tg.targets}
        label = f"{tg.name} in {self.f.az_id or 'all AZs'}"
        if not tg.targets:
            self.add(
                HopFinding(
                    "target-health",
                    "target-health",
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
                HopFinding(
                    "target-health",
                    "target-health",
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
                HopFinding(
                    "target-health",
                    "target-health",
                    "allowed",
                    resource=label,
                    rule="healthy: " + ", ".join(sorted(names[i] for i in healthy)),
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
                HopFinding(
                    "target-health",
                    "target-health",
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
            HopFinding(
                "target-health",
                "target-health",
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
                HopFinding(
                    "target-health",
                    "target-health",
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
            HopFinding(
                "target-health",
                "target-health",
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
            HopFinding(
                "target-health",
                "target-health",
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
            sg_label(t, inst.sg_ids[0]) + f" (or {_host(inst.ip)}, {inst.name})"
            if inst.sg_ids
            else f"{_host(inst.ip)} ({inst.name})"
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
        # provider NACLs: NLB subnet out, target subnet in
        ns = self.t.subnets.get(node.subnet_id)
        ts = self.t.subnets.get(inst.subnet_id)
        if not (ns and ts and ns.id == ts.id):
            hops.append(
                self.nacl_finding(
                    f"nlb-nacl-out{suffix}",
                    "provider-nacl",
                    ns,
                    egress=True,
                    peer_ip=inst.ip,
                    peer_name=inst.name,
                    ports=(port, port),
                )
            )
            hops.append(
                self.nacl_finding(
                    f"target-nacl-in{suffix}",
                    "provider-nacl",
                    ts,
                    egress=False,
                    peer_ip=node.ip,
                    peer_name=f"{nlb.name} node",
                    ports=(port, port),
                )
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
                peer = f"{_host(node.ip)} (the NLB's IP)"
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
        if not listening and not getattr(inst, "services_known", True):
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

    def target_return(self, node: NlbNode, inst: Instance) -> list[HopFinding]:
        """Replies from the target to the NLB node on its remapped 1024-65535 ports."""
        ns = self.t.subnets.get(node.subnet_id)
        ts = self.t.subnets.get(inst.subnet_id)
        if ns and ts and ns.id == ts.id:
            return []
        why = "the NLB remaps source ports to 1024-65535; NACLs are stateless"
        hops = [
            self.nacl_finding(
                "return:target-nacl-out",
                "provider-nacl",
                ts,
                egress=True,
                peer_ip=node.ip,
                peer_name="the NLB node",
                ports=NLB_EPHEMERAL,
                why=why,
            ),
            self.nacl_finding(
                "return:nlb-nacl-in",
                "provider-nacl",
                ns,
                egress=False,
                peer_ip=inst.ip,
                peer_name=inst.name,
                ports=NLB_EPHEMERAL,
                why=why,
            ),
        ]
        for h in hops:
            h.target = inst.name
            h.direction = "return"
            if h.status == "denied":
                h.ra_code = "REMAP_EPHEMERAL_PORT"
            self.add(h)
        return hops

    # -- consumer return -------------------------------------------------------------------
    def consumer_return_hops(self) -> None:
        f = self.f
        if f.eni is None:
            return
        cs, es = self.client_subnet(), self.eni_subnet()
        if cs is not None and es is not None and cs.id == es.id:
            return
        why = "replies go to the client's ephemeral ports 32768-60999; NACLs are stateless"
        self.nacl_hop(
            "return:endpoint-nacl-out",
            "client-nacl",
            es,
            egress=True,
            peer_ip=f.client_ip,
            peer_name=f.client_name,
            ports=LINUX_EPHEMERAL,
            direction="return",
            why=why,
        )
        self.nacl_hop(
            "return:client-nacl-in",
            "client-nacl",
            cs,
            egress=False,
            peer_ip=f.eni.ip,
            peer_name=f"endpoint ENI {f.eni.ip}",
            ports=LINUX_EPHEMERAL,
            direction="return",
            why=why,
        )

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
                peer_cidr=f"{_host(peer_ip)}",
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
