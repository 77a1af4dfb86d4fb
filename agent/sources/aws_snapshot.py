"""AWS describe-* JSON (one directory per account) -> Topology.

Why one parser: a user's hand-made snapshot (``aws … --output json`` in each account), the
lab's snapshot (``agent.lab.snapshot``) and live AWS (``agent.sources.aws_live``, which fetches
the same calls into the same in-memory layout) all go through :func:`parse_accounts`, so the
three sources cannot disagree about what a security group or an endpoint means.

Partial views are normal: each account's credentials read only that account. A missing file
means "not visible from here" (the resource kinds it would list stay empty), never an error;
``Topology.visible_accounts`` names the accounts whose directories were given.

Validated, not trusted: malformed JSON is a :class:`SourceError` naming the file
(:func:`_read_json`, the decoding boundary); every value the parser uses is read through
:class:`agent.sources.checked.Node`, which checks it, and ``_Parser.reading`` (the validation
boundary) turns a bad one into a SourceError naming the file and the member path (the CLI
exits 2). What cannot matter is not refused: members and enum values newer than botocore's
model, retired shapes and resources plprobe cannot follow become ``Topology.notes``, and so
does input cut short by pagination (``docs/SNAPSHOT.md``).

What AWS cannot tell us is filled in the documented way (``docs/SNAPSHOT.md``): an
endpoint's requester (which principal created it) is unknown, so the analysis asks whether
*some* principal of its owner account is allowed; security group rules come back one per
source (AWS's own granularity) with readable ids; instances' listening ports come from
the optional ``plprobe:services`` tag, else they are unknown (``services_known=False``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from agent.errors import SourceError
from agent.model import (
    ENDPOINT_STATES,
    Account,
    Direction,
    Endpoint,
    EndpointEni,
    EndpointService,
    HealthCheck,
    Instance,
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
    normalize_protocol,
)
from agent.sources.aws_actions import BY_STEM, CALLS, ApiCall, Side, resource_file_name
from agent.sources.checked import Invalid, Node

ACCOUNT_FILE = "account.json"
#: AWS lists this "*" entry last in every NACL; the model's evaluation implies it
NACL_DEFAULT_RULE = 32767
#: the IPv6 "*" entry of a NACL with IPv6 (real AWS output numbers it one higher)
NACL_DEFAULT_RULE_V6 = 32768
#: optional instance tag: the TCP ports it serves ("80,443"); describe-* cannot tell
SERVICES_TAG = "plprobe:services"


@dataclass
class AccountDump:
    """One account's describe-* outputs, keyed by relative file path (see aws_actions)."""

    name: str
    id: str
    role: Side  # checked when account.json is read
    region: str
    files: dict[str, Any] = field(default_factory=dict)
    #: where it came from, for error messages (a directory, or ``aws:<account id>``)
    origin: str = ""
    #: what reading found worth saying but not refusing (see ``Topology.notes``)
    notes: list[str] = field(default_factory=list)


# --- reading a directory ---------------------------------------------------------------------

#: JSON nested deeper than this is not AWS output (the deepest describe-* shape is ~8 levels)
MAX_DEPTH = 64


def _read_json(path: Path) -> Any:
    """The one JSON decoding boundary: any failure is a SourceError naming the file.

    ``json.loads`` on bytes detects UTF-8 (with or without BOM), UTF-16 and UTF-32, so a file
    redirected by PowerShell (UTF-16) reads as well as one from a POSIX shell.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SourceError(f"{path}:{exc.lineno}:{exc.colno}: malformed JSON: {exc.msg}") from exc
    except UnicodeDecodeError as exc:
        raise SourceError(f"{path}: not UTF-8/16/32 text: {exc.reason}") from exc
    except RecursionError as exc:
        raise SourceError(f"{path}: JSON nested too deeply") from exc
    except ValueError as exc:  # e.g. an integer literal with more digits than Python allows
        raise SourceError(f"{path}: malformed JSON: {exc}") from exc
    if _depth(data) > MAX_DEPTH:
        raise SourceError(f"{path}: JSON nested deeper than {MAX_DEPTH} levels: not AWS output")
    return data


def _depth(value: Any) -> int:
    """Nesting depth, iteratively (a recursive walk would overflow on hostile input)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if level > MAX_DEPTH:
            break
        if isinstance(item, dict):
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, level + 1) for v in item)
    return deepest


def _read_meta(meta_path: Path) -> dict[str, str]:
    meta = _read_json(meta_path)
    if not isinstance(meta, dict):
        raise SourceError(f"{meta_path}: expected a JSON object")
    for key in ("id", "role", "region"):
        if not isinstance(meta.get(key), str) or not meta[key]:
            raise SourceError(f"{meta_path}: {key}: missing or not a string")
    if meta["role"] not in ("consumer", "provider"):
        raise SourceError(f"{meta_path}: role: must be consumer or provider")
    if not re.fullmatch(r"[0-9]{12}", meta["id"]):
        raise SourceError(f"{meta_path}: id: {meta['id']!r} is not a 12-digit account id")
    if not re.fullmatch(r"[a-z]{2}(-[a-z0-9]+)+", meta["region"]):
        raise SourceError(f"{meta_path}: region: {meta['region']!r} is not an AWS region")
    name = meta.get("name")
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise SourceError(f"{meta_path}: name: not a non-empty string")
    return meta


