"""Finding the flow to walk: which client, which endpoint ENI (one AZ), which port.

Two callers name a path differently, and both resolve it here so they cannot drift apart:

- a user (``plprobe explain``, ``analyze_flow``) names a client (instance name, id or private
  IP), optionally an endpoint, and a port: ``flows`` gives one Flow per endpoint ENI, the
  endpoint being the named one or the one the client's VPC routes to;
- a probe round (``agent.diagnose.pipeline``) knows the path it probed (``PathRef``: the ENI
  IP or DNS name, the AZ, the port) and who this agent is: ``path_flow`` finds the endpoint by
  the ENI IP, else by its published DNS names, and the ENI in the path's AZ.

Clients are found the same way for both: an instance by name or id, else the instance with
that private IP, else the bare IP (an ECS task or a host not in the view). Two accounts often
use the same private range (both 10.1.0.0/16): an IP is looked up in the consumer account
first, so the answer never depends on the order the snapshot directories were given in.

Without a named endpoint, the endpoint is the *interface endpoint of the provider's service*
the client's VPC routes to: a consumer account also has interface endpoints to AWS services
(``com.amazonaws.REGION.logs``), which are never this path. Several candidates are a question
for the user (``--endpoint``), never a choice by sort order.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.errors import ConfigError
from agent.model import (
    Endpoint,
    EndpointEni,
    EndpointService,
    Instance,
    Subnet,
    Topology,
    is_ip,
)
from agent.results import PathRef, path_id


@dataclass
class Flow:
    """One path: a client (instance or bare IP), one endpoint ENI (one AZ), one port."""

    client_name: str
    client_ip: str
    client: Instance | None
    endpoint: Endpoint | None
    eni: EndpointEni | None
    port: int
    az_id: str | None

    @property
    def path_id(self) -> str:
        return path_id(self.client_name, self.az_id, self.port)

    @property
    def eni_ip(self) -> str | None:
        return self.eni.ip if self.eni else None


#: (name, ip, instance) of a client; the instance is ``None`` for a bare IP
Client = tuple[str, str, Instance | None]


def az_of_subnet(topology: Topology, subnet_id: str) -> str | None:
    """The AZ id of a subnet, ``None`` when the subnet is not in the view."""
    subnet = topology.subnets.get(subnet_id)
    return subnet.az_id if subnet else None


# --- clients --------------------------------------------------------------------------------


def _consumer_first(topology: Topology, account: str) -> int:
    """Sort key: consumer accounts' resources before the others (overlapping CIDRs)."""
    acct = topology.accounts.get(account)
    return 0 if acct is not None and acct.role == "consumer" else 1


def client_at_ip(topology: Topology, ip: str) -> Client:
    """The instance with private IP ``ip`` (a consumer's first), else ``ip`` as a bare client.

    With overlapping CIDRs the provider may have an instance on the same address; a client is
    in the consumer account, so that one is taken whatever the order the accounts were read.
    """
    same = [i for i in topology.instances.values() if i.ip == ip]
    same.sort(key=lambda i: (_consumer_first(topology, i.account), i.id))
    inst = same[0] if same else None
    return (inst.name, inst.ip, inst) if inst is not None else (ip, ip, None)


def client_subnet_of_ip(topology: Topology, ip: str) -> Subnet | None:
    """The subnet holding a client's address, a consumer account's first (overlapping CIDRs)."""
    subnets = [s for s in topology.subnets.values() if s.contains(ip)]
    subnets.sort(key=lambda s: (_consumer_first(topology, s.account), s.id))
    return subnets[0] if subnets else None


def client_named(topology: Topology, names: tuple[str, ...]) -> Client | None:
    """The first of ``names`` that is an instance's name or id (``None``: none is)."""
    for name in names:
        inst = topology.instance_by_name(name)
        if inst is not None:
            return inst.name, inst.ip, inst
    return None


def resolve_client(topology: Topology, client: str) -> Client:
    """(name, ip, instance) for an instance name, id or private IP a user named."""
    found = client_named(topology, (client,))
    if found is not None:
        return found
    if is_ip(client):
        return client_at_ip(topology, client)
    known = ", ".join(i.name for i in topology.clients()) or "none"
    raise ConfigError(f"unknown client {client!r} (known clients: {known}, or an IP)")


# --- endpoints ------------------------------------------------------------------------------


def _client_vpc(topology: Topology, ip: str, inst: Instance | None) -> str | None:
    if inst is not None and inst.subnet_id in topology.subnets:
        return topology.subnets[inst.subnet_id].vpc_id
    subnet = client_subnet_of_ip(topology, ip)
    return subnet.vpc_id if subnet else None


def provider_services(topology: Topology) -> list[EndpointService]:
    """The endpoint services this path can be about: those fronted by a Network Load Balancer.

    A provider account may also run a Gateway Load Balancer service (no NLB ARN): no
    interface endpoint reaches a TCP listener through it.
    """
    return sorted((s for s in topology.endpoint_services.values() if s.nlb_ids), key=lambda s: s.id)


