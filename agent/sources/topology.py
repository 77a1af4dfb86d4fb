"""Lab topology YAML -> Topology.

The file's keys follow the Terraform resources users already write, grouped by resource type
and keyed by the resource's name, each resource tagged with its account::

    resources:
      aws_instance:
        client-1: {account: consumer, subnet_id: vpc-1-a, private_ip: 10.1.0.10,
                   vpc_security_group_ids: [client-1]}

References use the other resource's name (where Terraform would write
``aws_subnet.vpc-1-a.id``). Loading is two passes: pydantic checks the shape of every resource
(unknown keys, types; the models are in ``agent.sources.topology_schema`` and re-exported
here), then ``_Builder`` resolves references and checks the layout (IP inside its subnet, no
duplicate IPs, a listener forwards to a target group, ...). Every error names file, line and
key.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from agent.errors import TopologyError
from agent.model import (
    Account,
    Endpoint,
    EndpointEni,
    EndpointService,
    HealthCheck,
    Instance,
    LabSettings,
    Listener,
    Nacl,
    NaclEntry,
    Nlb,
    NlbNode,
    Peering,
    PrefixList,
    Route,
    RouteTable,
    Rule,
    SecurityGroup,
    Subnet,
    Target,
    TargetGroup,
    Topology,
    Vpc,
    stable_id,
)
from agent.sources import topology_schema
from agent.sources.topology_schema import *  # noqa: F403  (re-exported, see __all__)
from agent.sources.topology_schema import TopologySpec
from agent.yamlsrc import Loc, Located, checking, load_yaml, validate

__all__ = ["REFERENCE", "TOPOLOGIES", "load_topology"]
#: the document's models are part of this module's interface; their one list is the schema's
__all__ += topology_schema.__all__

#: the built-in lab topologies and agent configs: ``configs/lab`` of the checkout, shipped in
#: the package as ``agent/lab/topologies`` (a symlink in the source tree, copied into wheels)
TOPOLOGIES = Path(__file__).resolve().parent.parent / "lab" / "topologies"
REFERENCE = TOPOLOGIES / "reference.yaml"


def _inside(net: str, outer: str) -> bool:
    """``net`` lies within ``outer``; False across IP versions, where ``subnet_of`` raises."""
    a, b = ipaddress.ip_network(net), ipaddress.ip_network(outer)
    if isinstance(a, ipaddress.IPv4Network) and isinstance(b, ipaddress.IPv4Network):
        return a.subnet_of(b)
    if isinstance(a, ipaddress.IPv6Network) and isinstance(b, ipaddress.IPv6Network):
        return a.subnet_of(b)
    return False


class _Builder:
    """Second pass: resolve names to ids and check the layout, naming the offending key."""

    def __init__(self, spec: TopologySpec, doc: Located) -> None:
        self.spec = spec
        self.doc = doc
        self.r = spec.resources
        self.t = Topology(region=spec.region, lab=LabSettings(**spec.lab.model_dump()))
        self.t.source = doc.path
        self.ids: dict[tuple[str, str], str] = {}
        self.ips: dict[str, Loc] = {}

    # -- helpers ---------------------------------------------------------------------------
    def fail(self, loc: Loc, message: str) -> TopologyError:
        line, col = self.doc.where(loc)
        from agent.yamlsrc import dotted

        return TopologyError(message, path=self.doc.path, line=line, col=col, key=dotted(loc))

    def loc(self, kind: str, name: str, *rest: str | int) -> Loc:
        return ("resources", kind, name, *rest)

    def ref(self, kind: str, name: str, loc: Loc, what: str) -> str:
        key = (kind, name)
        if key not in self.ids:
            known = ", ".join(sorted(n for k, n in self.ids if k == kind)) or "none"
            raise self.fail(loc, f"unknown {what} {name!r} (known: {known})")
        return self.ids[key]

    def account(self, kind: str, name: str, account: str) -> str:
        if account not in self.spec.accounts:
            known = ", ".join(self.spec.accounts)
            raise self.fail(
                self.loc(kind, name, "account"), f"unknown account {account!r} (known: {known})"
            )
        return account

    def same_account(
        self, kind: str, name: str, account: str, other_account: str, what: str
    ) -> None:
        if account != other_account:
            raise self.fail(
                self.loc(kind, name, "account"),
                f"{kind} in account {account!r} cannot use {what} of account {other_account!r}",
            )

    def claim_ip(self, ip: str, loc: Loc, vpc_id: str) -> None:
        key = f"{vpc_id}/{ip}"
        if key in self.ips:
            line, _ = self.doc.where(self.ips[key])
            raise self.fail(loc, f"duplicate IP {ip} in the VPC (also used at line {line})")
        self.ips[key] = loc

    def in_subnet(self, ip: str, subnet: Subnet, loc: Loc) -> None:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            raise self.fail(loc, f"not an IP address: {ip!r}") from None
        net = ipaddress.ip_network(subnet.cidr)
        if addr not in net:
            raise self.fail(loc, f"IP {ip} is outside its subnet {subnet.name} ({subnet.cidr})")
        # AWS reserves the first four and the last address of every subnet
        offset = int(addr) - int(net.network_address)
        if offset < 4 or addr == net.broadcast_address:
            raise self.fail(loc, f"IP {ip} is reserved by AWS in {subnet.cidr}")

    def cidr(self, text: str, loc: Loc) -> str:
        try:
            return str(ipaddress.ip_network(text, strict=True))
        except ValueError as exc:
            raise self.fail(loc, f"not a CIDR block: {exc}") from None

    # -- passes ----------------------------------------------------------------------------
    def build(self) -> Topology:
        t = self.t
        roles = [a.role for a in self.spec.accounts.values()]
        for name, acc in self.spec.accounts.items():
            t.accounts[name] = Account(name=name, id=acc.id, role=acc.role, region=t.region)
        if "consumer" not in roles or "provider" not in roles:
            raise self.fail(("accounts",), "need one account with role consumer and one provider")
        t.visible_accounts = set(t.accounts)
        self.vpcs()
        self.subnets()
        self.peerings()
        self.security_groups()
        self.instances()
        self.prefix_lists()
        self.sg_rules()
        t.mark_stale_references()
        self.nacls()
        self.route_tables()
        self.nlbs()
        self.target_groups()
        self.listeners()
        self.attachments()
        self.services()
        self.endpoints()
        return t

    def vpcs(self) -> None:
        nets: list[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network]] = []
        for name, v in self.r.aws_vpc.items():
            acc = self.account("aws_vpc", name, v.account)
            cidr = self.cidr(v.cidr_block, self.loc("aws_vpc", name, "cidr_block"))
            vid = stable_id("vpc", name)
            self.ids[("aws_vpc", name)] = vid
            self.t.vpcs[vid] = Vpc(
                vid, name, acc, cidr, v.enable_dns_support, v.enable_dns_hostnames
            )
            nets.append((name, ipaddress.ip_network(cidr)))
        for i, (a, na) in enumerate(nets):
            for b, nb in nets[i + 1 :]:
                if na.overlaps(nb) and self.routable(a, b):
                    raise self.fail(
                        self.loc("aws_vpc", b, "cidr_block"),
                        f"CIDR overlaps VPC {a}; peered VPCs need distinct ranges",
                    )

    def routable(self, a: str, b: str) -> bool:
        return any(
            {p.vpc_id, p.peer_vpc_id} == {a, b} for p in self.r.aws_vpc_peering_connection.values()
        )

    def subnets(self) -> None:
        for name, s in self.r.aws_subnet.items():
            acc = self.account("aws_subnet", name, s.account)
            vid = self.ref("aws_vpc", s.vpc_id, self.loc("aws_subnet", name, "vpc_id"), "VPC")
            vpc = self.t.vpcs[vid]
            self.same_account("aws_subnet", name, acc, vpc.account, "a VPC")
            cidr = self.cidr(s.cidr_block, self.loc("aws_subnet", name, "cidr_block"))
            if not _inside(cidr, vpc.cidr):
                raise self.fail(
                    self.loc("aws_subnet", name, "cidr_block"),
                    f"{cidr} is outside VPC {vpc.name} ({vpc.cidr})",
                )
            for other in self.t.subnets.values():
                if other.vpc_id == vid and ipaddress.ip_network(other.cidr).overlaps(
                    ipaddress.ip_network(cidr)
                ):
                    raise self.fail(
                        self.loc("aws_subnet", name, "cidr_block"),
                        f"{cidr} overlaps subnet {other.name} ({other.cidr})",
                    )
            sid = stable_id("subnet", name)
            self.ids[("aws_subnet", name)] = sid
            self.t.subnets[sid] = Subnet(
                sid, name, acc, vid, cidr, s.availability_zone, s.availability_zone_id
            )

    def peerings(self) -> None:
        for name, p in self.r.aws_vpc_peering_connection.items():
            self.account("aws_vpc_peering_connection", name, p.account)
            loc = self.loc("aws_vpc_peering_connection", name)
            a = self.ref("aws_vpc", p.vpc_id, (*loc, "vpc_id"), "VPC")
            b = self.ref("aws_vpc", p.peer_vpc_id, (*loc, "peer_vpc_id"), "VPC")
            if a == b:
                raise self.fail((*loc, "peer_vpc_id"), "a VPC cannot peer with itself")
            pid = stable_id("pcx", name)
            self.ids[("aws_vpc_peering_connection", name)] = pid
            self.t.peerings[pid] = Peering(pid, name, a, b, p.status)

    def security_groups(self) -> None:
        for name, g in self.r.aws_security_group.items():
            acc = self.account("aws_security_group", name, g.account)
            vid = self.ref(
                "aws_vpc", g.vpc_id, self.loc("aws_security_group", name, "vpc_id"), "VPC"
            )
            self.same_account("aws_security_group", name, acc, self.t.vpcs[vid].account, "a VPC")
            gid = stable_id("sg", name)
            self.ids[("aws_security_group", name)] = gid
            self.t.security_groups[gid] = SecurityGroup(gid, name, acc, vid, [], g.description)

    def prefix_lists(self) -> None:
        """Customer-managed prefix lists: their entries, then the separate entry resources."""
        for name, pl in self.r.aws_ec2_managed_prefix_list.items():
            loc = self.loc("aws_ec2_managed_prefix_list", name)
            acc = self.account("aws_ec2_managed_prefix_list", name, pl.account)
            pid = stable_id("pl", name)
            self.ids[("aws_ec2_managed_prefix_list", name)] = pid
            cidrs = [
                self.prefix_cidr(e.cidr, pl.address_family, (*loc, "entry", i, "cidr"))
                for i, e in enumerate(pl.entry)
            ]
            self.t.prefix_lists[pid] = PrefixList(
                pid, pl.name or name, acc, cidrs, pl.address_family, pl.max_entries
            )
        for name, e in self.r.aws_ec2_managed_prefix_list_entry.items():
            loc = self.loc("aws_ec2_managed_prefix_list_entry", name)
            acc = self.account("aws_ec2_managed_prefix_list_entry", name, e.account)
            pid = self.ref(
                "aws_ec2_managed_prefix_list", e.prefix_list_id, (*loc, "prefix_list_id"),
                "prefix list",
            )  # fmt: skip
            plist = self.t.prefix_lists[pid]
            self.same_account(
                "aws_ec2_managed_prefix_list_entry", name, acc, plist.account, "a prefix list"
            )
            plist.cidrs.append(self.prefix_cidr(e.cidr, plist.address_family, (*loc, "cidr")))
        for plist in self.t.prefix_lists.values():
            if len(plist.cidrs) > plist.max_entries:
                key = next(n for (k, n), v in self.ids.items() if v == plist.id)
                raise self.fail(
                    self.loc("aws_ec2_managed_prefix_list", key, "max_entries"),
                    f"{len(plist.cidrs)} entries exceed max_entries {plist.max_entries} "
                    "(AWS refuses the extra entries)",
                )

    def prefix_cidr(self, text: str, family: str, loc: Loc) -> str:
        cidr = self.cidr(text, loc)
        if (ipaddress.ip_network(cidr).version == 6) != (family == "IPv6"):
            raise self.fail(loc, f"{cidr} is not an {family} block (the list's address_family)")
        return cidr

    def prefix_list_ref(self, rule: str, sg_account: str, value: str, loc: Loc) -> str:
        """A rule's prefix list: a list of the topology (by key), or a bare ``pl-…`` id whose
        entries the lab does not know (an AWS-managed list): "not visible" to the analysis."""
        if ("aws_ec2_managed_prefix_list", value) in self.ids:
            pid = self.ids[("aws_ec2_managed_prefix_list", value)]
            self.same_account(
                "aws_security_group_rule",
                rule,
                sg_account,
                self.t.prefix_lists[pid].account,
                "a prefix list (sharing through RAM is not emulated)",
            )
            return pid
        if re.fullmatch(r"pl-[0-9a-f]{8,17}", value):
            return value
        return self.ref("aws_ec2_managed_prefix_list", value, loc, "prefix list")

    def sg_rules(self) -> None:
        for name, r in self.r.aws_security_group_rule.items():
            loc = self.loc("aws_security_group_rule", name)
            self.account("aws_security_group_rule", name, r.account)
            gid = self.ref(
                "aws_security_group", r.security_group_id, (*loc, "security_group_id"), "SG"
            )
            sg = self.t.security_groups[gid]
            self.same_account("aws_security_group_rule", name, r.account, sg.account, "an SG")
            sources = (
                bool(r.cidr_blocks) + bool(r.source_security_group_id) + bool(r.prefix_list_ids)
            )
            if sources != 1:
                raise self.fail(
                    loc,
                    "a rule needs exactly one of cidr_blocks, source_security_group_id, "
                    "prefix_list_ids",
                )
            if r.protocol in {"tcp", "udp"} and not 0 <= r.from_port <= r.to_port:
                raise self.fail((*loc, "from_port"), "from_port must be <= to_port and >= 0")
            cidrs = tuple(
                self.cidr(c, (*loc, "cidr_blocks", i)) for i, c in enumerate(r.cidr_blocks)
            )
            ref = None
            if r.source_security_group_id:
                ref = self.ref(
                    "aws_security_group",
                    r.source_security_group_id,
                    (*loc, "source_security_group_id"),
                    "SG",
                )
                other = self.t.security_groups[ref]
                # a reference across a peering that is no longer active is *stale* (AWS keeps
                # it, it matches nothing); one across no peering at all is refused by AWS
                if self.t.peering_between(sg.vpc_id, other.vpc_id) is None and not (
                    self.t.routed(sg.vpc_id, other.vpc_id)
                ):
                    raise self.fail(
                        (*loc, "source_security_group_id"),
                        f"SG {other.name} is in a VPC that is neither this one nor peered with "
                        "it; an SG can only reference groups across a peering (an NLB SG "
                        "cannot reference the consumer's SG across accounts)",
                    )
            proto = r.protocol
            lo, hi = (r.from_port, r.to_port) if proto != "-1" else (0, 65535)
            # one model rule per prefix list, as AWS lists them (each its own PrefixListId)
            lists: list[str | None] = [
                self.prefix_list_ref(name, sg.account, v, (*loc, "prefix_list_ids", i))
                for i, v in enumerate(r.prefix_list_ids)
            ]
            for pl in lists or [None]:
                sg.rules.append(
                    Rule(
                        id=name if len(lists) <= 1 else f"{name}[{pl}]",
                        direction=r.type,
                        protocol=proto,
                        from_port=lo,
                        to_port=hi,
                        cidrs=cidrs,
                        sg_ref=ref,
                        prefix_list=pl,
                        description=r.description,
                    )
                )

    def instances(self) -> None:
        for name, i in self.r.aws_instance.items():
            loc = self.loc("aws_instance", name)
            acc = self.account("aws_instance", name, i.account)
            sid = self.ref("aws_subnet", i.subnet_id, (*loc, "subnet_id"), "subnet")
            subnet = self.t.subnets[sid]
            self.same_account("aws_instance", name, acc, subnet.account, "a subnet")
            self.in_subnet(i.private_ip, subnet, (*loc, "private_ip"))
            self.claim_ip(i.private_ip, (*loc, "private_ip"), subnet.vpc_id)
            sgs = []
            for n, g in enumerate(i.vpc_security_group_ids):
                gid = self.ref("aws_security_group", g, (*loc, "vpc_security_group_ids", n), "SG")
                if self.t.security_groups[gid].vpc_id != subnet.vpc_id:
                    raise self.fail(
                        (*loc, "vpc_security_group_ids", n), f"SG {g} belongs to another VPC"
                    )
                sgs.append(gid)
            iid = stable_id("i", name)
            self.ids[("aws_instance", name)] = iid
            self.t.instances[iid] = Instance(
                iid,
                name,
                acc,
                sid,
                i.private_ip,
                sgs,
                sorted(set(i.services)),
                stable_id("eni", "instance", name),
            )

    def nacls(self) -> None:
        claimed: dict[str, str] = {}
        for name, n in self.r.aws_network_acl.items():
            loc = self.loc("aws_network_acl", name)
            acc = self.account("aws_network_acl", name, n.account)
            vid = self.ref("aws_vpc", n.vpc_id, (*loc, "vpc_id"), "VPC")
            subnet_ids = []
            for k, s in enumerate(n.subnet_ids):
                sid = self.ref("aws_subnet", s, (*loc, "subnet_ids", k), "subnet")
                if self.t.subnets[sid].vpc_id != vid:
                    raise self.fail((*loc, "subnet_ids", k), f"subnet {s} belongs to another VPC")
                if sid in claimed:
                    raise self.fail(
                        (*loc, "subnet_ids", k),
                        f"subnet {s} is already associated with NACL {claimed[sid]} "
                        "(a subnet has exactly one NACL)",
                    )
                claimed[sid] = name
                subnet_ids.append(sid)
            entries = []
            for egress, items in ((False, n.ingress), (True, n.egress)):
                seen: set[int] = set()
                for k, e in enumerate(items):
                    eloc = (*loc, "egress" if egress else "ingress", k)
                    if e.rule_no in seen:
                        raise self.fail((*eloc, "rule_no"), f"duplicate rule_no {e.rule_no}")
                    seen.add(e.rule_no)
                    entries.append(
                        NaclEntry(
                            e.rule_no,
                            egress,
                            e.protocol,
                            e.action,
                            self.cidr(e.cidr_block, (*eloc, "cidr_block")),
                            0 if e.protocol == "-1" else e.from_port,
                            65535 if e.protocol == "-1" else e.to_port,
                        )
                    )
            aid = stable_id("acl", name)
            self.ids[("aws_network_acl", name)] = aid
            self.t.nacls[aid] = Nacl(aid, name, acc, vid, subnet_ids, entries)
        # every other subnet is on its VPC's default NACL, which allows everything
        for vid, vpc in self.t.vpcs.items():
            rest = [
                sid for sid, s in self.t.subnets.items() if s.vpc_id == vid and sid not in claimed
            ]
            aid = stable_id("acl", vpc.name, "default")
            entries = [
                NaclEntry(100, False, "-1", "allow", "0.0.0.0/0"),
                NaclEntry(100, True, "-1", "allow", "0.0.0.0/0"),
            ]
            self.t.nacls[aid] = Nacl(aid, f"{vpc.name}-default", vpc.account, vid, rest, entries)

    def route_tables(self) -> None:
        """Route tables, their routes and associations; the VPCs' main tables.

        A VPC that declares no route table at all keeps the lab's implicit routing: a main
        table with the local route and one route per peering to the peer's CIDR (older
        topologies were written that way). A VPC that declares any gets AWS's default main
        table (the local route only) unless one is made main explicitly.
        """
        r, t = self.r, self.t
        for name, rt in r.aws_route_table.items():
            loc = self.loc("aws_route_table", name)
            acc = self.account("aws_route_table", name, rt.account)
            vid = self.ref("aws_vpc", rt.vpc_id, (*loc, "vpc_id"), "VPC")
            self.same_account("aws_route_table", name, acc, t.vpcs[vid].account, "a VPC")
            rid = stable_id("rtb", name)
            self.ids[("aws_route_table", name)] = rid
            table = RouteTable(rid, name, acc, vid, [Route(t.vpcs[vid].cidr, "local")])
            t.route_tables[rid] = table
            for k, route in enumerate(rt.route):
                table.routes.append(
                    self.route(
                        table,
                        route.cidr_block,
                        route.vpc_peering_connection_id,
                        route.gateway_id,
                        (*loc, "route", k),
                    )
                )
        for name, ar in r.aws_route.items():
            loc = self.loc("aws_route", name)
            self.account("aws_route", name, ar.account)
            rid = self.ref(
                "aws_route_table", ar.route_table_id, (*loc, "route_table_id"), "route table"
            )
            table = t.route_tables[rid]
            self.same_account("aws_route", name, ar.account, table.account, "a route table")
            table.routes.append(
                self.route(
                    table,
                    ar.destination_cidr_block,
                    ar.vpc_peering_connection_id,
                    ar.gateway_id,
                    loc,
                    dest_key="destination_cidr_block",
                )
            )
        claimed: dict[str, str] = {}
        for name, assoc in r.aws_route_table_association.items():
            loc = self.loc("aws_route_table_association", name)
            self.account("aws_route_table_association", name, assoc.account)
            sid = self.ref("aws_subnet", assoc.subnet_id, (*loc, "subnet_id"), "subnet")
            rid = self.ref(
                "aws_route_table", assoc.route_table_id, (*loc, "route_table_id"), "route table"
            )
            if t.route_tables[rid].vpc_id != t.subnets[sid].vpc_id:
                raise self.fail((*loc, "route_table_id"), "the route table is in another VPC")
            if sid in claimed:
                raise self.fail(
                    (*loc, "subnet_id"),
                    f"subnet {assoc.subnet_id} is already associated with route table "
                    f"{claimed[sid]} (a subnet has exactly one route table)",
                )
            claimed[sid] = assoc.route_table_id
            t.route_tables[rid].subnet_ids.append(sid)
        for name, main in r.aws_main_route_table_association.items():
            loc = self.loc("aws_main_route_table_association", name)
            self.account("aws_main_route_table_association", name, main.account)
            vid = self.ref("aws_vpc", main.vpc_id, (*loc, "vpc_id"), "VPC")
            rid = self.ref(
                "aws_route_table", main.route_table_id, (*loc, "route_table_id"), "route table"
            )
            if t.route_tables[rid].vpc_id != vid:
                raise self.fail((*loc, "route_table_id"), "the route table is in another VPC")
            if any(rt.main for rt in t.route_tables.values() if rt.vpc_id == vid):
                raise self.fail((*loc, "vpc_id"), "the VPC already has a main route table")
            t.route_tables[rid].main = True
        for vid, vpc in t.vpcs.items():
            declared = any(rt.vpc_id == vid for rt in t.route_tables.values())
            if any(rt.vpc_id == vid and rt.main for rt in t.route_tables.values()):
                continue
            routes = [Route(vpc.cidr, "local")]
            if not declared:
                for pcx in sorted(t.peerings.values(), key=lambda p: p.name):
                    if vid in (pcx.requester_vpc_id, pcx.accepter_vpc_id):
                        peer = (
                            pcx.accepter_vpc_id
                            if vid == pcx.requester_vpc_id
                            else (pcx.requester_vpc_id)
                        )
                        routes.append(Route(t.vpcs[peer].cidr, pcx.id))
            rid = stable_id("rtb", vpc.name, "main")
            t.route_tables[rid] = RouteTable(
                rid, f"{vpc.name}-main", vpc.account, vid, routes, main=True
            )

    def route(
        self,
        table: RouteTable,
        cidr: str,
        peering: str | None,
        gateway: str | None,
        loc: Loc,
        *,
        dest_key: str = "cidr_block",
    ) -> Route:
        dest = self.cidr(cidr, (*loc, dest_key))
        if (peering is None) == (gateway is None):
            raise self.fail(
                loc, "a route needs exactly one of vpc_peering_connection_id, gateway_id"
            )
        if any(rt.destination == dest for rt in table.routes):
            raise self.fail((*loc, dest_key), f"{table.name} already has a route to {dest}")
        if gateway is not None:
            if gateway == "local":
                raise self.fail((*loc, "gateway_id"), "the local route is implicit")
            return Route(dest, gateway)
        assert peering is not None
        pid = self.ref(
            "aws_vpc_peering_connection", peering, (*loc, "vpc_peering_connection_id"), "peering"
        )
        pcx = self.t.peerings[pid]
        if table.vpc_id not in (pcx.requester_vpc_id, pcx.accepter_vpc_id):
            raise self.fail(
                (*loc, "vpc_peering_connection_id"),
                f"peering {peering} does not connect the route table's VPC",
            )
        return Route(dest, pid)

    def nlbs(self) -> None:
        for name, lb in self.r.aws_lb.items():
            loc = self.loc("aws_lb", name)
            acc = self.account("aws_lb", name, lb.account)
            nodes = []
            vpc_ids = set()
            azs = set()
            if bool(lb.subnet_mapping) == bool(lb.subnets):
                raise self.fail(loc, "an NLB needs exactly one of subnet_mapping, subnets")
            mappings = [
                (m.subnet_id, m.private_ipv4_address, (*loc, "subnet_mapping", k))
                for k, m in enumerate(lb.subnet_mapping)
            ] + [(s, None, (*loc, "subnets", k)) for k, s in enumerate(lb.subnets)]
            for subnet_name, fixed_ip, mloc in mappings:
                key = mloc if fixed_ip is None else (*mloc, "subnet_id")
                sid = self.ref("aws_subnet", subnet_name, key, "subnet")
                subnet = self.t.subnets[sid]
                if subnet.az in azs:
                    raise self.fail(key, f"the NLB already has a subnet in {subnet.az}")
                azs.add(subnet.az)
                self.same_account("aws_lb", name, acc, subnet.account, "a subnet")
                ip_loc = mloc if fixed_ip is None else (*mloc, "private_ipv4_address")
                ip = fixed_ip if fixed_ip is not None else self.free_ip(subnet, ip_loc)
                self.in_subnet(ip, subnet, ip_loc)
                self.claim_ip(ip, ip_loc, subnet.vpc_id)
                vpc_ids.add(subnet.vpc_id)
                nodes.append(NlbNode(sid, ip, stable_id("eni", "nlb", name, sid)))
            if len(vpc_ids) != 1:
                raise self.fail((*loc, "subnet_mapping"), "an NLB needs subnets of one VPC")
            sgs = None
            if lb.security_groups is not None:
                sgs = [
                    self.ref("aws_security_group", g, (*loc, "security_groups", k), "SG")
                    for k, g in enumerate(lb.security_groups)
                ]
            acct = self.t.accounts[acc].id
            arn = (
                f"arn:aws:elasticloadbalancing:{self.t.region}:{acct}:loadbalancer/net/{name}/"
                + stable_id("x", name, width=17)[3:]
            )
            self.ids[("aws_lb", name)] = arn
            self.t.nlbs[arn] = Nlb(
                arn,
                name,
                acc,
                vpc_ids.pop(),
                nodes,
                sgs,
                lb.enforce_security_group_inbound_rules_on_private_link_traffic,
                lb.enable_cross_zone_load_balancing,
                fixed_ips=not lb.subnets,
            )

    def target_groups(self) -> None:
        for name, tg in self.r.aws_lb_target_group.items():
            loc = self.loc("aws_lb_target_group", name)
            acc = self.account("aws_lb_target_group", name, tg.account)
            vid = self.ref("aws_vpc", tg.vpc_id, (*loc, "vpc_id"), "VPC")
            hc = tg.health_check
            acct = self.t.accounts[acc].id
            arn = (
                f"arn:aws:elasticloadbalancing:{self.t.region}:{acct}:targetgroup/{name}/"
                + stable_id("x", "tg", name, width=17)[3:]
            )
            self.ids[("aws_lb_target_group", name)] = arn
            self.t.target_groups[arn] = TargetGroup(
                arn,
                name,
                acc,
                vid,
                tg.port,
                tg.protocol,
                HealthCheck(
                    hc.protocol,
                    None if hc.port == "traffic-port" else int(hc.port),
                    hc.path,
                    hc.interval,
                    hc.timeout,
                    hc.healthy_threshold,
                    hc.unhealthy_threshold,
                ),
                tg.proxy_protocol_v2,
            )

    def listeners(self) -> None:
        for name, li in self.r.aws_lb_listener.items():
            loc = self.loc("aws_lb_listener", name)
            self.account("aws_lb_listener", name, li.account)
            arn_lb = self.ref("aws_lb", li.load_balancer_arn, (*loc, "load_balancer_arn"), "NLB")
            if li.default_action is None or li.default_action.target_group_arn is None:
                raise self.fail(
                    (*loc, "default_action"),
                    "listener without a target group: add default_action.target_group_arn",
                )
            tg_arn = self.ref(
                "aws_lb_target_group",
                li.default_action.target_group_arn,
                (*loc, "default_action", "target_group_arn"),
                "target group",
            )
            nlb = self.t.nlbs[arn_lb]
            if self.t.target_groups[tg_arn].vpc_id != nlb.vpc_id:
                raise self.fail(
                    (*loc, "default_action", "target_group_arn"),
                    "target group is in another VPC than the NLB",
                )
            if self.t.listener_for(arn_lb, li.port):
                raise self.fail((*loc, "port"), f"the NLB already has a listener on {li.port}")
            arn = (
                arn_lb.replace(":loadbalancer/", ":listener/")
                + "/"
                + stable_id("x", name, width=17)[3:]
            )
            self.t.listeners[arn] = Listener(arn, arn_lb, li.port, li.protocol, tg_arn)

    def attachments(self) -> None:
        for name, a in self.r.aws_lb_target_group_attachment.items():
            loc = self.loc("aws_lb_target_group_attachment", name)
            self.account("aws_lb_target_group_attachment", name, a.account)
            tg_arn = self.ref(
                "aws_lb_target_group",
                a.target_group_arn,
                (*loc, "target_group_arn"),
                "target group",
            )
            iid = self.ref("aws_instance", a.target_id, (*loc, "target_id"), "instance")
            tg = self.t.target_groups[tg_arn]
            inst = self.t.instances[iid]
            if self.t.subnets[inst.subnet_id].vpc_id != tg.vpc_id:
                raise self.fail((*loc, "target_id"), "instance is in another VPC")
            if any(t.instance_id == iid and t.port == a.port for t in tg.targets):
                raise self.fail((*loc, "target_id"), "target already registered on that port")
            tg.targets.append(Target(iid, a.port))

    def services(self) -> None:
        for name, s in self.r.aws_vpc_endpoint_service.items():
            loc = self.loc("aws_vpc_endpoint_service", name)
            acc = self.account("aws_vpc_endpoint_service", name, s.account)
            nlbs = [
                self.ref("aws_lb", n, (*loc, "network_load_balancer_arns", k), "NLB")
                for k, n in enumerate(s.network_load_balancer_arns)
            ]
            if not nlbs:
                raise self.fail((*loc, "network_load_balancer_arns"), "needs an NLB")
            for k, p in enumerate(s.allowed_principals):
                if p != "*" and not p.startswith("arn:aws:iam::"):
                    raise self.fail(
                        (*loc, "allowed_principals", k),
                        "a principal is '*' or an IAM ARN "
                        "(arn:aws:iam::ACCOUNT:root|role/N|user/N)",
                    )
            sid = stable_id("vpce-svc", name)
            self.ids[("aws_vpc_endpoint_service", name)] = sid
            self.t.endpoint_services[sid] = EndpointService(
                sid,
                name,
                acc,
                nlbs,
                s.acceptance_required,
                list(s.allowed_principals),
                s.private_dns_name,
                s.private_dns_name_verification if s.private_dns_name else None,
            )

    def endpoints(self) -> None:
        accepted = {}
        for name, a in self.r.aws_vpc_endpoint_connection_accepter.items():
            accepted[a.vpc_endpoint_id] = name
        for name, e in self.r.aws_vpc_endpoint.items():
            loc = self.loc("aws_vpc_endpoint", name)
            acc = self.account("aws_vpc_endpoint", name, e.account)
            vid = self.ref("aws_vpc", e.vpc_id, (*loc, "vpc_id"), "VPC")
            svc = self.ref(
                "aws_vpc_endpoint_service",
                e.service_name,
                (*loc, "service_name"),
                "endpoint service",
            )
            service = self.t.endpoint_services[svc]
            sgs = []
            for k, g in enumerate(e.security_group_ids):
                gid = self.ref("aws_security_group", g, (*loc, "security_group_ids", k), "SG")
                if self.t.security_groups[gid].vpc_id != vid:
                    raise self.fail((*loc, "security_group_ids", k), f"SG {g} is in another VPC")
                sgs.append(gid)
            fixed = {c.subnet_id: (k, c.ipv4) for k, c in enumerate(e.subnet_configuration)}
            enis = []
            azs = set()
            for k, s in enumerate(e.subnet_ids):
                sid = self.ref("aws_subnet", s, (*loc, "subnet_ids", k), "subnet")
                subnet = self.t.subnets[sid]
                if subnet.vpc_id != vid:
                    raise self.fail((*loc, "subnet_ids", k), f"subnet {s} is in another VPC")
                if subnet.az_id in azs:
                    raise self.fail(
                        (*loc, "subnet_ids", k), "one endpoint ENI per AZ: two subnets in one AZ"
                    )
                azs.add(subnet.az_id)
                if s in fixed:
                    n, ip = fixed.pop(s)
                    iloc = (*loc, "subnet_configuration", n, "ipv4")
                    self.in_subnet(ip, subnet, iloc)
                else:
                    iloc = (*loc, "subnet_ids", k)
                    ip = self.free_ip(subnet, iloc)
                self.claim_ip(ip, iloc, vid)
                enis.append(EndpointEni(stable_id("eni", "vpce", name, sid), sid, ip))
            for s, (n, _) in fixed.items():
                raise self.fail(
                    (*loc, "subnet_configuration", n, "subnet_id"),
                    f"subnet {s} is not in subnet_ids",
                )
            consumer = self.t.accounts[acc]
            requester = e.requester or consumer.root_arn
            if e.state is not None:
                state = self.state(e.state, (*loc, "state"))
            elif not service.acceptance_required or name in accepted:
                state = "available"
            else:
                state = "pendingAcceptance"
            eid = stable_id("vpce", name)
            self.ids[("aws_vpc_endpoint", name)] = eid
            self.t.endpoints[eid] = Endpoint(
                eid,
                name,
                acc,
                vid,
                svc,
                sgs,
                enis,
                state,
                e.private_dns_enabled,
                requester,
                stable_id("h", name, width=9)[3:],
            )
        for accepter in accepted.values():
            a = self.r.aws_vpc_endpoint_connection_accepter[accepter]
            loc = self.loc("aws_vpc_endpoint_connection_accepter", accepter)
            self.ref("aws_vpc_endpoint", a.vpc_endpoint_id, (*loc, "vpc_endpoint_id"), "endpoint")
            self.ref(
                "aws_vpc_endpoint_service",
                a.vpc_endpoint_service_id,
                (*loc, "vpc_endpoint_service_id"),
                "endpoint service",
            )

    def state(self, text: str, loc: Loc) -> str:
        from agent.model import ENDPOINT_STATES

        for s in ENDPOINT_STATES:
            if s.lower() == text.lower():
                return s
        raise self.fail(
            loc, f"unknown endpoint state {text!r} (one of {', '.join(ENDPOINT_STATES)})"
        )

    def free_ip(self, subnet: Subnet, loc: Loc) -> str:
        """First free address from .5 (deterministic; AWS would pick one at random)."""
        net = ipaddress.ip_network(subnet.cidr)
        for offset in range(5, net.num_addresses - 1):
            ip = str(net.network_address + offset)
            if f"{subnet.vpc_id}/{ip}" not in self.ips:
                return ip
        raise self.fail(loc, f"subnet {subnet.name} is full")


def load_topology(path: str | Path | None = None, text: str | None = None) -> Topology:
    """Load and check a lab topology file (the reference topology when ``path`` is None).

    Whatever the file holds, the result is a Topology or a ConfigError/TopologyError with
    its position: ``load_yaml`` is the parse boundary, ``checking`` the one for the checks.
    """
    doc = load_yaml(path or REFERENCE, text)
    if not isinstance(doc.value, dict):
        raise doc.error((), "a topology file is a mapping with accounts and resources")
    spec = validate(TopologySpec, doc)
    with checking(doc):
        return _Builder(spec, doc).build()