def read_account_dir(path: Path, *, validate: bool = True) -> AccountDump:
    """Read ``account.json`` and every known describe-* file present in ``path``."""
    path = Path(path)
    if not path.is_dir():
        raise SourceError(f"{path}: not a snapshot directory")
    meta_path = path / ACCOUNT_FILE
    if not meta_path.is_file():
        raise SourceError(
            f'{meta_path}: missing; write {{"name": …, "id": …, "role": '
            f'"consumer"|"provider", "region": …}} (docs/SNAPSHOT.md)'
        )
    meta = _read_meta(meta_path)
    name = meta.get("name") or path.name
    role: Side = "consumer" if meta["role"] == "consumer" else "provider"  # checked above
    dump = AccountDump(str(name), meta["id"], role, meta["region"], origin=str(path))
    for call in CALLS:
        if call.per is None:
            f = path / call.file
            if f.is_file():
                dump.files[call.file] = _read_json(f)
        else:
            d = path / call.stem
            if d.is_dir():
                for f in sorted(d.glob("*.json")):
                    dump.files[f"{call.stem}/{f.name}"] = _read_json(f)
    if validate:
        validate_dump(dump)
    return dump


#: members that only say "there is more": the CLI prints ``NextToken`` for every service when
#: ``--max-items`` cut the output, the APIs use ``NextToken`` (ec2) or ``NextMarker`` (elbv2)
PAGE_MARKERS = ("NextToken", "NextMarker")


def validate_dump(dump: AccountDump) -> None:
    """Compare each file with the API's output shape (when botocore is installed): advisory.

    The members plprobe uses are validated strictly where the parser reads them. What this
    walk finds elsewhere — members or enum values newer than the installed botocore model,
    retired members — is what AWS really prints, so it is kept as a note, never a refusal.
    """
    try:
        import botocore  # noqa: F401
    except ImportError:
        return
    for rel, body in dump.files.items():
        call = BY_STEM.get(rel.split("/", 1)[0].removesuffix(".json"))
        if call is None:
            continue
        if isinstance(body, dict):
            body = {k: v for k, v in body.items() if k not in PAGE_MARKERS}
        errors = shape_errors(call.service, call.operation, body)
        if errors:
            more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
            dump.notes.append(
                f"{dump.origin}/{rel}: differs from the installed botocore model of "
                f"{call.service} {call.cli_name} (newer API?), not used: "
                + "; ".join(errors[:3])
                + more
            )


# --- output-shape validation (botocore has no output validator) -----------------------------


@cache
def _service_model(service: str) -> Any:
    from botocore.session import get_session

    return get_session().get_service_model(service)


def shape_errors(service: str, operation: str, data: Any) -> list[str]:
    """Every place where ``data`` is not ``operation``'s output shape, as ``path: problem``.

    Structures must only use known members (PascalCase API names, as the CLI prints them);
    scalars must have the modelled type; timestamps are ISO-8601 strings (CLI) or datetimes
    (boto3). Required members are not checked: AWS omits most output members freely.
    """
    shape = _service_model(service).operation_model(operation).output_shape
    errors: list[str] = []
    _walk(shape, data, "$", errors)
    return errors


def _walk(shape: Any, value: Any, where: str, errors: list[str]) -> None:
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, dict):
            errors.append(f"{where}: expected an object ({shape.name})")
            return
        for key, item in value.items():
            if key == "ResponseMetadata":
                continue
            member = shape.members.get(key)
            if member is None:
                errors.append(f"{where}: unknown member {key!r} of {shape.name}")
            else:
                _walk(member, item, f"{where}.{key}", errors)
    elif kind == "list":
        if not isinstance(value, list):
            errors.append(f"{where}: expected a list")
            return
        for i, item in enumerate(value):
            _walk(shape.member, item, f"{where}[{i}]", errors)
    elif kind == "map":
        if not isinstance(value, dict):
            errors.append(f"{where}: expected an object (map)")
            return
        for k, item in value.items():
            _walk(shape.value, item, f"{where}.{k}", errors)
    elif kind == "string":
        if not isinstance(value, str):
            errors.append(f"{where}: expected a string, got {type(value).__name__}")
        elif (
            shape.enum
            and value not in shape.enum
            and value.lower() not in {e.lower() for e in shape.enum}
        ):
            errors.append(f"{where}: {value!r} is not one of {', '.join(shape.enum)}")
    elif kind in ("integer", "long"):
        if not isinstance(value, int) or isinstance(value, bool):
            errors.append(f"{where}: expected an integer, got {type(value).__name__}")
    elif kind == "boolean":
        if not isinstance(value, bool):
            errors.append(f"{where}: expected a boolean, got {type(value).__name__}")
    elif kind in ("double", "float"):
        if not isinstance(value, int | float) or isinstance(value, bool):
            errors.append(f"{where}: expected a number, got {type(value).__name__}")
    elif kind == "timestamp":
        if not _is_timestamp(value):
            errors.append(f"{where}: expected an ISO-8601 timestamp, got {value!r}")
    elif kind == "blob" and not isinstance(value, str | bytes):
        errors.append(f"{where}: expected base64 text")


def _is_timestamp(value: Any) -> bool:
    import datetime

    if isinstance(value, datetime.datetime):
        return True
    if not isinstance(value, str):
        return False
    try:
        datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


# --- parsing ---------------------------------------------------------------------------------


