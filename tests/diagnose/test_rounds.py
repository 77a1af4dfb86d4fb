"""One probe round end to end on loopback: config -> targets -> probes -> provider -> evidence.

The provider side is the real one (``agent.observe.responder`` and the ``/v1/observations``
app) on 127.0.0.1 port 0, so the round trip token -> responder -> store -> API -> correlation is
exercised without a lab. No root needed: ``check_raw`` is forced to False (syn falls back).
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent.cli.probe import format_table, probe_command
from agent.config import ClientConfig, parse_config
from agent.diagnose import rounds as runner
from agent.errors import ConfigError
from agent.observe.api import build_observations_app
from agent.observe.responder import Responder
from agent.observe.store import ObservationStore
from agent.probes.base import ProbeContext, ProbeTarget
from agent.results import Observation, PathRef, ProbeResult
from agent.yamlsrc import load_yaml

KEY = b"k" * 32


def client_config(tmp_path: Path, **overrides: Any) -> ClientConfig:
    path_overrides = overrides.pop("path", {})
    doc: dict[str, Any] = {
        "role": "client",
        "agent_id": "c1",
        "key_env": "PLPROBE_TEST_KEY",
        "timeout": 1,
        "retries": 0,
        "provider_delay": 0,
        "paths": [
            {
                "name": "svc",
                "expected_ips": {"az1": "127.0.0.1"},
                "ports": [80],
                "probes": ["tcp"],
                **path_overrides,
            }
        ],
        **overrides,
    }
    path = tmp_path / "client.yaml"
    path.write_text(json.dumps(doc))  # JSON is YAML
    config = parse_config(load_yaml(path))
    assert isinstance(config, ClientConfig)
    return config


def no_raw() -> bool:
    return False


@pytest.fixture
async def provider() -> AsyncIterator[tuple[int, str]]:
    """A responder and its observations API on loopback: (responder port, API base URL)."""
    store = ObservationStore(1000)
    responder = Responder(key=KEY, agent_id="server-1", store=store, host="127.0.0.1", port=0)
    await responder.start()
    app = build_observations_app(store, agent_id="server-1")
    api = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await api.setup()
    await web.TCPSite(api, "127.0.0.1", 0).start()
    try:
        yield responder.addresses[0][1], f"http://127.0.0.1:{api.addresses[0][1]}"
    finally:
        await api.cleanup()
        await responder.stop(0.1)


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def test_a_healthy_path_is_ok_and_seen_at_the_target_in_band_and_via_the_api(
    tmp_path, provider
) -> None:
    port, url = provider
    config = client_config(
        tmp_path,
        provider_url=url,
        path={
            "ports": [port],
            "responder_ports": [port],
            "probes": ["dns", "tcp"],
            "zonal": {"az1": "localhost"},
        },
    )
    result = await runner.run_round(config, key=KEY, check_raw=no_raw)
    (ev,) = result.evidence
    assert ev.path == f"c1/az1/{port}"
    assert ev.outcome == "ok"
    assert ev.seen_at_target == "yes"
    assert ev.source_at_target is not None and ev.source_at_target.startswith("127.0.0.1:")
    assert [r.probe for r in ev.results] == ["dns", "tcp"]
    assert ev.results[1].reply is not None
    assert [o.probe_id for o in ev.observations] == [ev.results[1].probe_id]
    assert result.provider_error is None and result.all_ok


async def test_an_unreachable_provider_makes_seen_unknown_with_the_reason(tmp_path) -> None:
    listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    dead = f"http://127.0.0.1:{closed_port()}"
    try:
        config = client_config(tmp_path, provider_url=dead, path={"ports": [port]})
        result = await runner.run_round(config, key=KEY, check_raw=no_raw)
    finally:
        listener.close()
    (ev,) = result.evidence
    assert ev.outcome == "ok"
    assert ev.seen_at_target == "unknown"
    assert ev.provider_error is not None and dead in ev.provider_error


class FakeProvider:
    def __init__(self, observations: list[Observation], failures: dict[str, str] | None = None):
        self.observations = observations
        self.failures = failures or {}
        self.since: float | None = None

    async def fetch(self, since: float) -> list[Observation]:
        self.since = since
        return self.observations


async def test_a_probe_the_provider_did_not_see_is_no(tmp_path) -> None:
    listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    fake = FakeProvider([])
    try:
        config = client_config(tmp_path, path={"ports": [port]})
        result = await runner.run_round(config, key=KEY, provider=fake, check_raw=no_raw)
    finally:
        listener.close()
    assert result.evidence[0].seen_at_target == "no"
    assert fake.since is not None and fake.since <= result.started_at


async def test_when_only_some_providers_answer_no_becomes_unknown(tmp_path) -> None:
    listener = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    fake = FakeProvider([], failures={"http://server-2": "http://server-2: timeout"})
    try:
        config = client_config(tmp_path, path={"ports": [port]})
        result = await runner.run_round(config, key=KEY, provider=fake, check_raw=no_raw)
    finally:
        listener.close()
    (ev,) = result.evidence
    assert ev.seen_at_target == "unknown"
    assert "server-2" in (ev.provider_error or "")


async def test_without_raw_sockets_syn_falls_back_to_tcp_and_says_so(tmp_path) -> None:
    config = client_config(tmp_path, path={"ports": [closed_port()], "probes": ["syn"]})
    result = await runner.run_round(config, key=KEY, check_raw=no_raw)
    (r,) = result.results
    assert r.probe == "syn"
    assert r.fallback is not None and "tcp" in r.fallback
    assert r.outcome == "refused"
    assert result.raw_allowed is False


async def test_a_refusal_is_final_and_a_timeout_is_retried_with_a_new_token(tmp_path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    full = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", full), timeout=1)
    refused = closed_port()
    try:
        config = client_config(tmp_path, timeout=0.2, retries=1, path={"ports": [full, refused]})
        result = await runner.run_round(config, key=KEY, check_raw=no_raw)
    finally:
        filler.close()
        listener.close()
    by_port = {r.port: r for r in result.results}
    assert by_port[refused].outcome == "refused" and by_port[refused].detail["attempts"] == 1
    timed_out = by_port[full]
    assert timed_out.outcome == "timeout" and timed_out.detail["attempts"] == 2
    assert len(set(timed_out.detail["probe_ids"])) == 2


async def test_probes_never_exceed_the_concurrency_bound(tmp_path, monkeypatch) -> None:
    running = 0
    peak = 0

    async def fake_probe(target, ctx) -> ProbeResult:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.02)
        running -= 1
        return ProbeResult(path=target.path.id, probe="tcp", outcome="ok", port=target.port)

    real = runner.get_prober
    monkeypatch.setattr(runner, "get_prober", lambda k: fake_probe if k == "tcp" else real(k))
    config = client_config(tmp_path, concurrency=3, path={"ports": list(range(1000, 1012))})
    result = await runner.run_round(config, key=KEY, check_raw=no_raw)
    assert len(result.evidence) == 12
    assert peak == 3


async def test_a_prober_that_overruns_its_budget_becomes_a_timeout_result(tmp_path, monkeypatch):
    async def stuck(target, ctx) -> ProbeResult:
        await asyncio.sleep(30)
        raise AssertionError("unreachable")

    monkeypatch.setattr(runner, "_GRACE_S", 0.05)
    monkeypatch.setattr(runner, "get_prober", lambda k: stuck)
    config = client_config(tmp_path, timeout=0.1)
    result = await runner.run_round(config, key=KEY, check_raw=no_raw)
    (r,) = result.results
    assert r.outcome == "timeout" and "overran" in (r.error or "")


async def test_zonal_names_map_discovered_ips_to_azs(tmp_path) -> None:
    config = client_config(
        tmp_path, path={"expected_ips": {}, "zonal": {"az9": "localhost"}, "ports": [closed_port()]}
    )
    result = await runner.run_round(config, key=KEY, check_raw=no_raw)
    (ref,) = result.paths
    assert (ref.az_id, ref.ip) == ("az9", "127.0.0.1")
    assert ref.id.startswith("c1/az9/")


async def test_a_name_that_does_not_resolve_still_yields_a_path_with_the_dns_error(
    tmp_path, monkeypatch
) -> None:
    async def nxdomain(name: str, timeout_s: float) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr("agent.probes.dns.resolve", nxdomain)
    config = client_config(
        tmp_path, path={"expected_ips": {}, "zonal": {"az9": "vpce-gone.example"}, "ports": [80]}
    )
    result = await runner.run_round(config, key=KEY, check_raw=no_raw)
    (ev,) = result.evidence
    assert ev.path == "c1/az9/80"
    assert ev.outcome == "dns_error"
    assert [r.probe for r in ev.results] == ["dns"]


async def test_a_regional_name_with_ipv4_and_ipv6_answers_yields_a_path_per_address(
    tmp_path, monkeypatch
) -> None:
    async def dual_stack(name: str, timeout_s: float) -> list[str]:
        return ["::1", "127.0.0.1"]

    monkeypatch.setattr("agent.probes.dns.resolve", dual_stack)
    port = closed_port()
    config = client_config(
        tmp_path, path={"expected_ips": {}, "regional": "vpce.example", "ports": [port]}
    )
    result = await runner.run_round(config, key=KEY, check_raw=no_raw)
    assert [ref.ip for ref in result.paths] == ["127.0.0.1", "::1"]


async def test_a_syn_probe_of_an_ipv6_address_falls_back_to_tcp_and_says_so() -> None:
    with socket.socket(socket.AF_INET6) as s:
        s.bind(("::1", 0))
        port = s.getsockname()[1]
    ref = PathRef(id=f"c1/::1/{port}", agent="c1", name="::1", ip="::1", port=port)
    ctx = ProbeContext(agent_id="c1", key=KEY, insecure=False, timeout_s=1.0, retries=0)
    result = await runner.run_probe("syn", ProbeTarget(path=ref), ctx, asyncio.Semaphore(1), True)
    assert result.probe == "syn" and result.outcome == "refused"
    assert result.fallback is not None and "IPv6" in result.fallback


async def test_observations_are_asked_for_from_a_correlation_window_before_the_round(
    tmp_path,
) -> None:
    fake = FakeProvider([])
    config = client_config(tmp_path, correlation_window=20, path={"ports": [closed_port()]})
    result = await runner.run_round(config, key=KEY, provider=fake, check_raw=no_raw)
    assert fake.since is not None
    assert fake.since <= result.started_at - 20  # a provider clock 20 s behind still answers


async def test_a_client_asks_the_provider_only_for_its_own_observations(tmp_path) -> None:
    seen: list[str | None] = []

    async def observations(request: web.Request) -> web.Response:
        seen.append(request.query.get("agent"))
        return web.json_response({"observations": []})

    app = web.Application()
    app.router.add_get("/v1/observations", observations)
    api = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await api.setup()
    await web.TCPSite(api, "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{api.addresses[0][1]}"
        config = client_config(tmp_path, provider_url=url, path={"ports": [closed_port()]})
        await runner.run_round(config, key=KEY, check_raw=no_raw)
    finally:
        await api.cleanup()
    assert seen == ["c1"]


async def test_the_probe_command_prints_a_table_and_exits_1_when_a_path_fails(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("PLPROBE_TEST_KEY", KEY.decode())
    config_path = tmp_path / "c.yaml"
    config_path.write_text(
        textwrap.dedent(f"""\
        role: client
        agent_id: c1
        key_env: PLPROBE_TEST_KEY
        timeout: 1
        retries: 0
        provider_delay: 0
        paths:
          - name: svc
            expected_ips: {{az1: 127.0.0.1}}
            ports: [{closed_port()}]
            probes: [tcp]
        """)
    )
    out = io.StringIO()
    rc = await asyncio.to_thread(probe_command, str(config_path), output="json", out=out)
    body = json.loads(out.getvalue())
    assert rc == 1
    assert body["paths"][0]["outcome"] == "refused"
    assert body["insecure"] is False


def test_the_probe_command_rejects_a_provider_config_as_bad_input(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PLPROBE_TEST_KEY", KEY.decode())
    path = tmp_path / "p.yaml"
    path.write_text("role: provider\nagent_id: s1\nkey_env: PLPROBE_TEST_KEY\n")
    with pytest.raises(ConfigError) as info:
        probe_command(str(path))
    assert info.value.exit_code == 2 and info.value.key == "role"


async def test_the_table_has_one_row_per_path_and_flags_insecure_runs(tmp_path) -> None:
    config = client_config(tmp_path, path={"ports": [closed_port()]})
    result = await runner.run_round(config, key=KEY, check_raw=no_raw)
    result.insecure = True
    text = format_table(result)
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["PATH", "OUTCOME"]
    assert lines[1].split()[1] == "refused"
    assert "NOT authenticated" in text


# ------------------------------------------------------------------------------ SharedProbes


class _FakeRaw:
    """Stands in for the SYN engine's raw sockets (no root needed): accepts and records."""

    def __init__(self) -> None:
        self._pair = socket.socketpair()

    def setsockopt(self, *args: object) -> None: ...

    def getsockopt(self, *args: object) -> int:
        return 1 << 20

    def setblocking(self, flag: bool) -> None: ...

    def connect(self, addr: tuple[str, int]) -> None: ...

    def getsockname(self) -> tuple[str, int]:
        return ("10.9.9.1", 4242)

    def sendto(self, data: bytes, addr: tuple[str, int]) -> int:
        return len(data)

    def fileno(self) -> int:
        return self._pair[0].fileno()

    def close(self) -> None:
        for s in self._pair:
            s.close()


