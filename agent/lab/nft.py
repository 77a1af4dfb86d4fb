"""The nftables rulesets of the lab's routers and endpoint ENIs, as text.

Pure like the rest of the plan (``agent.lab.plan`` calls these while rendering; the NLB
nodes' rulesets come from ``agent.lab.nlbnat``). Every ruleset is one ``table ip plprobe``
that replaces the previous one atomically (``nft -f``), so a re-render swaps it in place.

* security groups and NACLs live in the router's ``forward`` hook, keyed by the veth that
  leads to each ENI (never in the ENI's own namespace: AF_PACKET sends bypass the sender's
  output hook and sniffers see packets before the receiver's input hook). Order in the
  ``forward`` chain: PrivateLink legs, NACLs (stateless, also cut established flows),
  ``ct state established,related accept``, then the source ENI's SG egress and the
  destination ENI's SG ingress (``return`` on allow, ``drop`` at the end: silent);
* the PrivateLink legs of the consumer router pass only between the endpoint's ENI veths and
  its link; the provider router lets a link reach the NLB nodes only;
* the provider router sees NLB SG ingress (client source; skipped for PrivateLink traffic
  when the enforce flag is off), NLB SG egress and target SG ingress as three forward checks;
* the endpoint ENI's own ruleset DNATs to the NLB node of its AZ id (or resets/drops when the
  endpoint is not available).

NACLs apply to traffic crossing the subnet boundary: ``nacl_<subnet>_in`` on the way into one
of the subnet's veths from anywhere outside the subnet (including a PrivateLink link on the
provider side, unless ``LabSettings.nlb_subnet_nacl_on_privatelink`` is off),
``nacl_<subnet>_out`` on the way out of them; intra-subnet traffic is exempt. Which PrivateLink
legs are checked comes from ``agent.pathhops``, the declaration the analysis walks too.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from agent import pathhops
from agent.lab import nlbnat
from agent.model import Nacl, Rule, Topology

if TYPE_CHECKING:  # types only: agent.lab.plan calls this module while rendering
    from agent.lab.plan import Node, PlLink

TABLE = "plprobe"


def _ident(text: str) -> str:
    """An nft identifier (chain/set name) from a human name."""
    return re.sub(r"[^A-Za-z0-9_]+", "_", text)


def _q(names: list[str]) -> str:
    if len(names) == 1:
        return f'"{names[0]}"'
    return "{ " + ", ".join(f'"{n}"' for n in names) + " }"


def _addr(values: list[str]) -> str:
    return values[0] if len(values) == 1 else "{ " + ", ".join(values) + " }"


def _proto_ports(protocol: str, from_port: int, to_port: int) -> str:
    if protocol == "-1":
        return ""
    if protocol in ("tcp", "udp"):
        if from_port <= 0 and to_port >= 65535:
            return f"meta l4proto {protocol}"
        ports = str(from_port) if from_port == to_port else f"{from_port}-{to_port}"
        return f"meta l4proto {protocol} th dport {ports}"
    if protocol == "icmp":
        return "meta l4proto icmp"
    return f"meta l4proto {protocol}"


def _comment(text: str) -> str:
    text = text.replace('"', "'")[:120]
    return f'comment "{text}"'


class _Sets:
    """SG references render to named sets of member IPs (``sg_<name>``); managed prefix
    lists to named interval sets of their CIDRs (``pl_<name>``), as AWS resolves both."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.used: dict[str, str] = {}
        self.used_lists: dict[str, str] = {}
        names = [g.name for g in topo.security_groups.values()]
        self.names = {
            g.id: _ident(f"sg_{g.name}" if names.count(g.name) == 1 else f"sg_{g.name}_{g.id}")
            for g in topo.security_groups.values()
        }

    def ref(self, sg_id: str) -> str:
        name = self.names.get(sg_id) or _ident(f"sg_{sg_id}")
        self.used[sg_id] = name
        return name

    def prefix_list(self, pl_id: str) -> str | None:
        """The set of an IPv4 list the topology holds; ``None``: the lab cannot match it."""
        plist = self.topo.prefix_lists.get(pl_id)
        if plist is None or plist.address_family != "IPv4":
            return None
        name = _ident(f"pl_{plist.name}_{pl_id[-6:]}")
        self.used_lists[pl_id] = name
        return name

    def render(self) -> list[str]:
        out = []
        for sg_id, name in sorted(self.used.items(), key=lambda kv: kv[1]):
            ips = self.topo.sg_member_ips(sg_id)
            elems = f" elements = {{ {', '.join(ips)} }};" if ips else ""
            out.append(f"  set {name} {{ type ipv4_addr; flags interval;{elems} }}")
        for pl_id, name in sorted(self.used_lists.items(), key=lambda kv: kv[1]):
            cidrs = self.topo.prefix_lists[pl_id].cidrs
            elems = f" elements = {{ {', '.join(cidrs)} }};" if cidrs else ""
            out.append(f"  set {name} {{ type ipv4_addr; flags interval;{elems} }}")
        return out