#: where DescribeStaleSecurityGroups lists the stale rules of each direction
_STALE_PERMISSIONS: tuple[tuple[Direction, str], ...] = (
    ("ingress", "StaleIpPermissions"),
    ("egress", "StaleIpPermissionsEgress"),
)

#: the members of a DescribeRouteTables route that name its target, the ones a PrivateLink
#: path can take first
_ROUTE_TARGETS = (
    "VpcPeeringConnectionId",
    "GatewayId",
    "TransitGatewayId",
    "NatGatewayId",
    "NetworkInterfaceId",
    "InstanceId",
    "VpcEndpointId",
    "LocalGatewayId",
    "CarrierGatewayId",
    "EgressOnlyInternetGatewayId",
    "CoreNetworkArn",
)


def _name(item: Node, default: str) -> str:
    for tag in item.items("Tags"):
        if tag.text("Key") == "Name" and tag.text("Value", ""):
            return str(tag.text("Value"))
    return default


def _state(text: str) -> str:
    return next((s for s in ENDPOINT_STATES if s.lower() == text.lower()), text)


def _rule_id(sg_id: str, direction: str, rule: Rule, source: str) -> str:
    """A readable, stable rule id: IpPermissions carry no rule ids (AWS groups them)."""
    word = "from" if direction == "ingress" else "to"
    return f"{sg_id} {direction} {rule.port_text()} {word} {source}"


@dataclass(frozen=True)
class _Eni:
    """What the parser uses of one describe-network-interfaces element, validated."""

    id: str
    subnet_id: str
    ip: str
    ips: tuple[str, ...]
    description: str
    interface_type: str
    instance_id: str


