"""``plprobe lab break``: each breakable control as the realistic mistake, as data.

A fault is a pure topology edit (``break_topology`` returns an edited deep copy) that the lab
then re-renders, so the static analyzer reads exactly the configuration the data plane
enforces. ``FAULTS`` is meant to be reused by fault-matrix tests: each entry says what the
mistake is, whether ``--client`` narrows it, and what a new connection from an affected
client sees (``expected(topology)``; some depend on UNCONFIRMED lab settings). Those facts
are the control catalogue's (``agent.controls``, ``Control.lab_fault``); this module holds
only the edits (``EDITS``, keyed by control id) and joins the two.

Per-client faults (``--client NAME``) edit only what concerns that client (its SG, the rule
for it, its subnet's NACL, its VPC's DNS); without ``--client`` they hit every client.
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from agent.config import DEFAULT_RESPONDER_PORT
from agent.controls import BREAKABLE, CATALOGUE
from agent.errors import ConfigError
from agent.model import (
    Endpoint,
    Instance,
    Nacl,
    NaclEntry,
    Rule,
    Topology,
    stable_id,
)


@dataclass(frozen=True)
class Fault:
    """A breakable control: the catalogue's ``LabFault`` facts joined with the lab's edit."""

    control: str
    description: str
    #: does ``--client`` narrow the edit to one client?
    per_client: bool
    #: what a new connection from an affected client sees: timeout | refused | no-dns, or a
    #: ``LabSettings`` attribute name whose value (timeout | reset) decides
    symptom: str
    edit: Callable[[Topology, list[Instance]], None]
    #: the endpoint is re-evaluated as at creation time (a principal edit alone does not
    #: delete an existing endpoint, as on AWS)
    recreate_endpoints: bool = False

    def expected(self, topology: Topology) -> str:
        if self.symptom in ("timeout", "refused", "no-dns"):
            return self.symptom
        value = getattr(topology.lab, self.symptom)
        return "refused" if value == "reset" else "timeout"


# --- helpers ------------------------------------------------------------------------------

#: plprobe's own responder port, mirrored through every control next to the service port: a
#: mistake is made on the service's rules, so the faults leave it alone (a control that cuts
#: the whole path, such as a NACL or the endpoint's state, still cuts it, as on AWS)
RESPONDER_PORTS = frozenset({DEFAULT_RESPONDER_PORT})


def _service_ports(t: Topology) -> set[int]:
    ports: set[int] = set()
    for ep in t.endpoints.values():
        svc = t.endpoint_services.get(ep.service_id)
        nlb = t.nlb_of_service(svc) if svc else None
        if nlb is not None:
            ports.update(li.port for li in t.listeners_of(nlb.id))
    return (ports - RESPONDER_PORTS) or ports or {80}


def _target_ports(t: Topology) -> set[int]:
    ports: set[int] = set()
    for tg in t.target_groups.values():
        for tgt in tg.targets:
            ports.add(tg.target_port(tgt))
            ports.add(tg.health_port(tgt))
        ports.add(tg.port)
    return (ports - RESPONDER_PORTS) or ports


def _in(ip: str, cidr: str) -> bool:
    return ipaddress.ip_address(ip) in ipaddress.ip_network(cidr, strict=False)


def _covers(rule: Rule, ports: set[int]) -> bool:
    return any(rule.covers_port(p) for p in ports)


def _endpoint_sgs(t: Topology) -> set[str]:
    return {sg for ep in t.endpoints.values() for sg in ep.sg_ids}


def _endpoint_ips(t: Topology) -> list[str]:
    return [e.ip for ep in t.endpoints.values() for e in ep.enis]


def _nlb_sgs(t: Topology) -> set[str]:
    return {sg for nlb in t.nlbs.values() for sg in (nlb.sg_ids or [])}


def _own_nacl(t: Topology, subnet_id: str, suffix: str) -> Nacl:
    """Give the subnet a NACL of its own (a copy of its current one), as a user would."""
    current = t.nacl_of_subnet(subnet_id)
    subnet = t.subnets[subnet_id]
    if current is not None and current.subnet_ids == [subnet_id]:
        return current
    if current is not None:
        current.subnet_ids = [s for s in current.subnet_ids if s != subnet_id]
    nacl = Nacl(
        id=stable_id("acl", subnet_id, suffix),
        name=f"{subnet.name}-{suffix}",
        account=subnet.account,
        vpc_id=subnet.vpc_id,
        subnet_ids=[subnet_id],
        entries=copy.deepcopy(current.entries) if current else [],
    )
    t.nacls[nacl.id] = nacl
    return nacl


# --- the mistakes -------------------------------------------------------------------------


def _client_sg_egress(t: Topology, clients: list[Instance]) -> None:
    ports, ep_sgs, ep_ips = _service_ports(t), _endpoint_sgs(t), _endpoint_ips(t)
    for c in clients:
        for sg_id in c.sg_ids:
            sg = t.security_groups[sg_id]
            sg.rules = [
                r
                for r in sg.rules
                if not (
                    r.direction == "egress"
                    and _covers(r, ports)
                    and (r.sg_ref in ep_sgs or any(_in(ip, c_) for ip in ep_ips for c_ in r.cidrs))
                )
            ]


def _endpoint_sg_ingress(t: Topology, clients: list[Instance]) -> None:
    ports = _service_ports(t)
    for sg_id in _endpoint_sgs(t):
        sg = t.security_groups[sg_id]
        keep = []
        for r in sg.rules:
            hit = r.direction == "ingress" and _covers(r, ports)
            hit = hit and any(
                r.sg_ref in c.sg_ids or any(_in(c.ip, cidr) for cidr in r.cidrs) for c in clients
            )
            if not hit:
                keep.append(r)
        sg.rules = keep


def _without_requester(svc_principals: list[str], ep: Endpoint, t: Topology) -> list[str]:
    account = t.accounts.get(ep.account)
    requester = ep.requester or (account.root_arn if account else "")
    acct_id = requester.split(":")[4] if requester.count(":") >= 5 else ""
    return [
        p
        for p in svc_principals
        if p not in ("*", requester, f"arn:aws:iam::{acct_id}:root")
        and not (acct_id and f":{acct_id}:" in p)
    ]


def _service_principal(t: Topology, clients: list[Instance]) -> None:
    for ep in t.endpoints.values():
        svc = t.endpoint_services.get(ep.service_id)
        if svc is not None:
            svc.allowed_principals = _without_requester(svc.allowed_principals, ep, t)


def _endpoint_acceptance(t: Topology, clients: list[Instance]) -> None:
    for ep in t.endpoints.values():
        svc = t.endpoint_services.get(ep.service_id)
        if svc is not None:
            svc.acceptance_required = True
        ep.state = "pendingAcceptance"


def _nlb_sg_ingress(t: Topology, clients: list[Instance]) -> None:
    ep_subnets = sorted(
        {t.subnets[e.subnet_id].cidr for ep in t.endpoints.values() for e in ep.enis}
    )
    ports = _service_ports(t)
    for sg_id in _nlb_sgs(t):
        sg = t.security_groups[sg_id]
        seen: set[tuple] = set()
        kept = []
        for r in sg.rules:
            hit = [c_ for c_ in r.cidrs if any(_in(c.ip, c_) for c in clients)]
            if r.direction == "ingress" and hit and _covers(r, ports):
                rest = [c_ for c_ in r.cidrs if c_ not in hit]
                r.cidrs = tuple(dict.fromkeys([*rest, *ep_subnets]))
                r.description = "allows the endpoint subnet instead of the client IPs"
                # one rule per client became the same subnet rule: keep it once, as a user
                # who "simplified" the rules would
                key = (r.protocol, r.from_port, r.to_port, r.cidrs)
                if key in seen:
                    continue
                seen.add(key)
            kept.append(r)
        sg.rules = kept


def _nlb_sg_egress(t: Topology, clients: list[Instance]) -> None:
    ports = _target_ports(t)
    for sg_id in _nlb_sgs(t):
        sg = t.security_groups[sg_id]
        sg.rules = [r for r in sg.rules if not (r.direction == "egress" and _covers(r, ports))]


def _target_sg_ingress(t: Topology, clients: list[Instance]) -> None:
    ports = _target_ports(t)
    nlb_sgs = _nlb_sgs(t)
    nlb_ips = [n.ip for nlb in t.nlbs.values() for n in nlb.nodes]
    client_cidrs = tuple(sorted({t.subnets[c.subnet_id].cidr for c in t.clients()}))
    target_sgs = {sg for inst in t.targets() for sg in inst.sg_ids}
    for sg_id in target_sgs:
        for r in t.security_groups[sg_id].ingress():
            from_nlb = r.sg_ref in nlb_sgs or any(_in(ip, c_) for ip in nlb_ips for c_ in r.cidrs)
            if from_nlb and _covers(r, ports):
                r.sg_ref = None
                r.cidrs = client_cidrs
                r.description = "allows the client CIDRs instead of the NLB"


def _client_nacl(t: Topology, clients: list[Instance]) -> None:
    ports = sorted(_service_ports(t))
    for subnet_id in sorted({c.subnet_id for c in clients}):
        nacl = _own_nacl(t, subnet_id, "restricted")
        first = min((e.rule_number for e in nacl.entries), default=100)
        for i, port in enumerate(ports):
            nacl.entries.append(
                NaclEntry(max(1, first - 10 + i), True, "tcp", "deny", "0.0.0.0/0", port, port)
            )


def _provider_nacl(t: Topology, clients: list[Instance]) -> None:
    for subnet_id in sorted({i.subnet_id for i in t.targets()}):
        nacl = _own_nacl(t, subnet_id, "restricted")
        nacl.entries = [e for e in nacl.entries if not e.egress] + [
            NaclEntry(100, True, "tcp", "allow", "0.0.0.0/0", 443, 443),
        ]


def _route(t: Topology, clients: list[Instance]) -> None:
    """The client subnet's route table loses its route to the endpoint's VPC (a client in
    the endpoint's own VPC is routed by the local route, which cannot be removed)."""
    ep_ips = _endpoint_ips(t)
    for c in clients:
        table = t.route_table_of_subnet(c.subnet_id)
        if table is None:
            continue
        table.routes = [
            r
            for r in table.routes
            if r.target == "local" or not any(_in(ip, r.destination) for ip in ep_ips)
        ]


def _dns(t: Topology, clients: list[Instance]) -> None:
    for c in clients:
        t.vpcs[t.subnets[c.subnet_id].vpc_id].enable_dns_support = False


def _nlb_listener(t: Topology, clients: list[Instance]) -> None:
    ports = _service_ports(t)
    t.listeners = {k: li for k, li in t.listeners.items() if li.port not in ports}


def _target_health(t: Topology, clients: list[Instance]) -> None:
    ports = _target_ports(t)
    for tg in t.target_groups.values():
        if tg.port in ports:
            tg.targets = []


def _target_service(t: Topology, clients: list[Instance]) -> None:
    ports = _target_ports(t)
    for inst in t.targets():
        inst.services = [p for p in inst.services if p not in ports]


#: the edit that breaks each breakable control, keyed by control id; what the mistake is and
#: what a client then sees are the catalogue's (``controls.Control.lab_fault``)
EDITS: dict[str, Callable[[Topology, list[Instance]], None]] = {
    "client-sg-egress": _client_sg_egress,
    "endpoint-sg-ingress": _endpoint_sg_ingress,
    "service-principal": _service_principal,
    "endpoint-acceptance": _endpoint_acceptance,
    "nlb-sg-ingress": _nlb_sg_ingress,
    "nlb-sg-egress": _nlb_sg_egress,
    "target-sg-ingress": _target_sg_ingress,
    "client-nacl": _client_nacl,
    "provider-nacl": _provider_nacl,
    "route": _route,
    "dns": _dns,
    "nlb-listener": _nlb_listener,
    "target-health": _target_health,
    "target-service": _target_service,
}


def _faults() -> dict[str, Fault]:
    """The fault table: the catalogue's facts joined with the edits, in catalogue order."""
    missing = set(BREAKABLE) ^ set(EDITS)
    if missing:
        raise AssertionError(f"catalogue lab faults and lab edits disagree on {sorted(missing)}")
    table: dict[str, Fault] = {}
    for control in CATALOGUE:
        spec = control.lab_fault
        if spec is None:
            continue
        table[control.id] = Fault(
            control.id,
            spec.description,
            spec.per_client,
            spec.symptom,
            EDITS[control.id],
            recreate_endpoints=spec.recreate_endpoints,
        )
    return table


FAULTS: dict[str, Fault] = _faults()


def get(control: str) -> Fault:
    try:
        return FAULTS[control]
    except KeyError:
        raise ConfigError(
            f"cannot break {control!r}; breakable controls: {', '.join(FAULTS)}", key="CONTROL"
        ) from None


def affected_clients(topology: Topology, control: str, client: str | None) -> list[Instance]:
    """The clients a break hits (all of them unless ``--client`` narrows a per-client fault)."""
    fault = get(control)
    clients = topology.clients()
    if client is None or not fault.per_client:
        return clients
    inst = topology.instance_by_name(client)
    if inst is None or inst not in clients:
        names = ", ".join(c.name for c in clients)
        raise ConfigError(f"no client {client!r}; clients: {names}", key="--client")
    return [inst]


def break_topology(topology: Topology, control: str, client: str | None = None) -> Topology:
    """A deep copy of ``topology`` with ``control`` broken the realistic way."""
    fault = get(control)
    edited = copy.deepcopy(topology)
    clients = affected_clients(edited, control, client)
    fault.edit(edited, clients)
    return edited
