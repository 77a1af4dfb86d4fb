"""The topology file: the article's reference topology loads exactly, bad input names its line."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import ConfigError, TopologyError
from agent.model import Topology, to_plain, topology_from_plain
from agent.sources.topology import REFERENCE, load_topology

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "lab"


@pytest.fixture(scope="module")
def ref() -> Topology:
    return load_topology()


def _rules(t: Topology, sg: str, direction: str) -> set[tuple]:
    group = t.sg_by_name(sg)
    assert group is not None
    out = set()
    for r in group.rules:
        if r.direction != direction:
            continue
        src = r.cidrs or (t.security_groups[r.sg_ref].name,)
        out.add((r.protocol, r.from_port, r.to_port, *src))
    return out


def test_reference_topology_has_the_articles_two_accounts(ref: Topology) -> None:
    roles = {a.role: a.id for a in ref.accounts.values()}
    assert roles == {"consumer": "111111111111", "provider": "222222222222"}
    assert {v.name: v.cidr for v in ref.vpcs.values()} == {
        "vpc-1": "10.1.0.0/16",
        "vpc-2": "10.2.0.0/16",
        "vpc-3": "10.3.0.0/16",
    }


def test_reference_client_1_reaches_the_endpoint_over_peering(ref: Topology) -> None:
    c1 = ref.instance_by_name("client-1")
    ep = next(iter(ref.endpoints.values()))
    assert ref.subnets[c1.subnet_id].vpc_id != ep.vpc_id
    assert ref.routed(ref.subnets[c1.subnet_id].vpc_id, ep.vpc_id)


def _on(port: int, rules: set[tuple[str, int, int, str]]) -> set[tuple[str, int, int, str]]:
    return {r for r in rules if r[1] == port}


def test_reference_security_groups_have_exactly_the_articles_rules(ref: Topology) -> None:
    """On the service port 80 (and 443 out): the article's rules, nothing else."""
    assert _rules(ref, "client-1", "egress") - _on(9721, _rules(ref, "client-1", "egress")) == {
        ("tcp", 443, 443, "0.0.0.0/0"),
        ("tcp", 80, 80, "endpoint"),
    }
    assert _rules(ref, "client-1", "ingress") == set()
    assert _on(80, _rules(ref, "endpoint", "ingress")) == {
        ("tcp", 80, 80, "client-1"),
        ("tcp", 80, 80, "client-2"),
    }
    assert _rules(ref, "endpoint", "egress") == set()
    assert _on(80, _rules(ref, "nlb", "ingress")) == {
        ("tcp", 80, 80, "10.1.0.10/32"),
        ("tcp", 80, 80, "10.2.1.15/32"),
    }
    assert _on(80, _rules(ref, "nlb", "egress")) == {("tcp", 80, 80, "server")}
    assert _on(80, _rules(ref, "server", "ingress")) == {("tcp", 80, 80, "nlb")}
    assert _rules(ref, "server", "egress") - _on(9721, _rules(ref, "server", "egress")) == {
        ("tcp", 443, 443, "0.0.0.0/0")
    }


def test_reference_mirrors_every_service_rule_for_the_responder_port(ref: Topology) -> None:
    """As deploy/terraform does: probes and evidence queries take the service's path, and the
    provider agents reach each other on the responder port inside the provider VPC."""
    for name in ("client-1", "client-2", "endpoint", "nlb", "server"):
        for direction in ("ingress", "egress"):
            mirrored = {
                (p, 9721, 9721, peer) for p, _, _, peer in _on(80, _rules(ref, name, direction))
            }
            assert mirrored <= _on(9721, _rules(ref, name, direction)), (name, direction)
    assert ("tcp", 9721, 9721, "server") in _rules(ref, "server", "ingress")
    assert ("tcp", 9721, 9721, "server") in _rules(ref, "server", "egress")


