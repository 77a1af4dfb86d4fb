"""The analysis on shapes real AWS accounts have and the lab never wrote (issue 14).

Each test starts from the lab's own snapshot of the reference topology (``write_snapshot``)
and splices in a published AWS example from ``tests/sources/fixtures/real/`` (``SOURCES.md``
names each) -- an AWS-service endpoint beside the provider's, a Gateway Load Balancer
service, a role as allowed principal, a GovCloud region -- or the account layout a real user
has (overlapping CIDRs, a cross-region endpoint, no ``plprobe:services`` tag). What is
asserted is what the user reads: which endpoint and service the path is about, which control
is named, and the fix text.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from agent.analyze.flows import flows
from agent.analyze.path import analyze_flow
from agent.diagnose.explain import explain
from agent.diagnose.verdict import diagnose
from agent.errors import ConfigError
from agent.lab.snapshot import write_snapshot
from agent.model import Topology
from agent.results import HopFinding, PathEvidence, ProbeResult
from agent.sources.aws_snapshot import load_snapshot
from agent.sources.topology import load_topology

REAL = Path(__file__).parents[1] / "sources" / "fixtures" / "real"
SERVICE = "vpce-svc-09df6b026a8c6c26e"  # the reference topology's endpoint service
ENDPOINT = "vpce-0b6bf7bc8d96f3ea9"
CONSUMER_ID = "111111111111"


def real(rel: str) -> Any:
    return json.loads((REAL / rel).read_text())


class Snap:
    """The reference lab's two snapshot directories, edited file by file."""

    def __init__(self, root: Path) -> None:
        dirs = write_snapshot(load_topology(), root)
        self.dirs = {d.name: d for d in dirs}
        self.order = ["consumer", "provider"]

    def read(self, side: str, rel: str) -> Any:
        return json.loads((self.dirs[side] / rel).read_text())

    def write(self, side: str, rel: str, body: Any) -> None:
        (self.dirs[side] / rel).write_text(json.dumps(body))

    def edit(self, side: str, rel: str) -> _Edit:
        return _Edit(self, side, rel)

    def paths(self) -> list[Path]:
        return [self.dirs[s] for s in self.order]

    def load(self, *sides: str) -> Topology:
        return load_snapshot([self.dirs[s] for s in (sides or self.order)])

    def per_resource(self, side: str, stem: str) -> Path:
        """The one file of a per-resource call (the call must have exactly one resource)."""
        (path,) = self.per_resource_files(side, stem)
        return path

    def per_resource_files(self, side: str, stem: str) -> list[Path]:
        return sorted((self.dirs[side] / stem).glob("*.json"))

    def no_endpoint(self) -> None:
        """What AWS shows when the endpoint was never created: in neither account."""
        with self.edit("consumer", "ec2-describe-vpc-endpoints.json") as body:
            body["VpcEndpoints"] = []
        with self.edit("consumer", "ec2-describe-network-interfaces.json") as body:
            body["NetworkInterfaces"] = [
                n for n in body["NetworkInterfaces"] if n.get("InterfaceType") != "vpc_endpoint"
            ]
        with self.edit("provider", "ec2-describe-vpc-endpoint-connections.json") as body:
            body["VpcEndpointConnections"] = []

    def principals(self, *arns: str, kind: str = "Account") -> None:
        path = self.per_resource("provider", "ec2-describe-vpc-endpoint-service-permissions")
        body = real("ec2-describe-vpc-endpoint-service-permissions/awscli-1.json")
        template = body["AllowedPrincipals"][0]
        body["AllowedPrincipals"] = [
            dict(template, Principal=a, PrincipalType=kind if ":root" not in a else "Account")
            for a in arns
        ]
        path.write_text(json.dumps(body))


class _Edit:
    def __init__(self, snap: Snap, side: str, rel: str) -> None:
        self.snap, self.side, self.rel = snap, side, rel

    def __enter__(self) -> Any:
        self.body = self.snap.read(self.side, self.rel)
        return self.body

    def __exit__(self, *exc: object) -> None:
        self.snap.write(self.side, self.rel, self.body)


