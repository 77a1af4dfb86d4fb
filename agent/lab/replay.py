"""Topology -> lab topology YAML document: the inverse of ``agent.sources.topology``'s builder.

Two commands need it:

* ``plprobe lab up --from-snapshot CONSUMER_DIR PROVIDER_DIR`` rebuilds a user's real
  accounts in the lab: the describe-* directories (``docs/SNAPSHOT.md``) are read by the one
  snapshot reader (``agent.sources.aws_snapshot``), converted here into a topology document,
  and that document is loaded by ``load_topology`` like any hand-written lab file. Going
  through the document (not straight from the snapshot Topology into ``Lab.up``) means the
  builder checks the replayed layout exactly as it checks a user's file, and the user gets a
  file to edit and ``lab apply``.
* ``plprobe lab export`` writes a running lab's topology back as a document that re-creates
  the same lab (same names, hence the same deterministic ids).

Never guess silently. A real topology can use what the lab cannot emulate (IPv6, prefix lists
whose entries were not read, GWLB endpoints, ALB/Lambda/IP targets, UDP listeners, secondary
VPC CIDRs, routes to internet/NAT/transit gateways, …) or lack what the lab needs (which ports
a target serves, who created an endpoint, the lab's settings for UNCONFIRMED AWS behaviour).
Every such decision is a ``ReplayNote``: ``omitted`` (left out, with the reason; whatever
depends on it is left out too, naming the missing reference), ``assumed`` (filled in, saying
with what) or ``refused`` (nothing useful can be built: ``UnreplayableError``). The notes go
to stderr, into ``--output json`` and into the header of the document.

Names: the lab derives every id from a resource's name, so a replayed lab's ids are its own
(``sg-0…`` from the name, not the real group id). ``Replay.names`` maps each real id to the
lab name it was given; the document's header lists them for the user's mapping back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from agent.errors import TopologyError, UnreplayableError
from agent.lab.replay_network import NoteKind, ReplayNote
from agent.lab.replay_service import Converter
from agent.model import LabSettings, Topology

__all__ = [
    "GENERAL_NOTES",
    "NoteKind",
    "Replay",
    "ReplayNote",
    "export_text",
    "load_replay",
    "replay_snapshot",
    "scan_dumps",
    "to_document",
]


@dataclass
class Replay:
    """A lab topology document plus everything that was left out or assumed to make it."""

    document: dict[str, Any]
    notes: list[ReplayNote] = field(default_factory=list)
    #: real AWS id -> the lab resource name it became
    names: dict[str, str] = field(default_factory=dict)
    #: the document loaded by ``load_topology`` (set by ``load_replay``)
    topology: Topology | None = None

    def omitted(self) -> list[ReplayNote]:
        return [n for n in self.notes if n.kind == "omitted"]

    def assumed(self) -> list[ReplayNote]:
        return [n for n in self.notes if n.kind == "assumed"]

    def yaml_text(self, header: str = "", *, ids: bool = True) -> str:
        """The document, with a comment header listing the notes (a file to edit and apply).

        ``ids``: also list which AWS id became which name (for a replay; an exported lab's
        ids already derive from its names).
        """
        lines = [f"# {line}" if line else "#" for line in header.splitlines()]
        if self.notes:
            lines.append("# What the lab leaves out or assumes:")
            lines += [f"#   {n.text()}" for n in self.notes]
        renamed = {k: v for k, v in self.names.items() if k != v}
        if renamed and ids:
            lines.append("# AWS id -> lab name (the lab derives its own ids from names):")
            lines += [f"#   {k} -> {v}" for k, v in sorted(renamed.items())]
        body = yaml.safe_dump(self.document, sort_keys=False, width=100)
        return ("\n".join(lines) + "\n" if lines else "") + body

    def to_json(self) -> dict[str, Any]:
        return {
            "omitted": [n.to_json() for n in self.omitted()],
            "assumed": [n.to_json() for n in self.assumed()],
            "names": dict(sorted(self.names.items())),
        }


def to_document(
    topology: Topology, principals_unknown: Iterable[str] = (), description: str = ""
) -> Replay:
    """Convert ``topology`` into a lab topology document; raises ``UnreplayableError``.

    ``principals_unknown``: endpoint service ids whose allowed principals were not read.
    """
    conv = Converter(topology, principals_unknown, description)
    doc = conv.document()
    names = {
        rid: name
        for kind, ids in conv.names.items()
        if kind != "aws_security_group_rule"
        for rid, name in ids.items()
    }
    return Replay(doc, conv.notes, names)


def export_text(topology: Topology, header: str = "", description: str = "") -> str:
    """A running lab's topology as a topology file that re-creates it (``lab export``)."""
    return to_document(topology, description=description).yaml_text(header, ids=False)


def load_replay(replay: Replay, origin: str) -> Replay:
    """Load the document through ``load_topology``: the builder checks it like a user's file."""
    from agent.sources.topology import load_topology

    text = replay.yaml_text()
    try:
        replay.topology = load_topology(f"<replay of {origin}>", text=text)
    except TopologyError as exc:
        raise UnreplayableError(
            f"the replayed topology does not build: {exc}", replay.notes
        ) from exc
    replay.topology.source = origin
    return replay


