"""The lab topology document: the pydantic models of its shape (first pass of loading).

The file's keys follow the Terraform resources users already write, grouped by resource type
and keyed by the resource's name (see ``agent.sources.topology``). These models check the
shape of every resource — unknown keys, types, ranges, enumerations — and nothing that needs
another resource: references and layout are the builder's second pass, which can name the
offending key with what it refers to. Kept apart from the builder so the document format can
be read (and changed) in one place.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from agent.model import normalize_protocol

__all__ = [
    "AccepterSpec",
    "AccountSpec",
    "AttachmentSpec",
    "DefaultActionSpec",
    "EndpointServiceSpec",
    "EndpointSpec",
    "HealthCheckSpec",
    "InstanceSpec",
    "LabSpec",
    "LbSpec",
    "ListenerSpec",
    "MainRouteTableAssociationSpec",
    "ManagedPrefixListEntrySpec",
    "ManagedPrefixListSpec",
    "NaclEntrySpec",
    "NaclSpec",
    "PeeringSpec",
    "PrefixListEntrySpec",
    "Resources",
    "RouteSpec",
    "RouteTableAssociationSpec",
    "RouteTableSpec",
    "SgRuleSpec",
    "SgSpec",
    "StandaloneRouteSpec",
    "SubnetConfigSpec",
    "SubnetMappingSpec",
    "SubnetSpec",
    "TargetGroupSpec",
    "TopologySpec",
    "VpcSpec",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Res(_Strict):
    account: str
    tags: dict[str, str] = Field(default_factory=dict)


def _onoff(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"on", "true", "yes"}:
        return True
    if text in {"off", "false", "no"}:
        return False
    raise ValueError("expected on/off or true/false")


class AccountSpec(_Strict):
    id: str = Field(pattern=r"^\d{12}$")
    role: Literal["consumer", "provider"]


class VpcSpec(_Res):
    cidr_block: str
    enable_dns_support: bool = True
    enable_dns_hostnames: bool = True


class SubnetSpec(_Res):
    vpc_id: str
    cidr_block: str
    availability_zone: str
    availability_zone_id: str


class PeeringSpec(_Res):
    vpc_id: str
    peer_vpc_id: str
    peer_owner_id: str | None = None
    auto_accept: bool = True
    status: Literal["active", "pending-acceptance", "rejected", "deleted"] = "active"


class RouteSpec(_Strict):
    """An inline ``route`` block of ``aws_route_table`` (the targets plprobe follows)."""

    cidr_block: str
    vpc_peering_connection_id: str | None = None
    #: ``local`` is implicit; any other gateway (igw, nat, tgw) is kept but not followed
    gateway_id: str | None = None


class RouteTableSpec(_Res):
    vpc_id: str
    route: list[RouteSpec] = Field(default_factory=list)


class StandaloneRouteSpec(_Res):
    """``aws_route``: one route added to a table declared elsewhere."""

    route_table_id: str
    destination_cidr_block: str
    vpc_peering_connection_id: str | None = None
    gateway_id: str | None = None


class RouteTableAssociationSpec(_Res):
    subnet_id: str
    route_table_id: str


class MainRouteTableAssociationSpec(_Res):
    vpc_id: str
    route_table_id: str


class SgSpec(_Res):
    vpc_id: str
    description: str = ""


class PrefixListEntrySpec(_Strict):
    cidr: str
    description: str = ""


class ManagedPrefixListSpec(_Res):
    """``aws_ec2_managed_prefix_list`` (customer-managed), with its ``entry`` blocks."""

    name: str | None = None  # default: the resource key
    address_family: Literal["IPv4", "IPv6"] = "IPv4"
    max_entries: int = Field(default=10, ge=1, le=1000)
    entry: list[PrefixListEntrySpec] = Field(default_factory=list)


class ManagedPrefixListEntrySpec(_Res):
    """``aws_ec2_managed_prefix_list_entry``: one more entry of a list."""

    prefix_list_id: str
    cidr: str
    description: str = ""


_PROTOCOLS = {"tcp", "udp", "icmp", "-1"}


def _protocol(v: Any) -> str:
    p = normalize_protocol(v)
    if p not in _PROTOCOLS:
        raise ValueError(f"protocol must be one of tcp, udp, icmp, -1 (got {v!r})")
    return p


#: a rule's protocol as AWS spells it (numbers and names normalized), for SG and NACL rules
_Protocol = Annotated[str, BeforeValidator(_protocol)]


class SgRuleSpec(_Res):
    type: Literal["ingress", "egress"]
    security_group_id: str
    protocol: _Protocol
    from_port: int = Field(ge=-1, le=65535)
    to_port: int = Field(ge=-1, le=65535)
    cidr_blocks: list[str] = Field(default_factory=list)
    source_security_group_id: str | None = None
    prefix_list_ids: list[str] = Field(default_factory=list)
    description: str = ""


class NaclEntrySpec(_Strict):
    rule_no: int = Field(ge=1, le=32766)
    action: Literal["allow", "deny"]
    protocol: _Protocol
    cidr_block: str
    from_port: int = Field(default=0, ge=0, le=65535)
    to_port: int = Field(default=65535, ge=0, le=65535)


class NaclSpec(_Res):
    vpc_id: str
    subnet_ids: list[str] = Field(default_factory=list)
    ingress: list[NaclEntrySpec] = Field(default_factory=list)
    egress: list[NaclEntrySpec] = Field(default_factory=list)


class InstanceSpec(_Res):
    subnet_id: str
    private_ip: str
    vpc_security_group_ids: list[str] = Field(default_factory=list)
    #: lab extension: TCP ports the instance serves (the stand-in for the article's nginx)
    services: list[int] = Field(default_factory=list)
    ami: str | None = None
    instance_type: str | None = None


class EndpointServiceSpec(_Res):
    network_load_balancer_arns: list[str]
    acceptance_required: bool = True
    allowed_principals: list[str] = Field(default_factory=list)
    private_dns_name: str | None = None
    #: lab extension: the domain verification state of the private DNS name
    private_dns_name_verification: Literal["verified", "pendingVerification", "failed"] = "verified"


class SubnetConfigSpec(_Strict):
    subnet_id: str
    ipv4: str


class EndpointSpec(_Res):
    vpc_id: str
    service_name: str
    vpc_endpoint_type: Literal["Interface"] = "Interface"
    subnet_ids: list[str]
    security_group_ids: list[str] = Field(default_factory=list)
    private_dns_enabled: bool = False
    subnet_configuration: list[SubnetConfigSpec] = Field(default_factory=list)
    #: lab extension: the connection state on the provider's side; by default derived from
    #: acceptance_required (and any aws_vpc_endpoint_connection_accepter)
    state: str | None = None
    #: lab extension: the principal that created the endpoint (default: consumer root)
    requester: str | None = None


class AccepterSpec(_Res):
    vpc_endpoint_service_id: str
    vpc_endpoint_id: str


class SubnetMappingSpec(_Strict):
    subnet_id: str
    #: without it AWS picks the node's address (the lab picks the subnet's highest free one)
    private_ipv4_address: str | None = None


class LbSpec(_Res):
    load_balancer_type: Literal["network"] = "network"
    internal: bool = True
    subnet_mapping: list[SubnetMappingSpec] = Field(default_factory=list)
    #: Terraform's plain ``subnets``: node addresses AWS picks (not fixed)
    subnets: list[str] = Field(default_factory=list)
    security_groups: list[str] | None = None
    enforce_security_group_inbound_rules_on_private_link_traffic: bool = True
    enable_cross_zone_load_balancing: bool = False

    @field_validator("enforce_security_group_inbound_rules_on_private_link_traffic", mode="before")
    @classmethod
    def _enforce(cls, v: Any) -> bool:
        return _onoff(v)


class DefaultActionSpec(_Strict):
    type: Literal["forward"] = "forward"
    target_group_arn: str | None = None


class ListenerSpec(_Res):
    load_balancer_arn: str
    port: int = Field(ge=1, le=65535)
    protocol: Literal["TCP", "TLS", "UDP", "TCP_UDP"] = "TCP"
    default_action: DefaultActionSpec | None = None


class HealthCheckSpec(_Strict):
    protocol: Literal["TCP", "HTTP", "HTTPS"] = "TCP"
    port: int | Literal["traffic-port"] = "traffic-port"
    path: str = "/"
    interval: int = Field(default=30, ge=5, le=300)
    timeout: int = Field(default=10, ge=2, le=120)
    healthy_threshold: int = Field(default=3, ge=2, le=10)
    unhealthy_threshold: int = Field(default=3, ge=2, le=10)


class TargetGroupSpec(_Res):
    vpc_id: str
    port: int = Field(ge=1, le=65535)
    protocol: Literal["TCP", "TLS", "UDP", "TCP_UDP"] = "TCP"
    target_type: Literal["instance"] = "instance"
    proxy_protocol_v2: bool = False
    health_check: HealthCheckSpec = Field(default_factory=HealthCheckSpec)


class AttachmentSpec(_Res):
    target_group_arn: str
    target_id: str
    port: int | None = Field(default=None, ge=1, le=65535)


class Resources(_Strict):
    aws_vpc: dict[str, VpcSpec] = Field(default_factory=dict)
    aws_subnet: dict[str, SubnetSpec] = Field(default_factory=dict)
    aws_vpc_peering_connection: dict[str, PeeringSpec] = Field(default_factory=dict)
    aws_security_group: dict[str, SgSpec] = Field(default_factory=dict)
    aws_security_group_rule: dict[str, SgRuleSpec] = Field(default_factory=dict)
    aws_ec2_managed_prefix_list: dict[str, ManagedPrefixListSpec] = Field(default_factory=dict)
    aws_ec2_managed_prefix_list_entry: dict[str, ManagedPrefixListEntrySpec] = Field(
        default_factory=dict
    )
    aws_network_acl: dict[str, NaclSpec] = Field(default_factory=dict)
    aws_route_table: dict[str, RouteTableSpec] = Field(default_factory=dict)
    aws_route: dict[str, StandaloneRouteSpec] = Field(default_factory=dict)
    aws_route_table_association: dict[str, RouteTableAssociationSpec] = Field(default_factory=dict)
    aws_main_route_table_association: dict[str, MainRouteTableAssociationSpec] = Field(
        default_factory=dict
    )
    aws_instance: dict[str, InstanceSpec] = Field(default_factory=dict)
    aws_vpc_endpoint_service: dict[str, EndpointServiceSpec] = Field(default_factory=dict)
    aws_vpc_endpoint: dict[str, EndpointSpec] = Field(default_factory=dict)
    aws_vpc_endpoint_connection_accepter: dict[str, AccepterSpec] = Field(default_factory=dict)
    aws_lb: dict[str, LbSpec] = Field(default_factory=dict)
    aws_lb_listener: dict[str, ListenerSpec] = Field(default_factory=dict)
    aws_lb_target_group: dict[str, TargetGroupSpec] = Field(default_factory=dict)
    aws_lb_target_group_attachment: dict[str, AttachmentSpec] = Field(default_factory=dict)


class LabSpec(_Strict):
    no_listener: Literal["timeout", "reset"] = "timeout"
    endpoint_unavailable: Literal["timeout", "reset"] = "timeout"
    no_target_in_az: Literal["timeout", "reset"] = "timeout"
    nlb_preserves_isn: bool = True
    health_check_interval_s: float = Field(default=1.0, gt=0, le=60)
    health_check_threshold: int = Field(default=2, ge=1, le=10)
    nlb_subnet_nacl_on_privatelink: bool = True


class TopologySpec(_Strict):
    region: str = "ap-northeast-1"
    description: str = ""
    accounts: dict[str, AccountSpec]
    lab: LabSpec = Field(default_factory=LabSpec)
    resources: Resources
