"""Replay, part two: route tables, their routes and associations.

On top of ``agent.lab.replay_network``'s network layer (see ``agent.lab.replay`` for the
notes). Route tables are written as ``aws_route_table`` with inline ``route`` blocks,
``aws_route_table_association`` per subnet and ``aws_main_route_table_association`` for the
main table, so the lab routes exactly what the snapshot (or the running lab) routes.

One table is not written: a main table the topology builder would create by itself for its
VPC (same id, name and routes, no subnet of its own). A lab topology that declares no route
table gets those implicit tables; writing them out would rename them (the lab derives a
declared table's id from its name), so ``lab export`` and a replay of the lab's own snapshot
would not re-create the same lab.
"""

from __future__ import annotations

from typing import Any

from agent.lab.replay_network import NetworkConverter, net_version
from agent.model import Route, RouteTable, Vpc, stable_id


class RoutingConverter(NetworkConverter):
    """Adds the ``route_tables`` step (after VPCs, subnets and peerings are kept)."""

    def route_tables(self) -> None:
        by_vpc: dict[str, list[RouteTable]] = {}
        for rt in self.t.route_tables.values():
            by_vpc.setdefault(rt.vpc_id, []).append(rt)
        for vid, tables in by_vpc.items():
            if self.kept("aws_vpc", vid) is None:
                for rt in tables:
                    what = self.label("aws_route_table", rt.id, rt.name)
                    self.note("omitted", what, f"its VPC {vid} is not replayed")
        for v in self.t.vpcs.values():
            vpc = self.kept("aws_vpc", v.id)
            if vpc is None:
                continue
            tables = by_vpc.get(v.id, [])
            what = self.label("aws_vpc", v.id, v.name)
            if not tables:
                self.note(
                    "assumed",
                    what,
                    "no route table in the snapshot (describe-route-tables not read): the lab "
                    "gives it a main table with the local route and a route to every peered VPC",
                )
                continue
            if not any(rt.main for rt in tables):
                self.note(
                    "assumed",
                    what,
                    "no main route table in the snapshot: subnets without a table of their own "
                    "get a main table with the local route only",
                )
            implicit = [rt for rt in tables if self.implicit_main(rt, v, vpc, len(tables) > 1)]
            for rt in tables:
                if rt not in implicit:
                    self.route_table(rt, v, vpc)
            for rt in implicit:  # named after the written tables: theirs are the names asked for
                self.names.setdefault("aws_route_table", {})[rt.id] = rt.name

    def implicit_main(self, rt: RouteTable, v: Vpc, vpc: str, others: bool) -> bool:
        """Is ``rt`` the main table the builder creates for ``vpc`` when none is declared?

        ``others``: the VPC has other tables (then the builder's main table has the local
        route only; without any, it also routes to every peered VPC).
        """
        if not rt.main or rt.subnet_ids:
            return False
        if rt.id != stable_id("rtb", vpc, "main") or rt.name != f"{vpc}-main":
            return False
        expected = [(v.cidr, "local")]
        if not others:
            kept = [
                (name, p)
                for p in self.t.peerings.values()
                if v.id in (p.requester_vpc_id, p.accepter_vpc_id)
                and (name := self.kept("aws_vpc_peering_connection", p.id)) is not None
            ]
            for _, p in sorted(kept, key=lambda np: np[0]):
                peer = p.accepter_vpc_id if v.id == p.requester_vpc_id else p.requester_vpc_id
                expected.append((self.t.vpcs[peer].cidr, p.id))
        if [(r.destination, r.target) for r in rt.routes] != expected:
            return False
        # a route the snapshot saw as a blackhole is one only because its peering is not active
        return all(self.t.route_state(r) == self.derived_state(r) for r in rt.routes)

    def derived_state(self, r: Route) -> str:
        """The route's state from its target alone (what the builder's route gets)."""
        return self.t.route_state(Route(r.destination, r.target))

    def route_table(self, rt: RouteTable, v: Vpc, vpc: str) -> None:
        what = self.label("aws_route_table", rt.id, rt.name)
        name = self.name("aws_route_table", rt.id, rt.name)
        routes = [r for r in (self.route(rt, route, what) for route in rt.routes) if r]
        body: dict[str, Any] = {"account": rt.account, "vpc_id": vpc}
        if routes:
            body["route"] = routes
        self.put("aws_route_table", name, body)
        for sid in rt.subnet_ids:
            subnet = self.kept("aws_subnet", sid)
            if subnet is None:
                what = f"aws_route_table_association {sid} ({name})"
                self.note("omitted", what, "its subnet is not replayed")
                continue
            self.put(
                "aws_route_table_association",
                subnet,
                {"account": rt.account, "subnet_id": subnet, "route_table_id": name},
            )
        if rt.main:
            self.put(
                "aws_main_route_table_association",
                vpc,
                {"account": rt.account, "vpc_id": vpc, "route_table_id": name},
            )

    def route(self, rt: RouteTable, r: Route, what: str) -> dict[str, Any] | None:
        """One route as an inline ``route`` block; None: left out (or the implicit local)."""
        if r.target == "local":
            return None  # the builder adds the VPC's local route; secondary CIDRs are noted
        where = f"{what} route to {r.destination}"
        if net_version(r.destination) != 4:
            self.note("omitted", where, "not an IPv4 destination: the lab is IPv4 only")
            return None
        if r.target.startswith("pcx-"):
            pcx = self.kept("aws_vpc_peering_connection", r.target)
            if pcx is None:
                self.note(
                    "omitted",
                    where,
                    f"its peering {r.target} is not replayed (AWS shows such a route as a "
                    "blackhole; without it the lab routes the destination by the other routes)",
                )
                return None
            if self.t.route_state(r) != self.derived_state(r):
                self.note(
                    "assumed",
                    where,
                    f"the snapshot saw it as a blackhole, but peering {r.target} is active: "
                    "the lab routes over the peering",
                )
            return {"cidr_block": r.destination, "vpc_peering_connection_id": pcx}
        if r.target == "unknown":
            self.note("omitted", where, "its target is of a kind the snapshot reader does not know")
            return None
        return {"cidr_block": r.destination, "gateway_id": r.target}
