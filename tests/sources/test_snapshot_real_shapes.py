"""Shapes real AWS prints that the lab's snapshot writer never did, read as AWS means them.

Each test starts from a published example (``fixtures/real/``, see ``SOURCES.md``) and
changes only what the case is about; what the reader cannot take as given becomes a note on
the topology (``Topology.notes``, printed by ``explain``), never a silent "not visible".
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from agent.errors import SourceError
from agent.sources.aws_actions import BY_STEM
from agent.sources.aws_snapshot import load_snapshot

REAL = Path(__file__).parent / "fixtures" / "real"
NLB_ARN = (
    "arn:aws:elasticloadbalancing:us-west-2:123456789012:"
    "loadbalancer/net/my-network-load-balancer/5d1b75f4f1cee11e"
)
IP_TG_ARN = (
    "arn:aws:elasticloadbalancing:us-west-2:123456789012:targetgroup/my-ip-targets/b6bba954d1361c78"
)


def real(rel: str) -> Any:
    return json.loads((REAL / rel).read_text())


def real_eni(**changes: Any) -> dict[str, Any]:
    """The botocore describe-network-interfaces example's interface, with ``changes``."""
    body = real("ec2-describe-network-interfaces/botocore-ec2-describe-network-interfaces-1.json")
    eni = copy.deepcopy(body["NetworkInterfaces"][0])
    eni.update(changes)
    if "PrivateIpAddress" in changes:
        eni["PrivateIpAddresses"] = [
            {"Primary": True, "PrivateIpAddress": changes["PrivateIpAddress"]}
        ]
    return eni


def nlb_node_eni(eni_id: str, subnet: str, ip: str) -> dict[str, Any]:
    """An NLB node's ENI as AWS lists it: requester-managed, described ``ELB net/<name>/<id>``."""
    eni = real_eni(
        NetworkInterfaceId=eni_id,
        SubnetId=subnet,
        PrivateIpAddress=ip,
        Description="ELB net/my-network-load-balancer/5d1b75f4f1cee11e",
        InterfaceType="network_load_balancer",
        RequesterId="amazon-elb",
        RequesterManaged=True,
        Groups=[],
    )
    del eni["Attachment"], eni["Association"]
    return eni


def account(
    root: Path, name: str, files: dict[str, Any], *, region: str = "us-west-2", role: str = ""
) -> Path:
    d = root / name
    d.mkdir()
    meta = {"name": name, "id": "123456789012", "role": role or name, "region": region}
    if name == "consumer":
        meta["id"] = "111122223333"
    (d / "account.json").write_text(json.dumps(meta))
    for rel, body in files.items():
        (d / rel).parent.mkdir(parents=True, exist_ok=True)
        (d / rel).write_text(body if isinstance(body, str) else json.dumps(body))
    return d


# --- (1) an NLB created without fixed private IPs ---------------------------------------------


def test_nlb_without_private_addresses_gets_its_nodes_from_the_elb_network_interfaces(
    tmp_path: Path,
):
    lbs = real("elbv2-describe-load-balancers/awscli-create-load-balancer-3.json")
    lbs["LoadBalancers"][0]["AvailabilityZones"][0]["LoadBalancerAddresses"] = []
    enis = {
        "NetworkInterfaces": [
            real_eni(),
            nlb_node_eni("eni-0a1b2c3d4e5f60718", "subnet-5264e837", "10.0.1.37"),
        ]
    }
    d = account(
        tmp_path,
        "provider",
        {
            "elbv2-describe-load-balancers.json": lbs,
            "ec2-describe-network-interfaces.json": enis,
        },
    )
    nlb = load_snapshot([d]).nlbs[NLB_ARN]
    assert [(n.subnet_id, n.ip, n.eni_id) for n in nlb.nodes] == [
        ("subnet-5264e837", "10.0.1.37", "eni-0a1b2c3d4e5f60718")
    ]


def test_nlb_with_only_an_elastic_ip_address_also_reads_its_private_node_address(tmp_path: Path):
    """The published internet-facing NLB lists IpAddress/AllocationId but no private IP."""
    lbs = real("elbv2-describe-load-balancers/awscli-create-load-balancer-3.json")
    enis = {
        "NetworkInterfaces": [nlb_node_eni("eni-0a1b2c3d4e5f60718", "subnet-5264e837", "10.0.1.37")]
    }
    d = account(
        tmp_path,
        "provider",
        {
            "elbv2-describe-load-balancers.json": lbs,
            "ec2-describe-network-interfaces.json": enis,
        },
    )
    assert [n.ip for n in load_snapshot([d]).nlbs[NLB_ARN].nodes] == ["10.0.1.37"]


