"""The control catalogue: every place on the PrivateLink path that can stop traffic.

The ids are stable (metric label values, verdict JSON, ``plprobe lab break``); titles, the
article's number, generic fix text, the Reachability Analyzer codes and the facts other layers
sort controls by (the diagnosis stage, the position on the path, whether it resets or drops,
whether the analysis emits it, how the lab breaks it) live here and nowhere else: diagnosis,
analysis and the lab derive their control sets from ``CATALOGUE`` instead of repeating ids.
Diagnosis fills the generic fix with the concrete group, rule and address.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Side = Literal["consumer", "provider", "either"]
#: the verdict stage a denial of the control means on the forward path (``results.Stage``
#: without the packet-only stages ``return`` and ``pass``; ``return_path`` says the rest)
ControlStage = Literal["dns", "endpoint", "forward", "service", "unknown"]


@dataclass(frozen=True)
class LabFault:
    """How ``plprobe lab break`` breaks a control: the realistic mistake, as facts.

    The edit itself (a topology change) lives in ``agent.lab.faults``, keyed by control id;
    these are the facts a fault-matrix test or ``--help`` needs without importing the lab.
    """

    description: str
    #: does ``--client`` narrow the edit to one client?
    per_client: bool
    #: what a new connection from an affected client sees: timeout | refused | no-dns, or a
    #: ``LabSettings`` attribute name whose value (timeout | reset) decides
    symptom: str
    #: the endpoint is re-evaluated as at creation time (a principal edit alone does not
    #: delete an existing endpoint, as on AWS)
    recreate_endpoints: bool = False


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
    #: the stage a forward-direction denial of this control is diagnosed as; ``endpoint`` and
    #: ``forward`` controls are the candidates of a forward-path failure
    stage: ControlStage = "forward"
    #: where on the path (client -> target) the control sits: candidates are listed in this
    #: order; 0 is DNS (before any packet), ``None`` for a control that is not on the path
    path_position: int | None = None
    #: NACLs are stateless: the control also drops replies, so it is a return-stage candidate
    return_path: bool = False
    #: the control can answer a SYN with a reset before any target sees it (the others drop
    #: silently); the rank orders the candidates of an unexplained reset, most common first
    reset_rank: int | None = None
    #: ``agent.analyze`` can put this id in ``HopFinding.control``
    emitted: bool = True
    #: how the lab breaks it (``None``: ``plprobe lab break`` cannot)
    lab_fault: LabFault | None = None

    @property
    def resets(self) -> bool:
        return self.reset_rank is not None


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
        stage="forward",
        path_position=1,
        lab_fault=LabFault(
            "the client's security group lost its egress rule to the endpoint",
            per_client=True,
            symptom="timeout",
        ),
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
        stage="forward",
        path_position=4,
        lab_fault=LabFault(
            "the endpoint's security group lost the rule for the client's security group",
            per_client=True,
            symptom="timeout",
        ),
    ),
    Control(
        "service-principal",
        "endpoint service allowed principals",
        "③",
        "provider",
        True,
        "add the principal that creates the endpoint (its role or user, or the account root "
        "arn:PARTITION:iam::ACCOUNT:root; PARTITION is aws, aws-us-gov or aws-cn) to the "
        "endpoint service's allowed principals, then create the endpoint",
        ("BAD_STATE",),
        stage="endpoint",
        path_position=6,
        reset_rank=3,
        lab_fault=LabFault(
            "the consumer is not an allowed principal of the endpoint service, so its "
            "endpoint was never created (no ENI, no DNS name)",
            per_client=False,
            symptom="no-dns",
            recreate_endpoints=True,
        ),
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
        stage="endpoint",
        path_position=5,
        reset_rank=2,
        lab_fault=LabFault(
            "the endpoint connection waits in pendingAcceptance",
            per_client=False,
            symptom="endpoint_unavailable",
        ),
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
        stage="forward",
        path_position=7,
        lab_fault=LabFault(
            "the NLB security group allows the endpoint subnet CIDR instead of the client IPs",
            per_client=True,
            symptom="timeout",
        ),
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
        stage="forward",
        path_position=9,
        lab_fault=LabFault(
            "the NLB security group's egress lost the target port (traffic and health checks)",
            per_client=False,
            symptom="timeout",
        ),
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
        stage="forward",
        path_position=11,
        lab_fault=LabFault(
            "the target security group allows the client CIDRs instead of the NLB's security group",
            per_client=False,
            symptom="timeout",
        ),
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
        stage="forward",
        path_position=2,
        return_path=True,
        lab_fault=LabFault(
            "the client subnet's NACL denies outbound traffic to the service port",
            per_client=True,
            symptom="timeout",
        ),
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
        stage="forward",
        path_position=10,
        return_path=True,
        lab_fault=LabFault(
            "the target subnet's NACL has no outbound 1024-65535 (the return path to the "
            "NLB is dropped; the target sees the SYN)",
            per_client=False,
            symptom="timeout",
        ),
    ),
    Control(
        "route",
        "subnet route table",
        "",
        "consumer",
        True,
        "add a route to the other VPC's CIDR via the active peering connection to the route "
        "table of the subnet (in both VPCs: the replies need the way back)",
        ("NO_ROUTE_TO_DESTINATION", "BAD_STATE_ROUTE", "CANNOT_ROUTE"),
        stage="forward",
        path_position=3,
        return_path=True,
        lab_fault=LabFault(
            "the client subnet's route table lost its route over the peering to the endpoint's VPC",
            per_client=True,
            symptom="timeout",
        ),
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
        stage="dns",
        path_position=0,
        lab_fault=LabFault(
            "DNS resolution is off in the client's VPC: the endpoint name does not resolve",
            per_client=True,
            symptom="no-dns",
        ),
    ),
    Control(
        "nlb-listener",
        "NLB listener",
        "",
        "provider",
        False,
        "add an NLB listener for the port, forwarding to the service's target group",
        ("ELBV2_LISTENERS_MISMATCH",),
        stage="forward",
        path_position=8,
        reset_rank=1,
        lab_fault=LabFault(
            "the NLB listener for the service port was removed",
            per_client=False,
            symptom="no_listener",
        ),
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
        stage="forward",
        path_position=13,
        reset_rank=4,
        lab_fault=LabFault(
            "every target was deregistered: the target group is empty",
            per_client=False,
            symptom="no_target_in_az",
        ),
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
        stage="service",
        path_position=12,
        lab_fault=LabFault(
            "the service on the targets was stopped (the kernel answers with a reset)",
            per_client=False,
            symptom="refused",
        ),
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
        stage="unknown",
        path_position=None,
        emitted=False,
    ),
)

BY_ID: dict[str, Control] = {c.id: c for c in CATALOGUE}
IDS: tuple[str, ...] = tuple(c.id for c in CATALOGUE)


def _on_path(selected: list[Control]) -> tuple[str, ...]:
    """Ids in path order (client -> target), the order candidates are listed in."""
    return tuple(c.id for c in sorted(selected, key=lambda c: c.path_position or 0))


#: controls a configuration edit can break in the lab (``plprobe lab break``), catalogue order
BREAKABLE: tuple[str, ...] = tuple(c.id for c in CATALOGUE if c.lab_fault is not None)
#: every id ``agent.analyze`` can emit, in path order
EMITTED: tuple[str, ...] = _on_path([c for c in CATALOGUE if c.emitted])
#: the endpoint stage: the endpoint's state and the service's allowed principals
ENDPOINT_STAGE: tuple[str, ...] = _on_path([c for c in CATALOGUE if c.stage == "endpoint"])
#: the service stage: the target answered, nothing listens (not an access control)
SERVICE_STAGE: tuple[str, ...] = _on_path([c for c in CATALOGUE if c.stage == "service"])
#: candidates of a forward-path failure (the endpoint stage included), in path order
FORWARD_PATH: tuple[str, ...] = _on_path(
    [c for c in CATALOGUE if c.stage in ("endpoint", "forward")]
)
#: candidates of a return-path failure (stateless NACLs), in path order
RETURN_PATH: tuple[str, ...] = _on_path([c for c in CATALOGUE if c.return_path])
#: the provider-side hops past the endpoint: what the provider account evaluates from its own
#: view and may share as findings (the endpoint stage is the consumer's to see), and so the hops
#: the provider's findings replace in a consumer's diagnosis
PROVIDER_CONTROLS: frozenset[str] = frozenset(
    c.id for c in CATALOGUE if c.side == "provider" and c.stage in ("forward", "service")
)
#: controls that can reset a SYN before the target sees it, most common first
RESETTING: tuple[str, ...] = tuple(
    c.id for c in sorted((c for c in CATALOGUE if c.resets), key=lambda c: c.reset_rank or 0)
)


def get(control_id: str) -> Control:
    """The control for an id; ``KeyError`` names the known ids."""
    try:
        return BY_ID[control_id]
    except KeyError:
        raise KeyError(f"unknown control {control_id!r}; known: {', '.join(IDS)}") from None