def _sg_chain(
    topo: Topology,
    sets: _Sets,
    chain: str,
    sg_ids: list[str],
    egress: bool,
    prelude: list[str],
    warnings: list[str],
) -> list[str]:
    lines = [f"  chain {chain} {{", *(f"    {p}" for p in prelude)]
    field_ = "daddr" if egress else "saddr"
    for sg_id in sg_ids:
        sg = topo.security_groups.get(sg_id)
        if sg is None:
            continue
        for rule in sg.egress() if egress else sg.ingress():
            lines += [f"    {r}" for r in _sg_rule(sets, sg.name, rule, field_, warnings)]
    lines += ["    drop", "  }"]
    return lines


def _sg_rule(sets: _Sets, sg_name: str, rule: Rule, field_: str, warnings: list[str]) -> list[str]:
    pp = _proto_ports(rule.protocol, rule.from_port, rule.to_port)
    com = _comment(f"{sg_name}: {rule.id}")
    matches: list[str] = []
    if rule.cidrs:
        matches.append(f"ip {field_} {_addr(list(rule.cidrs))}")
    if rule.sg_ref:
        matches.append(f"ip {field_} @{sets.ref(rule.sg_ref)}")
    if rule.prefix_list:
        pl_set = sets.prefix_list(rule.prefix_list)
        if pl_set is None:
            warnings.append(
                f"{sg_name}: rule {rule.id}: prefix list {rule.prefix_list} is not in the "
                "topology (or not IPv4): the lab cannot match it (no match)"
            )
        else:
            matches.append(f"ip {field_} @{pl_set}")
    return [" ".join(x for x in (m, pp, "return", com) if x) for m in matches]


def _nacl_chain(
    nacl: Nacl, chain: str, subnet_ifs: list[str], egress: bool, exempt_ifs: list[str]
) -> list[str]:
    """``exempt_ifs``: links whose traffic the NACL does not see (``agent.pathhops``)."""
    field_ = "daddr" if egress else "saddr"
    other = "oifname" if egress else "iifname"
    lines = [f"  chain {chain} {{", f"    {other} {_q(subnet_ifs)} return"]
    if exempt_ifs:
        lines.append(
            f"    {other} {_q(exempt_ifs)} return "
            + _comment("PrivateLink traffic: not this subnet's NACL (lab setting)")
        )
    for e in nacl.ordered(egress):
        match = "" if e.cidr in ("0.0.0.0/0",) else f"ip {field_} {e.cidr}"
        pp = _proto_ports(e.protocol, e.from_port, e.to_port)
        verdict = "return" if e.action == "allow" else "drop"
        com = _comment(f"{nacl.name} #{e.rule_number} {e.action}")
        lines.append("    " + " ".join(x for x in (match, pp, verdict, com) if x))
    lines += ['    drop comment "NACL final deny"', "  }"]
    return lines


def _pl_nlb(topo: Topology, pl: PlLink) -> str | None:
    """The NLB id behind a PrivateLink link."""
    ep = topo.endpoints.get(pl.endpoint_id)
    svc = topo.endpoint_services.get(ep.service_id) if ep else None
    nlb = topo.nlb_of_service(svc) if svc else None
    return nlb.id if nlb else None


