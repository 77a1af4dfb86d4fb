"""Every agent config the project ships loads as it is (examples and the lab's)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import ClientConfig, ProviderConfig, load_config, load_key

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = [
    "configs/client.example.yaml",
    "configs/provider.example.yaml",
    "configs/lab/client-1.yaml",
    "configs/lab/client-2.yaml",
    "configs/lab/provider.yaml",
]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_agent_config_loads(name: str, monkeypatch) -> None:
    monkeypatch.setenv("PLPROBE_KEY", "x" * 32)
    monkeypatch.setenv("PLPROBE_AGENT_ID", "server-1")
    config = load_config(ROOT / name)
    assert isinstance(config, ClientConfig | ProviderConfig)
    assert not config.insecure
    assert load_key(config) == b"x" * 32


def test_lab_client_configs_probe_the_reference_endpoint_eni() -> None:
    """The lab configs name the reference topology's endpoint; keep them in step with it."""
    from agent.sources.topology import load_topology

    topology = load_topology()
    (endpoint,) = topology.endpoints.values()
    names = topology.endpoint_dns_names(endpoint)
    for client in ("client-1", "client-2"):
        config = load_config_with_key(ROOT / f"configs/lab/{client}.yaml")
        assert isinstance(config, ClientConfig)
        (path,) = config.paths
        assert names[path.regional] == list(path.expected_ips.values())
        assert all(names[zonal] == [path.expected_ips[az]] for az, zonal in path.zonal.items())


def load_config_with_key(path: Path):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLPROBE_KEY", "x" * 32)
        return load_config(path)
