"""Benchmark: SYN probes classified per second on one core, and their accuracy.

Builds two namespaces of its own (random names, removed at exit): the prober in ``a``, and in
``b`` a mix of ports with known ground truth — listening (open), unbound (closed), dropped by
nft (filtered, timeout) and rejected by nft with ICMP admin-prohibited (filtered, 3/13). ICMP
rate limiting is lifted in ``b`` so that every reject is answered (otherwise the kernel's
1/s-per-peer limit turns most rejects into timeouts, which nmap also calls filtered but which
would not be the ground truth here). The prober process is pinned to one CPU.

Rate = probes / (first send .. last classification), including the final timeout tail of the
dropped ports. Accuracy = share of probes whose outcome (and ICMP code) matches ground truth.

    sudo .venv/bin/python bench/bench_syn.py [--probes 60000] [--runs 5] [--cpu 0]

Prints one JSON object (medians plus every run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agent.probes.base import ProbeTarget
from agent.probes.syn import SynEngine
from agent.rawsock import VethPair, in_netns, veth_pair
from agent.results import PathRef
from agent.wire.syntag import SynTagger

OPEN = list(range(20000, 20016))
CLOSED = list(range(21000, 21016))
DROPPED = list(range(22000, 22016))
REJECTED = list(range(23000, 23016))

TRUTH: dict[int, tuple[str, tuple[int, int] | None]] = {
    **{p: ("ok", None) for p in OPEN},
    **{p: ("refused", None) for p in CLOSED},
    **{p: ("timeout", None) for p in DROPPED},
    **{p: ("icmp_unreachable", (3, 13)) for p in REJECTED},
}


def _ports(ports: list[int]) -> str:
    return f"{ports[0]}-{ports[-1]}"


def setup(pair: VethPair) -> subprocess.Popen[str]:
    nft = (
        "table inet bench {\n chain input {\n type filter hook input priority 0; policy accept;\n"
        f" tcp dport {_ports(DROPPED)} drop\n"
        f" tcp dport {_ports(REJECTED)} reject with icmp type admin-prohibited\n }}\n}}\n"
    )
    subprocess.run(
        ["ip", "netns", "exec", pair.ns_b, "nft", "-f", "-"], input=nft, text=True, check=True
    )
    pair.run(pair.ns_b, "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0")
    pair.run(pair.ns_b, "sysctl", "-qw", "net.ipv4.icmp_msgs_per_sec=10000000")
    pair.run(pair.ns_b, "sysctl", "-qw", "net.ipv4.icmp_msgs_burst=10000000")
    pair.run(pair.ns_b, "sysctl", "-qw", "net.ipv4.tcp_max_syn_backlog=65536")
    pair.run(pair.ns_b, "sysctl", "-qw", "net.core.somaxconn=65535")
    listener = (
        "import socket,time\nsocks=[]\n"
        f"for p in {OPEN!r}:\n"
        " s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
        " s.bind(('0.0.0.0',p));s.listen(65535);socks.append(s)\n"
        "print('up',flush=True);time.sleep(3600)\n"
    )
    srv = subprocess.Popen(
        ["ip", "netns", "exec", pair.ns_b, sys.executable, "-c", listener],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert srv.stdout is not None and srv.stdout.readline().strip() == "up"
    return srv


async def one_run(engine: SynEngine, ip: str, n: int, timeout_s: float, retries: int) -> dict:
    ports = list(TRUTH)
    targets = [
        ProbeTarget(path=PathRef(id="b", agent="a", name=ip, ip=ip, port=ports[i % len(ports)]))
        for i in range(n)
    ]
    before = engine.counters.sent
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    results = await engine.probe_many(targets, timeout_s=timeout_s, retries=retries)
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    correct = sum(1 for r in results if (r.outcome, r.icmp) == TRUTH[r.port or 0])
    wrong: dict[str, int] = {}
    for r in results:
        if (r.outcome, r.icmp) != TRUTH[r.port or 0]:
            k = f"{TRUTH[r.port or 0][0]}->{r.outcome}"
            wrong[k] = wrong.get(k, 0) + 1
    return {
        "probes": n,
        "elapsed_s": round(elapsed, 3),
        "probes_per_s": round(n / elapsed, 1),
        "probes_per_cpu_s": round(n / cpu, 1) if cpu else None,
        "accuracy": correct / n,
        "misclassified": wrong,
        "packets_sent": engine.counters.sent - before,
    }


async def main_async(args: argparse.Namespace, pair: VethPair) -> dict:
    with in_netns(pair.ns_a):
        engine = SynEngine(tagger=SynTagger(b"bench-key-0123456789abcdef"), rcvbuf=64 << 20)
        engine.open()
    try:
        await one_run(engine, pair.ip_b, 2000, args.timeout, args.retries)  # warm-up
        runs = [
            await one_run(engine, pair.ip_b, args.probes, args.timeout, args.retries)
            for _ in range(args.runs)
        ]
    finally:
        engine.close()
    return {
        "benchmark": "syn",
        "cpu": args.cpu,
        "probes_per_run": args.probes,
        "timeout_s": args.timeout,
        "retries": args.retries,
        "port_mix": {
            "open": len(OPEN),
            "closed": len(CLOSED),
            "dropped": len(DROPPED),
            "rejected_icmp_3_13": len(REJECTED),
        },
        "median_probes_per_s": statistics.median(r["probes_per_s"] for r in runs),
        "median_probes_per_cpu_s": statistics.median(r["probes_per_cpu_s"] for r in runs),
        "median_accuracy": statistics.median(r["accuracy"] for r in runs),
        "counters": vars(engine.counters),
        "runs": runs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--probes", type=int, default=60000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cpu", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=0.5, help="per probe, all attempts")
    ap.add_argument("--retries", type=int, default=1)
    args = ap.parse_args()
    os.sched_setaffinity(0, {args.cpu})
    with veth_pair("bs") as pair:
        srv = setup(pair)
        try:
            out = asyncio.run(main_async(args, pair))
        finally:
            srv.kill()
            srv.wait()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