# --- snapshot directories ------------------------------------------------------------------


def scan_dumps(dumps: Iterable[Any]) -> tuple[list[ReplayNote], set[str]]:
    """What the snapshot reader leaves out without a word, read from the raw describe-* JSON.

    The reader builds the model of what plprobe analyses (interface endpoints, NLBs, instance
    targets); a replay must also say what it did *not* build. Returns the notes and the
    endpoint service ids whose allowed principals were not read.
    """
    from agent.sources.aws_actions import BY_STEM

    notes: list[ReplayNote] = []
    unknown: set[str] = set()

    def body(d: Any, stem: str) -> dict[str, Any]:
        value = d.files.get(BY_STEM[stem].file)
        return value if isinstance(value, dict) else {}

    for d in dumps:
        for v in body(d, "ec2-describe-vpcs").get("Vpcs") or []:
            vid = v.get("VpcId", "?")
            if v.get("Ipv6CidrBlockAssociationSet"):
                notes.append(
                    ReplayNote("omitted", f"aws_vpc {vid}", "its IPv6 CIDR: the lab is IPv4 only")
                )
            extra = [
                a.get("CidrBlock")
                for a in v.get("CidrBlockAssociationSet") or []
                if a.get("CidrBlock") != v.get("CidrBlock")
                and (a.get("CidrBlockState") or {}).get("State", "associated") == "associated"
            ]
            if extra:
                notes.append(
                    ReplayNote(
                        "omitted",
                        f"aws_vpc {vid}",
                        f"secondary CIDR blocks {', '.join(map(str, extra))}: the lab models "
                        "one block per VPC (subnets in them are left out)",
                    )
                )
        for e in body(d, "ec2-describe-vpc-endpoints").get("VpcEndpoints") or []:
            kind = e.get("VpcEndpointType", "Interface")
            if kind == "Gateway":
                why = "a gateway endpoint (S3/DynamoDB routes), not PrivateLink to an NLB"
            elif kind == "GatewayLoadBalancer":
                why = "a Gateway Load Balancer endpoint: GWLB (GENEVE) is not emulated"
            elif kind != "Interface":
                why = f"endpoint type {kind} is not emulated"
            else:
                continue
            notes.append(ReplayNote("omitted", f"aws_vpc_endpoint {e.get('VpcEndpointId')}", why))
        for lb in body(d, "elbv2-describe-load-balancers").get("LoadBalancers") or []:
            kind = lb.get("Type", "network")
            if kind != "network":
                notes.append(
                    ReplayNote(
                        "omitted",
                        f"aws_lb {lb.get('LoadBalancerName', '?')}",
                        f"a {kind} load balancer: the lab emulates network load balancers",
                    )
                )
        for r in body(d, "ec2-describe-instances").get("Reservations") or []:
            for i in r.get("Instances") or []:
                if len(i.get("NetworkInterfaces") or []) > 1:
                    notes.append(
                        ReplayNote(
                            "omitted",
                            f"aws_instance {i.get('InstanceId')}",
                            "its secondary network interfaces: the lab gives an instance "
                            "its primary ENI only",
                        )
                    )
        perms = BY_STEM["ec2-describe-vpc-endpoint-service-permissions"]
        services = body(d, "ec2-describe-vpc-endpoint-service-configurations")
        for s in services.get("ServiceConfigurations") or []:
            sid = s.get("ServiceId", "")
            if sid and perms.resource_file(sid) not in d.files:
                unknown.add(sid)
    return notes, unknown


#: what every replay assumes, whatever the snapshot holds
GENERAL_NOTES = (
    ReplayNote(
        "assumed",
        "*",
        "routes: the route tables are replayed with their local and peering routes; a route "
        "to a gateway the lab does not emulate (internet, NAT, transit gateway, VPN, ...) is "
        "written out and is a blackhole in the lab",
    ),
    ReplayNote(
        "assumed",
        "lab",
        "the lab settings for behaviour AWS does not document are the defaults "
        f"({', '.join(f'{f.name}={getattr(LabSettings(), f.name)}' for f in fields(LabSettings))}"
        "); edit `lab:` in the exported file to rehearse the other behaviour",
    ),
    ReplayNote(
        "assumed",
        "*",
        "ids and DNS names: the lab derives its own from resource names (see the id -> name list)",
    ),
)


def replay_snapshot(dirs: Iterable[str | Path]) -> Replay:
    """``lab up --from-snapshot``: describe-* directories -> a checked, loaded ``Replay``."""
    from agent.sources.aws_snapshot import parse_accounts, read_account_dir

    paths = [Path(d) for d in dirs]
    dumps = [read_account_dir(p) for p in paths]
    scanned, unknown = scan_dumps(dumps)
    topology = parse_accounts(dumps)
    replay = to_document(topology, unknown)
    replay.notes = [*scanned, *replay.notes, *GENERAL_NOTES]
    origin = "snapshot:" + ",".join(str(p) for p in paths)
    return load_replay(replay, origin)