def router_ruleset(
    topo: Topology, router: Node, enis: list[Node], pls: list[PlLink], warnings: list[str]
) -> str:
    """The ``forward`` ruleset of ``router``: PrivateLink legs, NACLs, then SGs.

    ``enis`` are all the ENI nodes of the lab (those of the router's VPC are checked here);
    ``warnings`` collects what the lab cannot emulate (prefix lists it does not hold).
    """
    vpc_id = router.vpc_id
    sets = _Sets(topo)
    local = [n for n in enis if n.vpc_id == vpc_id]
    chains: list[str] = []
    fwd: list[str] = []
    # PrivateLink legs: the endpoint ENI <-> link legs are AWS's backbone unless a hop at the
    # endpoint is declared on the privatelink leg (agent.pathhops)
    backbone = not pathhops.hops(leg="privatelink", at="endpoint", settings=topo.lab)
    for pl in pls:
        if pl.consumer_router == router.ns:
            ep_ifs = [n.veth for n in local if n.owner == pl.endpoint_id]
            if ep_ifs and backbone:
                fwd.append(
                    f"iifname {_q(ep_ifs)} oifname {_q([pl.consumer_if])} accept "
                    + _comment("PrivateLink: endpoint ENI to provider")
                )
                fwd.append(
                    f"iifname {_q([pl.consumer_if])} oifname {_q(ep_ifs)} accept "
                    + _comment("PrivateLink: provider replies to the endpoint ENI")
                )
            fwd.append(f'iifname "{pl.consumer_if}" drop')
        if pl.provider_router == router.ns:
            fwd.append(
                f'iifname "{pl.provider_if}" ip daddr != {_addr(list(pl.nlb_ips))} drop '
                + _comment("PrivateLink reaches the NLB only")
            )
    # NACLs (stateless: before conntrack)
    by_subnet: dict[str, list[Node]] = {}
    for n in local:
        by_subnet.setdefault(n.subnet_id, []).append(n)
    nlb_nacl = pathhops.enforced("privatelink", "nlb", "nacl", topo.lab)
    for subnet_id, members in sorted(by_subnet.items(), key=lambda kv: topo.subnets[kv[0]].name):
        nacl = topo.nacl_of_subnet(subnet_id)
        if nacl is None:
            continue
        ifs = sorted(n.veth for n in members)
        owners = {n.owner for n in members if n.kind == "nlb-node"}
        exempt = (
            []
            if nlb_nacl
            else sorted(
                pl.provider_if
                for pl in pls
                if pl.provider_router == router.ns and _pl_nlb(topo, pl) in owners
            )
        )
        base = _ident(f"nacl_{topo.subnets[subnet_id].name}")
        fwd.append(f"iifname {_q(ifs)} jump {base}_out")
        fwd.append(f"oifname {_q(ifs)} jump {base}_in")
        chains += _nacl_chain(nacl, f"{base}_out", ifs, True, exempt)
        chains += _nacl_chain(nacl, f"{base}_in", ifs, False, exempt)
    fwd.append("ct state established,related accept")
    # SGs (stateful): egress of the source ENI, then ingress of the destination ENI
    for n in local:
        chain = _ident(n.name)
        if n.kind == "instance":
            sg_ids = topo.instances[n.resource].sg_ids
            fwd.append(f'iifname "{n.veth}" jump eg_{chain}')
            fwd.append(f'oifname "{n.veth}" jump in_{chain}')
            chains += _sg_chain(topo, sets, f"eg_{chain}", sg_ids, True, [], warnings)
            chains += _sg_chain(topo, sets, f"in_{chain}", sg_ids, False, [], warnings)
        elif n.kind == "endpoint-eni":
            # egress rules of an endpoint SG are irrelevant: the endpoint never initiates
            sg_ids = topo.endpoints[n.owner].sg_ids
            fwd.append(f'oifname "{n.veth}" jump in_{chain}')
            chains += _sg_chain(topo, sets, f"in_{chain}", sg_ids, False, [], warnings)
        elif n.kind == "nlb-node":
            nlb = topo.nlbs[n.owner]
            if nlb.sg_ids is None:
                continue  # created without security groups: nothing to check
            fwd.append(f'iifname "{n.veth}" jump eg_{chain}')
            fwd.append(f'oifname "{n.veth}" jump in_{chain}')
            prelude: list[str] = []
            pl_ifs = [pl.provider_if for pl in pls if pl.provider_router == router.ns]
            if not nlb.enforce_sg_inbound_on_privatelink and pl_ifs:
                prelude.append(
                    f"iifname {_q(pl_ifs)} return "
                    + _comment("enforce_security_group_inbound_rules_on_private_link_traffic off")
                )
            chains += _sg_chain(topo, sets, f"eg_{chain}", nlb.sg_ids, True, [], warnings)
            chains += _sg_chain(topo, sets, f"in_{chain}", nlb.sg_ids, False, prelude, warnings)
    # PrivateLink replies leave by the link their connection came in on (plan.PlLink), not
    # by address: a consumer VPC may use the provider VPC's own range
    marks = [
        f'iifname "{pl.provider_if}" ct state new ct mark set {pl.reply_mark} '
        + _comment("PrivateLink connection: its replies go back over this link")
        for pl in pls
        if pl.provider_router == router.ns
    ]
    if marks:
        marks.append("ct direction reply ct mark != 0 meta mark set ct mark")
        chains += [
            "  chain privatelink_replies {",
            "    type filter hook prerouting priority mangle; policy accept;",
            *(f"    {r}" for r in marks),
            "  }",
        ]
    lines = [
        f"table ip {TABLE} {{}}",
        f"delete table ip {TABLE}",
        f"table ip {TABLE} {{",
        *sets.render(),
        "  chain forward {",
        "    type filter hook forward priority filter; policy accept;",
        *(f"    {r}" for r in fwd),
        "  }",
        *chains,
        "}",
    ]
    return "\n".join(lines) + "\n"


def endpoint_ruleset(topo: Topology, node: Node, target: str | None, warnings: list[str]) -> str:
    """The ruleset of endpoint ENI ``node``: DNAT to ``target`` (the NLB node in its AZ id).

    ``target`` None: the service has no NLB node in that AZ; the ENI drops (with a warning).
    """
    ep = topo.endpoints[node.owner]
    pre: list[str] = []
    inp = ["ct state established,related accept", 'iif "lo" accept']
    if not ep.is_available():
        if topo.lab.endpoint_unavailable == "reset":
            inp.append(f"meta l4proto tcp reject with tcp reset {_comment(f'endpoint {ep.state}')}")
    elif target is None:
        warnings.append(
            f"endpoint {ep.name}: no NLB node in {node.az} ({node.az_id}); "
            "the ENI there drops (VPCE_SERVICE_NOT_INSTALLED_IN_AZ)"
        )
    else:
        pre.append(
            f"ip daddr {node.ip} meta l4proto tcp dnat ip to {target} "
            + _comment(f"PrivateLink to NLB node in {node.az_id}")
        )
    return nlbnat.nat_table(pre, inp)
