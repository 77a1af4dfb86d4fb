"""Fix text in the user's terms: the group, the rule, the address, the command.

The catalogue (``agent.controls``) has the generic sentence; these helpers fill it with the
concrete resource ids and names, addresses and ports of one flow, so a verdict reads like
"add to sg-… (nlb) an inbound rule TCP 80 from 10.2.1.15/32 (client-2)".
"""

from __future__ import annotations

from agent.analyze.nacl import NaclDecision, entry_text
from agent.model import Nacl, Topology


def sg_label(topology: Topology, sg_id: str) -> str:
    group = topology.security_groups.get(sg_id)
    return f"{sg_id} ({group.name})" if group else sg_id


def sgs_label(topology: Topology, sg_ids: list[str]) -> str:
    return ", ".join(sg_label(topology, g) for g in sg_ids) or "(no security groups)"


def nacl_label(nacl: Nacl) -> str:
    return f"{nacl.id} ({nacl.name})"


def ports_text(ports: tuple[int, int], protocol: str = "tcp") -> str:
    lo, hi = ports
    proto = protocol.upper()
    return f"{proto} {lo}" if lo == hi else f"{proto} {lo}-{hi}"


def sg_fix(
    topology: Topology,
    sg_ids: list[str],
    *,
    ingress: bool,
    port: int,
    peer: str,
    note: str = "",
) -> str:
    """``add to sg-… (name) an inbound rule TCP 80 from PEER[; note]``."""
    where = sg_label(topology, sg_ids[0]) if sg_ids else "the security group"
    way, prep = ("an inbound rule", "from") if ingress else ("an outbound rule", "to")
    text = f"add to {where} {way} TCP {port} {prep} {peer}"
    return f"{text}; {note}" if note else text


def nacl_fix(
    nacl: Nacl,
    decision: NaclDecision,
    *,
    egress: bool,
    peer_cidr: str,
    peer_name: str,
    why: str = "",
) -> str:
    """An allow entry that wins over the deciding deny, for the denied ports."""
    denied = decision.denied_ports or [decision.ports]
    ports = ", ".join(ports_text(p) for p in denied)
    way, prep = ("an outbound", "to") if egress else ("an inbound", "from")
    if decision.entry is not None and decision.entry.action == "deny":
        number = f" numbered below {decision.entry.rule_number}"
        cause = f"{entry_text(decision.entry)} denies it"
    else:
        number = ""
        cause = "nothing allows it before the final * deny"
    text = (
        f"add to {nacl_label(nacl)} {way} allow rule{number} for {ports} {prep} {peer_cidr}"
        f" ({peer_name}); {cause}"
    )
    if why:
        text += f"; {why}"
    return text
