"""The provider config's ``probes:`` section: what the provider agent probes by itself."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ProviderConfig, load_config
from agent.errors import ConfigError

KEY = "k" * 32
HEAD = """\
role: provider
agent_id: server-1
key_env: PLPROBE_TEST_KEY
sniffer: {enabled: false}
"""


@pytest.fixture(autouse=True)
def key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLPROBE_TEST_KEY", KEY)


def load(tmp_path: Path, probes: str) -> ProviderConfig:
    path = tmp_path / "provider.yaml"
    path.write_text(HEAD + "probes:\n" + probes)
    config = load_config(path)
    assert isinstance(config, ProviderConfig)
    return config


def error(tmp_path: Path, probes: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, probes)
    return str(info.value)


def test_probes_are_off_unless_enabled(tmp_path: Path) -> None:
    path = tmp_path / "provider.yaml"
    path.write_text(HEAD)
    config = load_config(path)
    assert isinstance(config, ProviderConfig)
    assert config.probes.enabled is False


def test_nlb_nodes_listeners_and_targets_load(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "  enabled: true\n"
        "  nlb_nodes: {apne1-az4: 10.3.0.100}\n"
        "  listeners: [80, 9721]\n"
        "  responder_ports: [9721]\n"
        "  targets: [{name: server-2, ip: 10.3.1.11, port: 80, health_port: 8080}]\n"
        "  expected_consumers: [client-1, client-2]\n",
    )
    pc = config.probes
    assert pc.nlb_nodes == {"apne1-az4": "10.3.0.100"}
    assert pc.targets[0].health_port == 8080
    assert pc.expected_consumers == ["client-1", "client-2"]
    assert (pc.interval, pc.timeout, pc.retries) == (30.0, 2.0, 1)


def test_enabled_with_nothing_to_probe_is_an_error(tmp_path: Path) -> None:
    assert "nothing to probe" in error(tmp_path, "  enabled: true\n")


def test_discover_alone_is_enough(tmp_path: Path) -> None:
    assert load(tmp_path, "  enabled: true\n  discover: true\n").probes.discover


def test_a_responder_port_must_be_a_listener(tmp_path: Path) -> None:
    text = "  enabled: true\n  nlb_nodes: {az1: 10.3.0.100}\n  listeners: [80]\n"
    assert "responder_ports [9721] are not in listeners" in error(
        tmp_path, text + "  responder_ports: [9721]\n"
    )


def test_an_nlb_node_that_is_not_an_ip_is_an_error(tmp_path: Path) -> None:
    message = error(
        tmp_path, "  enabled: true\n  nlb_nodes: {az1: nlb.example}\n  listeners: [80]\n"
    )
    assert "is not an IP address" in message


def test_two_targets_with_one_name_are_an_error(tmp_path: Path) -> None:
    text = (
        "  enabled: true\n  targets:\n"
        "    - {name: a, ip: 10.3.1.10, port: 80}\n    - {name: a, ip: 10.3.1.11, port: 80}\n"
    )
    assert "same name" in error(tmp_path, text)


def test_an_expected_consumer_must_be_an_agent_id(tmp_path: Path) -> None:
    assert "is not an agent id" in error(tmp_path, "  expected_consumers: ['client 1']\n")