@pytest.fixture
def snap(tmp_path: Path) -> Snap:
    return Snap(tmp_path)


def hop(findings: list[HopFinding], name: str) -> HopFinding:
    return next(f for f in findings if f.hop == name)


def aws_service_endpoint(vpc_id: str, name: str) -> dict[str, Any]:
    """The aws-cli describe-vpc-endpoints example's interface endpoint to an AWS service
    (``com.amazonaws.us-east-1.elasticloadbalancing``), moved into the client's VPC and named so
    that it sorts before the provider's endpoint."""
    ep = copy.deepcopy(real("ec2-describe-vpc-endpoints/awscli-1.json")["VpcEndpoints"][1])
    ep["VpcId"] = vpc_id
    ep["Tags"] = [{"Key": "Name", "Value": name}]
    return ep


def client_vpc(snap: Snap) -> str:
    t = snap.load()
    client = t.instance_by_name("client-2")
    assert client is not None
    return t.subnets[client.subnet_id].vpc_id


# --- (2) a consumer account with many endpoints ----------------------------------------------


def test_an_aws_service_endpoint_that_sorts_first_is_not_taken_for_the_providers(snap: Snap):
    vpc = client_vpc(snap)
    with snap.edit("consumer", "ec2-describe-vpc-endpoints.json") as body:
        real_eps = real("ec2-describe-vpc-endpoints/awscli-1.json")["VpcEndpoints"]
        # the gateway and GWLB endpoints of the same example, and an AWS-service endpoint
        body["VpcEndpoints"] += [real_eps[0], real_eps[2], aws_service_endpoint(vpc, "a-elb")]
    t = snap.load()
    (flow,) = flows(t, "client-2", 80)
    assert flow.endpoint is not None and flow.endpoint.id == ENDPOINT
    assert [v.status for v in explain(t, "client-2", 80)] == ["pass"]


def test_a_consumer_only_view_takes_the_endpoint_to_a_customer_service(snap: Snap):
    vpc = client_vpc(snap)
    with snap.edit("consumer", "ec2-describe-vpc-endpoints.json") as body:
        body["VpcEndpoints"].append(aws_service_endpoint(vpc, "a-elb"))
    (flow,) = flows(snap.load("consumer"), "client-2", 80)
    assert flow.endpoint is not None and flow.endpoint.service_id == SERVICE


def test_two_endpoints_to_the_providers_service_ask_which_one(snap: Snap):
    with snap.edit("consumer", "ec2-describe-vpc-endpoints.json") as body:
        twin = copy.deepcopy(body["VpcEndpoints"][0])
        twin["VpcEndpointId"] = "vpce-0aaaaaaaaaaaaaaa1"
        twin["Tags"] = [{"Key": "Name", "Value": "a-twin"}]
        twin["NetworkInterfaceIds"] = []
        twin["DnsEntries"] = []
        body["VpcEndpoints"].append(twin)
    t = snap.load()
    with pytest.raises(ConfigError, match=r"several interface endpoints.*--endpoint") as err:
        flows(t, "client-2", 80)
    assert ENDPOINT in str(err.value) and "vpce-0aaaaaaaaaaaaaaa1" in str(err.value)
    assert flows(t, "client-2", 80, endpoint="a-twin")[0].endpoint.id == "vpce-0aaaaaaaaaaaaaaa1"  # type: ignore[union-attr]


# --- (3) a provider with several endpoint services and no endpoint yet ----------------------


def test_a_gwlb_service_beside_the_nlb_service_does_not_hide_the_principals(snap: Snap):
    snap.no_endpoint()
    with snap.edit("provider", "ec2-describe-vpc-endpoint-service-configurations.json") as body:
        gwlb = real("ec2-describe-vpc-endpoint-service-configurations/awscli-1.json")
        body["ServiceConfigurations"].append(gwlb["ServiceConfigurations"][0])
    snap.principals("arn:aws:iam::333333333333:root")
    findings = analyze_flow(snap.load(), "client-2", None, 80)
    exists = hop(findings, "endpoint-exists")
    assert (exists.status, exists.control) == ("denied", "service-principal")
    assert SERVICE in exists.resource
    assert hop(findings, "nlb-listener").status == "allowed"  # the NLB was read: walked


