"""Replay, part three: the PrivateLink service layer and the whole document.

NLBs, target groups and their attachments, listeners, endpoint services and endpoints, on top
of ``agent.lab.replay_network``'s network layer and ``agent.lab.replay_routing``'s route
tables (see ``agent.lab.replay`` for the notes).
"""

from __future__ import annotations

from typing import Any

from agent.errors import UnreplayableError
from agent.lab.replay_network import (
    DNS_STATES,
    LB_PROTOCOLS,
    ReplayNote,
    is_ipv4,
    target_kind,
)
from agent.lab.replay_routing import RoutingConverter
from agent.model import TargetGroup, to_plain


class Converter(RoutingConverter):
    """The whole converter: ``document()`` runs every step and refuses an empty result."""

    def document(self) -> dict[str, Any]:
        t = self.t
        roles = {a.role for a in t.accounts.values()}
        missing = [r for r in ("consumer", "provider") if r not in roles]
        if missing:
            raise UnreplayableError(
                f"the lab needs both accounts; no {' and no '.join(missing)} account in "
                f"{t.source or 'the topology'} (give the consumer's and the provider's "
                "snapshot directories: docs/SNAPSHOT.md)",
                [ReplayNote("refused", "*", f"no {m} account") for m in missing],
            )
        for step in (
            self.vpcs,
            self.subnets,
            self.peerings,
            self.security_groups,
            self.instances,
            self.prefix_lists,
            self.sg_rules,
            self.nacls,
            self.route_tables,
            self.nlbs,
            self.target_groups,
            self.listeners,
            self.services,
            self.endpoints,
        ):
            step()
        if not self.res.get("aws_vpc_endpoint"):
            raise UnreplayableError(
                "nothing to replay: no interface endpoint of the given provider's services "
                "could be built:\n  " + "\n  ".join(n.text() for n in self.notes),
                [*self.notes, ReplayNote("refused", "*", "no endpoint to rehearse")],
            )
        order = [
            "aws_vpc",
            "aws_subnet",
            "aws_vpc_peering_connection",
            "aws_security_group",
            "aws_ec2_managed_prefix_list",
            "aws_security_group_rule",
            "aws_network_acl",
            "aws_route_table",
            "aws_route_table_association",
            "aws_main_route_table_association",
            "aws_instance",
            "aws_lb",
            "aws_lb_target_group",
            "aws_lb_target_group_attachment",
            "aws_lb_listener",
            "aws_vpc_endpoint_service",
            "aws_vpc_endpoint",
        ]
        lab = to_plain(t.lab)
        return {
            "region": t.region,
            "description": self.description,
            "accounts": {
                a.name: {"id": a.id, "role": a.role}
                for a in sorted(t.accounts.values(), key=lambda a: (a.role, a.name))
            },
            "lab": lab,
            "resources": {k: self.res[k] for k in order if self.res.get(k)},
        }

    def nlbs(self) -> None:
        for lb in self.t.nlbs.values():
            what = self.label("aws_lb", lb.id, lb.name)
            mapping = []
            for node in lb.nodes:
                subnet = self.kept("aws_subnet", node.subnet_id)
                if subnet is None:
                    self.note("omitted", what, f"node in subnet {node.subnet_id}: not replayed")
                elif not is_ipv4(node.ip):
                    self.note("omitted", what, f"node {node.ip}: not an IPv4 address")
                else:
                    mapping.append({"subnet_id": subnet, "private_ipv4_address": node.ip})
            if not mapping:
                self.note(
                    "omitted",
                    what,
                    "no private IPv4 address of any NLB node is in the snapshot "
                    "(describe-load-balancers AvailabilityZones[].LoadBalancerAddresses)",
                )
                continue
            name = self.name("aws_lb", lb.id, lb.name)
            body: dict[str, Any] = {"account": lb.account, "subnet_mapping": mapping}
            if lb.sg_ids is not None:
                body["security_groups"] = self.sg_ids(lb.sg_ids, what)
            body["enforce_security_group_inbound_rules_on_private_link_traffic"] = (
                "on" if lb.enforce_sg_inbound_on_privatelink else "off"
            )
            body["enable_cross_zone_load_balancing"] = lb.cross_zone
            self.put("aws_lb", name, body)

    def target_groups(self) -> None:
        for tg, what, vpc in self.in_kept_vpcs(
            "aws_lb_target_group", self.t.target_groups.values()
        ):
            if tg.protocol.upper() not in LB_PROTOCOLS:
                self.note(
                    "omitted",
                    what,
                    f"protocol {tg.protocol}: an ALB's target group; the lab emulates NLBs",
                )
                continue
            name = self.name("aws_lb_target_group", tg.id, tg.name)
            self.put("aws_lb_target_group", name, self.target_group_body(tg, vpc))
            for tgt in tg.targets:
                inst = self.kept("aws_instance", tgt.instance_id)
                if inst is None:
                    self.note(
                        "omitted",
                        f"aws_lb_target_group_attachment {tgt.instance_id} in {name}",
                        target_kind(tgt.instance_id),
                    )
                    continue
                port = tg.target_port(tgt)
                if tgt.health not in (None, "healthy"):
                    self.note(
                        "assumed",
                        f"aws_lb_target_group_attachment {inst}-{port} in {name}",
                        f"the snapshot saw it {tgt.health}; in the lab its health is what the "
                        "lab's health checker sees",
                    )
                self.put(
                    "aws_lb_target_group_attachment",
                    f"{name}-{inst}-{port}",
                    {
                        "account": tg.account,
                        "target_group_arn": name,
                        "target_id": inst,
                        "port": port,
                    },
                )

    def target_group_body(self, tg: TargetGroup, vpc: str) -> dict[str, Any]:
        hc = tg.health_check
        body: dict[str, Any] = {
            "account": tg.account,
            "vpc_id": vpc,
            "port": tg.port,
            "protocol": tg.protocol.upper(),
        }
        if tg.proxy_protocol_v2:
            body["proxy_protocol_v2"] = True
        body["health_check"] = {
            "protocol": hc.protocol.upper(),
            "port": "traffic-port" if hc.port is None else hc.port,
            **({"path": hc.path} if hc.protocol.upper() != "TCP" else {}),
            "interval": hc.interval_s,
            "timeout": hc.timeout_s,
            "healthy_threshold": hc.healthy_threshold,
            "unhealthy_threshold": hc.unhealthy_threshold,
        }
        return body

    def listeners(self) -> None:
        for li in self.t.listeners.values():
            lb = self.kept("aws_lb", li.nlb_id)
            what = f"aws_lb_listener {lb or li.nlb_id}:{li.port}"
            if lb is None:
                self.note("omitted", what, f"its load balancer {li.nlb_id} is not replayed")
                continue
            tg = self.kept("aws_lb_target_group", li.target_group_id)
            if tg is None:
                self.note(
                    "omitted",
                    what,
                    f"it forwards to no replayed target group ({li.target_group_id or 'none'})",
                )
                continue
            proto = li.protocol.upper()
            if proto == "UDP":
                self.note("omitted", what, "UDP listeners are not emulated (the lab is TCP)")
                continue
            if proto in ("TLS", "TCP_UDP"):
                self.note(
                    "assumed",
                    what,
                    f"a {proto} listener is emulated as TCP (no TLS termination, no UDP)",
                )
            name = self.name("aws_lb_listener", li.id, f"{lb}-{li.port}")
            self.put(
                "aws_lb_listener",
                name,
                {
                    "account": self.t.nlbs[li.nlb_id].account,
                    "load_balancer_arn": lb,
                    "port": li.port,
                    "protocol": proto,
                    "default_action": {"type": "forward", "target_group_arn": tg},
                },
            )

    def services(self) -> None:
        consumer_roots = [a.root_arn for a in self.t.accounts.values() if a.role == "consumer"]
        for s in self.t.endpoint_services.values():
            what = self.label("aws_vpc_endpoint_service", s.id, s.name)
            nlbs = [n for n in (self.kept("aws_lb", x) for x in s.nlb_ids) if n]
            if not nlbs:
                self.note(
                    "omitted",
                    what,
                    "no replayed network load balancer behind it (a Gateway Load Balancer "
                    "service, or its NLB could not be built)",
                )
                continue
            principals = []
            for p in s.allowed_principals:
                if p == "*" or p.startswith("arn:aws:iam::"):
                    principals.append(p)
                else:
                    self.note("omitted", what, f"allowed principal {p!r}: not an IAM ARN or '*'")
            if s.id in self.principals_unknown:
                principals = sorted(set(principals) | set(consumer_roots))
                self.note(
                    "assumed",
                    what,
                    "its allowed principals were not read (no describe-vpc-endpoint-service-"
                    f"permissions file): {', '.join(consumer_roots)} allowed",
                )
            name = self.name("aws_vpc_endpoint_service", s.id, s.name)
            body: dict[str, Any] = {
                "account": s.account,
                "network_load_balancer_arns": nlbs,
                "acceptance_required": s.acceptance_required,
                "allowed_principals": principals,
            }
            if s.private_dns_name:
                body["private_dns_name"] = s.private_dns_name
                state = DNS_STATES.get((s.private_dns_state or "").lower(), "failed")
                if state != (s.private_dns_state or ""):
                    self.note(
                        "assumed",
                        what,
                        f"private DNS name verification {s.private_dns_state!r} taken as {state!r}",
                    )
                body["private_dns_name_verification"] = state
            self.put("aws_vpc_endpoint_service", name, body)

    def requester(self, account: str, svc_id: str, what: str) -> str | None:
        """Who created the endpoint: no describe output says; the lab needs an allowed one."""
        acct = self.t.accounts[account]
        svc = self.t.endpoint_services[svc_id]
        if self.t.service_allows(svc, acct.root_arn):
            return None  # the builder's default, the account root
        mine = [
            p for p in svc.allowed_principals if p.count(":") >= 5 and p.split(":")[4] == acct.id
        ]
        if mine:
            self.note(
                "assumed",
                what,
                f"created by {mine[0]} (an allowed principal of its account; no describe "
                "output names the creator)",
            )
            return mine[0]
        self.note(
            "assumed",
            what,
            f"created by {acct.root_arn}; the service allows no principal of {acct.id} now, "
            "so the lab does not create the endpoint (AWS would refuse CreateVpcEndpoint)",
        )
        return None

    def endpoints(self) -> None:
        for e in self.t.endpoints.values():
            what = self.label("aws_vpc_endpoint", e.id, e.name)
            svc = self.kept("aws_vpc_endpoint_service", e.service_id)
            if svc is None:
                reason = (
                    "its service is not in the provider's snapshot (an AWS service or another "
                    "provider's); only endpoints of the given provider's services are replayed"
                    if e.service_id not in self.t.endpoint_services
                    else "its service could not be replayed"
                )
                self.note("omitted", what, f"{e.service_id}: {reason}")
                continue
            vpc = self.kept("aws_vpc", e.vpc_id)
            if vpc is None or e.account not in self.t.accounts:
                self.note(
                    "omitted",
                    what,
                    "seen only from the provider's side (connection list); the consumer's "
                    "directory has no VPC for it",
                )
                continue
            subnets, config = [], []
            for eni in e.enis:
                subnet = self.kept("aws_subnet", eni.subnet_id)
                if subnet is None or not is_ipv4(eni.ip):
                    self.note("omitted", what, f"ENI {eni.id}: its subnet is not replayed")
                    continue
                subnets.append(subnet)
                config.append({"subnet_id": subnet, "ipv4": eni.ip})
            if not subnets:
                self.note(
                    "omitted",
                    what,
                    "none of its ENIs is in the snapshot (describe-network-interfaces)",
                )
                continue
            name = self.name("aws_vpc_endpoint", e.id, e.name)
            body: dict[str, Any] = {
                "account": e.account,
                "vpc_id": vpc,
                "service_name": svc,
                "subnet_ids": subnets,
                "subnet_configuration": config,
                "security_group_ids": self.sg_ids(e.sg_ids, what),
                "private_dns_enabled": e.private_dns_enabled,
                "state": e.state,
            }
            acct = self.t.accounts[e.account]
            if e.requester and e.requester != acct.root_arn:
                body["requester"] = e.requester
            elif not e.requester:
                who = self.requester(e.account, e.service_id, what)
                if who:
                    body["requester"] = who
            self.put("aws_vpc_endpoint", name, body)
