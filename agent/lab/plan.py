"""Topology -> LabPlan: namespaces, veths, addresses, routes and daemons, as plain data.

Pure and deterministic: no root, no I/O, same topology -> same plan. ``plprobe lab render``
prints it so the lab can be reviewed; ``agent.lab.lab`` applies it. The nftables rulesets
in the plan are written by ``agent.lab.nft`` (routers, endpoint ENIs) and
``agent.lab.nlbnat`` (NLB nodes); this module decides the layout they sit in.

Layout (docs/ARCHITECTURE.md "The lab and AWS"):

* one namespace per instance (``client-1``), per endpoint ENI (``<endpoint>-<az>``), per NLB
  node (``<nlb>-<az>``) and one router per VPC (``router-<vpc>``); the namespace is
  ``pl-<lab>-<node>``;
* every ENI is ``eth0`` in its namespace, a veth to its VPC router, with its IP as a /32 and
  the subnet's ``.1`` as gateway; the router has a /32 route per ENI. There is no shared
  bridge, so even same-subnet traffic crosses the router, where the controls are (the
  router's ``forward`` hook, see ``agent.lab.nft``);
* peered VPCs (active peering only) get a router-to-router veth; which traffic takes it is the
  route tables' decision: each VPC route table is a Linux routing table that the router
  consults for packets leaving an ENI of a subnet associated with it (a route to an inactive
  peering is a blackhole, as on AWS); every router has ``blackhole default``, so unrouted
  traffic disappears silently;
* the endpoint ENI namespace DNATs ``eni_ip:*`` (TCP) to the NLB node in the same AZ id,
  keeping the client source, and sends it back to its router, which policy-routes packets
  arriving from an ENI veth over the endpoint's "PrivateLink link" to the provider router.
  Replies coming back over that link are policy-routed by source (the NLB node IP) to the
  ENI namespace, whose conntrack un-DNATs them. The provider router sends the NLB's replies
  back over the link their connection came in on (a conntrack mark, ``PlLink.reply_mark``),
  never by address, so a consumer VPC may use the provider VPC's own range, as on AWS. The
  ENI <-> link legs inside the consumer router are AWS's backbone: no SG or NACL applies to
  them again;
* every NLB node runs a health checker (``agent.lab.healthd``) that keeps the node's ruleset
  (``agent.lab.nlbnat``) in step with target health;
* a listener whose target group has ``proxy_protocol_v2`` is redirected to a userspace proxy
  in the NLB node (``agent.lab.ppproxy``, one daemon per node that has such a listener) that
  prepends AWS's PROXY v2 header; the health checker then opens its checks with a LOCAL header;
* instances that serve ports run ``agent.lab.httpd``; every instance gets a hosts file with
  the endpoint DNS names it can resolve.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from agent.config import DEFAULT_RESPONDER_PORT
from agent.errors import RenderError
from agent.lab import nft, nlbnat, ppproxy
from agent.model import Endpoint, Instance, Subnet, Topology

STATE_ROOT = Path("/run/plprobe/lab")
NETNS_ETC = Path("/etc/netns")
LAB_NAME_RE = re.compile(r"^[a-z0-9]{1,12}$")
DEFAULT_NAME = "plprobe"

_ROUTER_SYSCTLS = (
    "net.ipv4.ip_forward=1",
    "net.ipv4.conf.all.rp_filter=0",
    "net.ipv4.conf.default.rp_filter=0",
    "net.ipv4.conf.all.send_redirects=0",
    "net.ipv4.conf.default.send_redirects=0",
)


def check_lab_name(name: str) -> str:
    """Lab names are short and dash-free so ``pl-<name>-`` prefixes never overlap."""
    if not LAB_NAME_RE.match(name):
        raise RenderError(f"lab name {name!r}: use 1-12 characters a-z and 0-9 (no dashes)")
    return name


def ns_prefix(lab: str) -> str:
    return f"pl-{lab}-"


def ns_name(lab: str, node: str) -> str:
    return f"{ns_prefix(lab)}{node}"


def state_dir(lab: str) -> Path:
    return STATE_ROOT / lab


def _ifname(prefix: str, lab: str, link_id: str) -> str:
    """Interface names are <= 15 characters: derive them from a hash of (lab, link)."""
    return prefix + hashlib.sha256(f"{lab}\0{link_id}".encode()).hexdigest()[:9]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-") or "x"


@dataclass(frozen=True)
class Node:
    """One namespace of the lab."""

    name: str
    ns: str
    kind: str  # "instance" | "endpoint-eni" | "nlb-node" | "router"
    role: str  # "client" | "target" | "instance" | "endpoint" | "nlb" | "router"
    account: str
    vpc: str
    vpc_id: str
    ip: str = ""
    subnet_id: str = ""
    subnet: str = ""
    az: str = ""
    az_id: str = ""
    #: AWS id of what this node stands for: instance id, ENI id, NLB node ENI id, VPC id
    resource: str = ""
    #: endpoint id (endpoint ENIs) or NLB id (NLB nodes)
    owner: str = ""
    #: the router-side interface of this ENI's veth
    veth: str = ""


@dataclass(frozen=True)
class Link:
    """A veth pair; ``id`` is readable (``eni:client-1``, ``peer:<pcx>``, ``pl:<vpce>``)."""

    id: str
    a_ns: str
    a_if: str
    b_ns: str
    b_if: str


@dataclass(frozen=True)
class ProcessSpec:
    """A lab daemon: ``python -m module *args`` inside ``node``'s namespace."""

    node: str
    kind: str  # "httpd" | "healthd" | "ppproxy"
    module: str
    args: tuple[str, ...]
    #: written as JSON to ``config_path`` before the process starts
    config: dict | None = None
    config_path: str = ""

    @property
    def key(self) -> str:
        return f"{self.node}.{self.kind}"