class _Parser:
    def __init__(self, dumps: list[AccountDump]) -> None:
        self.dumps = dumps
        self.regions = {d.region for d in dumps}
        consumer = next((d for d in dumps if d.role == "consumer"), dumps[0])
        # cross-region PrivateLink: the client, the endpoint and its DNS names are in the
        # consumer's region; whether the directories may be read together is decided once the
        # services' supported regions are known (check_regions)
        self.t = Topology(region=consumer.region)
        self.t.source = "snapshot:" + ",".join(d.origin for d in dumps)
        self.names_by_id: dict[str, str] = {}
        self.enis: dict[str, _Eni] = {}
        self.enis_visible = False
        #: region pairs an endpoint service or an endpoint says are linked
        self.region_links: set[frozenset[str]] = set()

    @contextmanager
    def reading(self, dump: AccountDump, rel: str) -> Iterator[Node]:
        """The one validation boundary: a bad value anywhere in a file is a SourceError.

        Accessors raise :class:`Invalid` with the member path; anything else a file's content
        can provoke (a wrong type the accessors did not foresee) is reported the same way,
        with the file named, so the CLI exits 2 instead of printing a traceback.
        """
        where = f"{dump.origin}/{rel}"
        try:
            body = Node(dump.files.get(rel))
            self.check_truncated(dump, rel, body)
            yield body
        except SourceError:
            raise
        except Invalid as exc:
            kind = "unexpected shape: " if exc.shape else ""
            raise SourceError(f"{where}: {kind}{exc.where}: {exc.problem}") from exc
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            detail = f"missing member {exc}" if isinstance(exc, KeyError) else str(exc)
            raise SourceError(f"{where}: unexpected shape: {detail}") from exc

    def note(self, text: str) -> None:
        if text not in self.t.notes:
            self.t.notes.append(text)

    def owner(self, account_id: str) -> str:
        """Account name for an id; accounts outside the snapshot are named by their id."""
        return self.names_by_id.get(account_id, account_id)

    def parse(self) -> Topology:
        for d in self.dumps:
            if d.name in self.t.accounts:
                raise SourceError(f"{d.origin}: account {d.name!r} given twice")
            self.t.accounts[d.name] = Account(d.name, d.id, d.role, d.region)
            self.names_by_id[d.id] = d.name
            self.t.visible_accounts.add(d.name)
            self.t.notes.extend(d.notes)
        steps = (
            ("ec2-describe-network-interfaces", self.interfaces),
            ("ec2-describe-vpcs", self.vpcs),
            ("ec2-describe-subnets", self.subnets),
            ("ec2-describe-vpc-peering-connections", self.peerings),
            ("ec2-describe-security-groups", self.security_groups),
            ("ec2-describe-managed-prefix-lists", self.prefix_lists),
            ("ec2-describe-vpcs", self.stale_groups),
            ("ec2-describe-network-acls", self.nacls),
            ("ec2-describe-route-tables", self.route_tables),
            ("ec2-describe-instances", self.instances),
            ("ec2-describe-vpc-endpoints", self.endpoints),
            ("ec2-describe-vpc-endpoint-service-configurations", self.services),
            ("elbv2-describe-load-balancers", self.load_balancers),
            ("elbv2-describe-target-groups", self.target_groups),
            # endpoints seen only from the provider side (the consumer's directory not given)
            ("ec2-describe-vpc-endpoint-connections", self.connections),
        )
        for stem, fn in steps:
            for d in self.dumps:
                rel = BY_STEM[stem].file
                if rel in d.files:
                    with self.reading(d, rel) as body:
                        fn(d, body)
        for d in self.dumps:
            self.check_orphans(d)
        self.check_regions()
        self.check_prefix_lists()
        return self.t

    def check_prefix_lists(self) -> None:
        """A rule naming a prefix list whose entries were not read cannot be evaluated: say
        which file would have told (the analysis then says "not visible", never "denied")."""
        for g in self.t.security_groups.values():
            for r in g.rules:
                if r.prefix_list and r.prefix_list not in self.t.prefix_lists:
                    rel = BY_STEM["ec2-get-managed-prefix-list-entries"].resource_file(
                        r.prefix_list
                    )
                    self.note(
                        f"{g.id} ({g.name}) names prefix list {r.prefix_list}, whose entries "
                        f"were not read ({rel} in the owner's directory): rules naming it "
                        "cannot be evaluated"
                    )

    def check_truncated(self, d: AccountDump, rel: str, body: Node) -> None:
        """A page marker means the file is one page of more: say so, loudly."""
        for marker in PAGE_MARKERS:
            if body.text(marker, ""):
                self.note(
                    f"{d.origin}/{rel}: input was cut ({marker} present): resources on later "
                    "pages are missing and show as not visible; re-run the command without "
                    "--max-items / --page-size limits"
                )

    def check_regions(self) -> None:
        """Directories of several regions belong together only through cross-region
        PrivateLink: an endpoint service listing the other region in ``SupportedRegions``,
        or an endpoint/connection naming it (``ServiceRegion`` / ``VpcEndpointRegion``)."""
        if len(self.regions) == 1:
            return
        reached, todo = set(), [self.t.region]
        while todo:
            r = todo.pop()
            if r in reached:
                continue
            reached.add(r)
            todo += [x for link in self.region_links if r in link for x in link]
        where = ", ".join(f"{d.origin}: {d.region}" for d in self.dumps)
        if not self.regions <= reached:
            raise SourceError(
                f"snapshot directories are from different regions ({where}) and no endpoint "
                "service lists the other region in SupportedRegions, nor does an endpoint "
                "name it as ServiceRegion: nothing links them"
            )
        self.note(
            f"cross-region PrivateLink ({where}): paths are analysed in the consumer's region "
            f"{self.t.region}; availability zones of the two regions are not comparable"
        )

    def check_orphans(self, d: AccountDump) -> None:
        """A per-resource file must belong to a resource its listing call returned."""
        known: set[str] = set()
        for call in CALLS:
            if call.per is None:
                continue
            source = f"{call.per.source}.json"
            if source not in d.files:
                continue
            with self.reading(d, source) as listing:
                for item in listing.items(call.per.list_key):
                    rid = item.text(call.per.id_key, "")
                    known.add(call.resource_file(rid))
        for rel in d.files:
            if "/" in rel and rel not in known:
                call = BY_STEM[rel.split("/", 1)[0]]
                # only per-resource calls have files in a directory, so call.per is set
                raise SourceError(
                    f"{d.origin}/{rel}: matches no {call.per.id_key} in "  # type: ignore[union-attr]
                    f"{call.per.source}.json; file names are the id with ':' and '/' "  # type: ignore[union-attr]
                    "replaced by '_' (docs/SNAPSHOT.md)"
                )

    # -- ec2 -------------------------------------------------------------------------------
    def interfaces(self, d: AccountDump, body: Node) -> None:
        self.enis_visible = True
        for ni in body.items("NetworkInterfaces", required=True):
            eid = ni.id("NetworkInterfaceId", "eni-")
            ips = [ni.ip("PrivateIpAddress")] if ni.has("PrivateIpAddress") else []
            ips += [a.ip("PrivateIpAddress") for a in ni.items("PrivateIpAddresses")]
            attachment = ni.opt("Attachment")
            self.enis[eid] = _Eni(
                eid,
                ni.id("SubnetId", "subnet-", ""),
                ips[0] if ips else "",
                tuple(dict.fromkeys(ips)),
                ni.text("Description", ""),
                # kept as given: AWS adds interface types faster than botocore models them
                ni.text("InterfaceType", ""),
                attachment.id("InstanceId", "i-", "") if attachment else "",
            )

    def vpcs(self, d: AccountDump, body: Node) -> None:
        for v in body.items("Vpcs", required=True):
            vid = v.id("VpcId", "vpc-")
            self.t.vpcs[vid] = Vpc(vid, _name(v, vid), d.name, v.cidr("CidrBlock"))

    def subnets(self, d: AccountDump, body: Node) -> None:
        for s in body.items("Subnets", required=True):
            sid = s.id("SubnetId", "subnet-")
            self.t.subnets[sid] = Subnet(
                sid,
                _name(s, sid),
                d.name,
                s.id("VpcId", "vpc-"),
                s.cidr("CidrBlock"),
                s.text("AvailabilityZone", ""),
                s.text("AvailabilityZoneId", ""),
            )

    def peerings(self, d: AccountDump, body: Node) -> None:
        for p in body.items("VpcPeeringConnections", required=True):
            pid = p.id("VpcPeeringConnectionId", "pcx-")
            status = p.opt("Status")
            self.t.peerings[pid] = Peering(
                pid,
                _name(p, pid),
                p.member("RequesterVpcInfo").id("VpcId", "vpc-"),
                p.member("AccepterVpcInfo").id("VpcId", "vpc-"),
                status.text("Code", "active") if status else "active",
            )

    def rules(self, sg_id: str, direction: Direction, perms: list[Node]) -> list[Rule]:
        out = []
        for perm in perms:
            proto = normalize_protocol(perm.text("IpProtocol"))
            # AWS omits the ports for port-less protocols (ESP "50", GRE "47", ...); for
            # ICMP they are the type and code, -1 meaning all
            if proto == "-1":
                lo, hi = 0, 65535
            elif proto in ("tcp", "udp"):
                lo, hi = perm.port("FromPort", 0), perm.port("ToPort", 65535)
            else:
                lo = perm.integer("FromPort", 0, lo=-1, hi=65535)
                hi = perm.integer("ToPort", 65535, lo=-1, hi=65535)
            for kind, key, read in (
                ("cidr", "IpRanges", lambda n: n.cidr("CidrIp")),
                ("cidr", "Ipv6Ranges", lambda n: n.cidr("CidrIpv6")),
                ("pl", "PrefixListIds", lambda n: n.id("PrefixListId", "pl-")),
                ("sg", "UserIdGroupPairs", lambda n: n.id("GroupId", "sg-")),
            ):
                for src in perm.items(key):
                    value = read(src)
                    rule = Rule(
                        id="",
                        direction=direction,
                        protocol=proto,
                        from_port=lo,
                        to_port=hi,
                        cidrs=(value,) if kind == "cidr" else (),
                        sg_ref=value if kind == "sg" else None,
                        prefix_list=value if kind == "pl" else None,
                        description=src.text("Description", ""),
                    )
                    rule.id = _rule_id(sg_id, direction, rule, value)
                    out.append(rule)
        return out

    def security_groups(self, d: AccountDump, body: Node) -> None:
        for g in body.items("SecurityGroups", required=True):
            gid = g.id("GroupId", "sg-")
            if not g.has("VpcId"):
                self.note(
                    f"{d.origin}/ec2-describe-security-groups.json: {g.where}: {gid} has no "
                    "VpcId (an EC2-Classic group): skipped, no PrivateLink path can use it"
                )
                continue
            rules = self.rules(gid, "ingress", g.items("IpPermissions"))
            rules += self.rules(gid, "egress", g.items("IpPermissionsEgress"))
            self.t.security_groups[gid] = SecurityGroup(
                gid,
                _name(g, g.text("GroupName", gid)),
                d.name,
                g.id("VpcId", "vpc-"),
                rules,
                g.text("Description", ""),
            )

    def prefix_lists(self, d: AccountDump, body: Node) -> None:
        """Managed prefix lists and, where read, their entries (one file per list)."""
        for pl in body.items("PrefixLists", required=True):
            pid = pl.id("PrefixListId", "pl-")
            rel = BY_STEM["ec2-get-managed-prefix-list-entries"].resource_file(pid)
            if rel not in d.files or pid in self.t.prefix_lists:
                continue  # entries not read (a rule naming it is "not visible"), or shared
            with self.reading(d, rel) as entries:
                cidrs = [e.cidr("Cidr") for e in entries.items("Entries", required=True)]
            owner = pl.text("OwnerId", d.id)
            family = pl.text("AddressFamily", "IPv4")
            self.t.prefix_lists[pid] = PrefixList(
                pid,
                pl.text("PrefixListName", pid),
                "AWS" if owner == "AWS" else self.owner(owner),
                cidrs,
                "IPv6" if family == "IPv6" else "IPv4",
                pl.integer("MaxEntries", 10, lo=1),
            )

    def stale_groups(self, d: AccountDump, vpcs: Node) -> None:
        """describe-stale-security-groups (one file per VPC): each stale reference it lists
        matches nothing. The rule is found among the group's rules (AWS still lists it in
        describe-security-groups) or, when absent there, added as a stale rule."""
        call = BY_STEM["ec2-describe-stale-security-groups"]
        for vpc in vpcs.items("Vpcs"):
            rel = call.resource_file(vpc.text("VpcId", ""))
            if rel not in d.files:
                continue
            with self.reading(d, rel) as body:
                for g in body.items("StaleSecurityGroupSet", required=True):
                    gid = g.id("GroupId", "sg-")
                    group = self.t.security_groups.get(gid)
                    if group is None:
                        continue
                    for direction, key in _STALE_PERMISSIONS:
                        for stale in self.rules(gid, direction, g.items(key)):
                            self.mark_stale(d, group, stale)

    def mark_stale(self, d: AccountDump, group: SecurityGroup, stale: Rule) -> None:
        ref = stale.sg_ref
        if ref is None:
            return
        same = [
            r
            for r in group.rules
            if r.sg_ref == ref
            and (r.direction, r.protocol, r.from_port, r.to_port)
            == (stale.direction, stale.protocol, stale.from_port, stale.to_port)
        ]
        if not same:
            group.rules.append(stale)
            same = [stale]
        for r in same:
            r.stale_ref, r.sg_ref = ref, None
        self.note(
            f"{d.origin}: {group.id} ({group.name}): {len(same)} stale rule(s) referencing "
            f"{ref} match nothing (describe-stale-security-groups)"
        )

    def nacls(self, d: AccountDump, body: Node) -> None:
        for n in body.items("NetworkAcls", required=True):
            entries = []
            for e in n.items("Entries"):
                number = e.integer("RuleNumber", lo=1, hi=NACL_DEFAULT_RULE_V6)
                if number in (NACL_DEFAULT_RULE, NACL_DEFAULT_RULE_V6):
                    continue
                proto = normalize_protocol(e.text("Protocol"))
                ports = e.opt("PortRange")
                if proto == "-1" or ports is None or not ports.obj():
                    lo, hi = 0, 65535
                else:
                    lo, hi = ports.port("From"), ports.port("To")
                action = e.text("RuleAction")
                if action not in ("allow", "deny"):
                    raise Invalid(e.at("RuleAction"), f"{action!r} is not allow or deny")
                cidr = e.cidr("CidrBlock") if e.has("CidrBlock") else e.cidr("Ipv6CidrBlock", "")
                entries.append(
                    NaclEntry(number, e.flag("Egress", False), proto, action, cidr, lo, hi)
                )
            aid = n.id("NetworkAclId", "acl-")
            self.t.nacls[aid] = Nacl(
                aid,
                _name(n, aid),
                d.name,
                n.id("VpcId", "vpc-"),
                [a.id("SubnetId", "subnet-") for a in n.items("Associations")],
                entries,
            )

    def route_tables(self, d: AccountDump, body: Node) -> None:
        """Routes to a CIDR and the target plprobe follows (``local``, a peering) or names
        (any other gateway); prefix-list destinations are skipped with a note."""
        for rt in body.items("RouteTables", required=True):
            rid = rt.id("RouteTableId", "rtb-")
            routes = []
            for r in rt.items("Routes"):
                if r.has("DestinationCidrBlock"):
                    dest = r.cidr("DestinationCidrBlock")
                elif r.has("DestinationIpv6CidrBlock"):
                    dest = r.cidr("DestinationIpv6CidrBlock")
                else:
                    self.note(
                        f"{d.origin}: route table {rid}: a route to a prefix list is not followed"
                    )
                    continue
                target = next(
                    (r.text(k) for k in _ROUTE_TARGETS if r.has(k)),
                    "unknown",
                )
                routes.append(Route(dest, target, r.text("State", "active")))
            subnets: list[str] = []
            main = False
            for a in rt.items("Associations"):
                state = a.opt("AssociationState")
                if state is not None and state.text("State", "associated") != "associated":
                    continue
                if a.flag("Main", False):
                    main = True
                elif a.has("SubnetId"):
                    subnets.append(a.id("SubnetId", "subnet-"))
            self.t.route_tables[rid] = RouteTable(
                rid, _name(rt, rid), d.name, rt.id("VpcId", "vpc-"), routes, subnets, main
            )

    def instances(self, d: AccountDump, body: Node) -> None:
        for r in body.items("Reservations", required=True):
            for i in r.items("Instances"):
                state = i.opt("State")
                if state and state.text("Name", "running") in ("terminated", "shutting-down"):
                    continue
                if not i.has("PrivateIpAddress") or not i.has("SubnetId"):
                    continue  # not in a VPC subnet (stopped without an address, EC2-Classic)
                nis = sorted(
                    i.items("NetworkInterfaces"),
                    key=lambda n: (
                        n.member("Attachment").integer("DeviceIndex", 0, lo=0)
                        if n.has("Attachment")
                        else 0
                    ),
                )
                iid = i.id("InstanceId", "i-")
                ports: str | None = None
                where = ""
                for tag in i.items("Tags"):
                    if tag.text("Key") == SERVICES_TAG:
                        ports = tag.text("Value", "")
                        where = tag.at("Value")
                services = _port_list(ports, where) if ports else []
                self.t.instances[iid] = Instance(
                    iid,
                    _name(i, iid),
                    d.name,
                    i.id("SubnetId", "subnet-"),
                    i.ip("PrivateIpAddress"),
                    [g.id("GroupId", "sg-") for g in i.items("SecurityGroups")],
                    services,
                    nis[0].id("NetworkInterfaceId", "eni-") if nis else "",
                    services_known=ports is not None,
                )

    def endpoints(self, d: AccountDump, body: Node) -> None:
        for e in body.items("VpcEndpoints", required=True):
            if e.text("VpcEndpointType", "Interface") != "Interface":
                continue
            eid = e.id("VpcEndpointId", "vpce-")
            service_region = e.text("ServiceRegion", "")
            if service_region and service_region != d.region:
                self.region_links.add(frozenset((d.region, service_region)))
            enis = []
            for ni_id in e.items("NetworkInterfaceIds"):
                if not isinstance(ni_id.value, str):
                    raise Invalid(ni_id.where, "expected an eni-… id", shape=True)
                ni = self.enis.get(ni_id.value)
                # ENIs not listed (or without an address): their subnet and IP are not visible
                if ni is not None and ni.subnet_id and ni.ip:
                    enis.append(EndpointEni(ni.id, ni.subnet_id, ni.ip))
            self.t.endpoints[eid] = Endpoint(
                eid,
                _name(e, eid),
                self.owner(e.account_id("OwnerId", d.id)),
                e.id("VpcId", "vpc-"),
                e.text("ServiceName").rsplit(".", 1)[-1],
                [g.id("GroupId", "sg-") for g in e.items("Groups")],
                enis,
                _state(e.text("State", "")),
                e.flag("PrivateDnsEnabled", False),
                "",  # who created it is in no describe output: unknown
                _dns_hash(eid, e.items("DnsEntries")),
            )

    def services(self, d: AccountDump, body: Node) -> None:
        for s in body.items("ServiceConfigurations", required=True):
            sid = s.id("ServiceId", "vpce-svc-")
            for region in s.items("SupportedRegions"):
                name = region.text("Region")
                if name != d.region:
                    self.region_links.add(frozenset((d.region, name)))
            perms_rel = BY_STEM["ec2-describe-vpc-endpoint-service-permissions"].resource_file(sid)
            principals: list[str] = []
            if perms_rel not in d.files and s.opt("NetworkLoadBalancerArns") is not None:
                self.note(
                    f"{d.origin}: {sid} has no {perms_rel}: its allowed principals were not "
                    "read and are not visible"
                )
            if perms_rel in d.files:
                with self.reading(d, perms_rel) as perms:
                    principals = [
                        p.text("Principal") for p in perms.items("AllowedPrincipals", required=True)
                    ]
            dns = s.opt("PrivateDnsNameConfiguration")
            private_dns = s.text("PrivateDnsName", None)
            nlbs = s.opt("NetworkLoadBalancerArns")
            self.t.endpoint_services[sid] = EndpointService(
                sid,
                _name(s, sid),
                d.name,
                [_arn(n) for n in s.items("NetworkLoadBalancerArns")] if nlbs else [],
                s.flag("AcceptanceRequired", True),
                principals,
                private_dns,
                (dns.text("State", None) if dns else None) if private_dns else None,
                principals_known=perms_rel in d.files,
            )

    def connections(self, d: AccountDump, body: Node) -> None:
        for c in body.items("VpcEndpointConnections", required=True):
            eid = c.id("VpcEndpointId", "vpce-")
            region = c.text("VpcEndpointRegion", "")
            if region and region != d.region:
                self.region_links.add(frozenset((d.region, region)))
            if eid in self.t.endpoints:
                continue  # the consumer's own view is richer
            owner = c.account_id("VpcEndpointOwner", "")
            self.t.endpoints[eid] = Endpoint(
                eid,
                eid,
                self.owner(owner),
                "",
                c.id("ServiceId", "vpce-svc-"),
                [],
                [],
                _state(c.text("VpcEndpointState", "")),
                False,
                "",  # who created it is in no describe output: unknown
                _dns_hash(eid, c.items("DnsEntries")),
            )

    # -- elbv2 -----------------------------------------------------------------------------
    def attributes(self, d: AccountDump, stem: str, arn: str) -> dict[str, str]:
        rel = BY_STEM[stem].resource_file(arn)
        if rel not in d.files:
            return {}
        with self.reading(d, rel) as body:
            return {a.text("Key"): a.text("Value", "") for a in body.items("Attributes")}

    def load_balancers(self, d: AccountDump, body: Node) -> None:
        for lb in body.items("LoadBalancers", required=True):
            if lb.text("Type", "network") != "network":
                continue
            arn = lb.arn("LoadBalancerArn")
            name = lb.text("LoadBalancerName")
            nodes = []
            fixed = True
            for az in lb.items("AvailabilityZones"):
                subnet = az.id("SubnetId", "subnet-")
                ips = [
                    addr.ip("PrivateIPv4Address")
                    for addr in az.items("LoadBalancerAddresses")
                    if addr.has("PrivateIPv4Address")
                ]
                if ips:
                    nodes += [NlbNode(subnet, ip, self.nlb_eni(arn, ip)) for ip in ips]
                else:  # created without fixed private IPs: AWS lists none; the ENIs know
                    fixed = False
                    nodes += self.nlb_nodes_from_enis(d, arn, name, subnet)
            attrs = self.attributes(d, "elbv2-describe-load-balancer-attributes", arn)
            sgs = lb.opt("SecurityGroups")
            enforce = lb.text("EnforceSecurityGroupInboundRulesOnPrivateLinkTraffic", "on")
            self.t.nlbs[arn] = Nlb(
                arn,
                name,
                d.name,
                lb.id("VpcId", "vpc-"),
                nodes,
                [g.id("GroupId", "sg-") for g in _strings(sgs)] if sgs is not None else None,
                enforce.lower() != "off",
                attrs.get("load_balancing.cross_zone.enabled", "false").lower() == "true",
                fixed,
            )
            rel = BY_STEM["elbv2-describe-listeners"].resource_file(arn)
            if rel in d.files:
                with self.reading(d, rel) as listeners:
                    self.listeners(listeners)

    def nlb_eni_description(self, arn: str) -> str:
        """``ELB net/<name>/<id>``: how AWS describes an NLB node's ENI."""
        return "ELB " + arn.split(":loadbalancer/", 1)[-1]

    def nlb_eni(self, arn: str, ip: str) -> str:
        want = self.nlb_eni_description(arn)
        return next(
            (k for k, ni in self.enis.items() if ip in ni.ips and ni.description == want), ""
        )

    def nlb_nodes_from_enis(
        self, d: AccountDump, arn: str, name: str, subnet_id: str
    ) -> list[NlbNode]:
        want = self.nlb_eni_description(arn)
        nodes = [
            NlbNode(subnet_id, ni.ip, ni.id)
            for ni in self.enis.values()
            if ni.description == want and ni.subnet_id == subnet_id and ni.ip
        ]
        if not nodes:
            seen = "matches none" if self.enis_visible else "was not given"
            self.note(
                f"{d.origin}: NLB {name} lists no address in {subnet_id} and "
                f"describe-network-interfaces {seen} ('{want}'): its node there is not visible"
            )
        return nodes

    def listeners(self, body: Node) -> None:
        for li in body.items("Listeners", required=True):
            tg = None
            for action in li.items("DefaultActions"):
                if action.text("Type", "") != "forward":
                    continue
                tg = action.arn("TargetGroupArn", None)
                if tg is None and action.has("ForwardConfig"):
                    groups = action.member("ForwardConfig").items("TargetGroups")
                    tg = groups[0].arn("TargetGroupArn") if groups else None
                break
            arn = li.arn("ListenerArn")
            self.t.listeners[arn] = Listener(
                arn, li.arn("LoadBalancerArn"), li.port("Port"), li.text("Protocol"), tg
            )

    def target_groups(self, d: AccountDump, body: Node) -> None:
        for tg in body.items("TargetGroups", required=True):
            arn = tg.arn("TargetGroupArn")
            name = tg.text("TargetGroupName", arn)
            kind = tg.text("TargetType", "instance")
            if kind not in ("instance", "ip") or not tg.has("Port") or not tg.has("VpcId"):
                self.note(
                    f"{d.origin}/elbv2-describe-target-groups.json: {tg.where}: target group "
                    f"{name} (TargetType {kind}) has no port or VPC an NLB path can reach: "
                    "skipped"
                )
                continue
            hc_port = tg.text("HealthCheckPort", "traffic-port")
            if hc_port != "traffic-port" and not (hc_port.isdigit() and int(hc_port) <= 65535):
                raise Invalid(tg.at("HealthCheckPort"), f"{hc_port!r} is not a port")
            hc = HealthCheck(
                tg.text("HealthCheckProtocol", "TCP"),
                None if hc_port == "traffic-port" else int(hc_port),
                tg.text("HealthCheckPath", "/"),
                tg.integer("HealthCheckIntervalSeconds", 30, lo=1, hi=3600),
                tg.integer("HealthCheckTimeoutSeconds", 10, lo=1, hi=3600),
                tg.integer("HealthyThresholdCount", 3, lo=1, hi=100),
                tg.integer("UnhealthyThresholdCount", 3, lo=1, hi=100),
            )
            attrs = self.attributes(d, "elbv2-describe-target-group-attributes", arn)
            port = tg.port("Port")
            targets = []
            rel = BY_STEM["elbv2-describe-target-health"].resource_file(arn)
            if rel in d.files:
                with self.reading(d, rel) as health:
                    for desc in health.items("TargetHealthDescriptions", required=True):
                        t = desc.member("Target")
                        state = desc.opt("TargetHealth")
                        target_id = self.target_id(d, name, kind, t)
                        targets.append(
                            Target(
                                target_id,
                                t.port("Port", port),
                                state.text("State", None) if state else None,
                            )
                        )
            self.t.target_groups[arn] = TargetGroup(
                arn,
                name,
                d.name,
                tg.id("VpcId", "vpc-"),
                port,
                tg.text("Protocol", "TCP"),
                hc,
                attrs.get("proxy_protocol_v2.enabled", "false").lower() == "true",
                targets,
            )

    def target_id(self, d: AccountDump, tg_name: str, kind: str, target: Node) -> str:
        """An instance target is its instance; an IP target is matched to the ENI holding the
        address, and through its attachment to the instance the analysis knows."""
        if kind == "instance":
            return str(target.id("Id", "i-"))
        ip = target.ip("Id")
        eni = next((ni for ni in self.enis.values() if ip in ni.ips), None)
        if eni is not None and eni.instance_id:
            return eni.instance_id
        why = "not attached to an instance" if eni else "held by no visible ENI"
        self.note(
            f"{d.origin}: target {ip} of target group {tg_name} is {why}: "
            "its side of the path cannot be analysed"
        )
        return ip