def test_reference_service_accepts_the_consumer_root_without_acceptance(ref: Topology) -> None:
    svc = next(iter(ref.endpoint_services.values()))
    assert svc.acceptance_required is False
    assert svc.allowed_principals == ["arn:aws:iam::111111111111:root"]
    ep = next(iter(ref.endpoints.values()))
    assert ep.state == "available"
    assert ref.service_allows(svc, ep.requester)


def test_reference_nlb_enforces_its_sg_on_privatelink_traffic(ref: Topology) -> None:
    nlb = next(iter(ref.nlbs.values()))
    assert [n.ip for n in nlb.nodes] == ["10.3.0.100"]
    assert nlb.enforce_sg_inbound_on_privatelink is True
    assert nlb.sg_ids == [ref.sg_by_name("nlb").id]
    listener, responder = sorted(ref.listeners_of(nlb.id), key=lambda li: li.port)
    assert (responder.port, ref.target_groups[responder.target_group_id].port) == (9721, 9721)
    tg = ref.target_groups[listener.target_group_id]
    assert (listener.port, tg.port, tg.health_check.protocol, tg.proxy_protocol_v2) == (
        80,
        80,
        "TCP",
        False,
    )
    assert sorted(ref.instances[t.instance_id].name for t in tg.targets) == [
        "server-1",
        "server-2",
    ]


def test_every_subnet_without_a_nacl_gets_its_vpcs_default_nacl(ref: Topology) -> None:
    for sid in ref.subnets:
        nacl = ref.nacl_of_subnet(sid)
        assert nacl is not None and nacl.name.endswith("-default")


def test_endpoint_dns_names_are_regional_and_zonal(ref: Topology) -> None:
    ep = next(iter(ref.endpoints.values()))
    names = ref.endpoint_dns_names(ep)
    assert len(names) == 2
    assert all(n.endswith(".ap-northeast-1.vpce.amazonaws.com") for n in names)
    assert any("-ap-northeast-1a." in n for n in names)
    assert all(ips == ["10.2.0.20"] for ips in names.values())


def test_multi_az_topology_has_targets_in_one_az_only() -> None:
    t = load_topology(CONFIGS / "multi-az.yaml")
    nlb = next(iter(t.nlbs.values()))
    assert nlb.cross_zone is False
    assert len(nlb.nodes) == 2
    ep = next(iter(t.endpoints.values()))
    assert {t.subnets[e.subnet_id].az_id for e in ep.enis} == {"apne1-az4", "apne1-az1"}
    assert {t.subnets[i.subnet_id].az_id for i in t.targets()} == {"apne1-az4"}


def test_topology_round_trips_through_plain_json(ref: Topology) -> None:
    assert topology_from_plain(to_plain(ref)) == ref


# --- bad input: file, line, key; never a traceback ------------------------------------


def _load_edited(old: str, new: str) -> Topology:
    text = REFERENCE.read_text()
    assert old in text, old
    return load_topology("edited.yaml", text.replace(old, new, 1))


def _line_of(needle: str, old: str, new: str) -> int:
    text = REFERENCE.read_text().replace(old, new, 1)
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_unknown_sg_reference_names_file_line_and_key() -> None:
    old = "source_security_group_id: client-1}"
    with pytest.raises(TopologyError) as exc:
        _load_edited(old, "source_security_group_id: client-9}")
    err = exc.value
    assert err.path == "edited.yaml"
    assert err.line == _line_of("client-9", old, "source_security_group_id: client-9}")
    assert err.key.endswith("endpoint-from-client-1.source_security_group_id")
    assert "unknown SG 'client-9'" in err.message


def test_ip_outside_its_subnet_is_rejected() -> None:
    with pytest.raises(TopologyError, match=r"outside its subnet vpc-2-client \(10.2.1.0/24\)"):
        _load_edited("private_ip: 10.2.1.15", "private_ip: 10.2.9.15")