@dataclass
class LabPlan:
    name: str
    nodes: list[Node] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    #: namespace -> sysctl assignments, applied before links are created
    sysctls: dict[str, list[str]] = field(default_factory=dict)
    #: namespace -> ``ip`` argv lists (without ``ip -n NS``), in order
    ip: dict[str, list[list[str]]] = field(default_factory=dict)
    #: namespace -> nft ruleset text (``table ip plprobe``, replacing the previous one)
    nft: dict[str, str] = field(default_factory=dict)
    #: absolute path -> content (per-namespace hosts/resolv.conf under /etc/netns)
    files: dict[str, str] = field(default_factory=dict)
    processes: list[ProcessSpec] = field(default_factory=list)
    #: ids of the endpoints that exist in the lab
    endpoints: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def node(self, name: str) -> Node:
        for n in self.nodes:
            if n.name == name or n.ns == name:
                return n
        raise KeyError(name)

    def root_commands(self) -> list[list[str]]:
        """``ip`` commands run in the root namespace (they only create netns and veths)."""
        cmds = [["netns", "add", n.ns] for n in self.nodes]
        return cmds

    def link_commands(self) -> list[list[str]]:
        return [
            ["link", "add", lk.a_if, "netns", lk.a_ns, "type", "veth", *_peer(lk)]
            for lk in self.links
        ]

    def structure(self) -> dict:
        """What a re-render cannot change in place (a difference means: rebuild the lab)."""
        return {
            "nodes": [{**asdict(n), "role": ""} for n in self.nodes],
            "links": [asdict(lk) for lk in self.links],
            "sysctls": self.sysctls,
            "ip": self.ip,
        }

    def to_plain(self) -> dict:
        return asdict(self)

    @classmethod
    def from_plain(cls, data: dict) -> LabPlan:
        return cls(
            name=data["name"],
            nodes=[Node(**n) for n in data["nodes"]],
            links=[Link(**lk) for lk in data["links"]],
            sysctls=data["sysctls"],
            ip=data["ip"],
            nft=data["nft"],
            files=data["files"],
            processes=[ProcessSpec(**{**p, "args": tuple(p["args"])}) for p in data["processes"]],
            endpoints=list(data["endpoints"]),
            warnings=list(data["warnings"]),
        )

    def text(self) -> str:
        """A reviewable listing of everything the plan does."""
        out = [f"# lab {self.name}: {len(self.nodes)} namespaces, {len(self.links)} veth pairs"]
        for w in self.warnings:
            out.append(f"# warning: {w}")
        out.append("\n## namespaces")
        for n in self.nodes:
            ip = f" {n.ip}" if n.ip else ""
            out.append(f"{n.ns:40} {n.kind:13} {n.role:9} {n.account:10}{ip}")
        out.append("\n## ip (root namespace)")
        out += ["ip " + " ".join(c) for c in self.root_commands() + self.link_commands()]
        for ns, cmds in self.ip.items():
            out.append(f"\n## ip -n {ns}")
            if self.sysctls.get(ns):
                out.append(f"# sysctl -w {' '.join(self.sysctls[ns])}")
            out += ["ip " + " ".join(c) for c in cmds]
        for ns, text in self.nft.items():
            out.append(f"\n## nft -n {ns}\n{text.rstrip()}")
        for path, text in self.files.items():
            out.append(f"\n## file {path}\n{text.rstrip()}")
        for p in self.processes:
            out.append(f"\n## process {p.key}: python -m {p.module} {' '.join(p.args)}")
        return "\n".join(out) + "\n"