async def test_a_daemons_rounds_share_one_syn_engine() -> None:
    shared = runner.SharedProbes(socket_factory=lambda *a: _FakeRaw())
    try:
        first = await shared.syn_engine(KEY)
        second = await shared.syn_engine(KEY)
        assert first is not None and first is second
        assert shared.engine_opens == 1
    finally:
        await shared.close()


async def test_a_syn_engine_whose_socket_broke_is_replaced_at_the_next_round() -> None:
    shared = runner.SharedProbes(socket_factory=lambda *a: _FakeRaw())
    try:
        broken = await shared.syn_engine(KEY)
        broken._tcp._pair[0].close()  # the raw socket dies under the engine
        fresh = await shared.syn_engine(KEY)
        assert fresh is not broken and fresh.healthy and not broken.healthy
        assert shared.engine_opens == 2
    finally:
        await shared.close()


async def test_a_new_key_gets_a_new_syn_engine_with_its_tags() -> None:
    shared = runner.SharedProbes(socket_factory=lambda *a: _FakeRaw())
    try:
        old = await shared.syn_engine(KEY)
        new = await shared.syn_engine(b"n" * 32)
        assert new is not old and shared.engine_opens == 2
    finally:
        await shared.close()


async def test_without_raw_sockets_the_shared_engine_is_none_and_retried_later() -> None:
    def denied(*args: object) -> socket.socket:
        raise PermissionError(1, "Operation not permitted")

    shared = runner.SharedProbes(socket_factory=denied)
    try:
        assert await shared.syn_engine(KEY) is None
        assert await shared.syn_engine(KEY) is None
        assert shared.engine_opens == 0
    finally:
        await shared.close()


