"""The renderer and the fault catalogue, without root: what the lab would enforce."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest

from agent.cli import main
from agent.controls import BREAKABLE
from agent.errors import RenderError
from agent.lab import faults, nlbnat
from agent.lab.plan import LabPlan, render
from agent.sources.topology import load_topology

MULTI_AZ = Path(__file__).resolve().parents[2] / "configs" / "lab" / "multi-az.yaml"


@pytest.fixture(scope="module")
def plan() -> LabPlan:
    return render(load_topology(), "unit")


def chain(text: str, name: str) -> str:
    match = re.search(rf"chain {name} {{\n(.*?)\n  }}", text, re.S)
    assert match, f"no chain {name}"
    return match.group(1)


def test_rendering_is_deterministic() -> None:
    assert render(load_topology(), "unit").text() == render(load_topology(), "unit").text()


def test_every_node_of_the_reference_topology_gets_a_namespace(plan: LabPlan) -> None:
    assert [n.name for n in plan.nodes] == [
        "router-vpc-1",
        "router-vpc-2",
        "router-vpc-3",
        "client-1",
        "client-2",
        "server-1",
        "server-2",
        "endpoint-ap-northeast-1a",
        "nlb-ap-northeast-1a",
    ]
    assert all(n.ns == f"pl-unit-{n.name}" for n in plan.nodes)


def test_interface_names_fit_the_kernel_limit(plan: LabPlan) -> None:
    names = [x for lk in plan.links for x in (lk.a_if, lk.b_if)]
    assert all(len(n) <= 15 for n in names)


def test_security_groups_are_never_enforced_inside_an_instance(plan: LabPlan) -> None:
    instances = {n.ns for n in plan.nodes if n.kind == "instance"}
    assert not instances & set(plan.nft)


def test_sg_chains_drop_silently_and_never_reject(plan: LabPlan) -> None:
    routers = [t for ns, t in plan.nft.items() if "router" in ns]
    assert routers and not any("reject" in t for t in routers)


def test_nacls_run_before_conntrack_and_sgs_after(plan: LabPlan) -> None:
    fwd = chain(plan.nft["pl-unit-router-vpc-2"], "forward")
    assert fwd.index("jump nacl_") < fwd.index("ct state established,related accept")
    assert fwd.index("ct state established,related accept") < fwd.index("jump eg_client_2")


def test_nlb_sg_ingress_sees_the_client_ips(plan: LabPlan) -> None:
    rules = chain(plan.nft["pl-unit-router-vpc-3"], "in_nlb_ap_northeast_1a")
    assert "ip saddr 10.1.0.10/32 meta l4proto tcp th dport 80 return" in rules
    assert "ip saddr 10.2.1.15/32 meta l4proto tcp th dport 80 return" in rules
    assert rules.strip().endswith("drop")


def test_sg_references_render_to_member_ip_sets(plan: LabPlan) -> None:
    text = plan.nft["pl-unit-router-vpc-3"]
    assert (
        "set sg_server { type ipv4_addr; flags interval; elements = { 10.3.1.10, 10.3.1.11 }"
        in text
    )
    assert "ip saddr @sg_nlb meta l4proto tcp th dport 80 return" in chain(text, "in_server_1")


def test_enforce_flag_off_exempts_privatelink_traffic_from_nlb_ingress() -> None:
    topo = load_topology()
    for nlb in topo.nlbs.values():
        nlb.enforce_sg_inbound_on_privatelink = False
    rules = chain(render(topo, "unit").nft["pl-unit-router-vpc-3"], "in_nlb_ap_northeast_1a")
    assert rules.strip().splitlines()[0].strip().startswith('iifname "l')


def test_the_endpoint_dnats_to_the_nlb_keeping_the_client_source(plan: LabPlan) -> None:
    text = plan.nft["pl-unit-endpoint-ap-northeast-1a"]
    assert "ip daddr 10.2.0.20 meta l4proto tcp dnat ip to 10.3.0.100" in text
    assert "snat" not in text


def test_the_nlb_dnats_round_robin_and_snats_to_its_own_ip(plan: LabPlan) -> None:
    text = plan.nft["pl-unit-nlb-ap-northeast-1a"]
    assert "numgen inc mod 2 map { 0 : 10.3.1.10 . 80, 1 : 10.3.1.11 . 80 }" in text
    assert "meta l4proto tcp snat ip to 10.3.0.100:1024-65535 random" in text


def test_an_empty_healthy_set_fails_open_to_every_target() -> None:
    spec = next(p for p in render(load_topology(), "unit").processes if p.kind == "healthd")
    cfg = nlbnat.NodeConfig.from_plain(spec.config or {})
    assert [t.ip for t in nlbnat.active_targets(cfg, set())[80]] == ["10.3.1.10", "10.3.1.11"]
    assert [t.ip for t in nlbnat.active_targets(cfg, {"10.3.1.11:80"})[80]] == ["10.3.1.11"]


def test_cross_zone_off_leaves_the_az_without_targets_without_dnat() -> None:
    plan = render(load_topology(MULTI_AZ), "unit")
    assert "dnat ip to" in plan.nft["pl-unit-nlb-ap-northeast-1a"]
    assert "dnat ip to" not in plan.nft["pl-unit-nlb-ap-northeast-1c"]


def test_a_refused_principal_leaves_the_endpoint_uncreated_with_a_warning() -> None:
    topo = load_topology()
    for svc in topo.endpoint_services.values():
        svc.allowed_principals = ["arn:aws:iam::999999999999:root"]
    plan = render(topo, "unit")
    assert not any(n.kind == "endpoint-eni" for n in plan.nodes)
    assert any("would refuse CreateVpcEndpoint" in w for w in plan.warnings)
    assert not any("vpce-" in text for text in plan.files.values())


def test_peered_clients_resolve_the_endpoint_name(plan: LabPlan) -> None:
    hosts = plan.files["/etc/netns/pl-unit-client-1/hosts"]
    assert re.search(r"^10\.2\.0\.20\tvpce-\S+\.vpce\.amazonaws\.com$", hosts, re.M)


def test_overlapping_consumer_and_provider_cidrs_render_replies_routed_by_connection() -> None:
    """Both accounts on 10.x: the provider router marks what arrives over the PrivateLink link
    and routes the replies by that mark, so an address in its own range is not taken as local."""
    topo = load_topology()
    for vpc in topo.vpcs.values():
        if vpc.name == "vpc-2":
            vpc.cidr = "10.0.0.0/8"
    plan = render(topo, "unit")
    router = next(n.ns for n in plan.nodes if n.name == "router-vpc-3")
    text = plan.nft[router]
    assert re.search(r'iifname "\S+" ct state new ct mark set 1792', text)
    assert "ct direction reply ct mark != 0 meta mark set ct mark" in text
    assert any(c[:4] == ["rule", "add", "fwmark", "1792"] for c in plan.ip[router])


def test_an_nlb_node_inside_the_endpoints_subnet_is_refused() -> None:
    topo = load_topology()
    nlb = next(iter(topo.nlbs.values()))
    nlb.nodes[0].ip = "10.2.0.100"  # the endpoint's subnet is 10.2.0.0/24
    with pytest.raises(RenderError, match="inside the endpoint's subnet"):
        render(topo, "unit")


def test_lab_names_with_dashes_are_refused() -> None:
    with pytest.raises(RenderError):
        render(load_topology(), "a-b")


def test_every_breakable_control_has_a_fault() -> None:
    assert tuple(faults.FAULTS) == BREAKABLE
    assert all(f.description for f in faults.FAULTS.values())


@pytest.mark.parametrize("control", BREAKABLE)
def test_a_break_edits_a_copy_and_changes_what_the_lab_renders(control: str) -> None:
    topo = load_topology()
    before = copy.deepcopy(topo)
    broken = faults.break_topology(topo, control)
    assert topo == before
    assert broken != topo
    fault = faults.FAULTS[control]
    endpoints = None if fault.recreate_endpoints else list(topo.endpoints)
    assert render(broken, "unit", endpoints=endpoints).to_plain() != render(topo, "unit").to_plain()


def test_a_per_client_nlb_sg_break_only_touches_that_clients_rule() -> None:
    broken = faults.break_topology(load_topology(), "nlb-sg-ingress", "client-1")
    nlb_sg = broken.sg_by_name("nlb")
    assert nlb_sg is not None
    cidrs = {r.id: r.cidrs for r in nlb_sg.ingress()}
    assert cidrs["nlb-from-client-1"] == ("10.2.0.0/24",)
    assert cidrs["nlb-from-client-2"] == ("10.2.1.15/32",)


def test_lab_render_prints_the_plan_without_root(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["lab", "render"]) == 0
    out = capsys.readouterr().out
    assert "## nft -n pl-plprobe-router-vpc-3" in out


def test_lab_commands_without_root_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert main(["lab", "up", "--name", "nonroot"]) == 2
    assert "needs root" in capsys.readouterr().err


def test_rulesets_are_checked_before_they_are_applied() -> None:
    from agent.lab.commands import FakeRunner
    from agent.lab.lab import Lab

    runner = FakeRunner()
    Lab("unit", runner=runner)._apply_nft({"pl-unit-x": "table ip plprobe {}\n"})
    assert [argv[-3:] for argv, _ in runner.calls] == [["-c", "-f", "-"], ["nft", "-f", "-"]]
    assert all(text == "table ip plprobe {}\n" for _, text in runner.calls)


# --- routes and stale references --------------------------------------------------------------


def _router_ip(plan: LabPlan, vpc: str) -> list[str]:
    return [" ".join(c) for c in plan.ip[plan.node(f"router-{vpc}").ns]]


def test_each_subnet_is_routed_by_its_route_table(plan: LabPlan) -> None:
    ip = _router_ip(plan, "vpc-1")
    client = plan.node("client-1")
    table = next(c.split()[-3] for c in ip if c.startswith(f"rule add iif {client.veth} lookup"))
    assert f"rule add iif {client.veth} to 10.1.0.0/16 lookup main priority 1500" in ip
    assert any(c.startswith("route add 10.2.0.0/16 via") and f"table {table}" in c for c in ip)
    assert f"route add blackhole default table {table}" in ip


def test_a_missing_route_leaves_only_the_blackhole(plan: LabPlan) -> None:
    topo = faults.break_topology(load_topology(), "route", "client-1")
    ip = _router_ip(render(topo, "unit"), "vpc-1")
    assert not any(c.startswith("route add 10.2.0.0/16") for c in ip)


def test_a_route_to_a_deleted_peering_is_a_blackhole_route() -> None:
    topo = load_topology()
    next(iter(topo.peerings.values())).status = "deleted"
    ip = _router_ip(render(topo, "unit"), "vpc-1")
    assert any(c.startswith("route add blackhole 10.2.0.0/16 table") for c in ip)


def test_a_stale_reference_renders_no_match() -> None:
    topo = load_topology()
    next(iter(topo.peerings.values())).status = "deleted"
    topo.mark_stale_references()
    text = render(topo, "unit").nft[render(topo, "unit").node("router-vpc-2").ns]
    assert "endpoint-from-client-1" not in text
    assert "endpoint-from-client-2" in text