def _peer(lk: Link) -> list[str]:
    return ["peer", "name", lk.b_if, "netns", lk.b_ns]


# --- which endpoints exist ----------------------------------------------------------------


def creatable_endpoints(topology: Topology) -> tuple[list[str], list[str]]:
    """Endpoints AWS would let the consumer create now, and a warning for each refusal."""
    ok: list[str] = []
    warnings: list[str] = []
    for ep in sorted(topology.endpoints.values(), key=lambda e: e.name):
        svc = topology.endpoint_services.get(ep.service_id)
        if svc is None:
            ok.append(ep.id)  # provider side not visible: nothing to refuse with
            continue
        requester = ep.requester or _consumer_root(topology, ep)
        if topology.service_allows(svc, requester):
            ok.append(ep.id)
        else:
            warnings.append(
                f"endpoint {ep.name}: AWS would refuse CreateVpcEndpoint "
                f"({requester} is not an allowed principal of service {svc.name}); "
                "the lab renders it without that endpoint (no ENI, no DNS name)"
            )
    return ok, warnings


def _consumer_root(topology: Topology, ep: Endpoint) -> str:
    acct = topology.accounts.get(ep.account)
    return acct.root_arn if acct else ""


# --- rendering ----------------------------------------------------------------------------


@dataclass
class _Ctx:
    topo: Topology
    lab: str
    state: Path
    endpoints: list[str]
    nodes: list[Node] = field(default_factory=list)
    links: list[Link] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    #: router node name per VPC id
    routers: dict[str, Node] = field(default_factory=dict)
    #: router ns -> ip commands
    router_ip: dict[str, list[list[str]]] = field(default_factory=dict)
    #: (router ns, peering id) -> (the router's interface on the peering, the peer's address)
    peer_links: dict[tuple[str, str], tuple[str, str]] = field(default_factory=dict)
    link_net: int = 0

    def next_link_net(self) -> tuple[str, str]:
        self.link_net += 1
        if self.link_net > 250:
            raise RenderError("more than 250 router-to-router links")
        return f"169.254.{self.link_net}.1", f"169.254.{self.link_net}.2"


def render(
    topology: Topology,
    lab: str = DEFAULT_NAME,
    *,
    endpoints: list[str] | None = None,
    state: Path | None = None,
) -> LabPlan:
    """The complete plan for ``topology``; ``endpoints`` = ids of existing endpoints.

    Without ``endpoints`` the plan is the one of ``lab up``: endpoints whose requester the
    service does not allow are left out, with a warning.
    """
    check_lab_name(lab)
    warnings: list[str] = []
    if endpoints is None:
        endpoints, warnings = creatable_endpoints(topology)
    ctx = _Ctx(
        topo=topology,
        lab=lab,
        state=state or state_dir(lab),
        endpoints=[e for e in endpoints if e in topology.endpoints],
        warnings=list(warnings),
    )
    _check(ctx)
    _routers(ctx)
    eni_nodes = _enis(ctx)
    _peerings(ctx)
    _route_tables(ctx, eni_nodes)
    pl_links = _privatelink(ctx)
    plan = LabPlan(name=lab, warnings=ctx.warnings, endpoints=sorted(ctx.endpoints))
    plan.nodes = ctx.nodes
    plan.links = ctx.links
    for node in ctx.nodes:
        if node.kind == "router":
            plan.sysctls[node.ns] = list(_ROUTER_SYSCTLS)
            plan.ip[node.ns] = ctx.router_ip[node.ns]
        else:
            if node.kind in ("endpoint-eni", "nlb-node"):
                plan.sysctls[node.ns] = list(_ROUTER_SYSCTLS)
            plan.ip[node.ns] = _eni_ip_commands(ctx, node)
    for router in sorted(ctx.routers.values(), key=lambda n: n.name):
        plan.nft[router.ns] = nft.router_ruleset(
            topology, router, eni_nodes, pl_links, ctx.warnings
        )
    for node in eni_nodes:
        if node.kind == "endpoint-eni":
            target = _dnat_target(topology, node)
            plan.nft[node.ns] = nft.endpoint_ruleset(topology, node, target, ctx.warnings)
    nlb_configs = _nlb_configs(ctx, eni_nodes)
    for node in eni_nodes:
        if node.kind == "nlb-node":
            cfg = nlb_configs[node.name]
            plan.nft[node.ns] = nlbnat.ruleset(cfg, None)
            plan.processes.append(
                ProcessSpec(
                    node=node.name,
                    kind="healthd",
                    module="agent.lab.healthd",
                    args=(
                        "--config",
                        str(ctx.state / "config" / f"{node.name}.healthd.json"),
                        "--state",
                        str(ctx.state / "health" / f"{node.name}.json"),
                    ),
                    config=cfg.to_plain(),
                    config_path=str(ctx.state / "config" / f"{node.name}.healthd.json"),
                )
            )
            if nlbnat.proxy_ports(cfg):
                plan.processes.append(_ppproxy_spec(ctx, node, cfg))
    for node in eni_nodes:
        if node.kind != "instance":
            continue
        plan.files[str(NETNS_ETC / node.ns / "hosts")] = _hosts(ctx, node)
        plan.files[str(NETNS_ETC / node.ns / "resolv.conf")] = (
            "# plprobe lab: names resolve from /etc/hosts only; no nameserver is reachable\n"
            "options timeout:1 attempts:1\n"
        )
        inst = topology.instances[node.resource]
        if set(inst.services) - {DEFAULT_RESPONDER_PORT}:
            args: list[str] = ["--node", node.name]
            args += ["--log", str(ctx.state / "logs" / f"{node.name}.requests.jsonl")]
            args += ["--ready", str(ctx.state / "run" / f"{node.name}.httpd.ready")]
            # the responder port is served by the provider agent (lab up --with-agents)
            for port in sorted(set(inst.services) - {DEFAULT_RESPONDER_PORT}):
                args += ["--port", str(port)]
            plan.processes.append(
                ProcessSpec(
                    node=node.name, kind="httpd", module="agent.lab.httpd", args=tuple(args)
                )
            )
    return plan


