"""deploy/: what the evidence channel and the provider's own probes need is shipped.

The responder port is a listener and passes every control like the service port; the
provider agents may reach the NLB and each other inside the provider VPC (their probes, their
peers); the provider's read-only policy lets them discover NLB nodes, listeners, targets and
peers; the rendered provider config and the example config turn the probes on.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import hcl2
import pytest

from agent.config import ProviderConfig, parse_config
from agent.sources.aws_actions import calls_for
from agent.yamlsrc import load_yaml

ROOT = Path(__file__).resolve().parents[2]
TF = ROOT / "deploy" / "terraform"
IAM = ROOT / "deploy" / "iam" / "provider-readonly.json"
ECS_PROVIDER = ROOT / "deploy" / "ecs" / "task-definition-provider.json"

#: what provider probe discovery and peer discovery read (agent/daemon/provider_probes.py)
DISCOVERY_ACTIONS = {
    "elasticloadbalancing:DescribeLoadBalancers",
    "elasticloadbalancing:DescribeListeners",
    "elasticloadbalancing:DescribeTargetGroups",
    "elasticloadbalancing:DescribeTargetHealth",
    "ec2:DescribeInstances",
    "ec2:DescribeSubnets",
    "ec2:DescribeVpcEndpointServiceConfigurations",
}


def _s(value: str) -> str:
    return value.strip('"')


def resources(kind: str) -> dict[str, dict[str, Any]]:
    """Every ``resource "<kind>" "<name>"`` of the root module, by name."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(TF.glob("*.tf")):
        with path.open() as fh:
            doc = hcl2.load(fh)
        for block in doc.get("resource", []):
            for rtype, body in block.items():
                if _s(rtype) == kind:
                    out.update({_s(name): attrs for name, attrs in body.items()})
    return out


def sg_rules() -> list[dict[str, Any]]:
    return list(resources("aws_security_group_rule").values())


def on_every_port(attrs: dict[str, Any]) -> bool:
    return attrs.get("for_each") == "${local.ports}"


def test_the_ports_set_holds_the_service_and_the_responder_port() -> None:
    text = (TF / "security_groups.tf").read_text()
    assert re.search(
        r"ports\s*=\s*toset\(\[tostring\(var.service_port\), tostring\(var.responder_port\)\]\)",
        text,
    )


def test_the_nlb_has_a_listener_and_a_target_group_on_the_responder_port() -> None:
    assert on_every_port(resources("aws_lb_listener")["service"])
    assert on_every_port(resources("aws_lb_target_group")["service"])


@pytest.mark.parametrize(
    ("sg", "direction", "peer"),
    [
        ("client_1", "egress", "endpoint"),  # ①
        ("client_2", "egress", "endpoint"),  # ①
        ("endpoint", "ingress", "client_1"),  # ②
        ("endpoint", "ingress", "client_2"),  # ②
        ("nlb", "egress", "server"),  # ④ egress
        ("server", "ingress", "nlb"),  # ⑤
    ],
)
def test_every_security_group_control_carries_the_responder_port(
    sg: str, direction: str, peer: str
) -> None:
    matching = [
        r
        for r in sg_rules()
        if r["security_group_id"] == f"${{aws_security_group.{sg}.id}}"
        and _s(r["type"]) == direction
        and r.get("source_security_group_id") == f"${{aws_security_group.{peer}.id}}"
    ]
    assert matching and all(on_every_port(r) for r in matching)


def test_nlb_ingress_admits_the_clients_on_the_responder_port() -> None:
    rule = resources("aws_security_group_rule")["nlb_from_clients"]
    assert on_every_port(rule) and _s(rule["type"]) == "ingress"


@pytest.mark.parametrize(
    ("name", "sg", "direction", "peer"),
    [
        ("server_egress_nlb", "server", "egress", "nlb"),
        ("nlb_from_server", "nlb", "ingress", "server"),
        ("server_egress_server", "server", "egress", "server"),
        ("server_from_server", "server", "ingress", "server"),
    ],
)
def test_provider_agents_may_probe_through_the_nlb_and_reach_each_other(
    name: str, sg: str, direction: str, peer: str
) -> None:
    rule = resources("aws_security_group_rule")[name]
    assert rule["security_group_id"] == f"${{aws_security_group.{sg}.id}}"
    assert _s(rule["type"]) == direction
    assert rule["source_security_group_id"] == f"${{aws_security_group.{peer}.id}}"
    assert on_every_port(rule)


def test_the_provider_policy_allows_probe_and_peer_discovery() -> None:
    granted = {a for st in json.loads(IAM.read_text())["Statement"] for a in st["Action"]}
    assert granted >= DISCOVERY_ACTIONS
    assert {c.iam_action for c in calls_for("provider")} >= DISCOVERY_ACTIONS


def render_provider_template() -> str:
    text = (TF / "templates" / "provider.yaml.tftpl").read_text()
    values = {
        "agent_id": "server-1",
        "responder_port": "9721",
        "service_port": "80",
        "region": "ap-northeast-1",
    }
    rendered = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], text)
    assert "${" not in rendered
    return rendered


def test_the_rendered_provider_config_loads_with_probes_discovered_from_aws(
    tmp_path: Path,
) -> None:
    path = tmp_path / "provider.yaml"
    path.write_text(render_provider_template())
    config = parse_config(load_yaml(path))
    assert isinstance(config, ProviderConfig)
    assert config.probes.enabled and config.probes.discover
    assert config.config_sources.aws is not None
    assert config.config_sources.aws.region == "ap-northeast-1"


def test_every_provider_instance_renders_the_template_with_its_region() -> None:
    text = (TF / "agents.tf").read_text()
    assert text.count("region         = var.region") == 2


def test_the_example_provider_config_turns_the_probes_on() -> None:
    config = parse_config(load_yaml(ROOT / "configs" / "provider.example.yaml"))
    assert isinstance(config, ProviderConfig)
    assert config.probes.enabled and config.probes.expected_consumers


def test_the_ecs_provider_task_exposes_the_api_and_the_responder_port() -> None:
    (container,) = json.loads(ECS_PROVIDER.read_text())["containerDefinitions"]
    ports = {m["containerPort"] for m in container["portMappings"]}
    assert {9720, 9721} <= ports
