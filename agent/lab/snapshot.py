"""Topology -> per-account directories of AWS describe-* JSON (``plprobe lab snapshot``).

Why: the static analyzer must read exactly what the lab enforces, through the same reader a
user's real snapshot goes through (``agent.sources.aws_snapshot``). So the lab does not hand
its Topology to the analyzer directly; it writes what ``aws ec2 describe-… --output json``
would print in each account, and the analyzer loads that.

Each account sees only its own resources: the consumer's directory has the endpoint, its
ENIs and SGs; the provider's has the endpoint service, the NLB, target groups and the
endpoint connections (which name the consumer's endpoint id and owner account). File names
and layout come from ``agent.sources.aws_actions.CALLS``; ``docs/SNAPSHOT.md`` describes them.

Rendering is pure (``render_snapshot`` returns JSON-able dicts, deterministic order);
``write_snapshot`` only writes them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

from agent.model import (
    Account,
    Endpoint,
    Instance,
    Nacl,
    Nlb,
    SecurityGroup,
    Topology,
    stable_id,
)
from agent.sources.aws_actions import BY_STEM, CALLS, calls_for
from agent.sources.aws_snapshot import SERVICES_TAG

#: account.json: who the directory belongs to (the describe-* outputs do not say the role)
ACCOUNT_FILE = "account.json"
#: a fixed creation time keeps lab snapshots byte-for-byte reproducible
CREATED = "2024-01-01T00:00:00+00:00"

_NACL_PROTO = {"tcp": "6", "udp": "17", "icmp": "1", "-1": "-1"}
TargetHealthMap = dict[tuple[str, str], str]


def _service_name(region: str, service_id: str) -> str:
    """An endpoint's ``ServiceName``: ``com.amazonaws.vpce.REGION.vpce-svc-…`` for an endpoint
    service of some account, ``com.amazonaws.REGION.logs`` for an AWS service."""
    if service_id.startswith("vpce-svc-"):
        return f"com.amazonaws.vpce.{region}.{service_id}"
    return f"com.amazonaws.{region}.{service_id}"


def _tags(name: str) -> list[dict[str, str]]:
    return [{"Key": "Name", "Value": name}]


class _Owned(Protocol):
    """A resource of one account."""

    account: str


_R = TypeVar("_R", bound=_Owned)


class _Renderer:
    def __init__(self, t: Topology, account: Account, health: TargetHealthMap) -> None:
        self.t = t
        self.a = account
        self.health = health
        self.files: dict[str, Any] = {}

    # -- helpers ------------------------------------------------------------------------
    def mine(self, account_name: str) -> bool:
        return account_name == self.a.name

    def owned(self, items: Iterable[_R]) -> Iterator[_R]:
        """The resources of this account, in the model's order: each describe-* file lists
        only what the account that runs the call owns."""
        return (item for item in items if self.mine(item.account))

    def owner_id(self, account_name: str) -> str:
        acc = self.t.accounts.get(account_name)
        return acc.id if acc else account_name

    def sg_ref(self, sg_id: str) -> dict[str, str]:
        sg = self.t.security_groups.get(sg_id)
        return {"GroupId": sg_id, "GroupName": sg.name if sg else sg_id}

    def az(self, subnet_id: str) -> str:
        s = self.t.subnets.get(subnet_id)
        return s.az if s else ""

    def vpc_of_subnet(self, subnet_id: str) -> str:
        s = self.t.subnets.get(subnet_id)
        return s.vpc_id if s else ""

    def put(self, stem: str, body: Any, resource_id: str | None = None) -> None:
        call = BY_STEM[stem]
        path = call.file if resource_id is None else call.resource_file(resource_id)
        self.files[path] = body

    # -- render -------------------------------------------------------------------------
    def render(self) -> dict[str, Any]:
        stems = {c.stem for c in calls_for(self.a.role)}
        self.files[ACCOUNT_FILE] = {
            "name": self.a.name,
            "id": self.a.id,
            "role": self.a.role,
            "region": self.t.region,
        }
        for stem, fn in (
            ("ec2-describe-vpcs", self.vpcs),
            ("ec2-describe-subnets", self.subnets),
            ("ec2-describe-vpc-peering-connections", self.peerings),
            ("ec2-describe-security-groups", self.security_groups),
            ("ec2-describe-managed-prefix-lists", self.prefix_lists),
            ("ec2-describe-network-acls", self.nacls),
            ("ec2-describe-route-tables", self.route_tables),
            ("ec2-describe-instances", self.instances),
            ("ec2-describe-network-interfaces", self.interfaces),
            ("ec2-describe-vpc-endpoints", self.endpoints),
            ("ec2-describe-vpc-endpoint-service-configurations", self.services),
            ("ec2-describe-vpc-endpoint-connections", self.connections),
            ("elbv2-describe-load-balancers", self.load_balancers),
            ("elbv2-describe-target-groups", self.target_groups),
        ):
            if stem in stems:
                fn()
        return self.files

    def vpcs(self) -> None:
        vpcs = [
            {
                "CidrBlock": v.cidr,
                "DhcpOptionsId": "default",
                "State": "available",
                "VpcId": v.id,
                "OwnerId": self.a.id,
                "InstanceTenancy": "default",
                "CidrBlockAssociationSet": [
                    {
                        "AssociationId": stable_id("vpc-cidr-assoc", v.id),
                        "CidrBlock": v.cidr,
                        "CidrBlockState": {"State": "associated"},
                    }
                ],
                "IsDefault": False,
                "Tags": _tags(v.name),
            }
            for v in self.t.vpcs.values()
            if self.mine(v.account)
        ]
        self.put("ec2-describe-vpcs", {"Vpcs": vpcs})

    def subnets(self) -> None:
        subnets = [
            {
                "AvailabilityZone": s.az,
                "AvailabilityZoneId": s.az_id,
                "AvailableIpAddressCount": 250,
                "CidrBlock": s.cidr,
                "DefaultForAz": False,
                "MapPublicIpOnLaunch": False,
                "State": "available",
                "SubnetId": s.id,
                "VpcId": s.vpc_id,
                "OwnerId": self.a.id,
                "SubnetArn": f"arn:aws:ec2:{self.t.region}:{self.a.id}:subnet/{s.id}",
                "Tags": _tags(s.name),
            }
            for s in self.t.subnets.values()
            if self.mine(s.account)
        ]
        self.put("ec2-describe-subnets", {"Subnets": subnets})

    def peerings(self) -> None:
        out = []
        for p in self.t.peerings.values():
            req = self.t.vpcs.get(p.requester_vpc_id)
            acc = self.t.vpcs.get(p.accepter_vpc_id)
            if not any(v is not None and self.mine(v.account) for v in (req, acc)):
                continue

            def side(vpc_id: str, vpc: Any) -> dict[str, Any]:
                d: dict[str, Any] = {"VpcId": vpc_id, "Region": self.t.region}
                if vpc is not None:
                    d["CidrBlock"] = vpc.cidr
                    d["OwnerId"] = self.owner_id(vpc.account)
                return d

            out.append(
                {
                    "VpcPeeringConnectionId": p.id,
                    "RequesterVpcInfo": side(p.requester_vpc_id, req),
                    "AccepterVpcInfo": side(p.accepter_vpc_id, acc),
                    "Status": {"Code": p.status, "Message": p.status.capitalize()},
                    "Tags": _tags(p.name),
                }
            )
        self.put("ec2-describe-vpc-peering-connections", {"VpcPeeringConnections": out})

    def permissions(self, sg: SecurityGroup, direction: str) -> list[dict[str, Any]]:
        """Rules grouped the way AWS returns them: one IpPermission per protocol and ports."""
        groups: dict[tuple[str, int, int], dict[str, Any]] = {}
        for r in (r for r in sg.rules if r.direction == direction):
            key = (r.protocol, r.from_port, r.to_port)
            perm = groups.get(key)
            if perm is None:
                perm = {"IpProtocol": r.protocol}
                if r.protocol != "-1":
                    perm["FromPort"] = r.from_port
                    perm["ToPort"] = r.to_port
                perm.update(
                    {"IpRanges": [], "Ipv6Ranges": [], "PrefixListIds": [], "UserIdGroupPairs": []}
                )
                groups[key] = perm
            desc = {"Description": r.description} if r.description else {}
            for cidr in r.cidrs:
                if ":" in cidr:
                    perm["Ipv6Ranges"].append({"CidrIpv6": cidr, **desc})
                else:
                    perm["IpRanges"].append({"CidrIp": cidr, **desc})
            if r.prefix_list:
                perm["PrefixListIds"].append({"PrefixListId": r.prefix_list, **desc})
            ref_id = r.sg_ref or r.stale_ref
            if ref_id:
                ref = self.t.security_groups.get(ref_id)
                pair: dict[str, Any] = {"GroupId": ref_id, **desc}
                if ref is not None:
                    pair["UserId"] = self.owner_id(ref.account)
                    if ref.vpc_id != sg.vpc_id:
                        pair["VpcId"] = ref.vpc_id
                        peering = self.t.peering_between(ref.vpc_id, sg.vpc_id)
                        if peering:
                            pair["VpcPeeringConnectionId"] = peering.id
                            pair["PeeringStatus"] = peering.status
                perm["UserIdGroupPairs"].append(pair)
        return list(groups.values())

    def prefix_lists(self) -> None:
        """The account's customer-managed prefix lists, and one entries file per list."""
        out = []
        for pl in self.owned(self.t.prefix_lists.values()):
            out.append(
                {
                    "PrefixListId": pl.id,
                    "AddressFamily": pl.address_family,
                    "State": "create-complete",
                    "PrefixListArn": (
                        f"arn:aws:ec2:{self.t.region}:{self.a.id}:prefix-list/{pl.id}"
                    ),
                    "PrefixListName": pl.name,
                    "MaxEntries": pl.max_entries,
                    "Version": 1,
                    "Tags": _tags(pl.name),
                    "OwnerId": self.a.id,
                }
            )
            self.put(
                "ec2-get-managed-prefix-list-entries",
                {"Entries": [{"Cidr": c} for c in pl.cidrs]},
                pl.id,
            )
        self.put("ec2-describe-managed-prefix-lists", {"PrefixLists": out})

    def security_groups(self) -> None:
        out = [
            {
                "Description": g.description,
                "GroupName": g.name,
                "IpPermissions": self.permissions(g, "ingress"),
                "OwnerId": self.a.id,
                "GroupId": g.id,
                "IpPermissionsEgress": self.permissions(g, "egress"),
                "Tags": _tags(g.name),
                "VpcId": g.vpc_id,
                "SecurityGroupArn": (
                    f"arn:aws:ec2:{self.t.region}:{self.a.id}:security-group/{g.id}"
                ),
            }
            for g in self.t.security_groups.values()
            if self.mine(g.account)
        ]
        self.put("ec2-describe-security-groups", {"SecurityGroups": out})
        self.stale_groups()

    def stale_groups(self) -> None:
        """describe-stale-security-groups, one file per VPC: the rules whose referenced group
        sits across a peering that is no longer active."""
        for vpc in self.owned(self.t.vpcs.values()):
            out = []
            for g in self.t.security_groups.values():
                if g.vpc_id != vpc.id:
                    continue
                perms: dict[str, list[dict[str, Any]]] = {"ingress": [], "egress": []}
                for r in g.rules:
                    ref = self.t.security_groups.get(r.stale_ref or "")
                    if ref is None:
                        continue
                    pair: dict[str, Any] = {
                        "GroupId": ref.id,
                        "UserId": self.owner_id(ref.account),
                        "VpcId": ref.vpc_id,
                    }
                    peering = self.t.peering_between(ref.vpc_id, g.vpc_id)
                    if peering is not None:
                        pair["VpcPeeringConnectionId"] = peering.id
                        pair["PeeringStatus"] = peering.status
                    perm: dict[str, Any] = {"IpProtocol": r.protocol}
                    if r.protocol != "-1":
                        perm.update({"FromPort": r.from_port, "ToPort": r.to_port})
                    perm.update({"IpRanges": [], "PrefixListIds": [], "UserIdGroupPairs": [pair]})
                    perms[r.direction].append(perm)
                if perms["ingress"] or perms["egress"]:
                    out.append(
                        {
                            "Description": g.description,
                            "GroupId": g.id,
                            "GroupName": g.name,
                            "StaleIpPermissions": perms["ingress"],
                            "StaleIpPermissionsEgress": perms["egress"],
                            "VpcId": vpc.id,
                        }
                    )
            self.put("ec2-describe-stale-security-groups", {"StaleSecurityGroupSet": out}, vpc.id)

    def nacl(self, n: Nacl) -> dict[str, Any]:
        entries: list[dict[str, Any]] = []
        for e in sorted(n.entries, key=lambda e: (e.egress, e.rule_number)):
            entry: dict[str, Any] = {
                "CidrBlock": e.cidr,
                "Egress": e.egress,
                "Protocol": _NACL_PROTO.get(e.protocol, e.protocol),
                "RuleAction": e.action,
                "RuleNumber": e.rule_number,
            }
            if e.protocol in ("tcp", "udp"):
                entry["PortRange"] = {"From": e.from_port, "To": e.to_port}
            entries.append(entry)
        for egress in (False, True):  # the final "*" entry, as AWS lists it
            entries.append(
                {
                    "CidrBlock": "0.0.0.0/0",
                    "Egress": egress,
                    "Protocol": "-1",
                    "RuleAction": "deny",
                    "RuleNumber": 32767,
                }
            )
        vpc = self.t.vpcs.get(n.vpc_id)
        return {
            "Associations": [
                {
                    "NetworkAclAssociationId": stable_id("aclassoc", n.id, sid),
                    "NetworkAclId": n.id,
                    "SubnetId": sid,
                }
                for sid in n.subnet_ids
            ],
            "Entries": entries,
            "IsDefault": vpc is not None and n.name == f"{vpc.name}-default",
            "NetworkAclId": n.id,
            "Tags": _tags(n.name),
            "VpcId": n.vpc_id,
            "OwnerId": self.a.id,
        }

    def nacls(self) -> None:
        out = [self.nacl(n) for n in self.t.nacls.values() if self.mine(n.account)]
        self.put("ec2-describe-network-acls", {"NetworkAcls": out})

    def route_tables(self) -> None:
        """As DescribeRouteTables prints them: the local route first, a route to a peering
        that is not active in the ``blackhole`` state, the main table's association."""
        out = []
        for rt in self.owned(self.t.route_tables.values()):
            routes = []
            for r in rt.routes:
                route: dict[str, Any] = {"DestinationCidrBlock": r.destination}
                key = "VpcPeeringConnectionId" if r.target.startswith("pcx-") else "GatewayId"
                route[key] = r.target
                route["Origin"] = "CreateRouteTable" if r.target == "local" else "CreateRoute"
                route["State"] = self.t.route_state(r)
                routes.append(route)
            assocs: list[dict[str, Any]] = [
                {
                    "Main": False,
                    "RouteTableAssociationId": stable_id("rtbassoc", rt.id, s),
                    "RouteTableId": rt.id,
                    "SubnetId": s,
                    "AssociationState": {"State": "associated"},
                }
                for s in rt.subnet_ids
            ]
            if rt.main:
                assocs.insert(
                    0,
                    {
                        "Main": True,
                        "RouteTableAssociationId": stable_id("rtbassoc", rt.id, "main"),
                        "RouteTableId": rt.id,
                        "AssociationState": {"State": "associated"},
                    },
                )
            out.append(
                {
                    "Associations": assocs,
                    "PropagatingVgws": [],
                    "RouteTableId": rt.id,
                    "Routes": routes,
                    "Tags": _tags(rt.name),
                    "VpcId": rt.vpc_id,
                    "OwnerId": self.a.id,
                }
            )
        self.put("ec2-describe-route-tables", {"RouteTables": out})

    def instance(self, i: Instance) -> dict[str, Any]:
        groups = [self.sg_ref(g) for g in i.sg_ids]
        vpc_id = self.vpc_of_subnet(i.subnet_id)
        eni = {
            "Attachment": {
                "AttachTime": CREATED,
                "AttachmentId": stable_id("eni-attach", i.id),
                "DeleteOnTermination": True,
                "DeviceIndex": 0,
                "Status": "attached",
                "NetworkCardIndex": 0,
            },
            "Description": "",
            "Groups": groups,
            "MacAddress": "02:00:00:00:00:01",
            "NetworkInterfaceId": i.eni_id,
            "OwnerId": self.a.id,
            "PrivateIpAddress": i.ip,
            "PrivateIpAddresses": [{"Primary": True, "PrivateIpAddress": i.ip}],
            "SourceDestCheck": True,
            "Status": "in-use",
            "SubnetId": i.subnet_id,
            "VpcId": vpc_id,
            "InterfaceType": "interface",
        }
        return {
            "ImageId": "ami-00000000000000000",
            "InstanceId": i.id,
            "InstanceType": "t3.micro",
            "LaunchTime": CREATED,
            "Placement": {"AvailabilityZone": self.az(i.subnet_id), "Tenancy": "default"},
            "PrivateIpAddress": i.ip,
            "State": {"Code": 16, "Name": "running"},
            "SubnetId": i.subnet_id,
            "VpcId": vpc_id,
            "NetworkInterfaces": [eni] if i.eni_id else [],
            "SecurityGroups": groups,
            "SourceDestCheck": True,
            "Tags": _tags(i.name) + _services_tag(i),
        }

    def instances(self) -> None:
        reservations = [
            {
                "Groups": [],
                "Instances": [self.instance(i)],
                "OwnerId": self.a.id,
                "ReservationId": stable_id("r", i.id),
            }
            for i in self.t.instances.values()
            if self.mine(i.account)
        ]
        self.put("ec2-describe-instances", {"Reservations": reservations})

    def interface(
        self,
        eni_id: str,
        subnet_id: str,
        ip: str,
        sg_ids: list[str],
        *,
        kind: str,
        description: str,
        attachment: dict[str, Any] | None = None,
        requester_id: str | None = None,
    ) -> dict[str, Any]:
        d: dict[str, Any] = {
            "AvailabilityZone": self.az(subnet_id),
            "Description": description,
            "Groups": [self.sg_ref(g) for g in sg_ids],
            "InterfaceType": kind,
            "MacAddress": "02:00:00:00:00:01",
            "NetworkInterfaceId": eni_id,
            "OwnerId": self.a.id,
            "PrivateIpAddress": ip,
            "PrivateIpAddresses": [{"Primary": True, "PrivateIpAddress": ip}],
            "RequesterManaged": requester_id is not None or kind == "vpc_endpoint",
            "SourceDestCheck": True,
            "Status": "in-use",
            "SubnetId": subnet_id,
            "VpcId": self.vpc_of_subnet(subnet_id),
        }
        if requester_id is not None:
            d["RequesterId"] = requester_id
        if attachment is not None:
            d["Attachment"] = attachment
        return d

    def interfaces(self) -> None:
        out = []
        for i in self.t.instances.values():
            if self.mine(i.account) and i.eni_id:
                att = {
                    "AttachTime": CREATED,
                    "AttachmentId": stable_id("eni-attach", i.id),
                    "DeleteOnTermination": True,
                    "DeviceIndex": 0,
                    "InstanceId": i.id,
                    "InstanceOwnerId": self.a.id,
                    "Status": "attached",
                }
                out.append(
                    self.interface(
                        i.eni_id,
                        i.subnet_id,
                        i.ip,
                        i.sg_ids,
                        kind="interface",
                        description="",
                        attachment=att,
                    )
                )
        for ep in self.t.endpoints.values():
            if self.mine(ep.account):
                for eni in ep.enis:
                    out.append(
                        self.interface(
                            eni.id,
                            eni.subnet_id,
                            eni.ip,
                            ep.sg_ids,
                            kind="vpc_endpoint",
                            description=f"VPC Endpoint Interface {ep.id}",
                        )
                    )
        for nlb in self.t.nlbs.values():
            if self.mine(nlb.account):
                for node in nlb.nodes:
                    if node.eni_id:
                        out.append(
                            self.interface(
                                node.eni_id,
                                node.subnet_id,
                                node.ip,
                                nlb.sg_ids or [],
                                kind="network_load_balancer",
                                description=f"ELB {_lb_suffix(nlb)}",
                                requester_id="amazon-elb",
                            )
                        )
        self.put("ec2-describe-network-interfaces", {"NetworkInterfaces": out})

    def dns_entries(self, ep: Endpoint) -> list[dict[str, str]]:
        names = list(self.t.endpoint_dns_names(ep))
        service = self.t.endpoint_services.get(ep.service_id)
        private = service.private_dns_name if service else None
        return [
            {"DnsName": n, "HostedZoneId": "Z00000000000000000000"} for n in names if n != private
        ]

    def endpoints(self) -> None:
        out = []
        for ep in self.owned(self.t.endpoints.values()):
            out.append(
                {
                    "VpcEndpointId": ep.id,
                    "VpcEndpointType": "Interface",
                    "VpcId": ep.vpc_id,
                    "ServiceName": _service_name(self.t.region, ep.service_id),
                    "State": ep.state,
                    "RouteTableIds": [],
                    "SubnetIds": [e.subnet_id for e in ep.enis],
                    "Groups": [self.sg_ref(g) for g in ep.sg_ids],
                    "IpAddressType": "ipv4",
                    "DnsOptions": {"DnsRecordIpType": "ipv4"},
                    "PrivateDnsEnabled": ep.private_dns_enabled,
                    "RequesterManaged": False,
                    "NetworkInterfaceIds": [e.id for e in ep.enis],
                    "DnsEntries": self.dns_entries(ep),
                    "CreationTimestamp": CREATED,
                    "Tags": _tags(ep.name),
                    "OwnerId": self.a.id,
                }
            )
        self.put("ec2-describe-vpc-endpoints", {"VpcEndpoints": out})

    def services(self) -> None:
        out = []
        for s in self.owned(self.t.endpoint_services.values()):
            azs: list[str] = []
            for nlb_id in s.nlb_ids:
                nlb = self.t.nlbs.get(nlb_id)
                for node in nlb.nodes if nlb else []:
                    if self.az(node.subnet_id) not in azs:
                        azs.append(self.az(node.subnet_id))
            conf: dict[str, Any] = {
                "ServiceType": [{"ServiceType": "Interface"}],
                "ServiceId": s.id,
                "ServiceName": f"com.amazonaws.vpce.{self.t.region}.{s.id}",
                "ServiceState": "Available",
                "AvailabilityZones": sorted(azs),
                "AcceptanceRequired": s.acceptance_required,
                "ManagesVpcEndpoints": False,
                "NetworkLoadBalancerArns": list(s.nlb_ids),
                "SupportedIpAddressTypes": ["ipv4"],
                "BaseEndpointDnsNames": [f"{s.id}.{self.t.region}.vpce.amazonaws.com"],
                "Tags": _tags(s.name),
            }
            if s.private_dns_name:
                conf["PrivateDnsName"] = s.private_dns_name
                conf["PrivateDnsNameConfiguration"] = {
                    "State": s.private_dns_state or "pendingVerification",
                    "Type": "TXT",
                    "Value": f"vpce:{stable_id('v', s.id)[2:]}",
                    "Name": f"_{stable_id('n', s.id)[2:12]}",
                }
            out.append(conf)
            self.put(
                "ec2-describe-vpc-endpoint-service-permissions",
                {
                    "AllowedPrincipals": [
                        {
                            "PrincipalType": _principal_type(p),
                            "Principal": p,
                            "ServicePermissionId": stable_id("vpce-svc-perm", s.id, p),
                            "ServiceId": s.id,
                        }
                        for p in s.allowed_principals
                    ]
                },
                s.id,
            )
        self.put("ec2-describe-vpc-endpoint-service-configurations", {"ServiceConfigurations": out})

    def connections(self) -> None:
        out = []
        for ep in self.t.endpoints.values():
            svc = self.t.endpoint_services.get(ep.service_id)
            if svc is None or not self.mine(svc.account):
                continue
            out.append(
                {
                    "ServiceId": svc.id,
                    "VpcEndpointId": ep.id,
                    "VpcEndpointOwner": self.owner_id(ep.account),
                    "VpcEndpointState": ep.state,
                    "CreationTimestamp": CREATED,
                    "DnsEntries": self.dns_entries(ep),
                    "NetworkLoadBalancerArns": list(svc.nlb_ids),
                    "IpAddressType": "ipv4",
                    "VpcEndpointConnectionId": stable_id("vpce-con", ep.id),
                }
            )
        self.put("ec2-describe-vpc-endpoint-connections", {"VpcEndpointConnections": out})

    def load_balancer(self, nlb: Nlb) -> dict[str, Any]:
        lb: dict[str, Any] = {
            "LoadBalancerArn": nlb.id,
            "DNSName": f"{nlb.name}-{nlb.id.rsplit('/', 1)[-1]}.elb.{self.t.region}.amazonaws.com",
            "CanonicalHostedZoneId": "Z31USIVHYNEOWT",
            "CreatedTime": CREATED,
            "LoadBalancerName": nlb.name,
            "Scheme": "internal",
            "VpcId": nlb.vpc_id,
            "State": {"Code": "active"},
            "Type": "network",
            "AvailabilityZones": [
                {
                    "ZoneName": self.az(n.subnet_id),
                    "SubnetId": n.subnet_id,
                    "LoadBalancerAddresses": (
                        [{"PrivateIPv4Address": n.ip}] if nlb.fixed_ips else []
                    ),
                }
                for n in nlb.nodes
            ],
            "IpAddressType": "ipv4",
        }
        if nlb.sg_ids is not None:  # AWS omits both keys for an NLB created without SGs
            lb["SecurityGroups"] = list(nlb.sg_ids)
            lb["EnforceSecurityGroupInboundRulesOnPrivateLinkTraffic"] = (
                "on" if nlb.enforce_sg_inbound_on_privatelink else "off"
            )
        return lb

    def load_balancers(self) -> None:
        nlbs = [n for n in self.t.nlbs.values() if self.mine(n.account)]
        self.put(
            "elbv2-describe-load-balancers",
            {"LoadBalancers": [self.load_balancer(n) for n in nlbs]},
        )
        for nlb in nlbs:
            attrs = {
                "deletion_protection.enabled": "false",
                "load_balancing.cross_zone.enabled": str(nlb.cross_zone).lower(),
                "dns_record.client_routing_policy": "any_availability_zone",
            }
            self.put(
                "elbv2-describe-load-balancer-attributes",
                {"Attributes": [{"Key": k, "Value": v} for k, v in attrs.items()]},
                nlb.id,
            )
            listeners = [
                {
                    "ListenerArn": li.id,
                    "LoadBalancerArn": nlb.id,
                    "Port": li.port,
                    "Protocol": li.protocol,
                    "DefaultActions": (
                        [{"Type": "forward", "TargetGroupArn": li.target_group_id}]
                        if li.target_group_id
                        else []
                    ),
                }
                for li in self.t.listeners_of(nlb.id)
            ]
            self.put("elbv2-describe-listeners", {"Listeners": listeners}, nlb.id)

    def target_groups(self) -> None:
        out = []
        for tg in self.owned(self.t.target_groups.values()):
            hc = tg.health_check
            lbs = sorted(
                {li.nlb_id for li in self.t.listeners.values() if li.target_group_id == tg.id}
            )
            d: dict[str, Any] = {
                "TargetGroupArn": tg.id,
                "TargetGroupName": tg.name,
                "Protocol": tg.protocol,
                "Port": tg.port,
                "VpcId": tg.vpc_id,
                "HealthCheckProtocol": hc.protocol,
                "HealthCheckPort": "traffic-port" if hc.port is None else str(hc.port),
                "HealthCheckEnabled": True,
                "HealthCheckIntervalSeconds": hc.interval_s,
                "HealthCheckTimeoutSeconds": hc.timeout_s,
                "HealthyThresholdCount": hc.healthy_threshold,
                "UnhealthyThresholdCount": hc.unhealthy_threshold,
                "LoadBalancerArns": lbs,
                "TargetType": "instance",
                "IpAddressType": "ipv4",
            }
            if hc.protocol.upper() in ("HTTP", "HTTPS"):
                d["HealthCheckPath"] = hc.path
                d["Matcher"] = {"HttpCode": "200-399"}
            out.append(d)
            attrs = {
                "deregistration_delay.timeout_seconds": "300",
                "proxy_protocol_v2.enabled": str(tg.proxy_protocol_v2).lower(),
                "preserve_client_ip.enabled": "true",
                "stickiness.enabled": "false",
            }
            self.put(
                "elbv2-describe-target-group-attributes",
                {"Attributes": [{"Key": k, "Value": v} for k, v in attrs.items()]},
                tg.id,
            )
            descriptions = []
            for t in tg.targets:
                inst = self.t.instances.get(t.instance_id)
                target: dict[str, Any] = {"Id": t.instance_id, "Port": tg.target_port(t)}
                if inst is not None:
                    target["AvailabilityZone"] = self.az(inst.subnet_id)
                state = self.health.get((tg.id, t.instance_id), t.health)
                descriptions.append(
                    {
                        "Target": target,
                        "HealthCheckPort": str(tg.health_port(t)),
                        # no State when health was not observed: the reader maps it to None
                        "TargetHealth": {"State": state} if state else {},
                    }
                )
            self.put(
                "elbv2-describe-target-health", {"TargetHealthDescriptions": descriptions}, tg.id
            )
        self.put("elbv2-describe-target-groups", {"TargetGroups": out})