def _check(ctx: _Ctx) -> None:
    topo = ctx.topo
    for ep_id in ctx.endpoints:
        ep = topo.endpoints[ep_id]
        svc = topo.endpoint_services.get(ep.service_id)
        nlb = topo.nlb_of_service(svc) if svc else None
        if nlb is None:
            continue
        # overlapping VPC CIDRs are fine (replies are routed by connection, PlLink.reply_mark);
        # an NLB node address inside the endpoint's own subnet is not: the ENI would look for
        # it on its own link instead of sending it over PrivateLink
        for eni in ep.enis:
            net = ipaddress.ip_network(topo.subnets[eni.subnet_id].cidr)
            for node in nlb.nodes:
                if ipaddress.ip_address(node.ip) in net:
                    raise RenderError(
                        f"endpoint {ep.name}: NLB node {node.ip} is inside the endpoint's "
                        f"subnet {net}; the lab needs the two subnets' addresses disjoint "
                        "(overlapping VPC CIDRs are fine)"
                    )
    for subnet in topo.subnets.values():
        gw = _gateway(subnet)
        for inst in topo.instances.values():
            if inst.ip == gw:
                raise RenderError(
                    f"instance {inst.name}: {inst.ip} is the subnet's router address "
                    "(AWS reserves the first four addresses of a subnet)"
                )


def _gateway(subnet: Subnet) -> str:
    return str(ipaddress.ip_network(subnet.cidr).network_address + 1)


def _reachable_cidrs(topo: Topology, vpc_id: str) -> list[str]:
    """The VPC's CIDR and its active peers': every source that can reach an ENI in it."""
    out = [topo.vpcs[vpc_id].cidr]
    for other in sorted(topo.vpcs.values(), key=lambda v: v.name):
        if other.id != vpc_id and topo.routed(vpc_id, other.id):
            out.append(other.cidr)
    return out


def _routers(ctx: _Ctx) -> None:
    for vpc in sorted(ctx.topo.vpcs.values(), key=lambda v: v.name):
        name = f"router-{_slug(vpc.name)}"
        node = Node(
            name=name,
            ns=ns_name(ctx.lab, name),
            kind="router",
            role="router",
            account=vpc.account,
            vpc=vpc.name,
            vpc_id=vpc.id,
            resource=vpc.id,
        )
        ctx.routers[vpc.id] = node
        ctx.router_ip[node.ns] = [["link", "set", "lo", "up"]]


