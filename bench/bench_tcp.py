"""Benchmark: plprobe's TCP prober loop, TCP connect probes per CPU-second, in the lab.

A reference lab; a helper process inside client-2's namespace runs ``agent.probes.tcp.probe``
(the daemon's prober: connect, send the HMAC token, half-close, drain the service's answer,
close) against the endpoint ENI 10.2.0.20:80, i.e. through the whole lab path (endpoint DNAT,
NLB DNAT/SNAT, target httpd), ``--probes`` times with ``--concurrency`` probes in flight.
CPU = the helper process's ``time.process_time()`` over the batch (the probing loop, token
minting and result objects; not the kernel work in other namespaces' softirqs that happens to
be charged elsewhere). Every probe must end ``ok``. In client-2's namespace (only) the bench
sets ``net.ipv4.tcp_tw_reuse=1`` and a wide ``ip_local_port_range``: thousands of probes per
second to one address otherwise fill the port space with TIME_WAIT sockets and the kernel's
port search, charged to the prober as system time, grows from run to run.

    sudo .venv/bin/python bench/bench_tcp.py [--probes 3000] [--concurrency 1,32] [--runs 5]

Prints one JSON object: per concurrency, median probes per CPU-second and per wall second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from _labkit import lab_session, log, median, require_root

TARGET_IP = "10.2.0.20"
PORT = 80


async def _batch(count: int, concurrency: int) -> dict:
    from agent.probes.base import ProbeContext, ProbeTarget
    from agent.probes.tcp import probe
    from agent.results import PathRef

    ctx = ProbeContext(agent_id="client-2", key=b"k" * 32, timeout_s=2.0, retries=0)
    target = ProbeTarget(
        path=PathRef(
            id="client-2/apne1-az4/80", agent="client-2", name=TARGET_IP, ip=TARGET_IP, port=PORT
        )
    )
    outcomes: dict[str, int] = {}
    left = 0

    async def worker() -> None:
        # ``concurrency`` workers pulling from one counter: the probes in flight stay bounded
        # without thousands of tasks queued on a semaphore (whose wake-ups are not free)
        nonlocal left
        while left > 0:
            left -= 1
            r = await probe(target, ctx)
            outcomes[r.outcome] = outcomes.get(r.outcome, 0) + 1

    async def run(count: int) -> None:
        nonlocal left
        left = count
        await asyncio.gather(*(worker() for _ in range(min(concurrency, count))))

    await run(20)  # warm-up (imports, ARP, conntrack)
    outcomes.clear()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await run(count)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {
        "probes": count,
        "concurrency": concurrency,
        "outcomes": outcomes,
        "cpu_s": round(cpu, 4),
        "wall_s": round(wall, 4),
        "probes_per_cpu_s": round(count / cpu, 1),
        "probes_per_s": round(count / wall, 1),
    }


def measure(args: argparse.Namespace) -> dict:
    from agent.sources.topology import load_topology

    out: dict = {"benchmark": "tcp", "target": f"{TARGET_IP}:{PORT}", "runs_n": args.runs}
    with lab_session(load_topology(), "tcp") as lab:
        # thousands of connects per second to ONE destination leave as many TIME_WAIT sockets
        # (the prober closes first); without reuse the kernel's port search in connect()
        # gets slower with every run and its system time is charged to the prober
        for kv in ("net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65000"):
            lab.exec("client-2", ["sysctl", "-q", "-w", kv], timeout=10)
        for conc in args.concurrency:
            runs = []
            for i in range(args.runs):
                argv = [sys.executable, str(Path(__file__).resolve()), "--inner"]
                argv += ["--probes", str(args.probes), "--concurrency", str(conc)]
                proc = lab.exec("client-2", argv, timeout=300)
                if proc.returncode != 0:
                    raise RuntimeError(f"helper failed: {proc.stderr[-800:]}")
                run = json.loads(proc.stdout.strip().splitlines()[-1])
                if run["outcomes"] != {"ok": args.probes}:
                    raise RuntimeError(f"not every probe passed: {run['outcomes']}")
                log(f"concurrency {conc} run {i + 1}/{args.runs}: {json.dumps(run)}")
                runs.append(run)
            out[f"concurrency_{conc}"] = {
                "median_probes_per_cpu_s": median([r["probes_per_cpu_s"] for r in runs]),
                "median_probes_per_s": median([r["probes_per_s"] for r in runs]),
                "median_cpu_ms_per_probe": median([r["cpu_s"] / r["probes"] * 1000 for r in runs]),
                "runs": runs,
            }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--probes", type=int, default=3000)
    parser.add_argument(
        "--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 32]
    )
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        print(json.dumps(asyncio.run(_batch(args.probes, args.concurrency[0]))))
        return 0
    require_root()
    print(json.dumps(measure(args), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