def test_two_nlb_services_and_no_endpoint_say_which_services_could_be_meant(snap: Snap):
    snap.no_endpoint()
    with snap.edit("provider", "ec2-describe-vpc-endpoint-service-configurations.json") as body:
        other = copy.deepcopy(body["ServiceConfigurations"][0])
        other["ServiceId"] = "vpce-svc-0bbbbbbbbbbbbbbb2"
        other["ServiceName"] = "com.amazonaws.vpce.ap-northeast-1.vpce-svc-0bbbbbbbbbbbbbbb2"
        body["ServiceConfigurations"].append(other)
    exists = hop(analyze_flow(snap.load(), "client-2", None, 80), "endpoint-exists")
    assert exists.status == "not_visible"
    assert SERVICE in exists.detail and "vpce-svc-0bbbbbbbbbbbbbbb2" in exists.detail


# --- (5) overlapping CIDRs across the two accounts --------------------------------------------


def shadow_client_in_provider(snap: Snap) -> str:
    """A provider subnet and instance on client-2's own address (both accounts use the range):
    the botocore describe-subnets example's subnet, re-addressed."""
    t = snap.load()
    client = t.instance_by_name("client-2")
    assert client is not None
    provider_vpc = next(v.id for v in t.vpcs.values() if v.account == "provider")
    subnet = copy.deepcopy(real("ec2-describe-subnets/botocore-ec2-describe-subnets-1.json"))
    subnet = subnet["Subnets"][0]
    subnet.update(
        SubnetId="subnet-0ccccccccccccccc3",
        VpcId=provider_vpc,
        CidrBlock=t.subnets[client.subnet_id].cidr,
        AvailabilityZone="ap-northeast-1a",
        AvailabilityZoneId="apne1-az4",
    )
    with snap.edit("provider", "ec2-describe-subnets.json") as body:
        body["Subnets"].append(subnet)
    with snap.edit("provider", "ec2-describe-instances.json") as body:
        inst = copy.deepcopy(body["Reservations"][0]["Instances"][0])
        inst.update(InstanceId="i-0ddddddddddddddd4", SubnetId="subnet-0ccccccccccccccc3")
        inst["PrivateIpAddress"] = client.ip
        inst["Tags"] = [{"Key": "Name", "Value": "provider-twin"}]
        inst["NetworkInterfaces"] = []
        body["Reservations"].append({"Instances": [inst], "OwnerId": "222222222222"})
    return client.ip


def test_a_bare_client_ip_both_accounts_use_gives_one_verdict_whatever_the_order(snap: Snap):
    ip = shadow_client_in_provider(snap)
    one = [(v.status, v.blocked_at) for v in explain(snap.load(), ip, 80)]
    snap.order = ["provider", "consumer"]
    other = [(v.status, v.blocked_at) for v in explain(snap.load(), ip, 80)]
    assert one == other == [("pass", None)]


def test_a_bare_client_ip_is_the_consumers_instance_when_the_provider_has_the_same_ip(
    snap: Snap,
):
    ip = shadow_client_in_provider(snap)
    snap.order = ["provider", "consumer"]
    (flow,) = flows(snap.load(), ip, 80)
    assert flow.client is not None and flow.client.name == "client-2"


# --- (6) partitions and principals -----------------------------------------------------------


def govcloud(snap: Snap) -> None:
    for side in ("consumer", "provider"):
        with snap.edit(side, "account.json") as meta:
            meta["region"] = "us-gov-west-1"


def test_a_govcloud_fix_names_the_govcloud_root_not_the_commercial_one(snap: Snap):
    govcloud(snap)
    snap.no_endpoint()
    snap.principals("arn:aws-us-gov:iam::333333333333:root")
    exists = hop(analyze_flow(snap.load(), "client-2", None, 80), "endpoint-exists")
    assert exists.control == "service-principal"
    assert f"arn:aws-us-gov:iam::{CONSUMER_ID}:root" in exists.fix
    assert "arn:aws:iam::" not in exists.fix