def _enis(ctx: _Ctx) -> list[Node]:
    topo = ctx.topo
    consumer = {a.name for a in topo.accounts.values() if a.role == "consumer"}
    target_ids = {t.instance_id for tg in topo.target_groups.values() for t in tg.targets}
    pending: list[tuple[str, str, str, str, str, str, str]] = []
    # (name, kind, role, account, subnet_id, ip, resource, owner)
    for inst in sorted(topo.instances.values(), key=lambda i: i.name):
        role = (
            "client"
            if inst.account in consumer
            else ("target" if inst.id in target_ids else "instance")
        )
        pending.append((_slug(inst.name), "instance", role, inst.subnet_id, inst.ip, inst.id, ""))
    for ep_id in sorted(ctx.endpoints, key=lambda e: topo.endpoints[e].name):
        ep = topo.endpoints[ep_id]
        for eni in ep.enis:
            az = topo.subnets[eni.subnet_id].az
            name = f"{_slug(ep.name)}-{_slug(az)}"
            pending.append((name, "endpoint-eni", "endpoint", eni.subnet_id, eni.ip, eni.id, ep.id))
    for nlb in sorted(topo.nlbs.values(), key=lambda n: n.name):
        for nn in nlb.nodes:
            az = topo.subnets[nn.subnet_id].az
            name = f"{_slug(nlb.name)}-{_slug(az)}"
            pending.append((name, "nlb-node", "nlb", nn.subnet_id, nn.ip, nn.eni_id, nlb.id))
    seen: set[str] = {r.name for r in ctx.routers.values()}
    out: list[Node] = []
    for name, kind, role, subnet_id, ip, resource, owner in pending:
        if name in seen:
            raise RenderError(f"two lab nodes would be named {name!r}; rename one resource")
        seen.add(name)
        subnet = topo.subnets[subnet_id]
        vpc = topo.vpcs[subnet.vpc_id]
        router = ctx.routers[vpc.id]
        veth = _ifname("v", ctx.lab, f"eni:{name}")
        node = Node(
            name=name,
            ns=ns_name(ctx.lab, name),
            kind=kind,
            role=role,
            account=subnet.account,
            vpc=vpc.name,
            vpc_id=vpc.id,
            ip=ip,
            subnet_id=subnet.id,
            subnet=subnet.name,
            az=subnet.az,
            az_id=subnet.az_id,
            resource=resource,
            owner=owner,
            veth=veth,
        )
        out.append(node)
        ctx.links.append(Link(f"eni:{name}", node.ns, "eth0", router.ns, veth))
        gw = _gateway(subnet)
        ctx.router_ip[router.ns] += [
            ["link", "set", veth, "up"],
            ["addr", "add", f"{gw}/32", "dev", veth],
            ["route", "add", f"{ip}/32", "dev", veth],
        ]
    ctx.nodes.extend(sorted(ctx.routers.values(), key=lambda n: n.name))
    ctx.nodes.extend(out)
    return out


def _eni_ip_commands(ctx: _Ctx, node: Node) -> list[list[str]]:
    gw = _gateway(ctx.topo.subnets[node.subnet_id])
    return [
        ["link", "set", "lo", "up"],
        ["link", "set", "eth0", "up"],
        ["addr", "add", f"{node.ip}/32", "dev", "eth0"],
        ["route", "add", gw, "dev", "eth0", "scope", "link"],
        ["route", "add", "default", "via", gw, "dev", "eth0"],
    ]


def _peerings(ctx: _Ctx) -> None:
    topo = ctx.topo
    for pcx in sorted(topo.peerings.values(), key=lambda p: p.name):
        if pcx.status.lower() != "active":
            continue
        if pcx.requester_vpc_id not in ctx.routers or pcx.accepter_vpc_id not in ctx.routers:
            continue
        ra, rb = ctx.routers[pcx.requester_vpc_id], ctx.routers[pcx.accepter_vpc_id]
        ia, ib = (
            _ifname("p", ctx.lab, f"peer:{pcx.id}:a"),
            _ifname("p", ctx.lab, f"peer:{pcx.id}:b"),
        )
        ctx.links.append(Link(f"peer:{pcx.name}", ra.ns, ia, rb.ns, ib))
        a_ip, b_ip = ctx.next_link_net()
        for router, ifn, mine, peer, other in (
            (ra, ia, a_ip, b_ip, rb),
            (rb, ib, b_ip, a_ip, ra),
        ):
            ctx.peer_links[(router.ns, pcx.id)] = (ifn, peer)
            ctx.router_ip[router.ns] += [
                ["link", "set", ifn, "up"],
                ["addr", "add", f"{mine}/30", "dev", ifn],
            ]
            if not any(rt.vpc_id == router.vpc_id for rt in topo.route_tables.values()):
                # a topology without route tables: the peering routes itself (older callers)
                ctx.router_ip[router.ns].append(
                    ["route", "add", topo.vpcs[other.vpc_id].cidr, "via", peer, "dev", ifn]
                )


