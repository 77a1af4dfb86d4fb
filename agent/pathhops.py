"""The one declaration of the hops a PrivateLink flow crosses: control, side, direction, address.

The analysis (``agent.analyze``) walks these hops and the lab (``agent.lab.nft``) enforces
them; both derive from this table, so a hop the lab enforces is a hop the analysis walks and
vice versa (``tests/lab/test_lab_hops_consistency.py`` checks the rendered rulesets against
the walk). Before this table the two were written separately and drifted: the lab enforced
the NLB subnet's NACL on PrivateLink traffic while the analysis never looked at it, so
packets dropped where every analysed hop allowed the flow.

A hop is named by where it sits, not by what it evaluates:

* ``leg``: the stretch of the path the packet is on. ``client-eni`` (client to the endpoint
  ENI, possibly over a peering), ``privatelink`` (endpoint ENI to the NLB node: AWS's
  backbone, the consumer's controls do not apply again) and ``nlb-target``;
* ``at``: whose ENI (SG) or subnet (NACL) or route table: ``client``, ``endpoint``, ``nlb``,
  ``target``;
* ``way``: ``out`` (egress, leaving ``at``) or ``in``;
* ``sees``: the peer address the control matches at this hop (docs/AWS-BEHAVIOUR.md
  "Addresses at each hop"): ``client``, ``eni`` (the endpoint ENI), ``nlb`` (the NLB node),
  ``target``;
* ``ports``: the destination ports evaluated: the service (listener) port, the target port,
  or the replies' ephemeral ranges (Linux clients, the NLB's remapped source ports).

SGs are stateful and appear in the forward direction only; NACLs are stateless and appear in
both; routes are looked up in both directions. A hop with ``setting`` is switched by the
``LabSettings`` attribute of that name, because AWS does not document it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["sg", "nacl", "route"]
Leg = Literal["client-eni", "privatelink", "nlb-target"]
Role = Literal["client", "endpoint", "nlb", "target"]
Peer = Literal["client", "eni", "nlb", "target"]
Ports = Literal["service", "target", "linux-ephemeral", "nlb-ephemeral"]
Way = Literal["in", "out"]
Direction = Literal["forward", "return"]


@dataclass(frozen=True)
class Hop:
    """One enforcement point of the path (see the module docstring for the fields)."""

    #: ``HopFinding.hop`` (health-check hops add ``:health``)
    id: str
    #: catalogue id (``agent.controls``)
    control: str
    kind: Kind
    direction: Direction
    leg: Leg
    at: Role
    way: Way
    sees: Peer
    ports: Ports
    #: ``LabSettings`` boolean that switches the hop on ("" = always on)
    setting: str = ""
    #: why the hop is evaluated on these ports (NACL fixes say it)
    why: str = ""
    #: the Reachability Analyzer code of a denial, when it is more specific than the kind's
    ra_code: str = ""

    def active(self, settings: object) -> bool:
        """Is the hop on under these ``LabSettings``?"""
        return not self.setting or bool(getattr(settings, self.setting))


_LINUX = "replies go to the client's ephemeral ports 32768-60999; NACLs are stateless"
_NLB = "the NLB remaps source ports to 1024-65535; NACLs are stateless"

#: every hop in path order: forward, then the replies from the target back to the client
HOPS: tuple[Hop, ...] = (
    # client -> endpoint ENI
    Hop("client-sg-egress", "client-sg-egress", "sg", "forward", "client-eni", "client", "out",
        "eni", "service"),
    Hop("client-nacl-out", "client-nacl", "nacl", "forward", "client-eni", "client", "out", "eni",
        "service"),
    Hop("route:client", "route", "route", "forward", "client-eni", "client", "out", "eni",
        "service"),
    Hop("endpoint-nacl-in", "client-nacl", "nacl", "forward", "client-eni", "endpoint", "in",
        "client", "service"),
    Hop("endpoint-sg-ingress", "endpoint-sg-ingress", "sg", "forward", "client-eni", "endpoint",
        "in", "client", "service"),
    # endpoint ENI -> NLB node (the NLB sees the client's address)
    Hop("privatelink:nlb-nacl-in", "provider-nacl", "nacl", "forward", "privatelink", "nlb", "in",
        "client", "service", setting="nlb_subnet_nacl_on_privatelink"),
    Hop("nlb-sg-ingress", "nlb-sg-ingress", "sg", "forward", "privatelink", "nlb", "in", "client",
        "service"),
    # NLB node -> target (the target sees the NLB node's address)
    Hop("nlb-sg-egress", "nlb-sg-egress", "sg", "forward", "nlb-target", "nlb", "out", "target",
        "target"),
    Hop("nlb-nacl-out", "provider-nacl", "nacl", "forward", "nlb-target", "nlb", "out", "target",
        "target"),
    Hop("target-nacl-in", "provider-nacl", "nacl", "forward", "nlb-target", "target", "in", "nlb",
        "target"),
    Hop("target-sg-ingress", "target-sg-ingress", "sg", "forward", "nlb-target", "target", "in",
        "nlb", "target"),
    # replies
    Hop("return:target-nacl-out", "provider-nacl", "nacl", "return", "nlb-target", "target", "out",
        "nlb", "nlb-ephemeral", why=_NLB, ra_code="REMAP_EPHEMERAL_PORT"),
    Hop("return:nlb-nacl-in", "provider-nacl", "nacl", "return", "nlb-target", "nlb", "in",
        "target", "nlb-ephemeral", why=_NLB, ra_code="REMAP_EPHEMERAL_PORT"),
    Hop("return:privatelink:nlb-nacl-out", "provider-nacl", "nacl", "return", "privatelink", "nlb",
        "out", "client", "linux-ephemeral", setting="nlb_subnet_nacl_on_privatelink", why=_LINUX),
    Hop("return:endpoint-nacl-out", "client-nacl", "nacl", "return", "client-eni", "endpoint",
        "out", "client", "linux-ephemeral", why=_LINUX),
    Hop("return:route:endpoint", "route", "route", "return", "client-eni", "endpoint", "out",
        "client", "linux-ephemeral"),
    Hop("return:client-nacl-in", "client-nacl", "nacl", "return", "client-eni", "client", "in",
        "eni", "linux-ephemeral", why=_LINUX),
)  # fmt: skip

BY_ID: dict[str, Hop] = {h.id: h for h in HOPS}


def get(hop_id: str) -> Hop:
    """The declared hop of a ``HopFinding.hop`` (a ``:health`` suffix is the same hop)."""
    return BY_ID[hop_id.removesuffix(":health")]


def declared(hop_id: str) -> bool:
    return hop_id.removesuffix(":health") in BY_ID


def hops(
    *,
    leg: Leg | None = None,
    kind: Kind | None = None,
    direction: Direction | None = None,
    at: Role | None = None,
    settings: object | None = None,
) -> tuple[Hop, ...]:
    """The declared hops that match every given field, in path order; with ``settings``,
    only those that are on."""
    return tuple(
        h
        for h in HOPS
        if (leg is None or h.leg == leg)
        and (kind is None or h.kind == kind)
        and (direction is None or h.direction == direction)
        and (at is None or h.at == at)
        and (settings is None or h.active(settings))
    )


def enforced(leg: Leg, at: Role, kind: Kind, settings: object) -> bool:
    """Does the lab enforce ``kind`` at ``at`` on ``leg`` (in either direction)?"""
    return bool(hops(leg=leg, at=at, kind=kind, settings=settings))
