"""Abuse on loopback: the issue-13 table, re-measured against real ``plprobe`` processes.

Starts ``plprobe observe`` (provider: responder + observations API, sniffer off) and
``plprobe run`` (client: one path probing that responder every second) on 127.0.0.1, then,
one at a time and bounded:

1. ``idle``: 10,000 connections opened to the client API and held 10 s;
2. ``slowloris``: 2,000 connections trickling a ``GET /metrics`` head (one header line a
   second), and the same against ``/probe`` (the fast path);
3. ``garbage``: 20 requests of 8 MiB without a line end, 200 junk request lines;
4. ``responder``: 10,000 idle connections to the responder, then a 20 s reconnecting flood,
   while the client's authenticated probes run.

Reported per attack: the agent's RSS before / peak / 5 s after, how many connections were
cut and how fast, ``/healthz`` answered during the attack, the client's verdict of its own path
during and after, bytes written to the agent's log, the largest error body seen. Everything
runs at the machine's normal priority on loopback; numbers are from a 2-core host shared with
other work, so read them as bounds, not as a profile.

    sudo .venv/bin/python bench/abuse.py [--idle 10000] [--slowloris 2000]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    return round(int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE / 2**20, 1)


def get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except Exception as exc:  # any failure is "not answered" here
        return 0, type(exc).__name__


class Agents:
    """The two processes, their logs and URLs."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.rport, self.papi, self.capi = free_port(), free_port(), free_port()
        key = secrets.token_hex(32)
        self.env = {**os.environ, "PLPROBE_KEY": key, "PYTHONPATH": str(REPO)}
        self.env["PLPROBE_ALLOW_ROOT"] = "1"  # a bench as root on loopback: intended
        provider = {
            "role": "provider",
            "agent_id": "server-1",
            "listen": f"127.0.0.1:{self.papi}",
            "key_env": "PLPROBE_KEY",
            "responder": {"bind": "127.0.0.1", "port": self.rport, "read_timeout": 5},
            "sniffer": {"enabled": False},
        }
        client = {
            "role": "client",
            "agent_id": "c1",
            "listen": f"127.0.0.1:{self.capi}",
            "key_env": "PLPROBE_KEY",
            "interval": 1,
            "timeout": 1,
            "retries": 0,
            "provider_delay": 0,
            "paths": [
                {
                    "name": "self",
                    "expected_ips": {"az1": "127.0.0.1"},
                    "ports": [self.rport],
                    "probes": ["tcp"],
                    "responder_ports": [self.rport],
                    "provider_url": f"http://127.0.0.1:{self.papi}",
                }
            ],
        }
        (work / "provider.json").write_text(json.dumps(provider))
        (work / "client.json").write_text(json.dumps(client))
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        for name, cmd in (("provider", "observe"), ("client", "run")):
            log = open(self.work / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "agent", cmd, "--config", str(self.work / f"{name}.json")],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.verdict() == "pass":
                return
            time.sleep(0.2)
        logs = {n: (self.work / f"{n}.log").read_text()[-1500:] for n in self.procs}
        raise RuntimeError(f"the client's path did not pass within 20 s: {self.verdict()} {logs}")

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)

    def log_bytes(self, name: str) -> int:
        return (self.work / f"{name}.log").stat().st_size

    def verdict(self) -> str:
        status, body = get(f"http://127.0.0.1:{self.capi}/v1/verdicts")
        if status != 200:
            return f"http {status or body}"
        verdicts = json.loads(body)["verdicts"]
        return str(verdicts[0]["status"]) if verdicts else "none"


async def _open(port: int, n: int) -> list[asyncio.StreamWriter]:
    held = []
    for _ in range(n):
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.01)
            continue
        held.append(w)
    return held


async def _watch(agents: Agents, name: str, seconds: float) -> dict[str, Any]:
    """Sample RSS, /healthz and the verdict while an attack runs."""
    pid = agents.procs[name].pid
    peak, health, verdicts = rss_mb(pid), [], []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        peak = max(peak, rss_mb(pid))
        health.append(
            (await asyncio.to_thread(get, f"http://127.0.0.1:{agents.capi}/healthz"))[0] == 200
        )
        verdicts.append(await asyncio.to_thread(agents.verdict))
        await asyncio.sleep(0.5)
    return {
        "rss_peak_mb": peak,
        "healthz_ok": f"{sum(health)}/{len(health)}",
        "verdicts_during": sorted(set(verdicts)),
    }


async def _closed(reader: asyncio.StreamReader, limit: float) -> float | None:
    t0 = time.monotonic()
    try:
        await asyncio.wait_for(reader.read(), limit)
    except (ConnectionError, TimeoutError):
        return None if time.monotonic() - t0 >= limit else time.monotonic() - t0
    return time.monotonic() - t0


async def attack_idle(agents: Agents, n: int) -> dict[str, Any]:
    pid = agents.procs["client"].pid
    before, log0 = rss_mb(pid), agents.log_bytes("client")
    watch = asyncio.create_task(_watch(agents, "client", 10))
    held = await _open(agents.capi, n)
    result = await watch
    for w in held:
        w.close()
    await asyncio.sleep(5)
    return {
        "attack": f"{n} idle connections to the client API, held 10 s",
        "opened": len(held),
        "rss_before_mb": before,
        **result,
        "rss_after_mb": rss_mb(pid),
        "verdict_after": agents.verdict(),
        "log_bytes": agents.log_bytes("client") - log0,
    }


