"""The control catalogue: every place on the PrivateLink path that can stop traffic.

The ids are stable (metric label values, verdict JSON, ``plprobe lab break``); titles, the
article's number, generic fix text and the Reachability Analyzer codes live here and nowhere
else. Diagnosis fills the generic fix with the concrete group, rule and address.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Side = Literal["consumer", "provider", "either"]


@dataclass(frozen=True)
class Control:
    id: str
    title: str
    #: the article's numbering (①..⑤) or "" for the controls the article does not number
    article: str
    side: Side
    #: is this an access control (something a rule allows or denies)?
    access: bool
    fix: str
    #: Reachability Analyzer explanation codes that mean the same thing
    ra_codes: tuple[str, ...] = ()


CATALOGUE: tuple[Control, ...] = (
    Control(
        "client-sg-egress",
        "client security group egress",
        "①",
        "consumer",
        True,
        "add an outbound rule to the client's security group for the service port to the "
        "endpoint's security group (or the endpoint ENI IPs)",
        ("ENI_SG_RULES_MISMATCH", "SG_HAS_NO_RULES"),
    ),
    Control(
        "endpoint-sg-ingress",
        "endpoint security group ingress",
        "②",
        "consumer",
        True,
        "add an inbound rule to the endpoint's security group for the service port from the "
        "client's security group or private IP",
        ("ENI_SG_RULES_MISMATCH", "SG_HAS_NO_RULES"),
    ),
    Control(
        "service-principal",
        "endpoint service allowed principals",
        "③",
        "provider",
        True,
        "add the consumer's principal (e.g. arn:aws:iam::ACCOUNT:root) to the endpoint "
        "service's allowed principals, then create the endpoint",
        ("BAD_STATE",),
    ),
    Control(
        "endpoint-acceptance",
        "endpoint connection acceptance",
        "③",
        "provider",
        True,
        "accept the endpoint connection on the endpoint service "
        "(aws ec2 accept-vpc-endpoint-connections)",
        ("BAD_STATE",),
    ),
    Control(
        "nlb-sg-ingress",
        "NLB security group ingress",
        "④",
        "provider",
        True,
        "add an inbound rule to the NLB's security group for the listener port from the "
        "clients' private IPs (the NLB sees the client IP, not the endpoint's; it cannot "
        "reference the consumer's security group across accounts)",
        ("ENI_SG_RULES_MISMATCH", "SG_REFERENCES_NOT_PRESERVED"),
    ),
    Control(
        "nlb-sg-egress",
        "NLB security group egress",
        "④",
        "provider",
        True,
        "add an outbound rule to the NLB's security group to the targets' security group for "
        "the target port and the health-check port",
        ("ENI_SG_RULES_MISMATCH", "TARGET_PORT_RESTRICTION"),
    ),
    Control(
        "target-sg-ingress",
        "target security group ingress",
        "⑤",
        "provider",
        True,
        "add an inbound rule to the targets' security group for the target port and the "
        "health-check port from the NLB's security group (traffic arrives from the NLB's IPs)",
        ("ENI_SG_RULES_MISMATCH", "SG_HAS_NO_RULES"),
    ),
    Control(
        "client-nacl",
        "consumer subnet network ACL",
        "",
        "consumer",
        True,
        "allow the flow in the consumer subnets' network ACLs in both directions, including "
        "the return traffic on ephemeral ports (NACLs are stateless)",
        ("SUBNET_ACL_RESTRICTION",),
    ),
    Control(
        "provider-nacl",
        "provider subnet network ACL",
        "",
        "provider",
        True,
        "allow the flow in the provider subnets' network ACLs in both directions, including "
        "the NLB's ephemeral ports 1024-65535 (NACLs are stateless)",
        ("SUBNET_ACL_RESTRICTION", "REMAP_EPHEMERAL_PORT"),
    ),
    Control(
        "dns",
        "endpoint DNS name",
        "",
        "consumer",
        False,
        "use the endpoint's regional or zonal DNS name; for private DNS, verify the domain on "
        "the service and enable private DNS, enableDnsSupport and enableDnsHostnames",
        (),
    ),
    Control(
        "nlb-listener",
        "NLB listener",
        "",
        "provider",
        False,
        "add an NLB listener for the port, forwarding to the service's target group",
        ("ELBV2_LISTENERS_MISMATCH",),
    ),
    Control(
        "target-health",
        "target health",
        "",
        "provider",
        False,
        "register a healthy target in every AZ of the endpoint, or enable cross-zone load "
        "balancing; check the health-check port in the NLB and target security groups",
        ("ELBV2_NO_TARGETS_IN_AZ", "ELB_NOT_CROSSZONE", "VPCE_SERVICE_NOT_INSTALLED_IN_AZ"),
    ),
    Control(
        "target-service",
        "service on the target",
        "",
        "provider",
        False,
        "start the service on the target port (the target answered with a reset: the path is "
        "open, nothing is listening)",
        (),
    ),
    Control(
        "unknown",
        "undetermined",
        "",
        "either",
        False,
        "collect the other side's evidence (provider agent, both accounts' configuration) to "
        "single out the control",
        (),
    ),
)

BY_ID: dict[str, Control] = {c.id: c for c in CATALOGUE}
IDS: tuple[str, ...] = tuple(c.id for c in CATALOGUE)

#: Controls a configuration edit can break in the lab (``plprobe lab break``).
BREAKABLE: tuple[str, ...] = (
    "client-sg-egress",
    "endpoint-sg-ingress",
    "service-principal",
    "endpoint-acceptance",
    "nlb-sg-ingress",
    "nlb-sg-egress",
    "target-sg-ingress",
    "client-nacl",
    "provider-nacl",
    "dns",
    "nlb-listener",
    "target-health",
    "target-service",
)


def get(control_id: str) -> Control:
    """The control for an id; ``KeyError`` names the known ids."""
    try:
        return BY_ID[control_id]
    except KeyError:
        raise KeyError(f"unknown control {control_id!r}; known: {', '.join(IDS)}") from None
