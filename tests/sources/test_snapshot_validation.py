"""Snapshots are validated, not trusted: a bad value is refused where it is read, naming the
file and the JSON member path, instead of failing later or yielding a confident "pass"."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from test_snapshot_fixtures import reference

from agent.errors import SourceError
from agent.lab.snapshot import write_snapshot
from agent.sources.aws_snapshot import MAX_DEPTH, load_snapshot


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    return {d.name: d for d in write_snapshot(reference(), tmp_path)}


def edit(path: Path, change: Any) -> None:
    body = json.loads(path.read_text())
    change(body)
    path.write_text(json.dumps(body))


def refused(dirs: dict[str, Path], message: str) -> None:
    with pytest.raises(SourceError, match=message):
        load_snapshot([dirs["consumer"], dirs["provider"]])


def test_a_vpc_cidr_that_is_not_a_cidr_names_file_and_member(dirs):
    edit(
        dirs["consumer"] / "ec2-describe-vpcs.json",
        lambda b: b["Vpcs"][0].update(CidrBlock="banana"),
    )
    refused(
        dirs, r"consumer/ec2-describe-vpcs\.json: Vpcs\[0\]\.CidrBlock: 'banana' is not a CIDR$"
    )


def test_an_endpoint_eni_address_that_is_not_an_ip_is_refused_where_it_is_read(dirs):
    def bad(body: dict) -> None:
        eni = next(n for n in body["NetworkInterfaces"] if n["InterfaceType"] == "vpc_endpoint")
        eni["PrivateIpAddress"] = "not-an-ip"

    edit(dirs["consumer"] / "ec2-describe-network-interfaces.json", bad)
    refused(
        dirs,
        r"consumer/ec2-describe-network-interfaces\.json: NetworkInterfaces\[\d+\]"
        r"\.PrivateIpAddress: 'not-an-ip' is not an IP address",
    )


def test_a_rule_port_beyond_65535_is_refused(dirs):
    def bad(body: dict) -> None:
        body["SecurityGroups"][0]["IpPermissionsEgress"][-1]["FromPort"] = 10**30

    edit(dirs["consumer"] / "ec2-describe-security-groups.json", bad)
    refused(
        dirs, r"SecurityGroups\[0\]\.IpPermissionsEgress\[\d+\]\.FromPort: .* is not in 0\.\.65535"
    )


def test_a_security_group_id_of_the_wrong_kind_is_refused(dirs):
    edit(
        dirs["provider"] / "ec2-describe-security-groups.json",
        lambda b: b["SecurityGroups"][0].update(GroupId="vpc-0123"),
    )
    refused(dirs, r"SecurityGroups\[0\]\.GroupId: 'vpc-0123' is not a sg-… id")


def test_a_listener_port_that_is_a_string_is_a_shape_error(dirs):
    listeners = next((dirs["provider"] / "elbv2-describe-listeners").glob("*.json"))
    edit(listeners, lambda b: b["Listeners"][0].update(Port="80"))
    refused(
        dirs,
        r"elbv2-describe-listeners/.*\.json: unexpected shape: "
        r"Listeners\[0\]\.Port: expected an integer",
    )


def test_a_file_that_is_not_utf_text_is_refused_naming_it(dirs):
    (dirs["consumer"] / "ec2-describe-vpcs.json").write_bytes(b'{"Vpcs": ["\xff\xfe\xfa"]}')
    refused(dirs, r"ec2-describe-vpcs\.json: not UTF-8/16/32 text")


def test_a_utf16_file_as_powershell_writes_it_loads(dirs):
    path = dirs["consumer"] / "ec2-describe-vpcs.json"
    path.write_bytes(path.read_text().encode("utf-16"))
    assert len(load_snapshot([dirs["consumer"]]).vpcs) == 2


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 100_000])
def test_deeply_nested_json_is_refused_not_a_recursion_error(dirs, depth: int):
    (dirs["consumer"] / "ec2-describe-vpcs.json").write_text("[" * depth + "]" * depth)
    refused(dirs, r"ec2-describe-vpcs\.json: (JSON nested|malformed JSON)")


def test_a_number_with_more_digits_than_python_converts_is_refused(dirs):
    (dirs["consumer"] / "ec2-describe-vpcs.json").write_text(
        '{"Vpcs": [], "X": ' + "9" * 5000 + "}"
    )
    refused(dirs, r"ec2-describe-vpcs\.json: malformed JSON")


def test_a_top_level_that_is_not_an_object_is_a_shape_error(dirs):
    (dirs["provider"] / "elbv2-describe-target-groups.json").write_text("[]")
    refused(
        dirs,
        r"elbv2-describe-target-groups\.json: unexpected shape: \(top level\): expected an object",
    )


def test_a_services_tag_that_is_not_a_port_list_names_the_tag(dirs):
    def bad(body: dict) -> None:
        tags = body["Reservations"][0]["Instances"][0]["Tags"]
        next(t for t in tags if t["Key"] == "plprobe:services")["Value"] = "80,http"

    edit(dirs["provider"] / "ec2-describe-instances.json", bad)
    refused(dirs, r"Tags\[\d+\]\.Value: '80,http' is not a comma-separated list of ports")


def test_an_account_id_that_is_not_twelve_digits_is_refused(dirs):
    meta = dirs["consumer"] / "account.json"
    edit(meta, lambda b: b.update(id="1111"))
    refused(dirs, re.escape("account.json: id: '1111' is not a 12-digit account id"))
