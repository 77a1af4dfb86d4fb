"""The one model of the world: a Topology of VPC resources across two accounts.

Three sources build it (the lab YAML, an AWS-CLI/boto3 snapshot directory, live AWS) and
three consumers read it (static analysis, diagnosis, the lab emulator). Nothing else in the
project describes security groups, NACLs, endpoints or load balancers.

A Topology may be *partial*: a snapshot taken with the consumer's credentials has no NLB and
no target groups. ``Topology.visible_accounts`` says whose configuration was read, so the
analysis can say "not visible from here" instead of "denied".

Identifiers are AWS-shaped (``sg-…``, ``vpce-…``, load balancer ARNs); ``name`` is the human
name (the topology key, or the ``Name`` tag of a snapshot) and is what users read in verdicts.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Literal, cast

Protocol = str  # "tcp", "udp", "icmp", "-1" (all)
Direction = Literal["ingress", "egress"]

#: Endpoint states as AWS spells them (compare case-insensitively; docs/AWS-BEHAVIOUR.md).
ENDPOINT_STATES = (
    "pendingAcceptance",
    "pending",
    "available",
    "rejected",
    "expired",
    "failed",
    "deleting",
    "deleted",
)

#: The NLB rewrites the source port into this range (docs/AWS-BEHAVIOUR.md "Addresses at each hop").
NLB_EPHEMERAL = (1024, 65535)
#: Linux clients' default ip_local_port_range.
LINUX_EPHEMERAL = (32768, 60999)


def stable_id(prefix: str, *parts: str, width: int = 17) -> str:
    """A deterministic AWS-looking id (``sg-0a1b…``) so lab snapshots are reproducible."""
    digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()
    return f"{prefix}-0{digest[: width - 1]}"


def normalize_protocol(value: str | int) -> Protocol:
    """AWS accepts names and IANA numbers; the model keeps names and ``-1``."""
    text = str(value).strip().lower()
    return {"6": "tcp", "17": "udp", "1": "icmp", "all": "-1", "-1": "-1"}.get(text, text)


def is_ip(text: str) -> bool:
    """Whether ``text`` is an IPv4 or IPv6 address (not a name, not a CIDR block).

    Users name hosts either way (a client by instance name or IP, a ``/probe`` target by DNS
    name or ENI IP); one spelling of the test keeps every caller's notion of "an IP" the same.
    """
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def partition_of(region: str) -> str:
    """The ARN partition of a region: IAM ARNs in GovCloud and China are not ``arn:aws:``.

    A fix text that tells a GovCloud user to allow ``arn:aws:iam::…:root`` names a principal
    that cannot exist there (AWS General Reference, "Amazon Resource Names").
    """
    for prefix, partition in (
        ("us-gov-", "aws-us-gov"),
        ("cn-", "aws-cn"),
        ("us-isob-", "aws-iso-b"),
        ("us-iso-", "aws-iso"),
        ("eu-isoe-", "aws-iso-e"),
        ("us-isof-", "aws-iso-f"),
    ):
        if region.startswith(prefix):
            return partition
    return "aws"


def arn_account(arn: str) -> str:
    """The account id of an ARN (``arn:PARTITION:iam::ACCOUNT:…``), ``""`` when it has none."""
    parts = arn.split(":")
    return parts[4] if len(parts) >= 6 and parts[0] == "arn" else ""


@dataclass
class Account:
    """One AWS account; ``role`` is ``consumer`` or ``provider``.

    ``region`` is where its directory was read (a snapshot; "" for the lab, one region): it
    gives the ARN partition, and tells a cross-region endpoint from its service.
    """

    name: str
    id: str
    role: Literal["consumer", "provider"]
    region: str = ""

    @property
    def partition(self) -> str:
        return partition_of(self.region)

    @property
    def root_arn(self) -> str:
        return f"arn:{self.partition}:iam::{self.id}:root"


@dataclass
class Vpc:
    id: str
    name: str
    account: str
    cidr: str
    enable_dns_support: bool = True
    enable_dns_hostnames: bool = True


@dataclass
class Subnet:
    id: str
    name: str
    account: str
    vpc_id: str
    cidr: str
    az: str
    az_id: str

    def contains(self, ip: str) -> bool:
        return ipaddress.ip_address(ip) in ipaddress.ip_network(self.cidr)


@dataclass
class Rule:
    """One security group rule, shaped like ``aws_security_group_rule``.

    A rule may carry several CIDRs; it has at most one SG reference or prefix list, as in
    Terraform. ``id`` is the rule's name in the topology (or ``sgr-…`` from a snapshot) so a
    verdict can name the exact rule that allowed a hop.
    """

    id: str
    direction: Direction
    protocol: Protocol
    from_port: int
    to_port: int
    cidrs: tuple[str, ...] = ()
    sg_ref: str | None = None
    prefix_list: str | None = None
    description: str = ""
    #: a *stale* reference: the group this rule referenced is in a VPC whose peering is gone
    #: (describe-stale-security-groups). AWS keeps the rule; it matches nothing, so it carries
    #: no ``sg_ref`` and no evaluator or lab ruleset can match it by mistake
    stale_ref: str | None = None

    def covers_port(self, port: int) -> bool:
        if self.protocol == "-1":
            return True
        return self.from_port <= port <= self.to_port

    def port_text(self) -> str:
        if self.protocol == "-1":
            return "all traffic"
        proto = self.protocol.upper()
        if self.from_port == self.to_port:
            return f"{proto} {self.from_port}"
        return f"{proto} {self.from_port}-{self.to_port}"


@dataclass
class PrefixList:
    """A customer-managed prefix list (``aws_ec2_managed_prefix_list``): named CIDRs that SG
    rules reference as one source or destination (``Rule.prefix_list``)."""

    id: str  # pl-…
    name: str
    account: str
    cidrs: list[str] = field(default_factory=list)
    address_family: Literal["IPv4", "IPv6"] = "IPv4"
    max_entries: int = 10


@dataclass
class SecurityGroup:
    id: str
    name: str
    account: str
    vpc_id: str
    rules: list[Rule] = field(default_factory=list)
    description: str = ""

    def ingress(self) -> list[Rule]:
        return [r for r in self.rules if r.direction == "ingress"]

    def egress(self) -> list[Rule]:
        return [r for r in self.rules if r.direction == "egress"]


@dataclass
class NaclEntry:
    """One numbered NACL entry; evaluated in ``rule_number`` order, first match wins."""

    rule_number: int
    egress: bool
    protocol: Protocol
    action: Literal["allow", "deny"]
    cidr: str
    from_port: int = 0
    to_port: int = 65535

    def covers_port(self, port: int) -> bool:
        if self.protocol == "-1":
            return True
        return self.from_port <= port <= self.to_port


@dataclass
class Nacl:
    id: str
    name: str
    account: str
    vpc_id: str
    subnet_ids: list[str] = field(default_factory=list)
    entries: list[NaclEntry] = field(default_factory=list)

    def ordered(self, egress: bool) -> list[NaclEntry]:
        return sorted((e for e in self.entries if e.egress == egress), key=lambda e: e.rule_number)


@dataclass
class Instance:
    """An EC2 instance (client or target); ``services`` are the TCP ports it listens on."""

    id: str
    name: str
    account: str
    subnet_id: str
    ip: str
    sg_ids: list[str] = field(default_factory=list)
    services: list[int] = field(default_factory=list)
    eni_id: str = ""
    #: False when the source cannot know the listening ports (an AWS snapshot without the
    #: ``plprobe:services`` tag): an empty ``services`` then means "unknown", not "nothing"
    services_known: bool = True


@dataclass
class Peering:
    id: str
    name: str
    requester_vpc_id: str
    accepter_vpc_id: str
    status: str = "active"


@dataclass
class Route:
    """One route of a route table, shaped like ``aws_route``.

    ``target`` is ``local`` (the VPC's own CIDR, always present), a peering id (``pcx-…``) or
    another gateway's id, which a PrivateLink path never needs and the analysis does not follow.
    """

    destination: str  # CIDR
    target: str
    #: "active" or "blackhole": AWS keeps a route whose target is gone (a deleted peering) in
    #: the ``blackhole`` state, and drops what matches it
    state: str = "active"


@dataclass
class RouteTable:
    """A VPC route table; subnets without an explicit association use the VPC's main table."""

    id: str
    name: str
    account: str
    vpc_id: str
    routes: list[Route] = field(default_factory=list)
    subnet_ids: list[str] = field(default_factory=list)
    main: bool = False

    def lookup(self, ip: str) -> Route | None:
        """The longest-prefix route for ``ip`` (AWS's route selection), or None."""
        addr = ipaddress.ip_address(ip)
        best: Route | None = None
        best_len = -1
        for route in self.routes:
            try:
                net = ipaddress.ip_network(route.destination, strict=False)
            except ValueError:
                continue  # a prefix-list destination: not followed
            if addr.version == net.version and addr in net and net.prefixlen > best_len:
                best, best_len = route, net.prefixlen
        return best


@dataclass
class EndpointService:
    id: str  # vpce-svc-…
    name: str
    account: str
    nlb_ids: list[str]
    acceptance_required: bool = True
    allowed_principals: list[str] = field(default_factory=list)
    private_dns_name: str | None = None
    private_dns_state: str | None = None  # "verified", "pendingVerification", "failed"
    #: False when the permissions were not read (no describe-vpc-endpoint-service-permissions
    #: file for it): an empty ``allowed_principals`` then means "unknown", not "nobody"
    principals_known: bool = True

    @property
    def service_name(self) -> str:
        return f"com.amazonaws.vpce.{{region}}.{self.id}"


@dataclass
class EndpointEni:
    """The requester-managed ENI of an interface endpoint in one subnet (one per AZ)."""

    id: str
    subnet_id: str
    ip: str


@dataclass
class Endpoint:
    """An interface VPC endpoint in the consumer account."""

    id: str  # vpce-…
    name: str
    account: str
    vpc_id: str
    service_id: str
    sg_ids: list[str] = field(default_factory=list)
    enis: list[EndpointEni] = field(default_factory=list)
    state: str = "available"
    private_dns_enabled: bool = False
    #: the principal that created the endpoint; decides whether the service allows it
    requester: str = ""
    dns_hash: str = ""

    def is_available(self) -> bool:
        return self.state.lower() == "available"


@dataclass
class NlbNode:
    """The NLB's private IP in one subnet: the source of traffic and health checks to targets."""

    subnet_id: str
    ip: str
    eni_id: str = ""


@dataclass
class Nlb:
    id: str  # ARN
    name: str
    account: str
    vpc_id: str
    nodes: list[NlbNode] = field(default_factory=list)
    #: ``None`` means created without security groups (which can never get one later)
    sg_ids: list[str] | None = None
    enforce_sg_inbound_on_privatelink: bool = True
    cross_zone: bool = False
    #: were the node addresses chosen at creation (``subnet_mapping`` with a private IP)? An
    #: NLB created with plain ``subnets`` gets addresses AWS picks, and describe-load-balancers
    #: lists none of them (``LoadBalancerAddresses: []``): only its ENIs tell
    fixed_ips: bool = True


@dataclass
class Listener:
    id: str  # ARN
    nlb_id: str
    port: int
    protocol: str = "TCP"
    target_group_id: str | None = None


@dataclass
class HealthCheck:
    protocol: str = "TCP"
    #: ``None`` means "traffic-port"
    port: int | None = None
    path: str = "/"
    interval_s: int = 30
    timeout_s: int = 10
    healthy_threshold: int = 3
    unhealthy_threshold: int = 3


@dataclass
class Target:
    instance_id: str
    port: int | None = None  # None: the target group's port
    #: observed health from DescribeTargetHealth; ``None`` when not observed
    health: str | None = None


@dataclass
class TargetGroup:
    id: str  # ARN
    name: str
    account: str
    vpc_id: str
    port: int
    protocol: str = "TCP"
    health_check: HealthCheck = field(default_factory=HealthCheck)
    proxy_protocol_v2: bool = False
    targets: list[Target] = field(default_factory=list)

    def health_port(self, target: Target) -> int:
        if self.health_check.port is not None:
            return self.health_check.port
        return self.target_port(target)

    def target_port(self, target: Target) -> int:
        return target.port if target.port is not None else self.port


@dataclass
class LabSettings:
    """How the emulator behaves where AWS documents nothing (docs/AWS-BEHAVIOUR.md, last section).

    Each default is the most likely behaviour; a topology may override it to rehearse the
    other one.
    """

    #: no listener on the port: "timeout" (silent drop) or "reset"
    no_listener: Literal["timeout", "reset"] = "timeout"
    #: endpoint not available: "timeout" or "reset"
    endpoint_unavailable: Literal["timeout", "reset"] = "timeout"
    #: cross-zone off and no healthy target in the AZ: "timeout" or "reset"
    no_target_in_az: Literal["timeout", "reset"] = "timeout"
    #: does the NLB keep the client's initial sequence number towards the target
    nlb_preserves_isn: bool = True
    #: health checker period in the lab, seconds (AWS's minimum is 5 s; the lab is faster)
    health_check_interval_s: float = 1.0
    #: consecutive results to flip a target's health in the lab
    health_check_threshold: int = 2
    #: does the NLB subnet's NACL apply to PrivateLink traffic (inbound from the client's IP on
    #: the listener port, replies to its ephemeral ports)? AWS documents the NACLs of the
    #: client, endpoint and target subnets for PrivateLink, not this one; the NLB guide asks
    #: for client rules in the NLB subnets' NACLs in general, hence the default
    nlb_subnet_nacl_on_privatelink: bool = True


@dataclass
class Topology:
    """Every resource of both accounts, keyed by AWS id."""

    region: str
    accounts: dict[str, Account] = field(default_factory=dict)
    vpcs: dict[str, Vpc] = field(default_factory=dict)
    subnets: dict[str, Subnet] = field(default_factory=dict)
    security_groups: dict[str, SecurityGroup] = field(default_factory=dict)
    nacls: dict[str, Nacl] = field(default_factory=dict)
    instances: dict[str, Instance] = field(default_factory=dict)
    peerings: dict[str, Peering] = field(default_factory=dict)
    endpoint_services: dict[str, EndpointService] = field(default_factory=dict)
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    nlbs: dict[str, Nlb] = field(default_factory=dict)
    listeners: dict[str, Listener] = field(default_factory=dict)
    target_groups: dict[str, TargetGroup] = field(default_factory=dict)
    #: route tables by id; a VPC without any (a snapshot taken without describe-route-tables)
    #: has its routing "not read": the analysis then walks no route hop for it
    route_tables: dict[str, RouteTable] = field(default_factory=dict)
    lab: LabSettings = field(default_factory=LabSettings)
    #: managed prefix lists by id, with their CIDRs, when read (a rule naming a list absent
    #: here cannot be evaluated: the analysis says "not visible" instead of guessing)
    prefix_lists: dict[str, PrefixList] = field(default_factory=dict)
    #: account names whose configuration this topology was built from
    visible_accounts: set[str] = field(default_factory=set)
    #: where it came from, for messages ("configs/lab/reference.yaml", "snapshot:DIR")
    source: str = ""
    #: what the reader could not take as given: input cut short (pagination), resources
    #: skipped because they cannot matter or cannot be followed, values newer than the
    #: API model; ``explain`` prints them so a "not visible" is never silent
    notes: list[str] = field(default_factory=list)

    # --- lookups -------------------------------------------------------------------------
    def account_of_role(self, role: str) -> Account | None:
        return next((a for a in self.accounts.values() if a.role == role), None)

    def instance_by_name(self, name: str) -> Instance | None:
        return next((i for i in self.instances.values() if i.name == name or i.id == name), None)

    def sg_by_name(self, name: str) -> SecurityGroup | None:
        return next(
            (g for g in self.security_groups.values() if g.name == name or g.id == name), None
        )

    def subnet_of_ip(self, ip: str) -> Subnet | None:
        return next((s for s in self.subnets.values() if s.contains(ip)), None)

    def nacl_of_subnet(self, subnet_id: str) -> Nacl | None:
        return next((n for n in self.nacls.values() if subnet_id in n.subnet_ids), None)

    def mark_stale_references(self) -> list[Rule]:
        """Make every reference to a group across a peering that is not active stale (what
        AWS does when the peering is deleted); returns the rules that became stale."""
        out: list[Rule] = []
        for group in self.security_groups.values():
            for rule in group.rules:
                ref = self.security_groups.get(rule.sg_ref or "")
                if ref is None or self.routed(group.vpc_id, ref.vpc_id):
                    continue
                rule.stale_ref, rule.sg_ref = rule.sg_ref, None
                out.append(rule)
        return out

    def peering_between(self, vpc_a: str, vpc_b: str) -> Peering | None:
        """A peering between the two VPCs, active ones first (None: never peered)."""
        found = [
            p
            for p in self.peerings.values()
            if {p.requester_vpc_id, p.accepter_vpc_id} == {vpc_a, vpc_b}
        ]
        return min(found, key=lambda p: (p.status != "active", p.name), default=None)

    def route_table_of_subnet(self, subnet_id: str) -> RouteTable | None:
        """The subnet's explicitly associated route table, else its VPC's main table."""
        explicit = next((r for r in self.route_tables.values() if subnet_id in r.subnet_ids), None)
        if explicit is not None:
            return explicit
        subnet = self.subnets.get(subnet_id)
        if subnet is None:
            return None
        return next(
            (r for r in self.route_tables.values() if r.vpc_id == subnet.vpc_id and r.main), None
        )

    def route_state(self, route: Route) -> str:
        """``active`` or ``blackhole``: a route to a peering that is not active is a blackhole."""
        if route.state.lower() == "blackhole":
            return "blackhole"
        pcx = self.peerings.get(route.target)
        if route.target.startswith("pcx-") and pcx is not None and pcx.status != "active":
            return "blackhole"
        return "active"

    def clients(self) -> list[Instance]:
        """Instances in consumer accounts, in name order."""
        consumer = {a.name for a in self.accounts.values() if a.role == "consumer"}
        return sorted(
            (i for i in self.instances.values() if i.account in consumer), key=lambda i: i.name
        )

    def targets(self) -> list[Instance]:
        """Instances registered in any target group, in name order."""
        ids = {t.instance_id for tg in self.target_groups.values() for t in tg.targets}
        return sorted((i for i in self.instances.values() if i.id in ids), key=lambda i: i.name)

    def sg_member_ips(self, sg_id: str) -> list[str]:
        """Private IPs of every ENI in the group: what an SG reference resolves to."""
        ips = [i.ip for i in self.instances.values() if sg_id in i.sg_ids]
        for ep in self.endpoints.values():
            if sg_id in ep.sg_ids:
                ips.extend(e.ip for e in ep.enis)
        for nlb in self.nlbs.values():
            if nlb.sg_ids and sg_id in nlb.sg_ids:
                ips.extend(n.ip for n in nlb.nodes)
        return sorted(set(ips), key=ipaddress.ip_address)

    def nlb_of_service(self, service: EndpointService) -> Nlb | None:
        return next((self.nlbs[n] for n in service.nlb_ids if n in self.nlbs), None)

    def listeners_of(self, nlb_id: str) -> list[Listener]:
        return sorted(
            (li for li in self.listeners.values() if li.nlb_id == nlb_id), key=lambda li: li.port
        )

    def listener_for(self, nlb_id: str, port: int) -> Listener | None:
        return next((li for li in self.listeners_of(nlb_id) if li.port == port), None)

    def endpoint_dns_names(self, endpoint: Endpoint) -> dict[str, list[str]]:
        """Regional and zonal DNS names -> ENI IPs as AWS publishes them (docs/AWS-BEHAVIOUR.md)."""
        svc = endpoint.service_id
        h = endpoint.dns_hash or stable_id("h", endpoint.id, width=8)[2:]
        if svc.startswith("vpce-svc-") or svc in self.endpoint_services:
            base = f"vpce-svc-{svc.removeprefix('vpce-svc-')}.{self.region}.vpce.amazonaws.com"
        else:  # an AWS service (``logs``): vpce-…-hash.logs.REGION.vpce.amazonaws.com
            base = f"{svc}.{self.region}.vpce.amazonaws.com"
        names: dict[str, list[str]] = {}
        ips = [e.ip for e in endpoint.enis]
        names[f"{endpoint.id}-{h}.{base}"] = ips
        for eni in endpoint.enis:
            subnet = self.subnets.get(eni.subnet_id)
            az = subnet.az if subnet else "unknown"
            names[f"{endpoint.id}-{h}-{az}.{base}"] = [eni.ip]
        service = self.endpoint_services.get(endpoint.service_id)
        if (
            endpoint.private_dns_enabled
            and service is not None
            and service.private_dns_name
            and (service.private_dns_state or "").lower() == "verified"
        ):
            vpc = self.vpcs.get(endpoint.vpc_id)
            if vpc is None or (vpc.enable_dns_support and vpc.enable_dns_hostnames):
                names[service.private_dns_name] = ips
        return names

    def routed(self, src_vpc: str, dst_vpc: str) -> bool:
        """Same VPC, or an active peering between the two (routes both ways)."""
        if src_vpc == dst_vpc:
            return True
        return any(
            p.status == "active" and {p.requester_vpc_id, p.accepter_vpc_id} == {src_vpc, dst_vpc}
            for p in self.peerings.values()
        )

    def service_allows_account(self, service: EndpointService, account_id: str) -> bool:
        """Does the service allow *some* principal of this account (``*``, root, a role, a user)?

        Used when the endpoint's creator is not known (no describe call reports it): an
        endpoint of that account can exist only if one of its principals was allowed.
        """
        if "*" in service.allowed_principals:
            return True
        return any(arn_account(p) == account_id for p in service.allowed_principals)

    def service_allows(self, service: EndpointService, principal: str) -> bool:
        """Allowed-principal match: ``*``, the exact ARN, or the principal's account root."""
        if "*" in service.allowed_principals:
            return True
        if principal in service.allowed_principals:
            return True
        account = arn_account(principal)
        partition = principal.split(":")[1] if account else ""
        root = f"arn:{partition}:iam::{account}:root"
        return bool(account) and root in service.allowed_principals


# --- persistence ---------------------------------------------------------------------------
# The lab keeps its current topology on disk between commands (``lab break`` then ``lab
# status``), so the model round-trips through plain JSON-able values.


def to_plain(obj: object) -> object:
    """Dataclasses, dicts, lists, tuples and sets -> JSON-able values (sets sorted)."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_plain(v) for v in obj]
    if isinstance(obj, set):
        # the members of the model's sets are strings and numbers, so they sort
        return sorted(to_plain(v) for v in obj)  # type: ignore[type-var]
    return obj


def _from_plain(hint: object, value: Any) -> object:
    """``value`` is untyped JSON data whose shape ``hint`` describes, hence ``Any``."""
    import dataclasses
    import types
    import typing

    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if value is None:
        return None
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _from_plain(inner[0], value) if len(inner) == 1 else value
    if origin is list:
        return [_from_plain(args[0], v) for v in value]
    if origin is tuple:
        return tuple(_from_plain(args[0], v) for v in value)
    if origin is set:
        return {_from_plain(args[0], v) for v in value}
    if origin is dict:
        return {k: _from_plain(args[1], v) for k, v in value.items()}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        hints = typing.get_type_hints(hint)
        return hint(**{k: _from_plain(hints[k], v) for k, v in value.items()})
    return value


def topology_from_plain(data: dict) -> Topology:
    """Inverse of ``to_plain`` for a Topology."""
    return cast(Topology, _from_plain(Topology, data))  # a dict always takes the dataclass branch
