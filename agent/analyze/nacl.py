"""Network ACL evaluation: stateless, ordered, first match wins, final implicit deny.

A NACL sees every packet crossing its subnet's boundary in each direction on its own, so a
flow needs an allow in *both* directions and the replies travel on ephemeral ports (the NLB
remaps to 1024-65535, Linux clients use 32768-60999). ``evaluate_nacl`` answers for one port;
``evaluate_nacl_range`` for a whole ephemeral range, because a NACL that allows only part of it
breaks only the flows whose port falls outside — the "intermittent" failure users chase.
"""

from __future__ import annotations

import ipaddress
import itertools
from dataclasses import dataclass, field

from agent.model import Nacl, NaclEntry


@dataclass
class NaclDecision:
    allowed: bool
    #: the entry that decided (``None``: the final implicit ``*`` deny)
    entry: NaclEntry | None
    #: entries evaluated in order up to and including the deciding one
    checked: list[NaclEntry] = field(default_factory=list)
    #: for ranges: the sub-ranges denied (empty when the whole range is allowed)
    denied_ports: list[tuple[int, int]] = field(default_factory=list)
    #: the range asked about (for ranges) or (port, port)
    ports: tuple[int, int] = (0, 0)

    @property
    def partial(self) -> bool:
        """Part of the range is allowed and part denied."""
        if self.allowed or not self.denied_ports:
            return False
        denied = sum(hi - lo + 1 for lo, hi in self.denied_ports)
        return denied < self.ports[1] - self.ports[0] + 1


def entry_text(entry: NaclEntry | None) -> str:
    """``#100 allow tcp 80 10.0.0.0/16`` / ``#* deny all`` for messages."""
    if entry is None:
        return "#* deny all (implicit)"
    if entry.protocol == "-1":
        ports = "all"
    elif entry.from_port == entry.to_port:
        ports = f"{entry.protocol} {entry.from_port}"
    else:
        ports = f"{entry.protocol} {entry.from_port}-{entry.to_port}"
    return f"#{entry.rule_number} {entry.action} {ports} {entry.cidr}"


def _matches(entry: NaclEntry, peer_ip: str, protocol: str, port: int) -> bool:
    if entry.protocol not in ("-1", protocol):
        return False
    if not entry.covers_port(port):
        return False
    try:
        return ipaddress.ip_address(peer_ip) in ipaddress.ip_network(entry.cidr, strict=False)
    except ValueError:
        return False


def evaluate_nacl(nacl: Nacl, egress: bool, peer_ip: str, protocol: str, port: int) -> NaclDecision:
    """First matching entry in rule-number order decides; none matching = implicit deny."""
    checked: list[NaclEntry] = []
    for entry in nacl.ordered(egress):
        checked.append(entry)
        if _matches(entry, peer_ip, protocol, port):
            allowed = entry.action == "allow"
            return NaclDecision(
                allowed, entry, checked, [] if allowed else [(port, port)], (port, port)
            )
    return NaclDecision(False, None, checked, [(port, port)], (port, port))


def evaluate_nacl_range(
    nacl: Nacl, egress: bool, peer_ip: str, protocol: str, ports: tuple[int, int]
) -> NaclDecision:
    """Evaluate every port of ``ports``; allowed only when all of them are.

    The range is cut at every entry boundary, so each piece has one first-matching entry and
    one probe port per piece decides it (no 64k loop). The returned ``entry`` is the deciding
    entry of the first denied piece (or of the first piece when all are allowed).
    """
    lo, hi = ports
    cuts = {lo, hi + 1}
    for e in nacl.entries:
        if e.egress != egress:
            continue
        for edge in (e.from_port, e.to_port + 1):
            if lo < edge <= hi:
                cuts.add(edge)
    bounds = sorted(cuts)
    denied: list[tuple[int, int]] = []
    first_denied: NaclDecision | None = None
    first: NaclDecision | None = None
    for a, b in itertools.pairwise(bounds):
        d = evaluate_nacl(nacl, egress, peer_ip, protocol, a)
        first = first or d
        if not d.allowed:
            first_denied = first_denied or d
            if denied and denied[-1][1] == a - 1:
                denied[-1] = (denied[-1][0], b - 1)
            else:
                denied.append((a, b - 1))
    deciding = first_denied or first
    assert deciding is not None
    return NaclDecision(not denied, deciding.entry, deciding.checked, denied, (lo, hi))
