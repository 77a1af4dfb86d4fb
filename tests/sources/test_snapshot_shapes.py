"""write_snapshot: every file is the AWS API's output shape, and each account sees only its own.

botocore has no output validator, so ``aws_snapshot.shape_errors`` walks the operation's
output shape; the first tests show that walker rejects what it must.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_snapshot_fixtures import enriched, multi_az, reference

from agent.lab.snapshot import render_snapshot, write_snapshot
from agent.sources.aws_actions import BY_STEM, calls_for
from agent.sources.aws_snapshot import shape_errors


def call_of(rel: str):
    return BY_STEM[rel.split("/", 1)[0].removesuffix(".json")]


# --- the validator ---------------------------------------------------------------------------


def test_validator_accepts_a_minimal_security_group_output():
    body = {"SecurityGroups": [{"GroupId": "sg-1", "IpPermissions": [{"FromPort": 80}]}]}
    assert shape_errors("ec2", "DescribeSecurityGroups", body) == []


def test_validator_rejects_an_unknown_member():
    body = {"SecurityGroups": [{"GroupId": "sg-1", "Rules": []}]}
    errors = shape_errors("ec2", "DescribeSecurityGroups", body)
    assert errors and "Rules" in errors[0]


def test_validator_rejects_a_camel_case_member_name():
    errors = shape_errors("ec2", "DescribeSecurityGroups", {"securityGroups": []})
    assert errors


def test_validator_rejects_a_string_where_an_integer_is_modelled():
    body = {"SecurityGroups": [{"IpPermissions": [{"FromPort": "80"}]}]}
    errors = shape_errors("ec2", "DescribeSecurityGroups", body)
    assert errors == ["$.SecurityGroups[0].IpPermissions[0].FromPort: expected an integer, got str"]


def test_validator_rejects_a_string_where_a_boolean_is_modelled():
    body = {"NetworkAcls": [{"Entries": [{"Egress": "false"}]}]}
    assert shape_errors("ec2", "DescribeNetworkAcls", body)


def test_validator_rejects_an_object_where_a_list_is_modelled():
    body = {"LoadBalancers": {"LoadBalancerArn": "arn"}}
    assert shape_errors("elbv2", "DescribeLoadBalancers", body)


def test_validator_rejects_a_timestamp_that_is_not_iso_8601():
    body = {"LoadBalancers": [{"CreatedTime": "yesterday"}]}
    assert shape_errors("elbv2", "DescribeLoadBalancers", body)


def test_validator_rejects_a_value_outside_the_modelled_enum():
    body = {"LoadBalancers": [{"Type": "classic-ish"}]}
    assert shape_errors("elbv2", "DescribeLoadBalancers", body)


# --- every file of every topology -----------------------------------------------------------


@pytest.mark.parametrize(
    "make", [reference, multi_az, enriched], ids=["reference", "multi-az", "enriched"]
)
def test_every_snapshot_file_matches_its_operations_output_shape(make):
    rendered = render_snapshot(make(), {})
    checked = 0
    for files in rendered.values():
        for rel, body in files.items():
            if rel == "account.json":
                continue
            call = call_of(rel)
            assert shape_errors(call.service, call.operation, body) == [], rel
            checked += 1
    assert checked >= 20


def test_each_account_directory_holds_exactly_the_calls_of_its_side(tmp_path: Path):
    dirs = write_snapshot(reference(), tmp_path)
    for d in dirs:
        role = json.loads((d / "account.json").read_text())["role"]
        present = {p.name.removesuffix(".json") for p in d.iterdir() if p.name != "account.json"}
        assert present == {c.stem for c in calls_for(role)}


def test_account_json_names_id_role_and_region(tmp_path: Path):
    write_snapshot(reference(), tmp_path)
    meta = json.loads((tmp_path / "consumer" / "account.json").read_text())
    assert meta == {
        "name": "consumer",
        "id": "111111111111",
        "role": "consumer",
        "region": "ap-northeast-1",
    }


# --- content: what each account sees ----------------------------------------------------------


@pytest.fixture(scope="module")
def snap():
    return render_snapshot(reference(), {})


def test_consumer_sees_only_its_own_security_groups(snap):
    names = {
        g["GroupName"]
        for g in snap["consumer"]["ec2-describe-security-groups.json"]["SecurityGroups"]
    }
    assert names == {"client-1", "client-2", "endpoint"}


def test_provider_sees_only_its_own_security_groups(snap):
    names = {
        g["GroupName"]
        for g in snap["provider"]["ec2-describe-security-groups.json"]["SecurityGroups"]
    }
    assert names == {"nlb", "server"}


def test_sg_reference_is_a_user_id_group_pair_with_the_referenced_owner(snap):
    t = reference()
    endpoint_sg = t.sg_by_name("endpoint")
    groups = snap["consumer"]["ec2-describe-security-groups.json"]["SecurityGroups"]
    client1 = next(g for g in groups if g["GroupName"] == "client-1")
    perm = client1["IpPermissionsEgress"][1]
    assert perm["IpProtocol"] == "tcp" and perm["FromPort"] == 80 and perm["ToPort"] == 80
    assert perm["UserIdGroupPairs"][0]["GroupId"] == endpoint_sg.id
    assert perm["UserIdGroupPairs"][0]["UserId"] == "111111111111"


def test_sg_reference_across_a_peering_names_the_vpc_and_the_peering(snap):
    groups = snap["consumer"]["ec2-describe-security-groups.json"]["SecurityGroups"]
    endpoint = next(g for g in groups if g["GroupName"] == "endpoint")
    pairs = [p for perm in endpoint["IpPermissions"] for p in perm["UserIdGroupPairs"]]
    peered = [p for p in pairs if "VpcPeeringConnectionId" in p]
    # client-1's group, on the service port and on the mirrored responder port
    assert len(peered) == 2 and peered[0]["VpcPeeringConnectionId"].startswith("pcx-")
    assert len({p["GroupId"] for p in peered}) == 1


def test_cidr_rules_are_ip_ranges_grouped_by_protocol_and_port(snap):
    groups = snap["provider"]["ec2-describe-security-groups.json"]["SecurityGroups"]
    nlb = next(g for g in groups if g["GroupName"] == "nlb")
    assert [p["FromPort"] for p in nlb["IpPermissions"]] == [80, 9721]
    assert [r["CidrIp"] for r in nlb["IpPermissions"][0]["IpRanges"]] == [
        "10.1.0.10/32",
        "10.2.1.15/32",
    ]


def test_prefix_list_rule_is_listed_under_prefix_list_ids():
    groups = render_snapshot(enriched())["provider"]["ec2-describe-security-groups.json"][
        "SecurityGroups"
    ]
    nlb = next(g for g in groups if g["GroupName"] == "nlb")
    perm = next(p for p in nlb["IpPermissions"] if p["FromPort"] == 443)
    assert perm["PrefixListIds"] == [
        {"PrefixListId": "pl-0123456789abcdef0", "Description": "a list"}
    ]


def test_nacl_entries_use_protocol_numbers_and_end_with_the_star_deny():
    nacls = render_snapshot(enriched())["consumer"]["ec2-describe-network-acls.json"]["NetworkAcls"]
    entries = [e for n in nacls for e in n["Entries"]]
    deny = next(e for e in entries if e["RuleNumber"] == 90)
    assert deny == {
        "CidrBlock": "10.9.0.0/16",
        "Egress": False,
        "Protocol": "6",
        "RuleAction": "deny",
        "RuleNumber": 90,
        "PortRange": {"From": 80, "To": 80},
    }
    for n in nacls:
        for egress in (False, True):
            last = [e for e in n["Entries"] if e["Egress"] is egress][-1]
            assert last == {
                "CidrBlock": "0.0.0.0/0",
                "Egress": egress,
                "Protocol": "-1",
                "RuleAction": "deny",
                "RuleNumber": 32767,
            }


def test_endpoint_enis_are_requester_managed_vpc_endpoint_interfaces(snap):
    t = reference()
    ep = next(iter(t.endpoints.values()))
    nis = snap["consumer"]["ec2-describe-network-interfaces.json"]["NetworkInterfaces"]
    eni = next(n for n in nis if n["NetworkInterfaceId"] == ep.enis[0].id)
    assert eni["InterfaceType"] == "vpc_endpoint"
    assert eni["RequesterManaged"] is True
    assert eni["Description"] == f"VPC Endpoint Interface {ep.id}"
    assert eni["PrivateIpAddress"] == "10.2.0.20"
    assert [g["GroupId"] for g in eni["Groups"]] == ep.sg_ids


def test_endpoint_dns_entries_are_the_regional_and_zonal_names(snap):
    t = reference()
    ep = next(iter(t.endpoints.values()))
    out = snap["consumer"]["ec2-describe-vpc-endpoints.json"]["VpcEndpoints"][0]
    assert [e["DnsName"] for e in out["DnsEntries"]] == list(t.endpoint_dns_names(ep))
    assert out["State"] == "available" and out["Groups"][0]["GroupId"] == ep.sg_ids[0]


def test_provider_connection_names_the_consumers_endpoint_and_owner(snap):
    t = reference()
    ep = next(iter(t.endpoints.values()))
    conns = snap["provider"]["ec2-describe-vpc-endpoint-connections.json"]["VpcEndpointConnections"]
    assert [(c["VpcEndpointId"], c["VpcEndpointOwner"], c["VpcEndpointState"]) for c in conns] == [
        (ep.id, "111111111111", "available")
    ]


def test_load_balancer_has_security_groups_and_the_enforce_flag(snap):
    lb = snap["provider"]["elbv2-describe-load-balancers.json"]["LoadBalancers"][0]
    assert lb["SecurityGroups"] == [reference().sg_by_name("nlb").id]
    assert lb["EnforceSecurityGroupInboundRulesOnPrivateLinkTraffic"] == "on"
    assert lb["AvailabilityZones"][0]["LoadBalancerAddresses"] == [
        {"PrivateIPv4Address": "10.3.0.100"}
    ]


def test_load_balancer_created_without_security_groups_has_neither_key():
    t = reference()
    next(iter(t.nlbs.values())).sg_ids = None
    lb = render_snapshot(t)["provider"]["elbv2-describe-load-balancers.json"]["LoadBalancers"][0]
    assert "SecurityGroups" not in lb
    assert "EnforceSecurityGroupInboundRulesOnPrivateLinkTraffic" not in lb


def test_per_resource_files_are_named_after_the_arn_with_colons_and_slashes_replaced(snap):
    t = reference()
    nlb = next(iter(t.nlbs.values()))
    rel = (
        "elbv2-describe-load-balancer-attributes/"
        + nlb.id.replace(":", "_").replace("/", "_")
        + ".json"
    )
    attrs = {a["Key"]: a["Value"] for a in snap["provider"][rel]["Attributes"]}
    assert attrs["load_balancing.cross_zone.enabled"] == "false"


def test_target_group_attributes_carry_the_proxy_protocol_flag():
    t = enriched()
    tg = next(iter(t.target_groups.values()))
    rel = BY_STEM["elbv2-describe-target-group-attributes"].resource_file(tg.id)
    attrs = {a["Key"]: a["Value"] for a in render_snapshot(t)["provider"][rel]["Attributes"]}
    assert attrs["proxy_protocol_v2.enabled"] == "true"


def test_target_health_comes_from_the_given_map():
    t = reference()
    tg = next(iter(t.target_groups.values()))
    first = tg.targets[0].instance_id
    rendered = render_snapshot(t, {(tg.id, first): "unhealthy"})
    body = rendered["provider"][BY_STEM["elbv2-describe-target-health"].resource_file(tg.id)]
    states = {
        d["Target"]["Id"]: d["TargetHealth"].get("State") for d in body["TargetHealthDescriptions"]
    }
    assert states == {first: "unhealthy", tg.targets[1].instance_id: None}


def test_rewriting_a_snapshot_removes_stale_per_resource_files(tmp_path: Path):
    write_snapshot(reference(), tmp_path)
    stale = tmp_path / "provider" / "elbv2-describe-target-health" / "old.json"
    stale.write_text("{}")
    write_snapshot(reference(), tmp_path)
    assert not stale.exists()
