"""Benchmark: what the provider's own probes cost per interval (CPU per round, packets).

In a private network namespace (the script re-executes itself under ``unshare -n``, so the
packet counters see nothing but its own traffic), a real provider agent (``plprobe observe``,
responder on 9721, in a child process) and a plain TCP service on 80 and 8080 (another child)
stand in for the NLB nodes and the targets on loopback addresses. This process plans and runs
provider probe rounds (``agent.daemon.provider_probes.run_round``, the agent's code) for two
shapes:

    reference   1 NLB node x 2 listeners (80, responder 9721) + 2 targets on 80  = 4 probes
    large       3 NLB nodes x 2 listeners + 6 targets on 80 with health port 8080 = 18 probes

CPU = this process's ``time.process_time()`` per round (planning, tokens, sockets, results;
the median of ``--rounds``); packets = TCP segments sent in the namespace per round (both
ends: ``Tcp OutSegs`` of /proc/net/snmp), bytes = the probes' payload (tokens). There is no
NLB on loopback, so the numbers are the prober's side; on AWS each NLB hop adds nothing the
prober pays for.

    sudo .venv/bin/python bench/bench_provider_probes.py [--rounds 50]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INNER = "PLPROBE_BENCH_INNER"
KEY = b"k" * 32
SERVICE = """
import asyncio
async def handle(r, w):
    try:
        await asyncio.wait_for(r.read(4096), 1)
    except Exception:
        pass
    w.close()
async def main():
    a = await asyncio.start_server(handle, "0.0.0.0", 80)
    b = await asyncio.start_server(handle, "0.0.0.0", 8080)
    print("ready", flush=True)
    await asyncio.gather(a.serve_forever(), b.serve_forever())
asyncio.run(main())
"""
AGENT = """\
role: provider
agent_id: target
listen: 127.0.0.1:9720
key_env: PLPROBE_KEY
sniffer: {enabled: false}
responder: {port: 9721}
"""


def out_segs() -> int:
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()]
    head, values = [row for row in lines if row[0] == "Tcp:"]
    return int(values[head.index("OutSegs")])


def shape(name: str) -> dict:
    if name == "reference":
        return {
            "nlb_nodes": {"az1": "127.0.0.1"},
            "listeners": [80, 9721],
            "responder_ports": [9721],
            "targets": [{"name": f"t{i}", "ip": f"127.0.0.{i + 2}", "port": 80} for i in range(2)],
        }
    return {
        "nlb_nodes": {f"az{i}": f"127.0.1.{i}" for i in range(1, 4)},
        "listeners": [80, 9721],
        "responder_ports": [9721],
        "targets": [
            {"name": f"t{i}", "ip": f"127.0.2.{i}", "port": 80, "health_port": 8080}
            for i in range(1, 7)
        ],
    }


async def measure(name: str, rounds: int) -> dict:
    from agent.config import ProviderConfig
    from agent.daemon.provider_probes import plan, run_round
    from agent.probes import ProbeContext

    cfg = ProviderConfig.model_validate(
        {
            "role": "provider",
            "agent_id": "server-1",
            "key_env": "PLPROBE_KEY",
            "probes": {"enabled": True, "retries": 0, **shape(name)},
        }
    )
    probes, notes = plan(cfg)
    assert not notes, notes
    ctx = ProbeContext(agent_id="server-1", key=KEY, timeout_s=2.0)
    await run_round(probes, ctx, retries=0)  # warm up (imports, first connections)
    cpu, segs, wall = [], [], []
    for _ in range(rounds):
        s0 = out_segs()
        r = await run_round(probes, ctx, retries=0)
        bad = [x.path for x in r.results if x.result.outcome != "ok"]
        assert not bad, f"probes failed: {bad}"
        await asyncio.sleep(0.3)  # let FIN/ACKs of the round finish before counting
        segs.append(out_segs() - s0)
        cpu.append(r.cpu_s)
        wall.append(r.duration_s)
    return {
        "probes_per_round": len(probes),
        "cpu_ms_per_round": round(statistics.median(cpu) * 1000, 2),
        "cpu_ms_per_probe": round(statistics.median(cpu) * 1000 / len(probes), 3),
        "wall_ms_per_round": round(statistics.median(wall) * 1000, 2),
        "tcp_segments_per_round": statistics.median(segs),
        "tcp_segments_per_probe": round(statistics.median(segs) / len(probes), 1),
    }


def inner(rounds: int) -> dict:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    env = {**os.environ, "PLPROBE_KEY": KEY.decode(), "PYTHONPATH": str(ROOT)}
    tmp = Path(tempfile.mkdtemp(prefix="plprobe-bench-"))
    procs: list[subprocess.Popen] = []
    try:
        (tmp / "agent.yaml").write_text(AGENT)
        service = subprocess.Popen(
            [sys.executable, "-c", SERVICE], stdout=subprocess.PIPE, text=True, env=env
        )
        procs.append(service)
        assert service.stdout is not None and service.stdout.readline().strip() == "ready"
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent", "observe", "--config", str(tmp / "agent.yaml")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        procs.append(agent)
        time.sleep(2.0)
        os.environ["PLPROBE_KEY"] = KEY.decode()
        return {name: asyncio.run(measure(name, rounds)) for name in ("reference", "large")}
    finally:
        for p in procs:
            p.terminate()
            p.wait(timeout=5)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    if os.environ.get(INNER) != "1":
        if os.geteuid() != 0:
            print("needs root (a private network namespace)", file=sys.stderr)
            return 2
        env = {**os.environ, INNER: "1"}
        argv = ["unshare", "-n", sys.executable, __file__, "--rounds", str(args.rounds)]
        return subprocess.run(argv, env=env, check=False).returncode
    sys.path.insert(0, str(ROOT))
    print(json.dumps({"rounds": args.rounds, **inner(args.rounds)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
