"""``plprobe run`` (agent/daemon/server.py): schedules, metrics, API, reload, signals — on loopback.

The provider side is the real responder (agent/observe/responder.py) on 127.0.0.1; the client
daemon probes it through a path whose ``expected_ips`` is 127.0.0.1. Signal tests run the daemon
as a subprocess (``python -m agent.cli.run``) because signals belong to the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.config import ClientConfig, ProviderConfig, load_config
from agent.daemon.server import Daemon, schedule_groups, schedule_period
from agent.errors import ConfigError
from agent.lab.snapshot import write_snapshot
from agent.logs import VERDICT_LOGGER, JsonFormatter, VerdictLog
from agent.observe.responder import Responder
from agent.observe.store import ObservationStore
from agent.results import Verdict
from agent.sources.topology import load_topology

REPO = Path(__file__).resolve().parents[2]
INTERVAL = 0.2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def client_doc(*ports: int, **extra: Any) -> dict[str, Any]:
    return {
        "role": "client",
        "agent_id": "c1",
        "listen": "127.0.0.1:0",
        "insecure": True,
        "interval": INTERVAL,
        "timeout": 0.3,
        "retries": 0,
        "provider_delay": 0,
        "paths": [
            {
                "name": f"svc{port}",
                "expected_ips": {"az1": "127.0.0.1"},
                "ports": [port],
                "probes": ["tcp"],
                "responder_ports": [port],
            }
            for port in ports
        ],
        **extra,
    }


def write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(json.dumps(doc))
    return path


def pid(port: int) -> str:
    return f"c1/az1/{port}"


async def start_responder(port: int = 0) -> Responder:
    responder = Responder(
        key=b"", insecure=True, agent_id="server-1", store=ObservationStore(1000),
        host="127.0.0.1", port=port,
    )  # fmt: skip
    await responder.start()
    return responder


async def eventually(check: Callable[[], bool], within: float = 5.0) -> None:
    try:
        async with asyncio.timeout(within):
            while True:
                if check():
                    return
                await asyncio.sleep(0.05)  # polling a metric: there is no event to wait on
    except TimeoutError:
        raise AssertionError(f"condition not met within {within}s") from None


@dataclass
class Running:
    daemon: Daemon
    responder: Responder
    port: int
    config_path: Path

    @property
    def url(self) -> str:
        host, port = self.daemon.api_addresses[0]
        return f"http://{host}:{port}"

    def sample(self, name: str, **labels: str) -> float | None:
        return self.daemon.registry.get_sample_value(name, labels)

    def up(self, port: int | None = None) -> float | None:
        return self.sample("plprobe_path_up", path=pid(port or self.port))


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    responder = await start_responder()
    port = responder.bound_port
    path = write(tmp_path / "client.yaml", client_doc(port))
    config = load_config(path)
    daemon = Daemon(config, b"", handle_signals=False, first_jitter_s=0.0)
    task = asyncio.create_task(daemon.serve())
    try:
        await asyncio.wait_for(daemon.ready.wait(), 5)
        yield Running(daemon, responder, port, path)
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 3)
        await responder.stop(0.1)


async def get(url: str, **kw: Any) -> tuple[int, str]:
    async with aiohttp.ClientSession() as s, s.get(url, **kw) as r:
        return r.status, await r.text()


def test_schedule_jitter_only_ever_shortens_the_period() -> None:
    periods = [schedule_period(10.0, 0.1) for _ in range(2000)]
    assert max(periods) <= 10.0 and min(periods) >= 9.0
    assert max(periods) - min(periods) > 0.5  # it still spreads endpoints apart


def test_endpoints_that_share_an_interval_share_a_schedule(tmp_path: Path) -> None:
    doc = client_doc(8001, 8002, 8003)
    doc["paths"][2]["interval"] = 30
    config = load_config(write(tmp_path / "client.yaml", doc))
    assert isinstance(config, ClientConfig)
    groups = schedule_groups(config)
    assert {i: [pc.name for pc in pcs] for i, pcs in groups.items()} == {
        INTERVAL: ["svc8001", "svc8002"],
        30: ["svc8003"],
    }


async def test_endpoints_that_share_an_interval_are_probed_in_one_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import agent.daemon.server as daemon_module

    rounds: list[list[str]] = []
    real = daemon_module.run_round

    async def recording(config: ClientConfig, **kw: Any) -> Any:
        rounds.append([p.name for p in config.paths])
        return await real(config, **kw)

    monkeypatch.setattr(daemon_module, "run_round", recording)
    responders = [await start_responder() for _ in range(2)]
    ports = [r.bound_port for r in responders]
    config = load_config(write(tmp_path / "client.yaml", client_doc(*ports)))
    daemon = Daemon(config, b"", handle_signals=False, first_jitter_s=0.0)
    task = asyncio.create_task(daemon.serve())
    try:
        await asyncio.wait_for(daemon.ready.wait(), 5)
        await eventually(lambda: len(rounds) >= 2)
        up = [daemon.registry.get_sample_value("plprobe_path_up", {"path": pid(p)}) for p in ports]
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 3)
        for r in responders:
            await r.stop(0.1)
    assert all(names == [f"svc{p}" for p in ports] for names in rounds)
    assert up == [1.0, 1.0]


async def test_stopping_the_daemon_closes_its_shared_probe_session(running: Running) -> None:
    session = running.daemon._shared.http_session()
    running.daemon.stop()
    for _ in range(30):
        if session.closed:
            break
        await asyncio.sleep(0.05)
    assert session.closed


async def test_a_path_to_a_live_responder_is_up_after_the_first_round(running: Running) -> None:
    assert running.up() == 1
    status, body = await get(running.url + "/healthz/ready")
    assert status == 200 and json.loads(body)["ready"] is True


async def test_stopping_the_responder_flips_path_up_and_starting_it_flips_it_back(
    running: Running,
) -> None:
    await running.responder.stop(0.1)
    await eventually(lambda: running.up() == 0)
    assert running.sample("plprobe_path_blocked", path=pid(running.port), control="unknown") == 1
    running.responder = await start_responder(running.port)
    await eventually(lambda: running.up() == 1)


async def test_one_log_line_per_verdict_change_not_per_probe(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=VERDICT_LOGGER)

    def changes() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name == VERDICT_LOGGER]

    rounds = running.sample(
        "plprobe_probes_total", path=pid(running.port), probe="tcp", result="ok"
    )
    await eventually(
        lambda: (running.sample(
            "plprobe_probes_total", path=pid(running.port), probe="tcp", result="ok"
        ) or 0) >= (rounds or 0) + 3
    )  # fmt: skip
    assert changes() == []  # still passing: nothing new to say
    await running.responder.stop(0.1)
    await eventually(lambda: running.up() == 0)
    await asyncio.sleep(INTERVAL * 3)
    assert len(changes()) == 1 and "fail" in changes()[0]


async def test_metrics_are_clean_for_promtool(running: Running) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed")
    status, body = await get(running.url + "/metrics")
    assert status == 200 and f'plprobe_path_up{{path="{pid(running.port)}"}} 1.0' in body
    proc = await asyncio.create_subprocess_exec(
        promtool, "check", "metrics",
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(body.encode()), 20)
    assert proc.returncode == 0 and out.decode().strip() == "", out.decode()


async def test_results_and_verdicts_are_published_to_the_api(running: Running) -> None:
    _, body = await get(running.url + "/v1/verdicts")
    [verdict] = json.loads(body)["verdicts"]
    assert (verdict["path"], verdict["status"]) == (pid(running.port), "pass")
    _, body = await get(running.url + "/v1/results")
    assert {r["probe"] for r in json.loads(body)["results"]} == {"tcp"}


async def test_each_round_is_kept_in_a_bounded_history_shown_on_the_status_page(
    running: Running,
) -> None:
    history = running.daemon.deps.history
    await eventually(lambda: len(history) >= 2)
    newest = history.newest_first()[0]
    assert [e.path for e in newest.evidence] == [pid(running.port)]
    assert newest.finished_at >= newest.started_at > 0
    status, page = await get(running.url + "/")
    assert status == 200 and pid(running.port) in page and "Recent rounds" in page


async def test_probe_endpoint_answers_like_blackbox_with_plprobes_result(
    running: Running,
) -> None:
    target = f"127.0.0.1:{running.port}"
    _, ok = await get(running.url + "/probe", params={"target": target, "module": "tcp"})
    assert "probe_success 1.0" in ok
    await running.responder.stop(0.1)
    _, failed = await get(running.url + "/probe", params={"target": target, "module": "tcp"})
    assert "probe_success 0.0" in failed
    assert 'plprobe_probe_result{result="refused"} 1.0' in failed
    status, _ = await get(running.url + "/probe", params={"target": "nonsense", "module": "tcp"})
    assert status == 400


async def test_probe_refuses_a_target_that_is_not_a_configured_path(running: Running) -> None:
    for target in ("169.254.169.254:80", f"127.0.0.1:{free_port()}"):
        status, body = await get(running.url + "/probe", params={"target": target})
        assert status == 400 and "not a configured path" in body


async def test_probe_requests_share_the_daemons_concurrency_bound(running: Running) -> None:
    sem = running.daemon._sem
    held = 0
    while not sem.locked():
        await sem.acquire()
        held += 1
    try:
        params = {"target": f"127.0.0.1:{running.port}", "module": "tcp"}
        headers = {"X-Prometheus-Scrape-Timeout-Seconds": "0.8"}
        _, body = await get(running.url + "/probe", params=params, headers=headers)
    finally:
        for _ in range(held):
            sem.release()
    assert 'plprobe_probe_result{result="timeout"} 1.0' in body


async def test_probe_by_path_name_reports_the_paths_blocking_control(running: Running) -> None:
    await running.responder.stop(0.1)
    await eventually(lambda: running.up() == 0)
    params = {"target": f"127.0.0.1:{running.port}", "module": f"svc{running.port}"}
    _, body = await get(running.url + "/probe", params=params)
    assert "probe_success 0.0" in body
    assert 'plprobe_probe_blocked{control="unknown"} 1.0' in body


async def test_a_good_reload_adds_a_path_and_a_bad_one_keeps_the_old_config(
    running: Running,
) -> None:
    second = await start_responder()
    try:
        write(running.config_path, client_doc(running.port, second.bound_port))
        assert (await running.daemon.reload())[0]
        await eventually(lambda: running.up(second.bound_port) == 1)
        assert running.sample("plprobe_config_last_reload_successful") == 1

        running.config_path.write_text("role: client\npaths: 3\n")
        ok, message = await running.daemon.reload()
        assert not ok and str(running.config_path) in message
        assert running.sample("plprobe_config_last_reload_successful") == 0
        assert isinstance(running.daemon.config, ClientConfig)
        assert len(running.daemon.config.paths) == 2
    finally:
        await second.stop(0.1)


async def test_a_reload_that_removes_a_path_forgets_its_series(running: Running) -> None:
    other = free_port()
    write(running.config_path, client_doc(running.port, other))
    await running.daemon.reload()
    await eventually(lambda: running.up(other) == 0)
    status, _ = await get(running.url + "/-/reload", allow_redirects=False)
    assert status == 405  # POST only
    write(running.config_path, client_doc(running.port))
    async with aiohttp.ClientSession() as s, s.post(running.url + "/-/reload") as r:
        assert r.status == 200
    assert running.up(other) is None
    assert running.up() == 1


def counting(real: Callable[..., Any], fail_first: int) -> tuple[Callable[..., Any], list[int]]:
    """``real`` that raises a RuntimeError (a bug) on its first ``fail_first`` calls."""
    calls = [0]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] <= fail_first:
            raise RuntimeError("a bug")
        return real(*args, **kwargs)

    return wrapper, calls


async def test_a_round_that_fails_unexpectedly_does_not_end_its_schedule(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    import agent.daemon.server as daemon_module

    wrapper, calls = counting(daemon_module.run_round, fail_first=1)
    monkeypatch.setattr(daemon_module, "run_round", wrapper)
    await eventually(lambda: calls[0] >= 3)


async def test_a_diagnosis_that_fails_unexpectedly_does_not_end_its_schedule(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    import agent.daemon.server as daemon_module

    wrapper, calls = counting(daemon_module.diagnose_round, fail_first=1)
    monkeypatch.setattr(daemon_module, "diagnose_round", wrapper)
    await eventually(lambda: calls[0] >= 3)


async def test_a_reload_cancelled_half_way_keeps_the_schedules_running(running: Running) -> None:
    entered = asyncio.Event()

    async def hanging_view(source: Any, config: ClientConfig) -> None:
        entered.set()
        await asyncio.Event().wait()

    running.daemon._start_view = hanging_view  # type: ignore[method-assign]
    write(running.config_path, client_doc(running.port, config_sources={"refresh_interval": 99}))
    reload = asyncio.create_task(running.daemon.reload())
    await asyncio.wait_for(entered.wait(), 2)
    reload.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await reload
    schedules = list(running.daemon._schedules.values())
    assert len(schedules) == 1 and not schedules[0].done()


async def test_a_reload_that_fails_half_way_restarts_the_running_schedules(
    running: Running,
) -> None:
    async def failing_view(source: Any, config: ClientConfig) -> None:
        raise ConfigError("no instance identity")

    running.daemon._start_view = failing_view  # type: ignore[method-assign]
    write(running.config_path, client_doc(running.port, config_sources={"refresh_interval": 99}))
    ok, _ = await running.daemon.reload()
    assert not ok
    schedules = list(running.daemon._schedules.values())
    assert len(schedules) == 1 and not schedules[0].done()


async def test_a_reload_whose_loader_raises_unexpectedly_keeps_the_config_and_says_so(
    running: Running, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import agent.daemon.server as daemon_module

    def crashing_loader(path: Path) -> Any:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(daemon_module, "load_config", crashing_loader)
    before = running.daemon.config
    with caplog.at_level(logging.INFO):
        async with aiohttp.ClientSession() as s, s.post(running.url + "/-/reload") as r:
            status, body = r.status, await r.text()
    assert status == 500
    assert body.startswith("reload failed, running configuration kept: unexpected RecursionError")
    assert running.sample("plprobe_config_last_reload_successful") == 0
    assert running.daemon.config is before
    failed = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(failed) == 1 and failed[0].exc_info is None
    assert len(failed[0].getMessage().splitlines()) == 1


async def test_a_sighup_reload_that_crashes_leaves_no_unretrieved_task_exception(
    running: Running, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import gc

    import agent.daemon.server as daemon_module

    def crashing_loader(path: Path) -> Any:
        raise ValueError("exceeds the limit for integer string conversion")

    monkeypatch.setattr(daemon_module, "load_config", crashing_loader)
    running.daemon._on_hup()
    tasks = list(running.daemon._hup_tasks)
    await asyncio.wait(tasks, timeout=3)
    del tasks
    gc.collect()
    await asyncio.sleep(0)
    assert running.sample("plprobe_config_last_reload_successful") == 0
    assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert [r for r in caplog.records if "unexpected ValueError" in r.getMessage()]


async def test_a_failed_reload_answer_and_log_line_are_bounded(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    running.config_path.write_text("role: client\n" + "x" * 200_000 + ": 1\n")
    async with aiohttp.ClientSession() as s, s.post(running.url + "/-/reload") as r:
        status, body = r.status, await r.text()
    assert status == 500 and len(body) < 4096
    assert all(len(r.getMessage()) < 4096 for r in caplog.records)


async def test_a_reload_keeps_the_last_verdicts_and_does_not_announce_them_again(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    kept = running.daemon.deps.verdicts[pid(running.port)]
    second = free_port()
    write(running.config_path, client_doc(running.port, second))
    with caplog.at_level(logging.INFO, logger=VERDICT_LOGGER):
        caplog.clear()
        assert (await running.daemon.reload())[0]
        assert running.daemon.deps.verdicts[pid(running.port)].status == kept.status
        await eventually(lambda: running.up(second) == 0)
    announced = [r for r in caplog.records if r.name == VERDICT_LOGGER]
    assert [r.fields["path"] for r in announced] == [pid(second)]  # type: ignore[attr-defined]


async def _send(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(), 3)
    finally:
        writer.close()


async def test_a_token_accepted_before_a_provider_reload_is_refused_after_it(
    tmp_path: Path,
) -> None:
    from agent.wire import Token, encode_token

    doc: dict[str, Any] = {
        "role": "provider",
        "agent_id": "server-1",
        "listen": "127.0.0.1:0",
        "insecure": True,
        "responder": {"bind": "127.0.0.1", "max_connections": 64},
        "sniffer": {"enabled": False},
    }
    path = write(tmp_path / "provider.yaml", doc)
    provider_cfg = load_config(path)
    provider = Daemon(provider_cfg, b"", handle_signals=False, responder_port=0)
    task = asyncio.create_task(provider.serve())
    try:
        await asyncio.wait_for(provider.ready.wait(), 5)
        assert provider._agent is not None and provider._agent.responder is not None
        first = provider._agent.responder
        data = encode_token(Token.new("c1/az1/1", "c1"), b"", insecure=True)
        assert await _send(first.bound_port, data)  # answered once
        doc["responder"]["max_connections"] = 65  # a change that restarts the responder
        write(path, doc)
        assert (await provider.reload())[0]
        second = provider._agent.responder
        assert second is not None and second is not first
        assert await _send(second.bound_port, data) == b""  # the same token: refused
        assert second.counters.replayed == 1
        assert second.counters.replied == 1  # counters outlive the restart too
    finally:
        provider.stop()
        await asyncio.wait_for(task, 3)


async def test_a_path_labelled_by_an_old_eni_ip_is_forgotten_when_dns_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    answer = ["127.0.0.2"]

    async def resolve(name: str, timeout_s: float) -> list[str]:
        return list(answer)

    monkeypatch.setattr("agent.probes.dns.resolve", resolve)
    port = free_port()
    doc = client_doc(port)
    doc["paths"][0].update(expected_ips={}, regional="vpce.example", probes=["dns", "tcp"])
    daemon = Daemon(load_config(write(tmp_path / "client.yaml", doc)), b"", first_jitter_s=0.0,
                    handle_signals=False)  # fmt: skip
    task = asyncio.create_task(daemon.serve())

    def up(ip: str) -> float | None:
        return daemon.registry.get_sample_value("plprobe_path_up", {"path": f"c1/{ip}/{port}"})

    try:
        await asyncio.wait_for(daemon.ready.wait(), 5)
        assert up("127.0.0.2") == 0
        answer[:] = ["127.0.0.3"]
        await eventually(lambda: up("127.0.0.3") is not None)
        assert up("127.0.0.2") is None
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 3)


async def test_uncached_configuration_analysis_runs_off_the_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import agent.daemon.server as daemon_module

    threads: list[str] = []
    real = daemon_module.static_findings

    def spy(*args: Any) -> Any:
        threads.append(threading.current_thread().name)
        return real(*args)

    monkeypatch.setattr(daemon_module, "static_findings", spy)
    dirs = write_snapshot(load_topology(), tmp_path / "snap")
    responder = await start_responder()
    doc = client_doc(responder.bound_port, config_sources={"snapshot_dirs": [str(d) for d in dirs]})
    daemon = Daemon(load_config(write(tmp_path / "client.yaml", doc)), b"", first_jitter_s=0.0,
                    handle_signals=False)  # fmt: skip
    task = asyncio.create_task(daemon.serve())
    try:
        await asyncio.wait_for(daemon.ready.wait(), 5)
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 3)
        await responder.stop(0.1)
    assert threads and threading.main_thread().name not in threads
    assert daemon._findings.misses == 1


async def test_the_provider_role_counts_probes_by_the_clients_path_id(tmp_path: Path) -> None:
    provider_cfg = load_config(
        write(
            tmp_path / "provider.yaml",
            {
                "role": "provider",
                "agent_id": "server-1",
                "listen": "127.0.0.1:0",
                "insecure": True,
                "responder": {"bind": "127.0.0.1"},
                "sniffer": {"enabled": False},
            },
        )
    )
    assert isinstance(provider_cfg, ProviderConfig)
    provider = Daemon(provider_cfg, b"", handle_signals=False, responder_port=0)
    ptask = asyncio.create_task(provider.serve())
    client: Daemon | None = None
    ctask = None
    try:
        await asyncio.wait_for(provider.ready.wait(), 5)
        assert provider._agent is not None and provider._agent.responder is not None
        port = provider._agent.responder.bound_port
        host, api_port = provider.api_addresses[0]
        doc = client_doc(port, provider_url=f"http://{host}:{api_port}")
        client = Daemon(
            load_config(write(tmp_path / "client.yaml", doc)),
            b"",
            handle_signals=False,
            first_jitter_s=0.0,
        )
        ctask = asyncio.create_task(client.serve())
        await asyncio.wait_for(client.ready.wait(), 5)

        def seen() -> float:
            value = provider.registry.get_sample_value(
                "plprobe_target_probes_seen_total", {"path": pid(port), "via": "responder"}
            )
            return value or 0.0

        await eventually(seen, within=4)
        assert (
            client.registry.get_sample_value(
                "plprobe_evidence_source_up", {"source": "provider_api"}
            )
            == 1
        )
        _, body = await get(f"http://{host}:{api_port}/healthz/ready")
        assert json.loads(body)["ready"] is True
    finally:
        if client is not None and ctask is not None:
            client.stop()
            await asyncio.wait_for(ctask, 3)
        provider.stop()
        await asyncio.wait_for(ptask, 3)


async def test_a_snapshot_view_is_read_and_its_source_reported_up(tmp_path: Path) -> None:
    dirs = write_snapshot(load_topology(), tmp_path / "snap")
    responder = await start_responder()
    doc = client_doc(responder.bound_port, config_sources={"snapshot_dirs": [str(d) for d in dirs]})
    daemon = Daemon(
        load_config(write(tmp_path / "client.yaml", doc)),
        b"",
        handle_signals=False,
        first_jitter_s=0.0,
    )
    task = asyncio.create_task(daemon.serve())
    try:
        await asyncio.wait_for(daemon.ready.wait(), 5)
        up = daemon.registry.get_sample_value("plprobe_evidence_source_up", {"source": "snapshot"})
        assert up == 1
        verdict = daemon.deps.verdicts[pid(responder.bound_port)]
        assert any(line.startswith("configuration: snapshot") for line in verdict.evidence)
    finally:
        daemon.stop()
        await asyncio.wait_for(task, 3)
        await responder.stop(0.1)


def test_verdict_changes_are_json_lines_with_the_verdict_fields() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("test.plprobe.verdict")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        vlog = VerdictLog(logger)
        failing = Verdict("c1/az1/80", "fail", "forward", "nlb-sg-ingress", fix="add a rule")
        vlog.update([failing])
        vlog.update([failing])  # the same verdict again: no line
        vlog.update([Verdict("c1/az1/80", "pass", "pass", None)])
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(x["path"], x["status"], x["previous"]) for x in lines] == [
        ("c1/az1/80", "fail", None),
        ("c1/az1/80", "pass", "fail"),
    ]
    assert lines[0]["blocked_at"] == "nlb-sg-ingress" and lines[0]["fix"] == "add a rule"


# --- the process: signals -------------------------------------------------------------------


@dataclass
class Proc:
    proc: subprocess.Popen[str]
    url: str
    config_path: Path

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=2) as r:
            return r.read().decode()


def _read_url(proc: subprocess.Popen[str], out: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline and proc.poll() is None:
        text = out.read_text()
        for line in text.splitlines():
            if "API on " in line:
                return line.split("API on ", 1)[1].strip()
        time.sleep(0.05)
    raise AssertionError(f"the daemon did not start: {text}")


def wait_for(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@pytest.fixture
def daemon_proc(tmp_path: Path) -> Iterator[Proc]:
    """The daemon as a process, probing a closed port (no responder needed for signals)."""
    path = write(tmp_path / "client.yaml", client_doc(free_port()))
    env = {**os.environ, "PYTHONPATH": str(REPO), "PLPROBE_ALLOW_ROOT": "1"}
    out = tmp_path / "stdout.txt"
    with out.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent.cli.run", "--config", str(path)],
            stdout=sink, stderr=subprocess.DEVNULL, text=True, env=env, cwd=REPO,
        )  # fmt: skip
    try:
        running = Proc(proc, _read_url(proc, out, 15), path)
        wait_for(lambda: "plprobe_path_up{" in running.metrics())
        yield running
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)


def test_sigterm_stops_the_daemon_within_2_seconds(daemon_proc: Proc) -> None:
    started = time.monotonic()
    daemon_proc.proc.send_signal(signal.SIGTERM)
    assert daemon_proc.proc.wait(5) == 0
    assert time.monotonic() - started < 2.0


def test_sighup_with_a_bad_config_keeps_running_and_reports_reload_0(daemon_proc: Proc) -> None:
    daemon_proc.config_path.write_text("role: client\nagent_id: c1\nbogus: 1\n")
    daemon_proc.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "plprobe_config_last_reload_successful 0.0" in daemon_proc.metrics())
    assert daemon_proc.proc.poll() is None
    assert "plprobe_path_up{" in daemon_proc.metrics()


def test_sighup_with_a_good_config_adds_a_path(daemon_proc: Proc) -> None:
    first = json.loads(daemon_proc.config_path.read_text())["paths"][0]["ports"][0]
    added = free_port()
    write(daemon_proc.config_path, client_doc(first, added))
    daemon_proc.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: f'plprobe_path_up{{path="{pid(added)}"}}' in daemon_proc.metrics())
    assert "plprobe_config_last_reload_successful 1.0" in daemon_proc.metrics()


def test_the_daemon_command_runs_on_uvloop() -> None:
    import uvloop

    from agent.cli.run import event_loop_factory

    loop = event_loop_factory()()
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()