def _is_customer_service(endpoint: Endpoint) -> bool:
    """An endpoint service of some account (``vpce-svc-…``), not an AWS service (``logs``)."""
    return endpoint.service_id.startswith("vpce-svc-")


def _endpoint_label(e: Endpoint) -> str:
    return f"{e.id} ({e.name}, service {e.service_id})" if e.name != e.id else f"{e.id}"


def resolve_endpoint(
    topology: Topology, client_ip: str, inst: Instance | None, endpoint: str | None
) -> Endpoint | None:
    """The named endpoint, or the provider service's endpoint the client can route to.

    ``None``: none visible. Only interface endpoints to the provider's service count (to any
    customer service when the provider's directory was not read); an AWS-service endpoint
    (cloudtrail, logs, ...) is never the path. Several candidates: ``ConfigError`` asking for
    ``--endpoint`` -- picking one by name order would evaluate a path nobody asked about.
    """
    if endpoint is not None:
        found = next((e for e in topology.endpoints.values() if endpoint in (e.id, e.name)), None)
        if found is None and topology.endpoints:
            known = ", ".join(sorted(e.name for e in topology.endpoints.values()))
            raise ConfigError(f"unknown endpoint {endpoint!r} (known: {known})")
        return found
    services = {s.id for s in provider_services(topology)}
    candidates = sorted(topology.endpoints.values(), key=lambda e: e.id)
    if services:
        candidates = [e for e in candidates if e.service_id in services]
    else:
        candidates = [e for e in candidates if _is_customer_service(e)]
    vpc = _client_vpc(topology, client_ip, inst)
    if vpc is None:
        # the client's network is not in the view (a provider-side view): only a single
        # candidate is unambiguous
        return candidates[0] if len(candidates) == 1 else None
    routed = [e for e in candidates if topology.routed(vpc, e.vpc_id)]
    if routed or topology.vpcs:
        candidates = routed
    if len(candidates) > 1:
        names = ", ".join(_endpoint_label(e) for e in candidates)
        raise ConfigError(
            f"several interface endpoints can carry this path ({names}); name one with --endpoint",
            key="--endpoint",
        )
    return candidates[0] if candidates else None


def endpoint_of_path(
    topology: Topology, ref: PathRef
) -> tuple[Endpoint, EndpointEni | None] | None:
    """The endpoint a probed path reached and its ENI (``None``: none in the view).

    The one with an ENI on the path's IP, else the one whose published DNS names include the
    path's name (a name that did not resolve), with its ENI in the path's AZ.
    """
    if ref.ip:
        for ep in topology.endpoints.values():
            for on_ip in ep.enis:
                if on_ip.ip == ref.ip:
                    return ep, on_ip
    if ref.name:
        for ep in sorted(topology.endpoints.values(), key=lambda e: e.id):
            names = topology.endpoint_dns_names(ep)
            if ref.name in names:
                eni = next(
                    (e for e in ep.enis if az_of_subnet(topology, e.subnet_id) == ref.az_id),
                    None,
                )
                return ep, eni
    return None


def _consumer_visible(topology: Topology) -> bool:
    consumer = topology.account_of_role("consumer")
    if not topology.visible_accounts:
        return True
    return consumer is not None and consumer.name in topology.visible_accounts


# --- flows ----------------------------------------------------------------------------------


def flows(topology: Topology, client: str, port: int, endpoint: str | None = None) -> list[Flow]:
    """One Flow per endpoint ENI (one per AZ) for ``client`` on ``port``."""
    name, ip, inst = resolve_client(topology, client)
    ep = resolve_endpoint(topology, ip, inst, endpoint)
    if ep is None or not ep.enis:
        return [Flow(name, ip, inst, ep, None, port, None)]
    out = []
    for eni in sorted(ep.enis, key=lambda e: az_of_subnet(topology, e.subnet_id) or ""):
        out.append(Flow(name, ip, inst, ep, eni, port, az_of_subnet(topology, eni.subnet_id)))
    return out


def path_flow(topology: Topology, ref: PathRef, client: Client) -> Flow:
    """The Flow of one probed path from ``client``; ``LookupError`` with the reason.

    When the consumer account is not visible (a provider-side view) the flow has no endpoint,
    so the provider's hops are still evaluated and the consumer's are "not visible". A visible
    consumer account without that endpoint is a mismatch between the agent config and the
    view: ``LookupError``, never a guess.
    """
    name, ip, inst = client
    found = endpoint_of_path(topology, ref)
    if found is None:
        if _consumer_visible(topology) and topology.endpoints:
            where = ref.ip or ref.name or "?"
            raise LookupError(f"no endpoint with ENI IP or DNS name {where} in the view")
        return Flow(name, ip, inst, None, None, ref.port, ref.az_id)
    ep, eni = found
    az = az_of_subnet(topology, eni.subnet_id) if eni else ref.az_id
    return Flow(name, ip, inst, ep, eni, ref.port, az)
