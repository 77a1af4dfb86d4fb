"""``plprobe observe``: the provider agent in the foreground, from config to graceful stop."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from agent.cli.observe import run_observe
from agent.config import ProviderConfig, load_config
from agent.daemon.provider import ProviderAgent, serve
from agent.errors import ConfigError
from agent.wire import Token, decode_reply, encode_token

KEY = b"0123456789abcdef0123456789abcdef"
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(tmp_path: Path, *, role: str = "provider", port: int = 9721) -> Path:
    (tmp_path / "key").write_bytes(KEY)
    os.chmod(tmp_path / "key", 0o600)
    text = f"""\
role: {role}
agent_id: target-1
listen: 127.0.0.1:0
key_file: key
responder:
  bind: 127.0.0.1
  port: {port}
  read_timeout: 1.0
sniffer:
  enabled: false
"""
    if role == "client":
        text = "role: client\nagent_id: client-1\nkey_file: key\n"
        text += "paths:\n  - name: svc\n    expected_ips: {az1: 10.2.0.20}\n"
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    return path


async def send_token(port: int, tok: Token) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(encode_token(tok, KEY))
    async with asyncio.timeout(5):
        data = await reader.read()
    writer.close()
    return data


async def test_observe_answers_probes_and_serves_them_on_v1_observations(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    assert isinstance(config, ProviderConfig)
    stop = asyncio.Event()
    ready: asyncio.Future[ProviderAgent] = asyncio.get_running_loop().create_future()
    out = io.StringIO()
    task = asyncio.create_task(
        serve(config, KEY, stop=stop, out=out, responder_port=0, on_ready=ready.set_result)
    )
    agent = await asyncio.wait_for(ready, 5)
    try:
        assert agent.responder is not None
        tok = Token.new("client-2/az1/9721", "client-2")
        reply = decode_reply(await send_token(agent.responder.bound_port, tok), KEY)
        assert reply.probe_id == tok.probe_id
        host, port = agent.api_addresses[0]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://{host}:{port}/v1/observations?since=0") as resp:
                body = await resp.json()
            agent.sync_metrics(0)
            async with http.get(f"http://{host}:{port}/metrics") as resp:
                metrics = await resp.text()
        assert [o["probe_id"] for o in body["observations"]] == [tok.probe_id_hex]
        assert body["agent"] == "target-1"
        assert body["counters"]["responder"]["replied"] == 1
        assert 'plprobe_target_probes_seen_total{path="client-2/az1/9721"' in metrics
    finally:
        stop.set()
        started = time.monotonic()
        assert await asyncio.wait_for(task, 5) == 0
        assert time.monotonic() - started < 2.0
    assert "responder listening on 127.0.0.1:" in out.getvalue()
    assert "sniffer disabled" in out.getvalue()


def test_observe_refuses_a_client_config_with_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        run_observe(str(write_config(tmp_path, role="client")))
    assert info.value.key == "role"
    assert info.value.exit_code == 2


def test_observe_stops_gracefully_on_sigterm_within_two_seconds(tmp_path: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path, port=port)
    code = (
        "import sys; from agent.cli.observe import run_observe; sys.exit(run_observe(sys.argv[1]))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(cfg)],
        cwd=REPO,
        env={**os.environ, "PLPROBE_ALLOW_ROOT": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "observations API on" in line:
                break
        assert any(f"127.0.0.1:{port}" in line for line in lines), lines
        # a held-open connection must not delay the stop
        held = socket.create_connection(("127.0.0.1", port))
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=5)
        elapsed = time.monotonic() - started
        held.close()
        assert rc == 0, proc.stderr.read() if proc.stderr else ""
        assert elapsed < 2.0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.skipif(os.geteuid() != 0, reason="AF_PACKET needs root / CAP_NET_RAW")
async def test_observe_reports_what_the_sniffer_saw_on_the_service_port(tmp_path: Path) -> None:
    service_port = free_port()
    cfg = (
        write_config(tmp_path)
        .read_text()
        .replace(
            "sniffer:\n  enabled: false\n",
            f"sniffer:\n  interface: lo\n  ports: [{service_port}]\n",
        )
    )
    (tmp_path / "agent.yaml").write_text(cfg)
    config = load_config(tmp_path / "agent.yaml")
    assert isinstance(config, ProviderConfig)

    async def service(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(4096)
        writer.write(b"HTTP/1.0 200 OK\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(service, "127.0.0.1", service_port)
    stop = asyncio.Event()
    ready: asyncio.Future[ProviderAgent] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        serve(config, KEY, stop=stop, out=None, responder_port=0, on_ready=ready.set_result)
    )
    try:
        agent = await asyncio.wait_for(ready, 5)
        assert agent.sniffer is not None, agent.sniffer_error
        tok = Token.new("client-2/az1/80", "client-2")
        answer = await send_token(service_port, tok)
        assert answer.startswith(b"HTTP/1.0 200")  # the service answered, undisturbed
        host, port = agent.api_addresses[0]
        found: list[dict[str, object]] = []
        async with aiohttp.ClientSession() as http:
            for _ in range(50):
                async with http.get(f"http://{host}:{port}/v1/observations") as resp:
                    body = await resp.json()
                found = [o for o in body["observations"] if o["via"] == "sniffer"]
                if found:
                    break
                await asyncio.sleep(0.05)
        assert [o["probe_id"] for o in found] == [tok.probe_id_hex]
        assert found[0]["dst_port"] == service_port
        assert body["counters"]["sniffer"]["tokens"] == 1
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        server.close()
        await server.wait_closed()


def test_a_reloaded_provider_agent_does_not_count_the_kept_observations_again(
    tmp_path: Path,
) -> None:
    """A reload keeps the store; the new agent must not add its contents to the counters."""
    from prometheus_client import CollectorRegistry

    from agent.config import load_config
    from agent.metrics import make_metrics
    from agent.observe.store import ObservationStore
    from agent.results import Observation

    config = load_config(write_config(tmp_path))
    registry = CollectorRegistry()
    metrics = make_metrics(registry, role="provider")
    store = ObservationStore(100)
    for n in range(3):
        store.append(
            Observation(
                "token",
                "target-1",
                1.0 + n,
                "10.3.0.100",
                4000 + n,
                "10.3.1.10",
                80,
                "responder",
                probe_id=f"{n:032x}",
                path="client-2/apne1-az4/80",
            )
        )
    first = ProviderAgent(config, KEY, store=store, metrics=metrics, serve_api=False)
    first.sync_cursor = first.sync_metrics(0)  # the first agent counted all three
    again = ProviderAgent(config, KEY, store=store, metrics=metrics, serve_api=False)
    again.sync_metrics(again.sync_cursor)
    seen = registry.get_sample_value(
        "plprobe_target_probes_seen_total", {"path": "client-2/apne1-az4/80", "via": "responder"}
    )
    assert seen == 3