def _strings(node: Node) -> list[Node]:
    """A list of plain strings (``SecurityGroups`` of a load balancer), as GroupId nodes."""
    if not isinstance(node.value, list):
        raise Invalid(node.where, "expected a list", shape=True)
    return [Node({"GroupId": v}, node.where) for v in node.value]


def _arn(node: Node) -> str:
    if not isinstance(node.value, str):
        raise Invalid(node.where, "expected an ARN string", shape=True)
    return str(Node({"Arn": node.value}, node.where).arn("Arn"))


def _port_list(text: str, where: str) -> list[int]:
    ports = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or not 0 < int(part) <= 65535:
            raise Invalid(where, f"{text!r} is not a comma-separated list of ports")
        ports.add(int(part))
    return sorted(ports)


def _dns_hash(endpoint_id: str, entries: list[Node]) -> str:
    """``vpce-ID-HASH.vpce-svc-…`` -> HASH (the regional name is the one without an AZ)."""
    for entry in entries:
        label = entry.text("DnsName", "").split(".", 1)[0]
        if label.startswith(endpoint_id + "-"):
            rest = label[len(endpoint_id) + 1 :]
            if "-" not in rest:
                return rest
    return ""


def parse_accounts(dumps: list[AccountDump]) -> Topology:
    """The one parser: describe-* outputs of one or more accounts -> Topology."""
    if not dumps:
        raise SourceError("no snapshot directory given")
    return _Parser(dumps).parse()


def load_snapshot(dirs: list[Path]) -> Topology:
    """Load one or more account directories (``plprobe explain --snapshot DIR …``)."""
    return parse_accounts([read_account_dir(Path(d)) for d in dirs])


__all__ = [
    "ACCOUNT_FILE",
    "AccountDump",
    "ApiCall",
    "load_snapshot",
    "parse_accounts",
    "read_account_dir",
    "resource_file_name",
    "shape_errors",
    "validate_dump",
]