def test_ipv6_subnet_in_an_ipv4_vpc_is_rejected_as_outside_it() -> None:
    with pytest.raises(TopologyError, match=r"fd00::/64 is outside VPC vpc-1 \(10.1.0.0/16\)"):
        _load_edited("cidr_block: 10.1.0.0/24", "cidr_block: fd00::/64")


def test_duplicate_ip_is_rejected_with_the_other_line() -> None:
    with pytest.raises(TopologyError, match=r"duplicate IP 10.3.1.10 .*line \d+"):
        _load_edited("private_ip: 10.3.1.11", "private_ip: 10.3.1.10")


def test_listener_without_target_group_is_rejected() -> None:
    with pytest.raises(TopologyError, match="listener without a target group") as exc:
        _load_edited(", default_action: {type: forward, target_group_arn: server-80}", "")
    assert exc.value.key == "resources.aws_lb_listener.nlb-80.default_action"


def test_listener_to_unknown_target_group_is_rejected() -> None:
    with pytest.raises(TopologyError, match="unknown target group 'server-8080'"):
        _load_edited("target_group_arn: server-80}", "target_group_arn: server-8080}")


def test_unknown_key_is_rejected_with_its_line() -> None:
    old = "private_dns_enabled: false"
    with pytest.raises(ConfigError, match="unknown key") as exc:
        _load_edited(old, "private_dns_enable: false")
    assert exc.value.key.endswith("aws_vpc_endpoint.endpoint.private_dns_enable")
    assert exc.value.line == _line_of("private_dns_enable:", old, "private_dns_enable: false")


def test_duplicate_yaml_key_is_rejected_not_silently_overwritten() -> None:
    old = "    client-2: {account: consumer, subnet_id: vpc-2-client"
    with pytest.raises(ConfigError, match="duplicate key 'client-1'"):
        _load_edited(old, old.replace("client-2:", "client-1:"))


def test_sg_cannot_reference_a_group_across_accounts_without_peering() -> None:
    with pytest.raises(TopologyError, match="cannot reference the consumer's SG"):
        _load_edited("cidr_blocks: [10.1.0.10/32]}", "source_security_group_id: client-1}")


def test_wrong_type_names_the_key() -> None:
    with pytest.raises(ConfigError) as exc:
        _load_edited(
            "port: 80, protocol: TCP, default_action", "port: eighty, protocol: TCP, default_action"
        )
    assert exc.value.key == "resources.aws_lb_listener.nlb-80.port"


def test_invalid_yaml_reports_its_line() -> None:
    with pytest.raises(ConfigError, match="invalid YAML") as exc:
        load_topology("broken.yaml", "region: x\naccounts: [\n")
    assert exc.value.path == "broken.yaml" and exc.value.line is not None


def test_missing_file_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_topology("/nonexistent/topology.yaml")


def test_principal_must_be_an_iam_arn_or_star() -> None:
    with pytest.raises(TopologyError, match="IAM ARN"):
        _load_edited('["arn:aws:iam::111111111111:root"]', '["111111111111"]')


def test_endpoint_with_acceptance_required_starts_pending() -> None:
    text = REFERENCE.read_text().replace("acceptance_required: false", "acceptance_required: true")
    t = load_topology("x.yaml", text)
    assert next(iter(t.endpoints.values())).state == "pendingAcceptance"


# --- routes ---------------------------------------------------------------------------------


def _table(t: Topology, name: str):
    return next(r for r in t.route_tables.values() if r.name == name)


def test_reference_routes_each_consumer_vpc_to_the_other_over_the_peering(ref: Topology) -> None:
    pcx = next(iter(ref.peerings.values()))
    client_1 = ref.instance_by_name("client-1")
    assert client_1 is not None
    table = ref.route_table_of_subnet(client_1.subnet_id)
    assert table is not None and table.name == "vpc-1-private"
    route = table.lookup("10.2.0.20")
    assert route is not None and (route.destination, route.target) == ("10.2.0.0/16", pcx.id)
    back = _table(ref, "vpc-2-private").lookup("10.1.0.10")
    assert back is not None and back.target == pcx.id