def test_a_govcloud_root_principal_allows_the_govcloud_account(snap: Snap):
    govcloud(snap)
    snap.principals(f"arn:aws-us-gov:iam::{CONSUMER_ID}:root")
    assert [v.status for v in explain(snap.load(), "client-2", 80)] == ["pass"]


def test_a_missing_endpoint_whose_account_role_is_allowed_is_not_a_principal_problem(snap: Snap):
    role = f"arn:aws:iam::{CONSUMER_ID}:role/platform-deployer"
    snap.no_endpoint()
    snap.principals(role, kind="Role")
    exists = hop(analyze_flow(snap.load(), "client-2", None, 80), "endpoint-exists")
    assert (exists.status, exists.control) == ("denied", "dns")
    assert role in exists.fix and ":root" not in exists.fix


def test_a_refused_account_fix_offers_the_creating_role_before_the_root(snap: Snap):
    snap.no_endpoint()
    snap.principals("arn:aws:iam::123456789012:root")  # the published example's account
    fix = hop(analyze_flow(snap.load(), "client-2", None, 80), "endpoint-exists").fix
    assert f"arn:aws:iam::{CONSUMER_ID}:role/" in fix
    assert f"arn:aws:iam::{CONSUMER_ID}:root to allow every principal" in fix


# --- (9) a principal removed after the endpoint was accepted ----------------------------------


def test_an_available_endpoint_is_not_blamed_on_a_removed_principal(snap: Snap):
    snap.principals("arn:aws:iam::123456789012:root")  # the consumer's account was removed
    t = snap.load()
    principal = hop(analyze_flow(t, "client-2", None, 80), "service-principal")
    assert principal.status == "allowed"
    assert "reject-vpc-endpoint-connections" in principal.detail
    assert [(v.status, v.blocked_at) for v in explain(t, "client-2", 80)] == [("pass", None)]


def test_a_declared_endpoint_whose_requester_is_not_allowed_is_still_refused():
    """The lab's topology declares who creates the endpoint: it is created from that, so the
    permissions are those at creation (the lab renders it without the endpoint)."""
    t = load_topology()
    next(iter(t.endpoint_services.values())).allowed_principals = ["arn:aws:iam::3:root"]
    assert hop(analyze_flow(t, "client-2", None, 80), "service-principal").status == "denied"


# --- (11) no plprobe:services tag --------------------------------------------------------------


def untagged(snap: Snap, state: str | None) -> None:
    with snap.edit("provider", "ec2-describe-instances.json") as body:
        for r in body["Reservations"]:
            for i in r["Instances"]:
                i["Tags"] = [x for x in i["Tags"] if x["Key"] != "plprobe:services"]
    shape = real("elbv2-describe-target-health/awscli-1.json")["TargetHealthDescriptions"][0]
    for path in snap.per_resource_files("provider", "elbv2-describe-target-health"):
        body = json.loads(path.read_text())
        for d in body["TargetHealthDescriptions"]:
            d["TargetHealth"] = dict(shape["TargetHealth"], State=state) if state else {}
        path.write_text(json.dumps(body))


def test_an_untagged_target_that_is_healthy_on_the_traffic_port_is_listening(snap: Snap):
    untagged(snap, "healthy")
    t = snap.load()
    service = [f for f in analyze_flow(t, "client-2", None, 80) if f.hop == "target-service"]
    assert service and all(f.status == "allowed" for f in service)
    assert "DescribeTargetHealth" in service[0].detail
    assert [v.status for v in explain(t, "client-2", 80)] == ["pass"]


def test_an_untagged_target_without_observed_health_stays_not_verified(snap: Snap):
    untagged(snap, None)
    verdicts = explain(snap.load(), "client-2", 80)
    assert [(v.status, v.blocked_at) for v in verdicts] == [("unknown", None)]
    assert "target-service" in verdicts[0].candidates