#: Linux routing-table numbers of the VPC route tables (PrivateLink tables use 101-199)
ROUTE_TABLE_BASE = 200
#: rule priorities: PrivateLink legs (1000/1001), then the VPC's local route, then the subnet's
#: route table
LOCAL_PRIORITY, ROUTE_TABLE_PRIORITY = "1500", "2000"


def _route_tables(ctx: _Ctx, enis: list[Node]) -> None:
    """Each VPC route table as a Linux routing table, chosen by the ENI's subnet.

    AWS routes a packet by the route table of the subnet it leaves: the router looks the
    destination up in the main table (its ENIs' /32s) when it is in the VPC (the local route),
    else in the subnet's table. A route to a peering that is not active, or to a gateway the
    lab does not emulate, is a blackhole; so is everything no route covers.
    """
    topo = ctx.topo
    number = ROUTE_TABLE_BASE
    for rt in sorted(topo.route_tables.values(), key=lambda r: r.name):
        router = ctx.routers.get(rt.vpc_id)
        if router is None:
            continue
        number += 1
        table = str(number)
        cmds = ctx.router_ip[router.ns]
        has_default = False
        for route in rt.routes:
            if route.target == "local":
                continue
            has_default |= route.destination in ("0.0.0.0/0", "::/0")
            link = ctx.peer_links.get((router.ns, route.target))
            if topo.route_state(route) == "active" and link is not None:
                ifn, peer = link
                cmds.append(["route", "add", route.destination, "via", peer, "dev", ifn])
                cmds[-1] += ["onlink", "table", table]
                continue
            if link is None and not route.target.startswith("pcx-"):
                ctx.warnings.append(
                    f"route table {rt.name}: the route to {route.destination} via "
                    f"{route.target} is not emulated (a blackhole in the lab)"
                )
            cmds.append(["route", "add", "blackhole", route.destination, "table", table])
        if not has_default:
            cmds.append(["route", "add", "blackhole", "default", "table", table])
        cidr = topo.vpcs[rt.vpc_id].cidr
        for node in enis:
            chosen = topo.route_table_of_subnet(node.subnet_id)
            if node.vpc_id != rt.vpc_id or chosen is None or chosen.id != rt.id:
                continue
            cmds.append(["rule", "add", "iif", node.veth, "to", cidr, "lookup", "main"])
            cmds[-1] += ["priority", LOCAL_PRIORITY]
            cmds.append(["rule", "add", "iif", node.veth, "lookup", table])
            cmds[-1] += ["priority", ROUTE_TABLE_PRIORITY]


#: the first PrivateLink reply mark (one per link; ``PlLink.reply_mark``)
PL_REPLY_MARK = 0x700


@dataclass(frozen=True)
class PlLink:
    """One endpoint's PrivateLink link: the veth pair between the two VPC routers."""

    endpoint_id: str
    consumer_router: str
    consumer_if: str
    provider_router: str
    provider_if: str
    nlb_ips: tuple[str, ...]
    #: the provider router marks the connections that arrive over this link with it and
    #: routes their replies by the mark (``ip rule fwmark``), not by address: the consumer's
    #: CIDRs may overlap the provider VPC's, as two accounts' often do
    reply_mark: int = 0