def test_a_vpc_without_declared_tables_gets_a_main_table_with_the_local_route(
    ref: Topology,
) -> None:
    main = _table(ref, "vpc-3-main")
    assert main.main and [(r.destination, r.target) for r in main.routes] == [
        ("10.3.0.0/16", "local")
    ]


def test_a_topology_without_route_tables_keeps_its_peerings_routed() -> None:
    t = load_topology(CONFIGS / "proxy-v2.yaml")
    for table in t.route_tables.values():
        peers = [r for r in table.routes if r.target.startswith("pcx-")]
        assert table.main and len(peers) == sum(
            table.vpc_id in (p.requester_vpc_id, p.accepter_vpc_id) for p in t.peerings.values()
        )


def test_a_route_to_a_peering_of_other_vpcs_is_rejected() -> None:
    with pytest.raises(TopologyError, match="does not connect the route table's VPC"):
        _load_edited(
            "vpc-1-private: {account: consumer, vpc_id: vpc-1}",
            "vpc-1-private: {account: consumer, vpc_id: vpc-1}\n"
            "    vpc-3-rt: {account: provider, vpc_id: vpc-3,"
            " route: [{cidr_block: 10.1.0.0/16, vpc_peering_connection_id: vpc-1-to-vpc-2}]}",
        )


def test_a_subnet_has_exactly_one_route_table() -> None:
    old = "    vpc-2-client:   {account: consumer, subnet_id: vpc-2-client, route_table_id"
    with pytest.raises(TopologyError, match="already associated with route table"):
        _load_edited(
            old,
            old.replace("vpc-2-client:  ", "vpc-2-again:  ").replace(
                "subnet_id: vpc-2-client", "subnet_id: vpc-2-endpoint"
            ),
        )


def test_a_route_to_a_deleted_peering_is_a_blackhole() -> None:
    t = _load_edited("auto_accept: true}", "auto_accept: true, status: deleted}")
    route = _table(t, "vpc-1-private").lookup("10.2.0.20")
    assert route is not None and t.route_state(route) == "blackhole"


# --- stale references -----------------------------------------------------------------------


def test_a_reference_across_a_deleted_peering_is_accepted_as_stale_and_matches_nothing() -> None:
    t = _load_edited("auto_accept: true}", "auto_accept: true, status: deleted}")
    group = t.sg_by_name("endpoint")
    assert group is not None
    stale = next(r for r in group.rules if r.id == "endpoint-from-client-1")
    client_1 = t.sg_by_name("client-1")
    assert client_1 is not None
    assert (stale.sg_ref, stale.stale_ref) == (None, client_1.id)
    same_vpc = next(r for r in group.rules if r.id == "endpoint-from-client-2")
    assert same_vpc.sg_ref is not None and same_vpc.stale_ref is None


def test_an_nlb_on_plain_subnets_gets_an_address_it_did_not_fix() -> None:
    t = _load_edited(
        "subnet_mapping: [{subnet_id: vpc-3-nlb, private_ipv4_address: 10.3.0.100}]",
        "subnets: [vpc-3-nlb]",
    )
    nlb = next(iter(t.nlbs.values()))
    assert not nlb.fixed_ips
    assert [n.ip for n in nlb.nodes] == ["10.3.0.5"]


def test_an_nlb_needs_subnet_mapping_or_subnets_not_both() -> None:
    with pytest.raises(TopologyError, match="exactly one of subnet_mapping, subnets"):
        _load_edited(
            "subnet_mapping: [{subnet_id: vpc-3-nlb, private_ipv4_address: 10.3.0.100}]",
            "subnet_mapping: [{subnet_id: vpc-3-nlb}]\n      subnets: [vpc-3-nlb]",
        )
