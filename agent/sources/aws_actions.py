"""Every AWS API call plprobe makes, per side, in one table.

Why one table: the snapshot writer (``agent.lab.snapshot``), the snapshot reader
(``agent.sources.aws_snapshot``), the live reader (``agent.sources.aws_live``), the IAM
policies in ``deploy/iam/`` and ``docs/SNAPSHOT.md`` all derive from :data:`CALLS`. The file
name of a snapshot file *is* the call (``ec2-describe-security-groups.json`` is
``aws ec2 describe-security-groups --output json``), the live reader can only call what is
listed here, and a test asserts the IAM policies grant exactly these actions and nothing else.

Two kinds of calls:

* account-wide calls (``per is None``): one file ``<service>-<cli-name>.json``;
* per-resource calls (``per`` is set): one file per resource, in a directory named after the
  call, ``<service>-<cli-name>/<resource id with ':' and '/' as '_'>.json``, where the
  resource ids come from an account-wide call's output (``per.source``). A short shell loop
  produces them (see ``docs/SNAPSHOT.md``).

``sts:AssumeRole`` is deliberately not in the read-only policies: it is a permission of the
*caller* (the agent's instance/task role, which needs it on the target role's ARN) plus the
target role's trust policy, not of the role being assumed. Putting it into the read-only
policy attached to the assumed role would let that role chain into others and grant nothing
plprobe needs.

Run ``python -m agent.sources.aws_actions consumer|provider`` to print the policy document.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from typing import Literal

Side = Literal["consumer", "provider"]
SIDES: tuple[Side, ...] = ("consumer", "provider")

#: IAM action prefix of each botocore service name
IAM_PREFIX = {"ec2": "ec2", "elbv2": "elasticloadbalancing"}


@dataclass(frozen=True)
class PerResource:
    """Where the ids of a per-resource call come from, and how they are passed."""

    #: file stem of the account-wide call that lists the resources
    source: str
    #: list member of that call's output, and the id member of each element
    list_key: str
    id_key: str
    #: request parameter that takes one id
    param: str


@dataclass(frozen=True)
class ApiCall:
    service: Literal["ec2", "elbv2"]
    #: botocore operation name (the API's name, PascalCase)
    operation: str
    sides: tuple[Side, ...]
    per: PerResource | None = None

    @property
    def cli_name(self) -> str:
        """``DescribeVpcEndpoints`` -> ``describe-vpc-endpoints`` (the AWS CLI spelling)."""
        return re.sub(r"(?<!^)(?=[A-Z])", "-", self.operation).lower()

    @property
    def stem(self) -> str:
        """File name without ``.json`` (account-wide) or directory name (per-resource)."""
        return f"{self.service}-{self.cli_name}"

    @property
    def file(self) -> str:
        return f"{self.stem}.json" if self.per is None else f"{self.stem}/"

    @property
    def iam_action(self) -> str:
        return f"{IAM_PREFIX[self.service]}:{self.operation}"

    @property
    def method(self) -> str:
        """The boto3 client method (``describe_vpc_endpoints``)."""
        return self.cli_name.replace("-", "_")

    def resource_file(self, resource_id: str) -> str:
        """Relative path of the file for one resource of a per-resource call."""
        return f"{self.stem}/{resource_file_name(resource_id)}"


def resource_file_name(resource_id: str) -> str:
    """An ARN or id as a file name: ``:`` and ``/`` become ``_`` (shell: ``tr ':/' '__'``)."""
    return re.sub(r"[:/]", "_", resource_id) + ".json"


BOTH: tuple[Side, ...] = ("consumer", "provider")
CONSUMER: tuple[Side, ...] = ("consumer",)
PROVIDER: tuple[Side, ...] = ("provider",)

_VPCS = PerResource("ec2-describe-vpcs", "Vpcs", "VpcId", "VpcId")
_SERVICES = PerResource(
    "ec2-describe-vpc-endpoint-service-configurations",
    "ServiceConfigurations",
    "ServiceId",
    "ServiceId",
)
_LBS = PerResource(
    "elbv2-describe-load-balancers", "LoadBalancers", "LoadBalancerArn", "LoadBalancerArn"
)
_PREFIX_LISTS = PerResource(
    "ec2-describe-managed-prefix-lists", "PrefixLists", "PrefixListId", "PrefixListId"
)
_TGS = PerResource(
    "elbv2-describe-target-groups", "TargetGroups", "TargetGroupArn", "TargetGroupArn"
)

#: In call order: a per-resource call comes after the call that lists its resources.
CALLS: tuple[ApiCall, ...] = (
    ApiCall("ec2", "DescribeVpcs", BOTH),
    ApiCall("ec2", "DescribeSubnets", BOTH),
    ApiCall("ec2", "DescribeVpcPeeringConnections", BOTH),
    ApiCall("ec2", "DescribeSecurityGroups", BOTH),
    ApiCall("ec2", "DescribeStaleSecurityGroups", BOTH, _VPCS),
    ApiCall("ec2", "DescribeNetworkAcls", BOTH),
    ApiCall("ec2", "DescribeRouteTables", BOTH),
    ApiCall("ec2", "DescribeInstances", BOTH),
    ApiCall("ec2", "DescribeNetworkInterfaces", BOTH),
    # SG rules of either account may name a customer-managed prefix list: its CIDRs
    ApiCall("ec2", "DescribeManagedPrefixLists", BOTH),
    ApiCall("ec2", "GetManagedPrefixListEntries", BOTH, _PREFIX_LISTS),
    ApiCall("ec2", "DescribeVpcEndpoints", CONSUMER),
    ApiCall("ec2", "DescribeVpcEndpointServiceConfigurations", PROVIDER),
    ApiCall("ec2", "DescribeVpcEndpointServicePermissions", PROVIDER, _SERVICES),
    ApiCall("ec2", "DescribeVpcEndpointConnections", PROVIDER),
    ApiCall("elbv2", "DescribeLoadBalancers", PROVIDER),
    ApiCall("elbv2", "DescribeLoadBalancerAttributes", PROVIDER, _LBS),
    ApiCall("elbv2", "DescribeListeners", PROVIDER, _LBS),
    ApiCall("elbv2", "DescribeTargetGroups", PROVIDER),
    ApiCall("elbv2", "DescribeTargetGroupAttributes", PROVIDER, _TGS),
    ApiCall("elbv2", "DescribeTargetHealth", PROVIDER, _TGS),
)

#: stem -> call
BY_STEM: dict[str, ApiCall] = {c.stem: c for c in CALLS}


def calls_for(side: Side) -> tuple[ApiCall, ...]:
    return tuple(c for c in CALLS if side in c.sides)


def iam_actions(side: Side) -> list[str]:
    """The IAM actions one side's read-only role needs, sorted."""
    return sorted({c.iam_action for c in calls_for(side)})


def policy_document(side: Side) -> dict[str, object]:
    """The least-privilege policy for one side (``deploy/iam/<side>-readonly.json``).

    ``Resource: "*"``: EC2 and ELB Describe* actions do not support resource-level
    permissions, so a narrower resource would deny them.
    """
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": f"Plprobe{side.capitalize()}ReadOnly",
                "Effect": "Allow",
                "Action": iam_actions(side),
                "Resource": "*",
            }
        ],
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0] not in SIDES:
        print("usage: python -m agent.sources.aws_actions consumer|provider", file=sys.stderr)
        return 2
    print(json.dumps(policy_document(args[0]), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
