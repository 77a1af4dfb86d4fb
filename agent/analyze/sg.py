"""Security group evaluation: does a set of groups allow one flow in one direction?

Pure functions over the Topology. Semantics (AWS VPC user guide, "Security group rules"):

- the groups on an ENI are a union: the flow is allowed when any rule of any group allows it;
- a rule matches on protocol (``-1`` = all), port range, and its source/destination: CIDRs,
  a referenced group (the peer's private IP is one of the group's members, resolved with
  ``Topology.sg_member_ips``), or a managed prefix list (its CIDRs from
  ``Topology.prefix_lists``);
- SGs are stateful: only the direction that *opens* the flow is evaluated; its replies are
  allowed because the forward packet was. Callers never evaluate an SG on return traffic.

When a rule could allow the flow but its peer cannot be resolved (a prefix list whose contents
were not read, a referenced group absent from a partial view) and no other rule allows it, the
decision is *undetermined*, never a guessed denial.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from agent.model import Direction, Rule, SecurityGroup, Topology


@dataclass
class SgDecision:
    """The outcome for one flow: which rule allowed it, or which rules were checked."""

    allowed: bool
    rule: Rule | None
    checked: list[Rule] = field(default_factory=list)
    reason: str = ""
    #: no rule allows the flow, but some rule could not be evaluated (prefix list contents or a
    #: referenced group are not visible): neither allowed nor denied
    undetermined: bool = False
    #: the group that holds ``rule``
    group: SecurityGroup | None = None
    #: SG ids of ``sg_ids`` that are not in the topology
    missing: list[str] = field(default_factory=list)
    #: rules that would have matched through an SG reference that this hop cannot use
    #: (an NLB sees PrivateLink traffic without the consumer's SG identity)
    unusable_refs: list[Rule] = field(default_factory=list)

    @property
    def status(self) -> str:
        """``allowed`` / ``denied`` / ``not_visible`` (a HopFinding status)."""
        if self.allowed:
            return "allowed"
        return "not_visible" if self.undetermined else "denied"


def _in(ip: str, cidr: str) -> bool:
    try:
        return ipaddress.ip_address(ip) in ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False


def _proto_matches(rule_proto: str, proto: str) -> bool:
    return rule_proto == "-1" or rule_proto == proto


def rule_peer_match(
    topology: Topology, rule: Rule, peer_ip: str, *, refs_match: bool = True
) -> bool | None:
    """Does the rule's source/destination cover ``peer_ip``? ``None`` = cannot tell."""
    if any(_in(peer_ip, c) for c in rule.cidrs):
        return True
    if rule.sg_ref is not None:
        if not refs_match:
            return False
        if rule.sg_ref not in topology.security_groups:
            return None
        return peer_ip in topology.sg_member_ips(rule.sg_ref)
    if rule.prefix_list is not None:
        plist = topology.prefix_lists.get(rule.prefix_list)
        if plist is None:
            return None
        return any(_in(peer_ip, c) for c in plist.cidrs)
    return False


def evaluate_sg(
    topology: Topology,
    sg_ids: list[str],
    direction: Direction,
    peer_ip: str,
    protocol: str,
    port: int,
    *,
    refs_match: bool = True,
) -> SgDecision:
    """Evaluate the union of ``sg_ids`` for a flow to/from ``peer_ip`` on ``protocol/port``.

    ``direction`` is the direction of the *opening* packet as seen by the ENI: ``egress`` for
    the initiator's groups, ``ingress`` for the receiver's. ``refs_match=False`` makes SG
    references never match (PrivateLink does not carry the consumer's SG identity to the NLB);
    such rules are reported in ``unusable_refs`` so the fix can say why.
    """
    checked: list[Rule] = []
    unresolved: list[Rule] = []
    unusable: list[Rule] = []
    missing = [g for g in sg_ids if g not in topology.security_groups]
    for gid in sg_ids:
        group = topology.security_groups.get(gid)
        if group is None:
            continue
        for rule in group.rules:
            if rule.direction != direction:
                continue
            checked.append(rule)
            if not _proto_matches(rule.protocol, protocol) or not rule.covers_port(port):
                continue
            match = rule_peer_match(topology, rule, peer_ip, refs_match=refs_match)
            if match:
                return SgDecision(
                    True, rule, checked, f"allowed by {rule.id}", group=group, missing=missing
                )
            if match is None:
                unresolved.append(rule)
            elif (
                rule.sg_ref is not None
                and not refs_match
                and (
                    rule.sg_ref not in topology.security_groups
                    or peer_ip in topology.sg_member_ips(rule.sg_ref)
                )
            ):
                unusable.append(rule)
    if unresolved or missing:
        what = [f"{r.id} ({r.prefix_list or r.sg_ref}: contents not visible)" for r in unresolved]
        what += [f"{g} (group not visible)" for g in missing]
        return SgDecision(
            False,
            None,
            checked,
            "cannot tell: " + ", ".join(what),
            undetermined=True,
            missing=missing,
            unusable_refs=unusable,
        )
    if not checked:
        reason = f"no {direction} rules"
    else:
        reason = f"no {direction} rule allows {protocol} {port} for {peer_ip}"
    return SgDecision(False, None, checked, reason, missing=missing, unusable_refs=unusable)