def test_passing_probes_with_the_service_not_visible_and_no_provider_agent_are_a_pass(
    snap: Snap,
):
    untagged(snap, None)
    findings = analyze_flow(snap.load(), "client-2", None, 80)
    path = "client-2/apne1-az4/80"
    ev = PathEvidence(path, "ok", "unknown", [ProbeResult(path, "tcp", "ok")])
    verdict = diagnose(ev, findings, path=path, now=0.0)
    assert (verdict.status, verdict.blocked_at) == ("pass", None)


# --- cross-region PrivateLink ---------------------------------------------------------------


def cross_region(snap: Snap) -> None:
    """The provider in us-east-1 (its AZ ids ``use1-…``), the service listing the consumer's
    region in SupportedRegions as in the aws-cli example's shape."""
    with snap.edit("provider", "account.json") as meta:
        meta["region"] = "us-east-1"
    with snap.edit("provider", "ec2-describe-subnets.json") as body:
        for s in body["Subnets"]:
            s["AvailabilityZone"], s["AvailabilityZoneId"] = "us-east-1a", "use1-az1"
    with snap.edit("provider", "ec2-describe-vpc-endpoint-service-configurations.json") as body:
        for s in body["ServiceConfigurations"]:
            s["SupportedRegions"] = [
                {"Region": r, "ServiceState": "Available"} for r in ("us-east-1", "ap-northeast-1")
            ]


def test_a_cross_region_endpoint_is_not_blamed_on_its_az(snap: Snap):
    cross_region(snap)
    t = snap.load()
    verdicts = explain(t, "client-2", 80)
    assert [(v.status, v.blocked_at) for v in verdicts] == [("pass", None)]
    health = [f for f in analyze_flow(t, "client-2", None, 80) if f.hop == "target-health"]
    assert "cross-region" in health[-1].resource and "does not apply" in health[-1].detail


def test_a_cross_region_path_still_names_a_real_provider_denial(snap: Snap):
    cross_region(snap)
    with snap.edit("provider", "ec2-describe-security-groups.json") as body:
        for g in body["SecurityGroups"]:
            if g["GroupName"] == "server":
                g["IpPermissions"] = []
    verdicts = explain(snap.load(), "client-2", 80)
    assert [(v.status, v.stage, v.blocked_at) for v in verdicts] == [
        ("fail", "forward", "target-sg-ingress")
    ]


def test_an_nlb_whose_nodes_were_not_read_is_not_blamed_for_missing_azs(snap: Snap):
    with snap.edit("provider", "elbv2-describe-load-balancers.json") as body:
        for az in body["LoadBalancers"][0]["AvailabilityZones"]:
            az["LoadBalancerAddresses"] = []
    with snap.edit("provider", "ec2-describe-network-interfaces.json") as body:
        nics = body["NetworkInterfaces"]
        body["NetworkInterfaces"] = [
            n for n in nics if n.get("InterfaceType") != "network_load_balancer"
        ]
    t = snap.load()
    health = hop(analyze_flow(t, "client-2", None, 80), "target-health")
    assert health.status == "not_visible" and "not visible" in health.detail
    assert [v.blocked_at for v in explain(t, "client-2", 80)] == [None]


# --- permissions that were not read ------------------------------------------------------------


def test_a_service_whose_permissions_were_not_read_is_not_blamed_for_a_missing_endpoint(
    snap: Snap,
):
    """The aws-cli service-configurations example lists an NLB service whose
    describe-vpc-endpoint-service-permissions output is not in the directory: "unknown", never
    "nobody is allowed"."""
    snap.no_endpoint()
    snap.per_resource("provider", "ec2-describe-vpc-endpoint-service-permissions").unlink()
    t = snap.load()
    exists = hop(analyze_flow(t, "client-2", None, 80), "endpoint-exists")
    assert exists.status == "not_visible"
    assert any(SERVICE in n and "allowed principals were not read" in n for n in t.notes)