def _services_tag(i: Instance) -> list[dict[str, str]]:
    """The listening ports, which no describe-* call reports (docs/SNAPSHOT.md)."""
    if not i.services_known:
        return []
    return [{"Key": SERVICES_TAG, "Value": ",".join(str(p) for p in i.services)}]


def _lb_suffix(nlb: Nlb) -> str:
    """``net/NAME/HASH`` from the ARN: what an NLB ENI's description names."""
    return nlb.id.split(":loadbalancer/", 1)[-1]


def _principal_type(principal: str) -> str:
    if principal == "*":
        return "All"
    if principal.endswith(":root"):
        return "Account"
    if ":role/" in principal:
        return "Role"
    if ":user/" in principal:
        return "User"
    return "Account"


def render_snapshot(
    topology: Topology, target_health: TargetHealthMap | None = None
) -> dict[str, dict[str, Any]]:
    """account name -> {relative file path -> JSON body}; pure and deterministic."""
    health = target_health or {}
    return {
        name: _Renderer(topology, account, health).render()
        for name, account in sorted(topology.accounts.items())
    }


def _clear(base: Path) -> None:
    """Remove files an earlier snapshot wrote here, so no stale per-resource file remains."""
    stale = [base / ACCOUNT_FILE]
    for call in CALLS:
        stale += [base / call.file] if call.per is None else list((base / call.stem).glob("*.json"))
    for path in stale:
        path.unlink(missing_ok=True)


def write_snapshot(
    topology: Topology,
    out_dir: Path,
    target_health: dict[tuple[str, str], str] | None = None,
) -> list[Path]:
    """Write ``out_dir/<account name>/…`` for every account; returns the account directories.

    ``target_health`` maps (target group ARN, instance id) to a DescribeTargetHealth state
    (``healthy``, ``unhealthy``, …) — what the lab's health checker saw; it overrides the
    topology's ``Target.health``. Targets with neither get no ``State``.
    """
    out_dir = Path(out_dir)
    dirs = []
    for account, files in render_snapshot(topology, target_health).items():
        base = out_dir / account
        _clear(base)
        for rel, body in files.items():
            path = base / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(body, indent=2) + "\n")
        # a per-resource call made for no resource (no prefix list) is an empty directory,
        # as the shell loop in docs/SNAPSHOT.md leaves it
        acct = topology.accounts.get(account)
        for call in calls_for(acct.role) if acct is not None else ():
            if call.per is not None:
                (base / call.stem).mkdir(parents=True, exist_ok=True)
        dirs.append(base)
    return dirs