def test_nlb_without_addresses_or_interfaces_says_its_nodes_are_not_visible(tmp_path: Path):
    lbs = real("elbv2-describe-load-balancers/awscli-create-load-balancer-3.json")
    d = account(tmp_path, "provider", {"elbv2-describe-load-balancers.json": lbs})
    t = load_snapshot([d])
    assert t.nlbs[NLB_ARN].nodes == []
    assert any("subnet-5264e837" in n and "not visible" in n for n in t.notes)


# --- (4) target groups of other types; IP targets ---------------------------------------------


def test_a_lambda_target_group_is_skipped_with_a_note_and_the_others_load(tmp_path: Path):
    instance_tgs = real("elbv2-describe-target-groups/botocore-elbv2-describe-target-groups-1.json")
    lambda_tgs = real("elbv2-describe-target-groups/awscli-create-target-group-2.json")
    body = {"TargetGroups": instance_tgs["TargetGroups"] + lambda_tgs["TargetGroups"]}
    d = account(tmp_path, "provider", {"elbv2-describe-target-groups.json": body})
    t = load_snapshot([d])
    assert [tg.name for tg in t.target_groups.values()] == ["my-targets"]
    assert any("my-lambda-target" in n and "lambda" in n and "skipped" in n for n in t.notes)


def test_an_ip_target_is_matched_to_the_instance_of_the_eni_holding_its_address(tmp_path: Path):
    tgs = real("elbv2-describe-target-groups/awscli-create-target-group-3.json")
    health = {
        "TargetHealthDescriptions": [
            {"Target": {"Id": "10.0.1.17", "Port": 80}, "TargetHealth": {"State": "healthy"}}
        ]
    }
    enis = real("ec2-describe-network-interfaces/botocore-ec2-describe-network-interfaces-1.json")
    d = account(
        tmp_path,
        "provider",
        {
            "elbv2-describe-target-groups.json": tgs,
            BY_STEM["elbv2-describe-target-health"].resource_file(IP_TG_ARN): health,
            "ec2-describe-network-interfaces.json": enis,
        },
    )
    tg = load_snapshot([d]).target_groups[IP_TG_ARN]
    assert [(x.instance_id, x.port, x.health) for x in tg.targets] == [
        ("i-1234567890abcdef0", 80, "healthy")
    ]


def test_an_ip_target_no_visible_eni_holds_is_kept_with_a_note(tmp_path: Path):
    tgs = real("elbv2-describe-target-groups/awscli-create-target-group-3.json")
    health = {"TargetHealthDescriptions": [{"Target": {"Id": "10.9.9.9", "Port": 80}}]}
    d = account(
        tmp_path,
        "provider",
        {
            "elbv2-describe-target-groups.json": tgs,
            BY_STEM["elbv2-describe-target-health"].resource_file(IP_TG_ARN): health,
        },
    )
    t = load_snapshot([d])
    assert [x.instance_id for x in t.target_groups[IP_TG_ARN].targets] == ["10.9.9.9"]
    assert any("10.9.9.9" in n and "no visible ENI" in n for n in t.notes)


# --- (7) paginated output ------------------------------------------------------------------------


def test_an_elbv2_file_with_a_next_marker_is_read_and_flagged_as_cut(tmp_path: Path):
    body = real("elbv2-describe-target-groups/botocore-elbv2-describe-target-groups-1.json")
    body["NextMarker"] = "eyJuZXh0IjogMn0="
    d = account(tmp_path, "provider", {"elbv2-describe-target-groups.json": body})
    t = load_snapshot([d])
    assert [tg.name for tg in t.target_groups.values()] == ["my-targets"]
    assert any("elbv2-describe-target-groups.json" in n and "input was cut" in n for n in t.notes)


def test_an_elbv2_file_with_the_cli_next_token_is_not_refused(tmp_path: Path):
    """``--max-items`` makes the CLI print ``NextToken``, a member elbv2's model lacks."""
    body = real("elbv2-describe-target-groups/botocore-elbv2-describe-target-groups-1.json")
    body["NextToken"] = "eyJNYXJrZXIiOiBudWxsfQ=="
    d = account(tmp_path, "provider", {"elbv2-describe-target-groups.json": body})
    t = load_snapshot([d])
    assert len(t.target_groups) == 1 and any("input was cut (NextToken" in n for n in t.notes)


def test_a_truncated_ec2_file_warns_that_the_input_was_cut(tmp_path: Path):
    body = real("ec2-describe-vpcs/botocore-ec2-describe-vpcs-1.json")
    body["NextToken"] = "AAAAAQ=="
    d = account(tmp_path, "consumer", {"ec2-describe-vpcs.json": body})
    t = load_snapshot([d])
    assert len(t.vpcs) == 1
    assert [n for n in t.notes if "input was cut" in n] == [
        f"{d}/ec2-describe-vpcs.json: input was cut (NextToken present): resources on later "
        "pages are missing and show as not visible; re-run the command without "
        "--max-items / --page-size limits"
    ]


