"""load_snapshot(write_snapshot(t)) == t, partial views, and bad input (aws_snapshot)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from test_snapshot_fixtures import analysis_view, enriched, multi_az, reference

from agent.errors import SourceError
from agent.lab.snapshot import write_snapshot
from agent.sources.aws_actions import CALLS
from agent.sources.aws_snapshot import load_snapshot

DOCS = Path(__file__).resolve().parents[2] / "docs" / "SNAPSHOT.md"


@pytest.mark.parametrize(
    "make", [reference, multi_az, enriched], ids=["reference", "multi-az", "enriched"]
)
def test_round_trip_keeps_every_analysis_relevant_field(make, tmp_path: Path):
    t = make()
    loaded = load_snapshot(write_snapshot(t, tmp_path))
    assert analysis_view(loaded) == analysis_view(t)


def test_round_trip_keeps_an_nlb_created_without_security_groups(tmp_path: Path):
    t = reference()
    next(iter(t.nlbs.values())).sg_ids = None
    loaded = load_snapshot(write_snapshot(t, tmp_path))
    assert next(iter(loaded.nlbs.values())).sg_ids is None


def test_target_health_map_becomes_the_targets_observed_health(tmp_path: Path):
    t = reference()
    tg = next(iter(t.target_groups.values()))
    health = {(tg.id, x.instance_id): "healthy" for x in tg.targets}
    loaded = load_snapshot(write_snapshot(t, tmp_path, health))
    assert [x.health for x in loaded.target_groups[tg.id].targets] == ["healthy", "healthy"]


def test_rules_loaded_from_a_snapshot_have_readable_ids_naming_group_and_source(tmp_path: Path):
    t = reference()
    loaded = load_snapshot(write_snapshot(t, tmp_path))
    nlb_sg = loaded.sg_by_name("nlb")
    assert f"{nlb_sg.id} ingress TCP 80 from 10.1.0.10/32" in {r.id for r in nlb_sg.rules}


def test_snapshot_source_names_the_directories(tmp_path: Path):
    dirs = write_snapshot(reference(), tmp_path)
    assert load_snapshot(dirs).source == "snapshot:" + ",".join(str(d) for d in dirs)


# --- partial views ------------------------------------------------------------------------------


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    return {d.name: d for d in write_snapshot(reference(), tmp_path)}


def test_consumer_only_view_has_no_nlb_target_groups_or_service(dirs):
    t = load_snapshot([dirs["consumer"]])
    assert t.visible_accounts == {"consumer"}
    assert (t.nlbs, t.target_groups, t.listeners, t.endpoint_services) == ({}, {}, {}, {})
    assert {g.name for g in t.security_groups.values()} == {"client-1", "client-2", "endpoint"}


def test_consumer_only_view_has_the_full_endpoint(dirs):
    full = reference()
    t = load_snapshot([dirs["consumer"]])
    for ep in full.endpoints.values():
        ep.requester = ""  # who created it is in no describe output
    assert t.endpoints == full.endpoints


def test_provider_only_view_has_no_endpoint_security_groups(dirs):
    t = load_snapshot([dirs["provider"]])
    assert t.visible_accounts == {"provider"}
    assert {g.name for g in t.security_groups.values()} == {"nlb", "server"}
    ep = next(iter(t.endpoints.values()))
    assert (ep.sg_ids, ep.enis, ep.vpc_id) == ([], [], "")


def test_provider_only_view_knows_the_endpoint_state_owner_and_dns_hash(dirs):
    full = next(iter(reference().endpoints.values()))
    ep = load_snapshot([dirs["provider"]]).endpoints[full.id]
    assert ep.state == "available"
    assert ep.account == "111111111111"  # not visible: named by its account id
    assert ep.requester == ""  # who created it is in no describe output
    assert ep.dns_hash == full.dns_hash


def test_provider_only_view_has_nlb_listener_and_targets(dirs):
    full = reference()
    t = load_snapshot([dirs["provider"]])
    assert t.nlbs == full.nlbs and t.listeners == full.listeners
    assert analysis_view(t)["target_groups"] == analysis_view(full)["target_groups"]


def test_a_missing_file_means_not_visible_not_an_error(dirs):
    (dirs["consumer"] / "ec2-describe-network-acls.json").unlink()
    t = load_snapshot([dirs["consumer"], dirs["provider"]])
    assert {n.account for n in t.nacls.values()} == {"provider"}


def test_missing_target_health_leaves_the_target_group_without_targets(dirs):
    shutil.rmtree(dirs["provider"] / "elbv2-describe-target-health")
    t = load_snapshot([dirs["provider"]])
    assert [tg.targets for tg in t.target_groups.values()] == [[], []]  # service + responder


def test_missing_permissions_file_leaves_no_allowed_principals(dirs):
    shutil.rmtree(dirs["provider"] / "ec2-describe-vpc-endpoint-service-permissions")
    t = load_snapshot([dirs["provider"]])
    assert [s.allowed_principals for s in t.endpoint_services.values()] == [[]]


# --- bad input ------------------------------------------------------------------------------------


def test_malformed_json_names_the_file_and_line(dirs):
    bad = dirs["consumer"] / "ec2-describe-vpcs.json"
    bad.write_text('{"Vpcs": [\n  {"VpcId": "vpc-1",}\n]}')
    with pytest.raises(SourceError, match=r"ec2-describe-vpcs\.json:2:\d+: malformed JSON"):
        load_snapshot([dirs["consumer"]])


def test_wrong_shape_names_the_file_and_the_member(dirs):
    bad = dirs["provider"] / "elbv2-describe-target-groups.json"
    body = json.loads(bad.read_text())
    body["TargetGroups"][0]["Port"] = "80"
    bad.write_text(json.dumps(body))
    with pytest.raises(SourceError, match=r"elbv2-describe-target-groups\.json.*Port"):
        load_snapshot([dirs["provider"]])


def test_missing_required_member_names_the_file(dirs):
    bad = dirs["consumer"] / "ec2-describe-subnets.json"
    body = json.loads(bad.read_text())
    del body["Subnets"][0]["VpcId"]
    bad.write_text(json.dumps(body))
    with pytest.raises(SourceError, match=r"ec2-describe-subnets\.json: unexpected shape.*VpcId"):
        load_snapshot([dirs["consumer"]])


def test_source_error_means_exit_code_2():
    assert SourceError("x").exit_code == 2


def test_missing_account_json_is_an_error_naming_it(dirs):
    (dirs["consumer"] / "account.json").unlink()
    with pytest.raises(SourceError, match=r"account\.json: missing"):
        load_snapshot([dirs["consumer"]])


def test_account_json_with_an_unknown_role_is_an_error(dirs):
    (dirs["consumer"] / "account.json").write_text(
        '{"id": "111111111111", "role": "client", "region": "ap-northeast-1"}'
    )
    with pytest.raises(SourceError, match="role"):
        load_snapshot([dirs["consumer"]])


def test_per_resource_file_matching_no_resource_is_an_error(dirs):
    stray = dirs["provider"] / "elbv2-describe-target-health" / "arn_aws_typo.json"
    stray.write_text('{"TargetHealthDescriptions": []}')
    with pytest.raises(SourceError, match=r"arn_aws_typo\.json: matches no TargetGroupArn"):
        load_snapshot([dirs["provider"]])


def test_directories_from_different_regions_are_an_error(dirs):
    meta = json.loads((dirs["provider"] / "account.json").read_text())
    meta["region"] = "eu-west-1"
    (dirs["provider"] / "account.json").write_text(json.dumps(meta))
    with pytest.raises(SourceError, match="different regions"):
        load_snapshot([dirs["consumer"], dirs["provider"]])


def test_not_a_directory_is_an_error(tmp_path: Path):
    with pytest.raises(SourceError, match="not a snapshot directory"):
        load_snapshot([tmp_path / "nope"])


# --- documentation ------------------------------------------------------------------------------


def test_docs_name_every_snapshot_file_and_its_aws_command():
    text = DOCS.read_text()
    for call in CALLS:
        assert call.file in text, call.file
        assert f"aws {call.service} {call.cli_name}" in text, call.cli_name


def test_instances_without_the_services_tag_have_unknown_listening_ports(dirs):
    path = dirs["provider"] / "ec2-describe-instances.json"
    body = json.loads(path.read_text())
    for r in body["Reservations"]:
        for i in r["Instances"]:
            i["Tags"] = [t for t in i["Tags"] if t["Key"] != "plprobe:services"]
    path.write_text(json.dumps(body))
    servers = load_snapshot([dirs["provider"]]).instances.values()
    assert [(i.services, i.services_known) for i in servers] == [([], False), ([], False)]


def test_services_tag_carries_the_listening_ports(dirs):
    servers = load_snapshot([dirs["provider"]]).instances.values()
    assert [(i.services, i.services_known) for i in servers] == [
        ([80, 9721], True),
        ([80, 9721], True),
    ]


def test_a_rule_without_ports_for_a_portless_protocol_loads(tmp_path: Path):
    """AWS omits FromPort/ToPort for ESP, GRE and other port-less protocols."""
    import json

    (consumer, _) = write_snapshot(reference(), tmp_path)
    path = consumer / "ec2-describe-security-groups.json"
    body = json.loads(path.read_text())
    body["SecurityGroups"][0]["IpPermissions"].append(
        {"IpProtocol": "50", "IpRanges": [{"CidrIp": "10.9.0.0/16"}]}
    )
    path.write_text(json.dumps(body))
    loaded = load_snapshot([consumer])
    sg = loaded.security_groups[body["SecurityGroups"][0]["GroupId"]]
    assert any(r.protocol == "50" and r.cidrs == ("10.9.0.0/16",) for r in sg.rules)


def test_round_trip_keeps_a_blackhole_route_to_a_deleted_peering(tmp_path: Path):
    """AWS keeps the route and prints it ``blackhole``; the reader takes the state as given."""
    t = reference()
    pcx = next(iter(t.peerings.values()))
    pcx.status = "deleted"
    loaded = load_snapshot(write_snapshot(t, tmp_path))
    states = {
        (rt.name, r.destination): r.state
        for rt in loaded.route_tables.values()
        for r in rt.routes
        if r.target == pcx.id
    }
    assert states and set(states.values()) == {"blackhole"}


def test_a_snapshot_without_route_tables_walks_no_route_hop(tmp_path: Path):
    """Snapshots taken before describe-route-tables was read: routing is "not read", not
    "denied" (no verdict may blame a route nobody looked at)."""
    dirs = {d.name: d for d in write_snapshot(reference(), tmp_path)}
    for d in dirs.values():
        (d / "ec2-describe-route-tables.json").unlink()
    loaded = load_snapshot(list(dirs.values()))
    from agent.analyze.path import analyze_flow

    assert not loaded.route_tables
    assert not [f for f in analyze_flow(loaded, "client-1", None, 80) if f.control == "route"]


def test_round_trip_keeps_the_stale_references_of_a_deleted_peering(tmp_path: Path):
    t = reference()
    next(iter(t.peerings.values())).status = "deleted"
    assert t.mark_stale_references()
    loaded = load_snapshot(write_snapshot(t, tmp_path))
    assert analysis_view(loaded)["security_groups"] == analysis_view(t)["security_groups"]
    assert any("stale rule" in n for n in loaded.notes)


def test_an_nlb_without_fixed_ips_is_described_without_addresses_and_found_by_its_enis(
    tmp_path: Path,
):
    """Issue 14 problem 1, end to end: ``LoadBalancerAddresses: []`` as AWS prints it."""
    t = reference()
    nlb = next(iter(t.nlbs.values()))
    nlb.fixed_ips = False
    dirs = write_snapshot(t, tmp_path)
    provider = next(d for d in dirs if d.name == "provider")
    body = json.loads((provider / "elbv2-describe-load-balancers.json").read_text())
    assert [
        az["LoadBalancerAddresses"] for az in body["LoadBalancers"][0]["AvailabilityZones"]
    ] == [[]]
    loaded = load_snapshot(dirs)
    again = next(iter(loaded.nlbs.values()))
    assert ([n.ip for n in again.nodes], again.fixed_ips) == (["10.3.0.100"], False)
    from agent.analyze.path import analyze_flow

    findings = analyze_flow(loaded, "client-2", None, 80)
    assert not [f for f in findings if f.status == "denied"]
