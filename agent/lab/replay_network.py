"""Replay, part one: the bookkeeping and the network layer (VPCs to instances).

``agent.lab.replay`` is the public face (module docstring there: why a document, what the
notes mean). The converter is split by layer so each part reads on its own: this module walks
VPCs, subnets, peerings, security groups, prefix lists and rules, NACLs and instances;
``agent.lab.replay_routing`` adds route tables; ``agent.lab.replay_service`` adds the
PrivateLink service layer (NLB, target groups, listeners, endpoint services, endpoints) and
assembles the document.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

from agent.model import Nacl, Rule, Topology

NoteKind = Literal["omitted", "assumed", "refused"]

#: what the topology schema accepts (``agent.sources.topology_schema``)
_RULE_PROTOCOLS = {"tcp", "udp", "icmp", "-1"}
LB_PROTOCOLS = {"TCP", "TLS", "UDP", "TCP_UDP"}
_PEERING_STATES = {"active", "pending-acceptance", "rejected", "deleted"}
DNS_STATES = {"verified": "verified", "pendingverification": "pendingVerification"}
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: ``aws_ec2_managed_prefix_list``'s default ``max_entries`` in the topology schema
_DEFAULT_MAX_ENTRIES = 10


class _InVpc(Protocol):
    """A resource that lives in one VPC (subnet, SG, NACL, target group)."""

    id: str
    name: str
    vpc_id: str


_V = TypeVar("_V", bound=_InVpc)


@dataclass(frozen=True)
class ReplayNote:
    """One decision the converter made instead of the user: what, which resource, why."""

    kind: NoteKind
    #: ``<terraform type> <lab name or AWS id>`` or ``*`` for the whole lab
    resource: str
    reason: str

    def text(self) -> str:
        return f"{self.kind}: {self.resource}: {self.reason}"

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "resource": self.resource, "reason": self.reason}


# --- helpers -------------------------------------------------------------------------------


def net_version(text: str) -> int | None:
    """4 or 6 for a CIDR block (or address), None for anything else."""
    try:
        return ipaddress.ip_network(text, strict=False).version
    except ValueError:
        return None


def _ipv4_net(text: str) -> bool:
    return net_version(text) == 4


def is_ipv4(text: str) -> bool:
    try:
        return ipaddress.ip_address(text).version == 4
    except ValueError:
        return False


def _safe(text: str) -> str:
    """``text`` if it is a plain name, else a slug of it (lab node names derive from names)."""
    if _SAFE_NAME.match(text):
        return text
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._") or "x"


def _unique(base: str, used: set[str], suffix: str = "") -> str:
    if base not in used:
        return base
    if suffix and f"{base}-{suffix}" not in used:
        return f"{base}-{suffix}"
    n = 2
    while f"{base}-{n}" in used:
        n += 1
    return f"{base}-{n}"


def _within(net: str, outer: str) -> bool:
    a, b = ipaddress.ip_network(net), ipaddress.ip_network(outer)
    if isinstance(a, ipaddress.IPv4Network) and isinstance(b, ipaddress.IPv4Network):
        return a.subnet_of(b)
    return False


def _allow_all(nacl: Nacl) -> bool:
    """Does the NACL let every IPv4 packet through both ways (AWS's default NACL)?

    Such a NACL is left out: a subnet without an ``aws_network_acl`` is on its VPC's default
    NACL in the lab, which allows everything, so nothing changes for any path.
    """
    for egress in (False, True):
        first = next((e for e in nacl.ordered(egress) if _ipv4_net(e.cidr)), None)
        if first is None or first.action != "allow" or first.protocol != "-1":
            return False
        if ipaddress.ip_network(first.cidr, strict=False).prefixlen != 0:
            return False
    return True


def target_kind(target_id: str) -> str:
    if is_ipv4(target_id) or (":" in target_id and not target_id.startswith("arn:")):
        return "an IP target (target_type ip); the lab registers instances only"
    if target_id.startswith("arn:aws:lambda:"):
        return "a Lambda target; the lab registers instances only"
    if ":loadbalancer/app/" in target_id:
        return "an ALB target (target_type alb); the lab has no ALB"
    return "not an instance of the snapshot (another account's, or not listed)"


class NetworkConverter:
    """Walks the model in the builder's order, keeping only what the kept resources need.

    Every step reads ``self.t`` and fills ``self.res`` (Terraform type -> name -> body);
    ``kept`` answers whether a referenced resource made it into the document.
    """

    def __init__(
        self, t: Topology, principals_unknown: Iterable[str] = (), description: str = ""
    ) -> None:
        self.t = t
        self.description = description or (
            f"replayed from {t.source}" if t.source else "replayed topology"
        )
        self.principals_unknown = set(principals_unknown)
        self.notes: list[ReplayNote] = []
        #: real id -> lab name, per Terraform type
        self.names: dict[str, dict[str, str]] = {}
        self.res: dict[str, dict[str, Any]] = {}

    # -- bookkeeping -------------------------------------------------------------------------
    def note(self, kind: NoteKind, resource: str, reason: str) -> None:
        self.notes.append(ReplayNote(kind, resource, reason))

    def name(self, kind: str, rid: str, wanted: str) -> str:
        """A unique, YAML- and namespace-friendly name per type (``wanted`` when possible).

        Two resources with one ``Name`` tag are told apart by their AWS id.
        """
        taken = self.names.setdefault(kind, {})
        if rid not in taken:
            taken[rid] = _unique(_safe(wanted), set(taken.values()), rid)
        return taken[rid]

    def kept(self, kind: str, rid: str | None) -> str | None:
        return self.names.get(kind, {}).get(rid or "")

    def in_kept_vpcs(self, kind: str, items: Iterable[_V]) -> Iterator[tuple[_V, str, str]]:
        """Each item whose VPC is replayed, with its label and its VPC's lab name.

        A subnet, SG, NACL or target group cannot stand without its VPC: the others are
        noted as omitted, with the same note for every kind.
        """
        for item in items:
            what = self.label(kind, item.id, item.name)
            vpc = self.kept("aws_vpc", item.vpc_id)
            if vpc is None:
                self.note("omitted", what, f"its VPC {item.vpc_id} is not replayed")
                continue
            yield item, what, vpc

    def put(self, kind: str, name: str, body: dict[str, Any]) -> None:
        self.res.setdefault(kind, {})[name] = body

    def label(self, kind: str, rid: str, name: str = "") -> str:
        return f"{kind} {name or rid}" + (f" ({rid})" if name and name != rid else "")

    # -- the document ------------------------------------------------------------------------

    def vpcs(self) -> None:
        for v in self.t.vpcs.values():
            if not _ipv4_net(v.cidr):
                self.note("omitted", self.label("aws_vpc", v.id, v.name), "not an IPv4 VPC")
                continue
            name = self.name("aws_vpc", v.id, v.name)
            body: dict[str, Any] = {"account": v.account, "cidr_block": v.cidr}
            if not v.enable_dns_support:
                body["enable_dns_support"] = False
            if not v.enable_dns_hostnames:
                body["enable_dns_hostnames"] = False
            self.put("aws_vpc", name, body)

    def subnets(self) -> None:
        for s, what, vpc in self.in_kept_vpcs("aws_subnet", self.t.subnets.values()):
            if not _within(s.cidr, self.t.vpcs[s.vpc_id].cidr):
                self.note(
                    "omitted",
                    what,
                    f"{s.cidr} is outside the VPC's primary CIDR block "
                    f"{self.t.vpcs[s.vpc_id].cidr}; the lab models one IPv4 block per VPC",
                )
                continue
            az_id = s.az_id
            if not az_id:
                az_id = s.az
                self.note(
                    "assumed",
                    what,
                    f"no AvailabilityZoneId in the snapshot: AZ id {s.az!r} (the AZ name); "
                    "endpoint ENIs pair with NLB nodes by AZ id",
                )
            name = self.name("aws_subnet", s.id, s.name)
            self.put(
                "aws_subnet",
                name,
                {
                    "account": s.account,
                    "vpc_id": vpc,
                    "cidr_block": s.cidr,
                    "availability_zone": s.az,
                    "availability_zone_id": az_id,
                },
            )

    def peerings(self) -> None:
        for p in self.t.peerings.values():
            what = self.label("aws_vpc_peering_connection", p.id, p.name)
            a = self.kept("aws_vpc", p.requester_vpc_id)
            b = self.kept("aws_vpc", p.accepter_vpc_id)
            if a is None or b is None:
                gone = p.requester_vpc_id if a is None else p.accepter_vpc_id
                self.note("omitted", what, f"VPC {gone} is not in the snapshot (another account?)")
                continue
            status = p.status.lower()
            if status not in _PEERING_STATES:
                self.note(
                    "omitted",
                    what,
                    f"status {p.status!r} is transitional; the lab knows "
                    f"{', '.join(sorted(_PEERING_STATES))} (edit the file to choose one)",
                )
                continue
            name = self.name("aws_vpc_peering_connection", p.id, p.name)
            account = self.t.vpcs[p.requester_vpc_id].account
            body: dict[str, Any] = {"account": account, "vpc_id": a, "peer_vpc_id": b}
            if status != "active":
                body["status"] = status
            self.put("aws_vpc_peering_connection", name, body)

    def security_groups(self) -> None:
        for g, _, vpc in self.in_kept_vpcs("aws_security_group", self.t.security_groups.values()):
            name = self.name("aws_security_group", g.id, g.name)
            body: dict[str, Any] = {"account": g.account, "vpc_id": vpc}
            if g.description:
                body["description"] = g.description
            self.put("aws_security_group", name, body)

    def prefix_lists(self) -> None:
        """Customer-managed lists of the replayed accounts, as ``aws_ec2_managed_prefix_list``
        with their entries: the lab emulates them (an nftables set per IPv4 list), so a rule
        keeps naming its list instead of a copy of the entries that would drift from it.

        A list owned by AWS or by an account that is not replayed has no resource to write:
        the rules naming it are written with its entries (``prefix_list_ref``).
        """
        for pl in self.t.prefix_lists.values():
            if pl.account not in self.t.accounts:
                continue
            what = self.label("aws_ec2_managed_prefix_list", pl.id, pl.name)
            version = 6 if pl.address_family == "IPv6" else 4
            entries = [c for c in pl.cidrs if net_version(c) == version]
            if len(entries) < len(pl.cidrs):
                self.note(
                    "omitted",
                    what,
                    f"entries that are not {pl.address_family} (an {pl.address_family} list "
                    "holds only its family's blocks)",
                )
            name = self.name("aws_ec2_managed_prefix_list", pl.id, pl.name)
            body: dict[str, Any] = {"account": pl.account}
            if name != pl.name:
                body["name"] = pl.name
            if pl.address_family != "IPv4":
                body["address_family"] = pl.address_family
            if pl.max_entries != _DEFAULT_MAX_ENTRIES:
                body["max_entries"] = pl.max_entries
            body["entry"] = [{"cidr": c} for c in entries]
            self.put("aws_ec2_managed_prefix_list", name, body)

    def sg_ids(self, ids: list[str], what: str) -> list[str]:
        out = []
        for gid in ids:
            name = self.kept("aws_security_group", gid)
            if name is None:
                self.note("omitted", what, f"security group {gid}: not in the snapshot")
            else:
                out.append(name)
        return out

    def sg_rules(self) -> None:
        for g in self.t.security_groups.values():
            sg = self.kept("aws_security_group", g.id)
            if sg is None:
                continue
            for r in g.rules:
                self.sg_rule(g.account, g.vpc_id, sg, r)

    def sg_rule(self, account: str, vpc_id: str, sg: str, r: Rule) -> None:
        what = f"aws_security_group_rule {r.id}"
        if r.protocol not in _RULE_PROTOCOLS:
            self.note(
                "omitted",
                what,
                f"protocol {r.protocol}: the lab emulates tcp, udp, icmp and all "
                "(a rule for another protocol cannot allow or block those)",
            )
            return
        source: dict[str, Any] = {}
        if r.cidrs:
            v4 = [c for c in r.cidrs if _ipv4_net(c)]
            if len(v4) < len(r.cidrs):
                self.note(
                    "omitted",
                    what,
                    "IPv6 ranges: the lab is IPv4 only (they cannot match an IPv4 path)",
                )
            if not v4:
                return
            source["cidr_blocks"] = v4
        elif r.sg_ref or r.stale_ref:
            ref = self.group_ref(vpc_id, r, what)
            if ref is None:
                return
            source["source_security_group_id"] = ref
        elif r.prefix_list:
            listed = self.prefix_list_ref(account, r.prefix_list, what)
            if listed is None:
                return
            source.update(listed)
        else:
            self.note("omitted", what, "a rule without a source or destination")
            return
        wanted = r.id
        if not _SAFE_NAME.match(wanted):  # a snapshot's rules have no names: make one
            ports = "all" if r.protocol == "-1" else f"{r.protocol}-{r.from_port}"
            if r.protocol != "-1" and r.to_port != r.from_port:
                ports += f"-{r.to_port}"
            peer = next(iter(source.values()))
            peer = peer if isinstance(peer, str) else peer[0]
            word = "from" if r.direction == "ingress" else "to"
            wanted = _safe(f"{sg}-{word}-{peer}-{ports}".replace("/", "_"))
        rules = self.res.get("aws_security_group_rule", {})
        name = _unique(wanted, set(rules))
        body: dict[str, Any] = {
            "account": account,
            "security_group_id": sg,
            "type": r.direction,
            "protocol": r.protocol,
            "from_port": r.from_port,
            "to_port": r.to_port,
            **source,
        }
        if r.description:
            body["description"] = r.description
        self.put("aws_security_group_rule", name, body)

    def group_ref(self, vpc_id: str, r: Rule, what: str) -> str | None:
        """The lab name of the group a rule references, live or stale; None: left out.

        A stale reference (``Rule.stale_ref``: the group is across a peering that is no longer
        active) is written as a plain reference: the builder makes it stale again because the
        peering is not active. Where that cannot be reproduced, the rule is left out, which
        changes no path: a stale rule matches nothing.
        """
        gid = r.sg_ref or r.stale_ref or ""
        ref = self.kept("aws_security_group", gid)
        other = self.t.security_groups.get(gid)
        stale = "a stale reference (it matches nothing, so leaving it out changes no path)"
        if ref is None or other is None:
            why = stale if r.stale_ref else "not in the snapshot"
            self.note("omitted", what, f"it references {gid}: {why}")
            return None
        if self.t.routed(vpc_id, other.vpc_id):
            if r.stale_ref:
                self.note(
                    "omitted",
                    what,
                    f"it references {gid} across an active peering but was reported "
                    f"{stale}; the lab would make it live",
                )
                return None
            return ref
        if self.t.peering_between(vpc_id, other.vpc_id) is None:
            self.note(
                "omitted",
                what,
                f"it references {gid} across no peering in the snapshot: {stale}",
            )
            return None
        if r.sg_ref:
            self.note(
                "assumed",
                what,
                f"it references {gid} across a peering that is not active: stale, it matches "
                "nothing (as describe-stale-security-groups would report it)",
            )
        return ref

    def prefix_list_ref(self, account: str, pl_id: str, what: str) -> dict[str, Any] | None:
        """A rule's prefix list as the document's source or destination; None: left out."""
        listed = self.kept("aws_ec2_managed_prefix_list", pl_id)
        plist = self.t.prefix_lists.get(pl_id)
        if plist is None:
            self.note(
                "omitted",
                what,
                f"prefix list {pl_id}: its entries were not read, and the lab matches nothing "
                "against an unknown list (kept in the file, allows nothing)",
            )
            return {"prefix_list_ids": [pl_id]}
        if listed is not None and plist.account == account:
            return {"prefix_list_ids": [listed]}
        # AWS-managed, or shared from another account: the lab has no list to reference
        cidrs = [c for c in plist.cidrs if net_version(c) == 4]
        owner = "AWS" if plist.account == "AWS" else f"account {plist.account}"
        if not cidrs:
            self.note("omitted", what, f"prefix list {pl_id} ({owner}) has no IPv4 entry")
            return None
        self.note(
            "assumed",
            what,
            f"prefix list {pl_id} is owned by {owner}, not by the rule's account: written "
            f"out as its IPv4 entries {', '.join(cidrs)} (the lab emulates an account's own "
            "lists; sharing is not emulated)",
        )
        return {"cidr_blocks": cidrs}

    def nacls(self) -> None:
        for n, what, vpc in self.in_kept_vpcs("aws_network_acl", self.t.nacls.values()):
            if _allow_all(n):
                continue  # the lab's default NACL is exactly this (see _allow_all)
            subnets = [s for s in (self.kept("aws_subnet", x) for x in n.subnet_ids) if s]
            entries: dict[str, list[dict[str, Any]]] = {"ingress": [], "egress": []}
            for e in sorted(n.entries, key=lambda e: (e.egress, e.rule_number)):
                if not _ipv4_net(e.cidr) or e.protocol not in _RULE_PROTOCOLS:
                    why = "an IPv6 entry" if not _ipv4_net(e.cidr) else f"protocol {e.protocol}"
                    self.note(
                        "omitted",
                        f"{what} rule {e.rule_number}",
                        f"{why}: cannot match an IPv4 TCP/UDP/ICMP path in the lab",
                    )
                    continue
                entry: dict[str, Any] = {
                    "rule_no": e.rule_number,
                    "action": e.action,
                    "protocol": e.protocol,
                    "cidr_block": e.cidr,
                }
                if e.protocol != "-1":
                    entry["from_port"] = max(e.from_port, 0)
                    entry["to_port"] = e.to_port
                entries["egress" if e.egress else "ingress"].append(entry)
            name = self.name("aws_network_acl", n.id, n.name)
            self.put(
                "aws_network_acl",
                name,
                {"account": n.account, "vpc_id": vpc, "subnet_ids": subnets, **entries},
            )

    def served_ports(self, instance_id: str) -> list[int]:
        ports: set[int] = set()
        for tg in self.t.target_groups.values():
            for tgt in tg.targets:
                if tgt.instance_id == instance_id:
                    ports.update({tg.target_port(tgt), tg.health_port(tgt)})
        return sorted(ports)

    def instances(self) -> None:
        consumer = {a.name for a in self.t.accounts.values() if a.role == "consumer"}
        for i in self.t.instances.values():
            what = self.label("aws_instance", i.id, i.name)
            subnet = self.kept("aws_subnet", i.subnet_id)
            if subnet is None:
                self.note("omitted", what, f"its subnet {i.subnet_id} is not replayed")
                continue
            if not is_ipv4(i.ip):
                self.note("omitted", what, f"no IPv4 address ({i.ip})")
                continue
            name = self.name("aws_instance", i.id, i.name)
            body: dict[str, Any] = {
                "account": i.account,
                "subnet_id": subnet,
                "private_ip": i.ip,
                "vpc_security_group_ids": self.sg_ids(i.sg_ids, what),
            }
            services = list(i.services)
            if not i.services_known:
                services = self.served_ports(i.id)
                if services:
                    self.note(
                        "assumed",
                        what,
                        f"serves TCP {', '.join(map(str, services))} (its target groups' "
                        "traffic and health-check ports); no plprobe:services tag says so",
                    )
                elif i.account not in consumer:
                    self.note(
                        "assumed",
                        what,
                        "serves nothing (not a registered target, no plprobe:services tag)",
                    )
            if services:
                body["services"] = services
            self.put("aws_instance", name, body)
