"""AWS describe-* JSON (one directory per account) -> Topology.

Why one parser: a user's hand-made snapshot (``aws … --output json`` in each account), the
lab's snapshot (``agent.lab.snapshot``) and live AWS (``agent.sources.aws_live``, which fetches
the same calls into the same in-memory layout) all go through :func:`parse_accounts`, so the
three sources cannot disagree about what a security group or an endpoint means.

Partial views are normal: each account's credentials read only that account. A missing file
means "not visible from here" (the resource kinds it would list stay empty), never an error;
``Topology.visible_accounts`` names the accounts whose directories were given. Malformed
JSON, or JSON that is not the API's output shape, is a :class:`SourceError` naming the file
(the CLI exits 2).

What AWS cannot tell us is filled in the documented way (``docs/SNAPSHOT.md``): an
endpoint's requester (which principal created it) is unknown, so the analysis asks whether
*some* principal of its owner account is allowed; security group rules come back one per
source (AWS's own granularity) with readable ids; instances' listening ports come from
the optional ``plprobe:services`` tag, else they are unknown (``services_known=False``).
"""

from __future__ import annotations

import json
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

ACCOUNT_FILE = "account.json"
#: AWS lists this "*" entry last in every NACL; the model's evaluation implies it
NACL_DEFAULT_RULE = 32767
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


# --- reading a directory ---------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SourceError(f"{path}:{exc.lineno}:{exc.colno}: malformed JSON: {exc.msg}") from exc


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
    meta = _read_json(meta_path)
    if not isinstance(meta, dict):
        raise SourceError(f"{meta_path}: expected a JSON object")
    for key in ("id", "role", "region"):
        if not isinstance(meta.get(key), str) or not meta[key]:
            raise SourceError(f"{meta_path}: {key}: missing or not a string")
    if meta["role"] not in ("consumer", "provider"):
        raise SourceError(f"{meta_path}: role: must be consumer or provider")
    name = meta.get("name") or path.name
    dump = AccountDump(str(name), meta["id"], meta["role"], meta["region"], origin=str(path))
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