def test_an_empty_next_token_is_the_last_page_and_says_nothing(tmp_path: Path):
    body = real("ec2-describe-vpcs/botocore-ec2-describe-vpcs-1.json")
    body["NextToken"] = ""
    d = account(tmp_path, "consumer", {"ec2-describe-vpcs.json": body})
    assert load_snapshot([d]).notes == []


# --- (10) newer enum values, retired shapes ----------------------------------------------


def test_an_interface_type_newer_than_the_model_is_kept_not_refused(tmp_path: Path):
    enis = {"NetworkInterfaces": [real_eni(InterfaceType="efs")]}
    d = account(tmp_path, "consumer", {"ec2-describe-network-interfaces.json": enis})
    t = load_snapshot([d])
    assert any("InterfaceType" in n and "'efs'" in n for n in t.notes)


def test_a_member_newer_than_the_model_is_a_note_not_a_refusal(tmp_path: Path):
    body = real("ec2-describe-vpcs/botocore-ec2-describe-vpcs-1.json")
    body["Vpcs"][0]["QuantumPerimeter"] = {"Mode": "monitor"}
    d = account(tmp_path, "consumer", {"ec2-describe-vpcs.json": body})
    t = load_snapshot([d])
    assert len(t.vpcs) == 1 and any("QuantumPerimeter" in n for n in t.notes)


def test_an_ec2_classic_security_group_without_vpc_is_skipped_with_a_note(tmp_path: Path):
    body = real("ec2-describe-security-groups/awscli-1.json")
    classic = copy.deepcopy(body["SecurityGroups"][0])
    classic.update(GroupId="sg-0c1a551c", GroupName="classic")
    del classic["VpcId"]
    body["SecurityGroups"].append(classic)
    d = account(tmp_path, "consumer", {"ec2-describe-security-groups.json": body})
    t = load_snapshot([d])
    assert list(t.security_groups) == ["sg-903004f8"]
    assert any("sg-0c1a551c" in n and "EC2-Classic" in n and "skipped" in n for n in t.notes)


# --- (8) cross-region PrivateLink ---------------------------------------------------------


def cross_region(tmp_path: Path, supported: list[str]) -> list[Path]:
    services = real("ec2-describe-vpc-endpoint-service-configurations/awscli-1.json")
    for svc in services["ServiceConfigurations"]:
        svc["SupportedRegions"] = [{"Region": r, "ServiceState": "Available"} for r in supported]
    provider = account(
        tmp_path,
        "provider",
        {"ec2-describe-vpc-endpoint-service-configurations.json": services},
        region="us-east-1",
    )
    consumer = account(
        tmp_path,
        "consumer",
        {"ec2-describe-vpcs.json": real("ec2-describe-vpcs/botocore-ec2-describe-vpcs-1.json")},
        region="eu-west-1",
    )
    return [consumer, provider]


def test_regions_linked_by_the_services_supported_regions_load_together(tmp_path: Path):
    t = load_snapshot(cross_region(tmp_path, ["us-east-1", "eu-west-1"]))
    assert t.region == "eu-west-1"  # the client and its endpoint's region
    assert set(t.accounts) == {"consumer", "provider"}
    assert any("cross-region" in n for n in t.notes)


def test_an_endpoint_naming_the_service_region_links_the_regions(tmp_path: Path):
    endpoints = real("ec2-describe-vpc-endpoints/awscli-1.json")
    for e in endpoints["VpcEndpoints"]:
        e["ServiceRegion"] = "us-east-1"
    consumer = account(
        tmp_path, "consumer", {"ec2-describe-vpc-endpoints.json": endpoints}, region="eu-west-1"
    )
    provider = account(tmp_path, "provider", {}, region="us-east-1")
    assert load_snapshot([consumer, provider]).region == "eu-west-1"


def test_regions_nothing_links_are_still_refused(tmp_path: Path):
    with pytest.raises(SourceError, match=r"different regions.*nothing links them"):
        load_snapshot(cross_region(tmp_path, ["us-east-1"]))


def test_a_per_resource_file_with_a_next_marker_is_flagged_as_cut(tmp_path: Path):
    lbs = real("elbv2-describe-load-balancers/awscli-create-load-balancer-3.json")
    listeners = real("elbv2-describe-listeners/awscli-1.json")
    listeners["NextMarker"] = "eyJuZXh0IjogMn0="
    rel = BY_STEM["elbv2-describe-listeners"].resource_file(NLB_ARN)
    d = account(
        tmp_path,
        "provider",
        {"elbv2-describe-load-balancers.json": lbs, rel: listeners},
    )
    assert any(f"{rel}: input was cut (NextMarker" in n for n in load_snapshot([d]).notes)
