"""The replay converter without root: Topology -> lab topology document, and what it says.

``lab export`` must re-create the same lab; ``lab up --from-snapshot`` must rebuild what the
lab can emulate and name everything it leaves out or assumes (never a silent guess).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from agent.cli import main
from agent.controls import BREAKABLE
from agent.errors import UnreplayableError
from agent.lab import faults
from agent.lab.plan import render
from agent.lab.replay import Replay, ReplayNote, export_text, replay_snapshot, to_document
from agent.lab.snapshot import write_snapshot
from agent.model import PrefixList, Route, Rule, Topology, to_plain
from agent.sources.topology import TOPOLOGIES, load_topology

SHIPPED = ["reference", "multi-az", "proxy-v2"]


def _plain(t: Topology) -> dict[str, Any]:
    data = to_plain(t)
    assert isinstance(data, dict)
    data.pop("source")
    return data


def _without_rule_ids(t: Topology) -> dict[str, Any]:
    """A snapshot has no rule names and no rule order (AWS lists a group's rules grouped by
    protocol and ports, and evaluates them as a set): compare rules by what they allow."""
    data = _plain(t)
    for sg in data["security_groups"].values():
        for rule in sg["rules"]:
            rule.pop("id")
        sg["rules"].sort(key=lambda rule: json.dumps(rule, sort_keys=True))
    return data


def _snapshot(tmp_path: Path, t: Topology | None = None) -> tuple[Path, Path]:
    consumer, provider = write_snapshot(t or load_topology(), tmp_path)
    return consumer, provider


def _edit(path: Path, change: Any) -> None:
    body = json.loads(path.read_text())
    change(body)
    path.write_text(json.dumps(body))


def _reasons(replay: Replay, kind: str, resource_part: str) -> list[str]:
    return [n.reason for n in replay.notes if n.kind == kind and resource_part in n.resource]


def _notes(exc: UnreplayableError) -> list[ReplayNote]:
    return [n for n in exc.notes if isinstance(n, ReplayNote)]


# --- lab export: the document re-creates the same lab ------------------------------------


@pytest.mark.parametrize("name", SHIPPED)
def test_export_loads_back_to_the_same_topology(name: str) -> None:
    t = load_topology(TOPOLOGIES / f"{name}.yaml")
    again = load_topology("<export>", text=export_text(t))
    assert _plain(again) == _plain(t)


@pytest.mark.parametrize("control", BREAKABLE)
def test_export_of_a_broken_lab_renders_the_same_plan(control: str) -> None:
    broken = faults.break_topology(load_topology(), control, None)
    again = load_topology("<export>", text=export_text(broken))
    assert render(again, "unit").text() == render(broken, "unit").text()


def test_export_keeps_the_lab_settings_so_they_can_be_edited() -> None:
    t = load_topology()
    t.lab.no_listener = "reset"
    again = load_topology("<export>", text=export_text(t))
    assert again.lab.no_listener == "reset"


def test_export_header_is_a_yaml_comment_and_lists_no_id_mapping() -> None:
    text = export_text(load_topology(), header="exported from lab x")
    assert text.startswith("# exported from lab x\n")
    assert "AWS id -> lab name" not in text


# --- lab up --from-snapshot: the lab's own snapshot replays to the same lab --------------


@pytest.mark.parametrize("name", SHIPPED)
def test_a_lab_snapshot_replays_to_the_same_topology_but_rule_names(
    name: str, tmp_path: Path
) -> None:
    t = load_topology(TOPOLOGIES / f"{name}.yaml")
    replay = replay_snapshot(_snapshot(tmp_path, t))
    assert replay.topology is not None
    assert _without_rule_ids(replay.topology) == _without_rule_ids(t)


def test_a_lab_snapshot_replays_to_the_same_lab_structure(tmp_path: Path) -> None:
    t = load_topology()
    replay = replay_snapshot(_snapshot(tmp_path, t))
    assert replay.topology is not None
    assert render(replay.topology, "unit").structure() == render(t, "unit").structure()


def test_replay_names_snapshot_rules_after_their_group_peer_and_port(tmp_path: Path) -> None:
    replay = replay_snapshot(_snapshot(tmp_path))
    rules = replay.document["resources"]["aws_security_group_rule"]
    assert "endpoint-from-client-1-tcp-80" in rules
    assert "nlb-from-10.2.1.15_32-tcp-80" in rules


def test_replay_maps_every_aws_id_to_its_lab_name(tmp_path: Path) -> None:
    t = load_topology()
    replay = replay_snapshot(_snapshot(tmp_path, t))
    sg = t.sg_by_name("endpoint")
    assert sg is not None
    assert replay.names[sg.id] == "endpoint"
    assert f"#   {sg.id} -> endpoint" in replay.yaml_text()


def test_replay_always_states_the_assumptions_a_snapshot_cannot_carry(tmp_path: Path) -> None:
    replay = replay_snapshot(_snapshot(tmp_path))
    text = " ".join(n.reason for n in replay.assumed())
    assert "route tables" in text
    assert "lab settings" in text


def test_replay_json_lists_omitted_and_assumed_with_resource_and_reason(tmp_path: Path) -> None:
    replay = replay_snapshot(_snapshot(tmp_path))
    body = replay.to_json()
    assert body["omitted"] == []
    assert all(set(n) == {"kind", "resource", "reason"} for n in body["assumed"])


# --- what a real snapshot has that the lab cannot emulate ----------------------------------


def test_an_instance_without_the_services_tag_is_assumed_to_serve_its_target_ports(
    tmp_path: Path,
) -> None:
    _, provider = _snapshot(tmp_path)

    def untag(body: dict) -> None:
        for r in body["Reservations"]:
            for i in r["Instances"]:
                i["Tags"] = [t for t in i["Tags"] if t["Key"] != "plprobe:services"]

    _edit(provider / "ec2-describe-instances.json", untag)
    replay = replay_snapshot([tmp_path / "consumer", provider])
    assert replay.document["resources"]["aws_instance"]["server-1"]["services"] == [80, 9721]
    assert any("serves TCP 80, 9721" in r for r in _reasons(replay, "assumed", "server-1"))


def test_ipv6_ranges_of_a_rule_are_left_out_and_said_so() -> None:
    t = load_topology()
    sg = t.sg_by_name("client-1")
    assert sg is not None
    sg.rules.append(Rule("v6-only", "egress", "tcp", 80, 80, ("::/0",)))
    sg.rules.append(Rule("both", "egress", "tcp", 81, 81, ("::/0", "10.0.0.0/8")))
    replay = to_document(t)
    rules = replay.document["resources"]["aws_security_group_rule"]
    assert "v6-only" not in rules
    assert rules["both"]["cidr_blocks"] == ["10.0.0.0/8"]
    assert _reasons(replay, "omitted", "v6-only") == [
        "IPv6 ranges: the lab is IPv4 only (they cannot match an IPv4 path)"
    ]


def test_an_unread_prefix_list_is_kept_but_said_to_match_nothing() -> None:
    t = load_topology()
    sg = t.sg_by_name("client-1")
    assert sg is not None
    sg.rules.append(Rule("pl", "egress", "tcp", 80, 80, prefix_list="pl-0123"))
    replay = to_document(t)
    assert replay.document["resources"]["aws_security_group_rule"]["pl"]["prefix_list_ids"] == [
        "pl-0123"
    ]
    assert any("matches nothing" in r for r in _reasons(replay, "omitted", "pl"))


def _with_partners_list(owner: str = "consumer") -> Topology:
    """The reference topology, client-1 allowed to a prefix list of ``owner``."""
    t = load_topology()
    t.prefix_lists["pl-0123"] = PrefixList(
        "pl-0123", "partners", owner, cidrs=["10.9.0.0/16", "10.8.0.0/16"], max_entries=5
    )
    sg = t.sg_by_name("client-1")
    assert sg is not None
    sg.rules.append(Rule("pl", "egress", "tcp", 80, 80, prefix_list="pl-0123"))
    return t


def test_a_read_prefix_list_becomes_a_prefix_list_resource_the_rule_names() -> None:
    replay = to_document(_with_partners_list())
    resources = replay.document["resources"]
    assert resources["aws_ec2_managed_prefix_list"]["partners"] == {
        "account": "consumer",
        "max_entries": 5,
        "entry": [{"cidr": "10.9.0.0/16"}, {"cidr": "10.8.0.0/16"}],
    }
    rule = resources["aws_security_group_rule"]["pl"]
    assert rule["prefix_list_ids"] == ["partners"]
    assert "cidr_blocks" not in rule
    assert _reasons(replay, "assumed", "pl") == []


def test_a_replayed_prefix_list_loads_back_with_its_entries_and_the_rule_using_it() -> None:
    again = load_topology("<export>", text=export_text(_with_partners_list()))
    (plist,) = again.prefix_lists.values()
    assert (plist.name, plist.account, plist.cidrs, plist.max_entries) == (
        "partners",
        "consumer",
        ["10.9.0.0/16", "10.8.0.0/16"],
        5,
    )
    sg = again.sg_by_name("client-1")
    assert sg is not None
    assert [r.prefix_list for r in sg.rules if r.id == "pl"] == [plist.id]


def test_a_prefix_list_of_another_owner_is_written_out_as_its_ipv4_entries() -> None:
    replay = to_document(_with_partners_list(owner="AWS"))
    resources = replay.document["resources"]
    assert "aws_ec2_managed_prefix_list" not in resources
    assert resources["aws_security_group_rule"]["pl"]["cidr_blocks"] == [
        "10.9.0.0/16",
        "10.8.0.0/16",
    ]
    assert any("owned by AWS" in r for r in _reasons(replay, "assumed", "pl"))


# --- routes and stale references --------------------------------------------------------


def test_export_writes_declared_route_tables_and_leaves_implicit_main_tables_to_the_builder() -> (
    None
):
    resources = to_document(load_topology()).document["resources"]
    assert set(resources["aws_route_table"]) == {"vpc-1-private", "vpc-2-private"}
    assert resources["aws_route_table"]["vpc-1-private"]["route"] == [
        {"cidr_block": "10.2.0.0/16", "vpc_peering_connection_id": "vpc-1-to-vpc-2"}
    ]
    assert set(resources["aws_route_table_association"]) == {
        "vpc-1-client",
        "vpc-2-endpoint",
        "vpc-2-client",
    }
    assert "aws_main_route_table_association" not in resources


def test_a_main_table_that_is_not_the_builders_own_is_written_with_its_association() -> None:
    t = load_topology()
    main = next(rt for rt in t.route_tables.values() if rt.name == "vpc-3-main")
    main.id, main.name = "rtb-0aaaabbbbccccdddd", "provider-main"  # a real AWS table
    main.routes.append(Route("0.0.0.0/0", "nat-0123456789abcdef0"))
    replay = to_document(t)
    resources = replay.document["resources"]
    assert resources["aws_route_table"]["provider-main"]["route"] == [
        {"cidr_block": "0.0.0.0/0", "gateway_id": "nat-0123456789abcdef0"}
    ]
    assert resources["aws_main_route_table_association"]["vpc-3"] == {
        "account": "provider",
        "vpc_id": "vpc-3",
        "route_table_id": "provider-main",
    }
    again = load_topology("<replay>", text=replay.yaml_text())
    vpc3 = next(v.id for v in again.vpcs.values() if v.name == "vpc-3")
    (table,) = [rt for rt in again.route_tables.values() if rt.vpc_id == vpc3]
    assert (table.name, table.main) == ("provider-main", True)
    assert [(r.destination, r.target) for r in table.routes] == [
        ("10.3.0.0/16", "local"),
        ("0.0.0.0/0", "nat-0123456789abcdef0"),
    ]


def test_a_route_over_a_peering_that_is_not_replayed_is_left_out_and_said_so() -> None:
    t = load_topology()
    table = next(rt for rt in t.route_tables.values() if rt.name == "vpc-1-private")
    table.routes.append(Route("10.50.0.0/16", "pcx-0aaaabbbbccccdddd", "blackhole"))
    replay = to_document(t)
    assert replay.document["resources"]["aws_route_table"]["vpc-1-private"]["route"] == [
        {"cidr_block": "10.2.0.0/16", "vpc_peering_connection_id": "vpc-1-to-vpc-2"}
    ]
    assert any("not replayed" in r for r in _reasons(replay, "omitted", "10.50.0.0/16"))


def test_a_vpc_without_route_tables_in_the_snapshot_is_said_to_get_the_labs_routing() -> None:
    t = load_topology()
    t.route_tables.clear()  # describe-route-tables not read
    replay = to_document(t)
    assert "aws_route_table" not in replay.document["resources"]
    assert any("no route table" in r for r in _reasons(replay, "assumed", "aws_vpc vpc-1"))


def test_export_of_a_stale_reference_loads_back_stale() -> None:
    t = load_topology()
    next(iter(t.peerings.values())).status = "deleted"
    assert t.mark_stale_references()
    again = load_topology("<export>", text=export_text(t))
    assert _plain(again) == _plain(t)


def test_a_stale_reference_across_no_peering_is_left_out_and_said_to_match_nothing() -> None:
    t = load_topology()
    next(iter(t.peerings.values())).status = "deleted"
    stale = t.mark_stale_references()
    t.peerings.clear()
    t.route_tables = {k: rt for k, rt in t.route_tables.items() if not rt.name.endswith("-private")}
    replay = to_document(t)
    rules = replay.document["resources"]["aws_security_group_rule"]
    assert not {r.id for r in stale} & set(rules)
    assert all(
        any("matches nothing" in why for why in _reasons(replay, "omitted", r.id)) for r in stale
    )


def test_a_lab_snapshot_with_a_deleted_peering_replays_its_stale_references(
    tmp_path: Path,
) -> None:
    t = load_topology()
    next(iter(t.peerings.values())).status = "deleted"
    assert t.mark_stale_references()
    replay = replay_snapshot(_snapshot(tmp_path, t))
    assert replay.topology is not None
    assert _without_rule_ids(replay.topology) == _without_rule_ids(t)


def test_a_rule_for_another_protocol_is_left_out_and_said_so() -> None:
    t = load_topology()
    sg = t.sg_by_name("server")
    assert sg is not None
    sg.rules.append(Rule("esp", "ingress", "50", 0, 65535, ("10.0.0.0/8",)))
    replay = to_document(t)
    assert "esp" not in replay.document["resources"]["aws_security_group_rule"]
    assert any("protocol 50" in r for r in _reasons(replay, "omitted", "esp"))


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("10.3.1.50", "IP target"),
        ("arn:aws:lambda:ap-northeast-1:222222222222:function:f", "Lambda"),
        ("arn:aws:elasticloadbalancing:ap-northeast-1:2:loadbalancer/app/a/1", "ALB"),
    ],
)
def test_a_target_that_is_not_an_instance_is_left_out_with_its_kind(target: str, why: str) -> None:
    t = load_topology()
    tg = next(iter(t.target_groups.values()))
    tg.targets.append(dataclasses.replace(tg.targets[0], instance_id=target))
    replay = to_document(t)
    assert set(replay.document["resources"]["aws_lb_target_group_attachment"]) == {
        "server-80-server-1-80",
        "server-80-server-2-80",
        "server-9721-server-1-9721",
        "server-9721-server-2-9721",
    }
    assert any(why in r for r in _reasons(replay, "omitted", target))


def test_a_udp_listener_is_left_out_and_a_tls_listener_is_emulated_as_tcp() -> None:
    t = load_topology()
    li = next(iter(t.listeners.values()))
    li.protocol = "TLS"
    udp = dataclasses.replace(li, id=li.id + "-udp", port=53, protocol="UDP")
    t.listeners[udp.id] = udp
    replay = to_document(t)
    listeners = replay.document["resources"]["aws_lb_listener"]
    assert list(listeners) == ["nlb-80", "nlb-9721"]
    assert any("UDP" in r for r in _reasons(replay, "omitted", ":53"))
    assert any("emulated as TCP" in r for r in _reasons(replay, "assumed", ":80"))


def test_a_subnet_in_a_secondary_cidr_block_is_left_out_with_what_was_in_it() -> None:
    t = load_topology()
    subnet = next(s for s in t.subnets.values() if s.name == "vpc-1-client")
    subnet.cidr = "100.64.0.0/24"
    next(i for i in t.instances.values() if i.name == "client-1").ip = "100.64.0.10"
    replay = to_document(t)
    assert "vpc-1-client" not in replay.document["resources"]["aws_subnet"]
    assert "client-1" not in replay.document["resources"]["aws_instance"]
    assert any("primary CIDR" in r for r in _reasons(replay, "omitted", "vpc-1-client"))
    assert _reasons(replay, "omitted", "aws_instance client-1")


def test_an_endpoint_requester_that_is_not_root_is_assumed_from_the_allowed_principals() -> None:
    t = load_topology()
    svc = next(iter(t.endpoint_services.values()))
    svc.allowed_principals = ["arn:aws:iam::111111111111:role/app"]
    next(iter(t.endpoints.values())).requester = ""  # what a snapshot knows
    replay = to_document(t)
    endpoint = replay.document["resources"]["aws_vpc_endpoint"]["endpoint"]
    assert endpoint["requester"] == "arn:aws:iam::111111111111:role/app"
    assert _reasons(replay, "assumed", "aws_vpc_endpoint endpoint")


def test_missing_service_permissions_are_assumed_to_allow_the_consumer_root(
    tmp_path: Path,
) -> None:
    consumer, provider = _snapshot(tmp_path)
    for f in (provider / "ec2-describe-vpc-endpoint-service-permissions").iterdir():
        f.unlink()
    replay = replay_snapshot([consumer, provider])
    svc = replay.document["resources"]["aws_vpc_endpoint_service"]["service"]
    assert svc["allowed_principals"] == ["arn:aws:iam::111111111111:root"]
    assert any("were not read" in r for r in _reasons(replay, "assumed", "service"))


def test_gateway_load_balancer_endpoints_and_albs_are_named_as_not_emulated(
    tmp_path: Path,
) -> None:
    consumer, provider = _snapshot(tmp_path)

    def add_gwlbe(body: dict) -> None:
        gwlbe = dict(body["VpcEndpoints"][0], VpcEndpointId="vpce-0gwlb")
        gwlbe["VpcEndpointType"] = "GatewayLoadBalancer"
        body["VpcEndpoints"].append(gwlbe)

    def add_alb(body: dict) -> None:
        alb = dict(body["LoadBalancers"][0], LoadBalancerName="web", Type="application")
        alb["LoadBalancerArn"] = alb["LoadBalancerArn"].replace("/net/nlb/", "/app/web/")
        body["LoadBalancers"].append(alb)

    _edit(consumer / "ec2-describe-vpc-endpoints.json", add_gwlbe)
    _edit(provider / "elbv2-describe-load-balancers.json", add_alb)
    replay = replay_snapshot([consumer, provider])
    assert any("Gateway Load Balancer" in r for r in _reasons(replay, "omitted", "vpce-0gwlb"))
    assert any("application load balancer" in r for r in _reasons(replay, "omitted", "web"))


# --- refusals ------------------------------------------------------------------------------


def test_replay_refuses_without_the_provider_account(tmp_path: Path) -> None:
    consumer, _ = _snapshot(tmp_path)
    with pytest.raises(UnreplayableError, match="no provider account") as info:
        replay_snapshot([consumer])
    assert info.value.exit_code == 2
    assert [n.kind for n in _notes(info.value)] == ["refused"]


def test_replay_refuses_when_no_endpoint_of_the_providers_services_remains(
    tmp_path: Path,
) -> None:
    consumer, provider = _snapshot(tmp_path)

    def other_service(body: dict) -> None:
        body["VpcEndpoints"][0]["ServiceName"] = "com.amazonaws.ap-northeast-1.s3"

    _edit(consumer / "ec2-describe-vpc-endpoints.json", other_service)
    with pytest.raises(UnreplayableError, match="nothing to replay") as info:
        replay_snapshot([consumer, provider])
    assert "not in the provider's snapshot" in str(info.value)
    assert _notes(info.value)[-1].kind == "refused"


def test_lab_up_from_snapshot_refusal_is_in_the_json_output_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    consumer, _ = _snapshot(tmp_path)
    second = tmp_path / "second-consumer"
    shutil.copytree(consumer, second)
    _edit(second / "account.json", lambda body: body.update(name="other", id="333333333333"))
    dirs = [str(consumer), str(second)]
    code = main(["lab", "up", "--name", "unit", "--from-snapshot", *dirs, "--output", "json"])
    assert code == 2
    body = json.loads(capsys.readouterr().out)
    assert body["notes"][0]["kind"] == "refused"
    assert "no provider account" in body["refused"]