def validate_dump(dump: AccountDump) -> None:
    """Check each file against the API's output shape when botocore is installed."""
    try:
        import botocore  # noqa: F401
    except ImportError:
        return  # the parser still rejects wrong types, with less precise messages
    for rel, body in dump.files.items():
        call = BY_STEM.get(rel.split("/", 1)[0].removesuffix(".json"))
        if call is None:
            continue
        errors = shape_errors(call.service, call.operation, body)
        if errors:
            more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
            raise SourceError(
                f"{dump.origin}/{rel}: not the output of {call.service} {call.cli_name}: "
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


def _name(item: dict[str, Any], default: str) -> str:
    for tag in item.get("Tags") or []:
        if tag["Key"] == "Name" and tag.get("Value"):
            return str(tag["Value"])
    return default


def _state(text: str) -> str:
    return next((s for s in ENDPOINT_STATES if s.lower() == text.lower()), text)


def _rule_id(sg_id: str, direction: str, rule: Rule, source: str) -> str:
    """A readable, stable rule id: IpPermissions carry no rule ids (AWS groups them)."""
    word = "from" if direction == "ingress" else "to"
    return f"{sg_id} {direction} {rule.port_text()} {word} {source}"


class _Parser:
    def __init__(self, dumps: list[AccountDump]) -> None:
        self.dumps = dumps
        regions = {d.region for d in dumps}
        if len(regions) != 1:
            where = ", ".join(f"{d.origin}: {d.region}" for d in dumps)
            raise SourceError(f"snapshot directories are from different regions ({where})")
        self.t = Topology(region=regions.pop())
        self.t.source = "snapshot:" + ",".join(d.origin for d in dumps)
        self.names_by_id: dict[str, str] = {}
        self.enis: dict[str, dict[str, Any]] = {}

    @contextmanager
    def reading(self, dump: AccountDump, rel: str) -> Iterator[None]:
        """Turn a wrong type or missing member deep inside a file into a SourceError."""
        try:
            yield
        except SourceError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
            detail = f"missing member {exc}" if isinstance(exc, KeyError) else str(exc)
            raise SourceError(f"{dump.origin}/{rel}: unexpected shape: {detail}") from exc

    def file(self, dump: AccountDump, stem: str) -> Any:
        return dump.files.get(BY_STEM[stem].file)

    def owner(self, account_id: str) -> str:
        """Account name for an id; accounts outside the snapshot are named by their id."""
        return self.names_by_id.get(account_id, account_id)

    def parse(self) -> Topology:
        for d in self.dumps:
            if d.name in self.t.accounts:
                raise SourceError(f"{d.origin}: account {d.name!r} given twice")
            self.t.accounts[d.name] = Account(d.name, d.id, d.role)
            self.names_by_id[d.id] = d.name
            self.t.visible_accounts.add(d.name)
        steps = (
            ("ec2-describe-network-interfaces", self.interfaces),
            ("ec2-describe-vpcs", self.vpcs),
            ("ec2-describe-subnets", self.subnets),
            ("ec2-describe-vpc-peering-connections", self.peerings),
            ("ec2-describe-security-groups", self.security_groups),
            ("ec2-describe-network-acls", self.nacls),
            ("ec2-describe-instances", self.instances),
            ("ec2-describe-vpc-endpoints", self.endpoints),
            ("ec2-describe-vpc-endpoint-service-configurations", self.services),
            ("elbv2-describe-load-balancers", self.load_balancers),
            ("elbv2-describe-target-groups", self.target_groups),
        )
        for stem, fn in steps:
            for d in self.dumps:
                body = self.file(d, stem)
                if body is not None:
                    with self.reading(d, BY_STEM[stem].file):
                        fn(d, body)
        # endpoints seen only from the provider side (the consumer's directory not given)
        for d in self.dumps:
            body = self.file(d, "ec2-describe-vpc-endpoint-connections")
            if body is not None:
                with self.reading(d, "ec2-describe-vpc-endpoint-connections.json"):
                    self.connections(d, body)
        for d in self.dumps:
            self.check_orphans(d)
        return self.t

    def per_resource(self, d: AccountDump, stem: str, resource_id: str) -> Any:
        return d.files.get(BY_STEM[stem].resource_file(resource_id))

    def check_orphans(self, d: AccountDump) -> None:
        """A per-resource file must belong to a resource its listing call returned."""
        known: set[str] = set()
        for call in CALLS:
            if call.per is None:
                continue
            listing = d.files.get(f"{call.per.source}.json") or {}
            ids = [x.get(call.per.id_key, "") for x in listing.get(call.per.list_key) or []]
            known.update(call.resource_file(i) for i in ids)
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
    def interfaces(self, d: AccountDump, body: Any) -> None:
        for ni in body["NetworkInterfaces"]:
            self.enis[ni["NetworkInterfaceId"]] = ni

    def vpcs(self, d: AccountDump, body: Any) -> None:
        for v in body["Vpcs"]:
            vid = v["VpcId"]
            self.t.vpcs[vid] = Vpc(vid, _name(v, vid), d.name, v["CidrBlock"])

    def subnets(self, d: AccountDump, body: Any) -> None:
        for s in body["Subnets"]:
            sid = s["SubnetId"]
            self.t.subnets[sid] = Subnet(
                sid,
                _name(s, sid),
                d.name,
                s["VpcId"],
                s["CidrBlock"],
                s.get("AvailabilityZone", ""),
                s.get("AvailabilityZoneId", ""),
            )

    def peerings(self, d: AccountDump, body: Any) -> None:
        for p in body["VpcPeeringConnections"]:
            pid = p["VpcPeeringConnectionId"]
            self.t.peerings[pid] = Peering(
                pid,
                _name(p, pid),
                p["RequesterVpcInfo"]["VpcId"],
                p["AccepterVpcInfo"]["VpcId"],
                (p.get("Status") or {}).get("Code", "active"),
            )

    def rules(self, sg_id: str, direction: Direction, perms: list[dict[str, Any]]) -> list[Rule]:
        out = []
        for perm in perms:
            proto = normalize_protocol(perm["IpProtocol"])
            # AWS omits the ports for port-less protocols (ESP "50", GRE "47", ...)
            lo, hi = (
                (0, 65535)
                if proto == "-1"
                else (perm.get("FromPort", 0), perm.get("ToPort", 65535))
            )
            for kind, key, id_key in (
                ("cidr", "IpRanges", "CidrIp"),
                ("cidr", "Ipv6Ranges", "CidrIpv6"),
                ("pl", "PrefixListIds", "PrefixListId"),
                ("sg", "UserIdGroupPairs", "GroupId"),
            ):
                for src in perm.get(key) or []:
                    value = src[id_key]
                    rule = Rule(
                        id="",
                        direction=direction,
                        protocol=proto,
                        from_port=int(lo),
                        to_port=int(hi),
                        cidrs=(value,) if kind == "cidr" else (),
                        sg_ref=value if kind == "sg" else None,
                        prefix_list=value if kind == "pl" else None,
                        description=src.get("Description", ""),
                    )
                    rule.id = _rule_id(sg_id, direction, rule, value)
                    out.append(rule)
        return out

    def security_groups(self, d: AccountDump, body: Any) -> None:
        for g in body["SecurityGroups"]:
            gid = g["GroupId"]
            rules = self.rules(gid, "ingress", g.get("IpPermissions") or [])
            rules += self.rules(gid, "egress", g.get("IpPermissionsEgress") or [])
            self.t.security_groups[gid] = SecurityGroup(
                gid,
                _name(g, g.get("GroupName", gid)),
                d.name,
                g["VpcId"],
                rules,
                g.get("Description", ""),
            )

    def nacls(self, d: AccountDump, body: Any) -> None:
        for n in body["NetworkAcls"]:
            entries = []
            for e in n.get("Entries") or []:
                if e["RuleNumber"] == NACL_DEFAULT_RULE:
                    continue
                proto = normalize_protocol(e["Protocol"])
                ports = e.get("PortRange") or {}
                if proto == "-1" or not ports:
                    lo, hi = 0, 65535
                else:
                    lo, hi = int(ports["From"]), int(ports["To"])
                entries.append(
                    NaclEntry(
                        int(e["RuleNumber"]),
                        bool(e["Egress"]),
                        proto,
                        e["RuleAction"],
                        e.get("CidrBlock") or e.get("Ipv6CidrBlock", ""),
                        lo,
                        hi,
                    )
                )
            aid = n["NetworkAclId"]
            self.t.nacls[aid] = Nacl(
                aid,
                _name(n, aid),
                d.name,
                n["VpcId"],
                [a["SubnetId"] for a in n.get("Associations") or []],
                entries,
            )

    def instances(self, d: AccountDump, body: Any) -> None:
        for r in body["Reservations"]:
            for i in r["Instances"]:
                state = (i.get("State") or {}).get("Name", "running")
                if state in ("terminated", "shutting-down"):
                    continue
                if "PrivateIpAddress" not in i or "SubnetId" not in i:
                    continue  # not in a VPC subnet (stopped without an address, EC2-Classic)
                nis = sorted(
                    i.get("NetworkInterfaces") or [],
                    key=lambda n: (n.get("Attachment") or {}).get("DeviceIndex", 0),
                )
                iid = i["InstanceId"]
                tags = {t["Key"]: t.get("Value", "") for t in i.get("Tags") or []}
                ports = tags.get(SERVICES_TAG)
                services = sorted({int(p) for p in ports.split(",") if p.strip()}) if ports else []
                self.t.instances[iid] = Instance(
                    iid,
                    _name(i, iid),
                    d.name,
                    i["SubnetId"],
                    i["PrivateIpAddress"],
                    [g["GroupId"] for g in i.get("SecurityGroups") or []],
                    services,
                    nis[0]["NetworkInterfaceId"] if nis else "",
                    services_known=ports is not None,
                )

    def endpoints(self, d: AccountDump, body: Any) -> None:
        for e in body["VpcEndpoints"]:
            if e.get("VpcEndpointType", "Interface") != "Interface":
                continue
            eid = e["VpcEndpointId"]
            enis = []
            for ni_id in e.get("NetworkInterfaceIds") or []:
                ni = self.enis.get(ni_id)
                if ni is not None:  # ENIs not listed: their subnet and IP are not visible
                    enis.append(EndpointEni(ni_id, ni["SubnetId"], ni["PrivateIpAddress"]))
            owner = e.get("OwnerId", d.id)
            self.t.endpoints[eid] = Endpoint(
                eid,
                _name(e, eid),
                self.owner(owner),
                e["VpcId"],
                e["ServiceName"].rsplit(".", 1)[-1],
                [g["GroupId"] for g in e.get("Groups") or []],
                enis,
                _state(e.get("State", "")),
                bool(e.get("PrivateDnsEnabled", False)),
                "",  # who created it is in no describe output: unknown
                _dns_hash(eid, e.get("DnsEntries") or []),
            )

    def services(self, d: AccountDump, body: Any) -> None:
        for s in body["ServiceConfigurations"]:
            sid = s["ServiceId"]
            perms_rel = BY_STEM["ec2-describe-vpc-endpoint-service-permissions"].resource_file(sid)
            principals: list[str] = []
            perms = d.files.get(perms_rel)
            if perms is not None:
                with self.reading(d, perms_rel):
                    principals = [p["Principal"] for p in perms["AllowedPrincipals"]]
            dns = s.get("PrivateDnsNameConfiguration") or {}
            self.t.endpoint_services[sid] = EndpointService(
                sid,
                _name(s, sid),
                d.name,
                list(s.get("NetworkLoadBalancerArns") or []),
                bool(s.get("AcceptanceRequired", True)),
                principals,
                s.get("PrivateDnsName"),
                dns.get("State") if s.get("PrivateDnsName") else None,
            )

    def connections(self, d: AccountDump, body: Any) -> None:
        for c in body["VpcEndpointConnections"]:
            eid = c["VpcEndpointId"]
            if eid in self.t.endpoints:
                continue  # the consumer's own view is richer
            owner = c.get("VpcEndpointOwner", "")
            self.t.endpoints[eid] = Endpoint(
                eid,
                eid,
                self.owner(owner),
                "",
                c["ServiceId"],
                [],
                [],
                _state(c.get("VpcEndpointState", "")),
                False,
                "",  # who created it is in no describe output: unknown
                _dns_hash(eid, c.get("DnsEntries") or []),
            )

    # -- elbv2 -----------------------------------------------------------------------------
    def attributes(self, d: AccountDump, stem: str, arn: str) -> dict[str, str]:
        rel = BY_STEM[stem].resource_file(arn)
        body = d.files.get(rel)
        if body is None:
            return {}
        with self.reading(d, rel):
            return {a["Key"]: a["Value"] for a in body["Attributes"]}

    def load_balancers(self, d: AccountDump, body: Any) -> None:
        for lb in body["LoadBalancers"]:
            if lb.get("Type", "network") != "network":
                continue
            arn = lb["LoadBalancerArn"]
            nodes = []
            for az in lb.get("AvailabilityZones") or []:
                for addr in az.get("LoadBalancerAddresses") or []:
                    ip = addr.get("PrivateIPv4Address")
                    if ip:
                        nodes.append(NlbNode(az["SubnetId"], ip, self.nlb_eni(lb, ip)))
            attrs = self.attributes(d, "elbv2-describe-load-balancer-attributes", arn)
            sgs = lb.get("SecurityGroups")
            enforce = lb.get("EnforceSecurityGroupInboundRulesOnPrivateLinkTraffic", "on")
            self.t.nlbs[arn] = Nlb(
                arn,
                lb["LoadBalancerName"],
                d.name,
                lb["VpcId"],
                nodes,
                list(sgs) if sgs is not None else None,
                str(enforce).lower() != "off",
                attrs.get("load_balancing.cross_zone.enabled", "false").lower() == "true",
            )
            rel = BY_STEM["elbv2-describe-listeners"].resource_file(arn)
            listeners = d.files.get(rel)
            if listeners is not None:
                with self.reading(d, rel):
                    self.listeners(listeners)

    def nlb_eni(self, lb: dict[str, Any], ip: str) -> str:
        suffix = lb["LoadBalancerArn"].split(":loadbalancer/", 1)[-1]
        return next(
            (
                k
                for k, ni in self.enis.items()
                if ni.get("PrivateIpAddress") == ip and ni.get("Description") == f"ELB {suffix}"
            ),
            "",
        )

    def listeners(self, body: Any) -> None:
        for li in body["Listeners"]:
            forward: dict[str, Any] = next(
                (a for a in li.get("DefaultActions") or [] if a.get("Type") == "forward"), {}
            )
            tg = forward.get("TargetGroupArn")
            if tg is None:
                groups = (forward.get("ForwardConfig") or {}).get("TargetGroups") or []
                tg = groups[0]["TargetGroupArn"] if groups else None
            self.t.listeners[li["ListenerArn"]] = Listener(
                li["ListenerArn"], li["LoadBalancerArn"], int(li["Port"]), li["Protocol"], tg
            )

    def target_groups(self, d: AccountDump, body: Any) -> None:
        for tg in body["TargetGroups"]:
            arn = tg["TargetGroupArn"]
            hc_port = tg.get("HealthCheckPort", "traffic-port")
            hc = HealthCheck(
                tg.get("HealthCheckProtocol", "TCP"),
                None if hc_port == "traffic-port" else int(hc_port),
                tg.get("HealthCheckPath", "/"),
                int(tg.get("HealthCheckIntervalSeconds", 30)),
                int(tg.get("HealthCheckTimeoutSeconds", 10)),
                int(tg.get("HealthyThresholdCount", 3)),
                int(tg.get("UnhealthyThresholdCount", 3)),
            )
            attrs = self.attributes(d, "elbv2-describe-target-group-attributes", arn)
            port = int(tg["Port"])
            targets = []
            rel = BY_STEM["elbv2-describe-target-health"].resource_file(arn)
            health = d.files.get(rel)
            if health is not None:
                with self.reading(d, rel):
                    for desc in health["TargetHealthDescriptions"]:
                        t = desc["Target"]
                        state = (desc.get("TargetHealth") or {}).get("State")
                        targets.append(Target(t["Id"], int(t.get("Port", port)), state))
            self.t.target_groups[arn] = TargetGroup(
                arn,
                tg["TargetGroupName"],
                d.name,
                tg["VpcId"],
                port,
                tg.get("Protocol", "TCP"),
                hc,
                attrs.get("proxy_protocol_v2.enabled", "false").lower() == "true",
                targets,
            )


def _dns_hash(endpoint_id: str, entries: list[dict[str, Any]]) -> str:
    """``vpce-ID-HASH.vpce-svc-…`` -> HASH (the regional name is the one without an AZ)."""
    for entry in entries:
        label = entry["DnsName"].split(".", 1)[0]
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