async def test_the_shared_http_session_opens_a_new_connection_for_every_probe(tmp_path) -> None:
    peers: list[tuple[str, int]] = []

    async def hello(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername"))  # type: ignore[union-attr]
        return web.Response(text="hi")

    app = web.Application()
    app.router.add_get("/", hello)
    site_runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
    await site_runner.setup()
    await web.TCPSite(site_runner, "127.0.0.1", 0).start()
    port = site_runner.addresses[0][1]
    config = client_config(tmp_path, path={"ports": [port], "probes": ["http"]})
    shared = runner.SharedProbes()
    try:
        for _ in range(2):
            result = await runner.run_round(config, key=KEY, check_raw=no_raw, shared=shared)
            assert [r.outcome for r in result.results] == ["ok"]
        session = shared.http_session()
        assert not session.closed
    finally:
        await shared.close()
        await site_runner.cleanup()
    assert session.closed
    assert len(peers) == 2 and peers[0] != peers[1]  # two connections, two source ports


class ClockedProvider(FakeProvider):
    """Records when it was asked (wall clock): the provider delay is the time before that."""

    asked_at: float | None = None

    async def fetch(self, since: float) -> list[Observation]:
        self.asked_at = time.time()
        return await super().fetch(since)


async def test_the_provider_is_asked_a_provider_delay_after_the_last_probe(tmp_path) -> None:
    fake = ClockedProvider([])
    config = client_config(tmp_path, provider_delay=0.3, path={"ports": [closed_port()]})
    result = await runner.run_round(config, key=KEY, provider=fake, check_raw=no_raw)
    last = max(r.started_at + r.duration_s for r in result.results)
    assert fake.asked_at is not None and fake.asked_at - last >= 0.29


async def test_time_already_spent_after_the_last_probe_is_not_waited_again(tmp_path) -> None:
    fake = ClockedProvider([])
    config = client_config(tmp_path, provider_delay=0.5)
    t0 = time.monotonic()
    await runner._fetch_observations(config, fake, since=0.0, last_sent=time.time() - 0.4)
    assert 0.05 <= time.monotonic() - t0 < 0.3


async def test_a_round_that_sent_no_probe_does_not_wait_for_the_provider(tmp_path) -> None:
    fake = ClockedProvider([])
    config = client_config(
        tmp_path,
        provider_delay=5,
        path={"expected_ips": {}, "regional": "no-such-name.invalid", "probes": ["dns", "tcp"]},
    )
    t0 = time.monotonic()
    result = await runner.run_round(config, key=KEY, provider=fake, check_raw=no_raw)
    assert [r.outcome for r in result.results] == ["dns_error"]
    assert fake.asked_at is not None and time.monotonic() - t0 < 2.5


async def test_a_round_resolves_a_name_shared_by_several_endpoints_once(
    tmp_path, monkeypatch
) -> None:
    loop = asyncio.get_running_loop()
    asked: list[str] = []

    async def fake(host, *args, **kwargs):
        asked.append(host)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0))]

    monkeypatch.setattr(loop, "getaddrinfo", fake)
    port = closed_port()
    entry = {"regional": "svc.example", "probes": ["dns", "tcp"]}
    config = client_config(
        tmp_path,
        paths=[
            {"name": f"ep-{i}", "expected_ips": {"az1": "127.0.0.1"}, "ports": [port + i], **entry}
            for i in range(3)
        ],
    )
    result = await runner.run_round(config, key=KEY, check_raw=no_raw)
    assert asked == ["svc.example"]
    assert [r.outcome for r in result.results if r.probe == "dns"] == ["ok"] * 3


async def test_endpoints_that_share_names_share_one_dns_probe_per_name(
    tmp_path, monkeypatch
) -> None:
    calls: list[str] = []

    async def fake_dns(target: ProbeTarget, ctx: ProbeContext) -> ProbeResult:
        calls.append(target.path.name)
        return ProbeResult(path=target.path.id, probe="dns", outcome="ok", addresses=["127.0.0.1"])

    real = runner.get_prober
    monkeypatch.setattr(runner, "get_prober", lambda k: fake_dns if k == "dns" else real(k))
    port = closed_port()
    names = {"regional": "svc.example", "zonal": {"az1": "az1.svc.example"}}
    config = client_config(
        tmp_path,
        paths=[
            {"name": f"ep-{i}", "expected_ips": {"az1": "127.0.0.1"}, "ports": [port + i],
             "probes": ["dns", "tcp"], **names}
            for i in range(4)
        ],
    )  # fmt: skip
    result = await runner.run_round(config, key=KEY, check_raw=no_raw)
    assert sorted(calls) == ["az1.svc.example", "svc.example"]
    dns = [r for r in result.results if r.probe == "dns"]
    assert len(dns) == 8  # still two DNS results on each of the four paths
    assert len({r.path for r in dns}) == 4
