"""agent/daemon/provider_probes.py: what the provider agent probes, and how a round runs.

Planning is checked against the configuration and the reference lab's topology (discovery);
rounds run the real tcp prober against sockets on 127.0.0.1 (a listener, a closed port, the
provider agent's own responder), so outcomes are the kernel's, not mocks.
"""

from __future__ import annotations

import asyncio
import io
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from agent.config import ProviderConfig, load_config
from agent.daemon.provider import ProviderAgent
from agent.daemon.provider_probes import (
    HOPS,
    ProviderProber,
    discover,
    plan,
    run_round,
)
from agent.daemon.server import Daemon
from agent.metrics import HOPS as METRIC_HOPS
from agent.metrics import make_metrics
from agent.probes import ProbeContext
from agent.sources.topology import load_topology

KEY = b"0123456789abcdef0123456789abcdef"


def provider(**probes: Any) -> ProviderConfig:
    return ProviderConfig.model_validate(
        {
            "role": "provider",
            "agent_id": "server-1",
            "key_env": "PLPROBE_TEST_KEY",
            "sniffer": {"enabled": False},
            "responder": {"bind": "127.0.0.1"},
            "probes": {"enabled": True, **probes},
        }
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _accept(server: asyncio.Server) -> None:
    await server.serve_forever()


@pytest.fixture
async def listening() -> AsyncIterator[int]:
    """A service on 127.0.0.1 that accepts and closes: a working target."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield port


# -- planning ---------------------------------------------------------------------------


def test_plan_probes_every_listener_through_every_nlb_node_then_each_target() -> None:
    cfg = provider(
        nlb_nodes={"apne1-az4": "10.3.0.100", "apne1-az1": "10.3.2.100"},
        listeners=[80, 9721],
        responder_ports=[9721],
        targets=[{"name": "server-2", "ip": "10.3.1.11", "port": 80, "health_port": 8080}],
    )
    probes, notes = plan(cfg)
    assert notes == []
    assert [(p.hop, p.path, p.target.responder) for p in probes] == [
        ("nlb", "server-1/apne1-az1/80", False),
        ("nlb", "server-1/apne1-az1/9721", True),
        ("nlb", "server-1/apne1-az4/80", False),
        ("nlb", "server-1/apne1-az4/9721", True),
        ("target", "server-1/server-2/80", False),
        ("health", "server-1/server-2/8080", False),
    ]
    assert probes[0].target.host == "10.3.2.100"


def test_a_health_check_on_the_traffic_port_is_not_probed_twice() -> None:
    cfg = provider(targets=[{"ip": "10.3.1.11", "port": 80}])
    probes, _ = plan(cfg)
    assert [(p.hop, p.path) for p in probes] == [("target", "server-1/10.3.1.11/80")]


def test_a_path_id_too_long_for_a_token_is_reported_not_probed() -> None:
    cfg = provider(targets=[{"name": "t" * 32, "ip": "10.3.1.11", "port": 80}])
    probes, notes = plan(cfg)
    assert probes == []
    assert "too long for a probe token" in notes[0]


def test_discovery_reads_nlb_nodes_listeners_and_targets_from_the_provider_view() -> None:
    found = discover(load_topology(), responder_port=9721)
    assert found.nlb_nodes == {"apne1-az4": "10.3.0.100"}
    assert 80 in found.listeners
    assert {(t.name, t.ip, t.port) for t in found.targets} == {
        ("server-1", "10.3.1.10", 80),
        ("server-2", "10.3.1.11", 80),
    }


def test_configured_values_win_over_discovered_ones() -> None:
    cfg = provider(discover=True, listeners=[8443])
    probes, notes = plan(cfg, load_topology())
    assert notes == []
    assert {p.path for p in probes if p.hop == "nlb"} == {"server-1/apne1-az4/8443"}
    assert {p.path for p in probes if p.hop == "target"} == {
        "server-1/server-1/80",
        "server-1/server-2/80",
    }


def test_discovery_without_a_view_yet_says_so() -> None:
    probes, notes = plan(provider(discover=True), None)
    assert probes == []
    assert notes == ["discover: true but no provider view yet (config_sources)"]


def test_the_metrics_and_the_prober_agree_on_the_hops() -> None:
    assert METRIC_HOPS == HOPS


# -- running ----------------------------------------------------------------------------


async def test_a_round_reports_ok_for_a_listening_target_and_refused_for_a_closed_port(
    listening: int,
) -> None:
    closed = free_port()
    cfg = provider(
        targets=[
            {"name": "up", "ip": "127.0.0.1", "port": listening},
            {"name": "down", "ip": "127.0.0.1", "port": closed},
        ],
        retries=0,
    )
    probes, _ = plan(cfg)
    ctx = ProbeContext(agent_id="server-1", key=KEY, timeout_s=1.0)
    round_ = await run_round(probes, ctx, retries=0)
    assert [(r.path, r.result.outcome) for r in round_.results] == [
        (f"server-1/up/{listening}", "ok"),
        (f"server-1/down/{closed}", "refused"),
    ]
    assert round_.cpu_s >= 0 and round_.duration_s > 0


async def test_a_failed_probe_is_retried_on_a_new_flow_and_says_how_many_attempts() -> None:
    cfg = provider(targets=[{"name": "down", "ip": "127.0.0.1", "port": free_port()}])
    probes, _ = plan(cfg)
    ctx = ProbeContext(agent_id="server-1", key=KEY, timeout_s=1.0)
    round_ = await run_round(probes, ctx, retries=2)
    assert round_.results[0].result.detail["attempts"] == 3


async def test_the_responder_port_gets_a_token_and_an_authenticated_reply() -> None:
    port = free_port()
    cfg = provider(
        nlb_nodes={"az-local": "127.0.0.1"},
        listeners=[port],
        responder_ports=[port],
        interval=0.2,
    )
    registry = CollectorRegistry()
    metrics = make_metrics(registry, role="provider")
    agent = ProviderAgent(
        cfg, KEY, responder_port=port, out=io.StringIO(), metrics=metrics, serve_api=False
    )
    async with agent:
        assert agent.prober is not None
        for _ in range(50):
            if agent.prober.last is not None:
                break
            await asyncio.sleep(0.05)
    assert agent.prober.last is not None
    (result,) = agent.prober.last.results
    assert result.result.outcome == "ok"
    assert result.result.reply is not None
    assert result.result.reply["target"] == "server-1"
    labels = {"path": f"server-1/az-local/{port}", "hop": "nlb"}
    assert registry.get_sample_value("plprobe_provider_path_up", labels) == 1.0
    assert (
        registry.get_sample_value("plprobe_provider_probes_total", {**labels, "result": "ok"})
        >= 1.0
    )


async def test_a_round_that_raises_does_not_stop_the_prober() -> None:
    calls = 0

    def view() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in the view")

    prober = ProviderProber(provider(discover=True, interval=0.05), KEY, topology=view)
    task = asyncio.create_task(prober.run())
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls >= 2 and prober.rounds >= 1


# -- in the daemon's provider role --------------------------------------------------------


def write_provider(path: Path, target: str, port: int) -> Path:
    doc = {
        "role": "provider",
        "agent_id": "server-1",
        "listen": "127.0.0.1:0",
        "insecure": True,
        "responder": {"bind": "127.0.0.1"},
        "sniffer": {"enabled": False},
        "probes": {
            "enabled": True,
            "interval": 0.2,
            "targets": [{"name": target, "ip": "127.0.0.1", "port": port}],
        },
    }
    path.write_text(yaml.safe_dump(doc))
    return path


async def until(check: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_the_daemons_provider_role_probes_and_a_reload_changes_what(
    tmp_path: Path, listening: int
) -> None:
    path = write_provider(tmp_path / "provider.yaml", "first", listening)
    config = load_config(path)
    assert isinstance(config, ProviderConfig)
    daemon = Daemon(config, b"", handle_signals=False, responder_port=0)
    task = asyncio.create_task(daemon.serve())

    def up(target: str) -> float | None:
        labels = {"path": f"server-1/{target}/{listening}", "hop": "target"}
        return daemon.registry.get_sample_value("plprobe_provider_path_up", labels)

    try:
        await asyncio.wait_for(daemon.ready.wait(), 5)
        await until(lambda: up("first") == 1)
        write_provider(path, "second", listening)
        ok, message = await daemon.reload()
        assert ok, message
        await until(lambda: up("second") == 1 and up("first") is None)
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 3)