def _privatelink(ctx: _Ctx) -> list[PlLink]:
    """One link per existing endpoint between its VPC router and its NLB's VPC router."""
    topo = ctx.topo
    out: list[PlLink] = []
    table = 100
    for ep_id in sorted(ctx.endpoints, key=lambda e: topo.endpoints[e].name):
        ep = topo.endpoints[ep_id]
        svc = topo.endpoint_services.get(ep.service_id)
        nlb = topo.nlb_of_service(svc) if svc else None
        if nlb is None or not nlb.nodes:
            ctx.warnings.append(f"endpoint {ep.name}: no NLB behind its service; the ENI drops")
            continue
        rc, rp = ctx.routers[ep.vpc_id], ctx.routers[nlb.vpc_id]
        ic, ip_ = _ifname("l", ctx.lab, f"pl:{ep.id}:c"), _ifname("l", ctx.lab, f"pl:{ep.id}:p")
        ctx.links.append(Link(f"pl:{ep.name}", rc.ns, ic, rp.ns, ip_))
        c_ip, p_ip = ctx.next_link_net()
        nlb_ips = tuple(n.ip for n in nlb.nodes)
        pl = PlLink(ep.id, rc.ns, ic, rp.ns, ip_, nlb_ips, PL_REPLY_MARK + len(out))
        out.append(pl)
        cmds = ctx.router_ip[rc.ns]
        cmds += [["link", "set", ic, "up"], ["addr", "add", f"{c_ip}/30", "dev", ic]]
        # ENI -> provider: only packets arriving from this endpoint's ENI veths
        table += 1
        eni_nodes = [n for n in ctx.nodes if n.owner == ep.id and n.kind == "endpoint-eni"]
        for n in eni_nodes:
            cmds.append(["rule", "add", "iif", n.veth, "lookup", str(table), "priority", "1000"])
        for nip in nlb_ips:
            cmds.append(["route", "add", f"{nip}/32", "via", p_ip, "dev", ic, "table", str(table)])
        # provider -> ENI: replies by source NLB node IP to the ENI of the same AZ id
        for n in eni_nodes:
            node_ip = _nlb_ip_for_az(topo, nlb.id, n.az_id)
            if node_ip is None:
                continue
            table += 1
            cmds.append(f"rule add iif {ic} from {node_ip} lookup {table} priority 1001".split())
            cmds.append(f"route add default via {n.ip} dev {n.veth} onlink table {table}".split())
        pcmds = ctx.router_ip[rp.ns]
        pcmds += [["link", "set", ip_, "up"], ["addr", "add", f"{p_ip}/30", "dev", ip_]]
        # provider -> consumer: the replies of connections that came over this link (marked
        # by nft.router_ruleset), whatever their address: the consumer may overlap the provider
        table += 1
        pcmds.append(f"rule add fwmark {pl.reply_mark} lookup {table} priority 1000".split())
        for cidr in _reachable_cidrs(topo, ep.vpc_id):
            pcmds.append(["route", "add", cidr, "via", c_ip, "dev", ip_, "table", str(table)])
    for router in ctx.routers.values():
        ctx.router_ip[router.ns].append(["route", "add", "blackhole", "default"])
    return out


def _dnat_target(topo: Topology, node: Node) -> str | None:
    """The NLB node an endpoint ENI forwards to: the one in the ENI's AZ id, if any."""
    ep = topo.endpoints[node.owner]
    svc = topo.endpoint_services.get(ep.service_id)
    nlb = topo.nlb_of_service(svc) if svc else None
    return _nlb_ip_for_az(topo, nlb.id, node.az_id) if nlb else None


def _nlb_ip_for_az(topo: Topology, nlb_id: str, az_id: str) -> str | None:
    for nn in topo.nlbs[nlb_id].nodes:
        if topo.subnets[nn.subnet_id].az_id == az_id:
            return nn.ip
    return None


# --- NLB nodes ----------------------------------------------------------------------------


def _nlb_configs(ctx: _Ctx, enis: list[Node]) -> dict[str, nlbnat.NodeConfig]:
    topo = ctx.topo
    out: dict[str, nlbnat.NodeConfig] = {}
    for node in enis:
        if node.kind != "nlb-node":
            continue
        nlb = topo.nlbs[node.owner]
        node_azs = {topo.subnets[n.subnet_id].az_id for n in nlb.nodes}
        listeners: list[nlbnat.NatListener] = []
        checked: dict[str, nlbnat.NatTarget] = {}
        for li in topo.listeners_of(nlb.id):
            if li.protocol.upper() not in ("TCP", "TCP_UDP"):
                ctx.warnings.append(
                    f"NLB {nlb.name} listener {li.port}/{li.protocol}: only TCP is emulated"
                )
            tg = topo.target_groups.get(li.target_group_id or "")
            cands: list[nlbnat.NatTarget] = []
            if tg is not None:
                for t in tg.targets:
                    inst = topo.instances.get(t.instance_id)
                    if inst is None:
                        continue
                    sub = topo.subnets[inst.subnet_id]
                    nt = nlbnat.NatTarget(
                        tg_id=tg.id,
                        tg_name=tg.name,
                        instance_id=inst.id,
                        instance=inst.name,
                        ip=inst.ip,
                        port=tg.target_port(t),
                        health_port=tg.health_port(t),
                        hc_protocol=tg.health_check.protocol.upper(),
                        hc_path=tg.health_check.path,
                        az=sub.az,
                        az_id=sub.az_id,
                        proxy_v2=tg.proxy_protocol_v2,
                    )
                    checked[f"{tg.id}|{nt.key}"] = nt
                    in_az = sub.az_id == node.az_id
                    if (nlb.cross_zone and sub.az_id in node_azs) or in_az:
                        cands.append(nt)
            listeners.append(
                nlbnat.NatListener(
                    port=li.port,
                    tg_id=tg.id if tg else None,
                    proxy_v2=bool(tg and tg.proxy_protocol_v2),
                    candidates=tuple(cands),
                )
            )
        out[node.name] = nlbnat.NodeConfig(
            node=node.name,
            nlb_id=nlb.id,
            nlb=nlb.name,
            ip=node.ip,
            az=node.az,
            az_id=node.az_id,
            no_listener=topo.lab.no_listener,
            no_target_in_az=topo.lab.no_target_in_az,
            interval_s=topo.lab.health_check_interval_s,
            threshold=topo.lab.health_check_threshold,
            listeners=tuple(listeners),
            checked=tuple(checked[k] for k in sorted(checked)),
        )
    return out