async def attack_slowloris(agents: Agents, n: int, path: str) -> dict[str, Any]:
    pid = agents.procs["client"].pid
    before, log0 = rss_mb(pid), agents.log_bytes("client")
    conns = []
    for _ in range(n):
        with contextlib.suppress(OSError):
            r, w = await asyncio.open_connection("127.0.0.1", agents.capi)
            w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode())
            conns.append((r, w))

    async def drip() -> None:
        for i in range(60):
            await asyncio.sleep(1)
            for _, w in conns:
                with contextlib.suppress(Exception):
                    w.write(f"X-{i}: y\r\n".encode())

    dripping = asyncio.create_task(drip())
    watch = asyncio.create_task(_watch(agents, "client", 8))
    cut = await asyncio.gather(*(_closed(r, 30) for r, _ in conns))
    dripping.cancel()
    result = await watch
    for _, w in conns:
        w.close()
    times = sorted(t for t in cut if t is not None)
    await asyncio.sleep(3)
    return {
        "attack": f"{n} slowloris connections on {path}",
        "cut": f"{len(times)}/{len(conns)}",
        "cut_median_s": round(times[len(times) // 2], 2) if times else None,
        "cut_max_s": round(times[-1], 2) if times else None,
        "rss_before_mb": before,
        **result,
        "rss_after_mb": rss_mb(pid),
        "log_bytes": agents.log_bytes("client") - log0,
    }


async def attack_garbage(agents: Agents) -> dict[str, Any]:
    pid = agents.procs["client"].pid
    before, log0 = rss_mb(pid), agents.log_bytes("client")
    largest, peak = 0, before
    for _ in range(20):
        r, w = await asyncio.open_connection("127.0.0.1", agents.capi)
        w.write(b"GET /" + b"A" * (8 << 20))
        with contextlib.suppress(ConnectionError):
            await w.drain()
        with contextlib.suppress(ConnectionError, TimeoutError):
            largest = max(largest, len(await asyncio.wait_for(r.read(), 5)))
        w.close()
        peak = max(peak, rss_mb(pid))
    for i in range(200):
        r, w = await asyncio.open_connection("127.0.0.1", agents.capi)
        w.write(b"\x16\x03\x01" + secrets.token_bytes(200 + i) + b"\r\n\r\n")
        with contextlib.suppress(ConnectionError, TimeoutError):
            largest = max(largest, len(await asyncio.wait_for(r.read(), 5)))
        w.close()
    await asyncio.sleep(3)
    return {
        "attack": "20 x 8 MiB without a line end, 200 junk request lines",
        "largest_answer_bytes": largest,
        "rss_before_mb": before,
        "rss_peak_mb": peak,
        "rss_after_mb": rss_mb(pid),
        "log_bytes": agents.log_bytes("client") - log0,
        "log_tracebacks": (agents.work / "client.log")
        .read_text(errors="replace")
        .count("Traceback"),
    }


async def attack_responder(agents: Agents, n: int) -> dict[str, Any]:
    pid = agents.procs["provider"].pid
    before = rss_mb(pid)
    held = await _open(agents.rport, n)
    stop = asyncio.Event()

    async def flood() -> None:
        mine: list[asyncio.StreamWriter] = []
        while not stop.is_set():
            with contextlib.suppress(OSError):
                _, w = await asyncio.open_connection("127.0.0.1", agents.rport)
                mine.append(w)
                if len(mine) > 500:
                    mine.pop(0).close()
        for w in mine:
            w.close()

    flooders = [asyncio.create_task(flood()) for _ in range(4)]
    verdicts, peak = [], before
    end = time.monotonic() + 20
    while time.monotonic() < end:
        verdicts.append(await asyncio.to_thread(agents.verdict))
        peak = max(peak, rss_mb(pid))
        await asyncio.sleep(1)
    stop.set()
    await asyncio.gather(*flooders)
    for w in held:
        w.close()
    await asyncio.sleep(3)
    status, body = get(f"http://127.0.0.1:{agents.papi}/v1/observations?since=0")
    counters = json.loads(body).get("counters", {}).get("responder", {}) if status == 200 else {}
    return {
        "attack": f"{n} idle connections to the responder, then a 20 s reconnecting flood",
        "client_verdicts_each_second": f"{verdicts.count('pass')}/{len(verdicts)} pass",
        "rss_before_mb": before,
        "rss_peak_mb": peak,
        "rss_after_mb": rss_mb(pid),
        "responder": {
            k: counters.get(k)
            for k in ("replied", "shed", "shed_per_source", "over_limit", "timeouts")
        },
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    with tempfile.TemporaryDirectory(prefix="plprobe-abuse-") as tmp:
        agents = Agents(Path(tmp))
        agents.start()
        try:
            results = [
                await attack_idle(agents, args.idle),
                await attack_slowloris(agents, args.slowloris, "/metrics"),
                await attack_slowloris(agents, args.slowloris, "/probe?target=x&module=tcp"),
                await attack_garbage(agents),
                await attack_responder(agents, args.idle),
            ]
        finally:
            agents.stop()
    return {"benchmark": "abuse", "nofile_hard": hard, "results": results}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--idle", type=int, default=10_000)
    parser.add_argument("--slowloris", type=int, default=2_000)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