def _eni_routes(ctx: _Ctx, node: Node) -> tuple[ppproxy.EniRoute, ...]:
    """The endpoint ENIs that DNAT to NLB node ``node``, and the consumer CIDRs behind each.

    The PROXY v2 proxy recovers the header's destination (the ENI IP) from the client's
    source by these CIDRs: the key the lab's PrivateLink reply routing already uses.
    """
    topo = ctx.topo
    out: list[ppproxy.EniRoute] = []
    for ep_id in sorted(ctx.endpoints, key=lambda e: topo.endpoints[e].name):
        ep = topo.endpoints[ep_id]
        svc = topo.endpoint_services.get(ep.service_id)
        nlb = topo.nlb_of_service(svc) if svc else None
        if nlb is None or nlb.id != node.owner:
            continue
        for eni in ep.enis:
            if _nlb_ip_for_az(topo, nlb.id, topo.subnets[eni.subnet_id].az_id) == node.ip:
                cidrs = tuple(_reachable_cidrs(topo, ep.vpc_id))
                out.append(ppproxy.EniRoute(endpoint_id=ep.id, eni_ip=eni.ip, cidrs=cidrs))
    for i, a in enumerate(out):
        for b in out[i + 1 :]:
            if any(
                ipaddress.ip_network(x).overlaps(ipaddress.ip_network(y))
                for x in a.cidrs
                for y in b.cidrs
            ):
                ctx.warnings.append(
                    f"NLB node {node.name}: endpoints {a.endpoint_id} and {b.endpoint_id} are "
                    "reached from overlapping consumer CIDRs; the lab cannot tell their "
                    "traffic apart (PROXY v2 destination and reply routing follow the first)"
                )
    return tuple(out)


def _ppproxy_spec(ctx: _Ctx, node: Node, cfg: nlbnat.NodeConfig) -> ProcessSpec:
    pcfg = ppproxy.ProxyConfig.for_node(cfg, _eni_routes(ctx, node))
    config_path = str(ctx.state / "config" / f"{node.name}.ppproxy.json")
    return ProcessSpec(
        node=node.name,
        kind="ppproxy",
        module="agent.lab.ppproxy",
        args=(
            "--config",
            config_path,
            "--health",
            str(ctx.state / "health" / f"{node.name}.json"),
            "--ready",
            str(ctx.state / "run" / f"{node.name}.ppproxy.ready"),
        ),
        config=pcfg.to_plain(),
        config_path=config_path,
    )


# --- DNS ----------------------------------------------------------------------------------


def _hosts(ctx: _Ctx, node: Node) -> str:
    """Regional and zonal names are public DNS names; private DNS only inside the VPC."""
    topo = ctx.topo
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines.append(f"{node.ip}\t{node.name}")
    vpc = topo.vpcs[node.vpc_id]
    if vpc.enable_dns_support:
        for ep_id in sorted(ctx.endpoints, key=lambda e: topo.endpoints[e].name):
            ep = topo.endpoints[ep_id]
            svc = topo.endpoint_services.get(ep.service_id)
            private = svc.private_dns_name if svc else None
            for name, ips in topo.endpoint_dns_names(ep).items():
                if name == private and ep.vpc_id != node.vpc_id:
                    continue
                lines += [f"{ip}\t{name}" for ip in ips]
    return "\n".join(lines) + "\n"


def instance_of_node(topology: Topology, node: Node) -> Instance | None:
    return topology.instances.get(node.resource) if node.kind == "instance" else None
