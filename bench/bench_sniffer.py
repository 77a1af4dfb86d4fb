"""Benchmark: sniffer capture ratio of tagged probes under >= 50,000 packets/s of untagged load.

Two namespaces of its own (random names, removed at exit). In ``b`` a listener on port 80 (the
"service", so the load draws real SYN-ACKs/RSTs) and the sniffer on b's veth, in this process,
pinned to ``--sniffer-cpu``. From ``a``, forked processes pinned to ``--load-cpu``:
  * ``--blasters`` background blasters: an IPPROTO_RAW socket replaying 4096 prebuilt untagged
    packets to b:80 (half SYNs with random ISNs, half data segments carrying an ordinary HTTP
    request), paced to ``--pps`` in total; each reports what it really sent;
  * one prober: ``--tagged`` tagged SYNs (``SynTagger`` ISNs) and as many token first-segments
    (the token as the first payload bytes), spread over the run.
Capture ratio = tagged ISNs and token probe ids found in the sniffer's observations / sent.
Background pps is what the blasters report (sent / their wall time), never the target.

    sudo .venv/bin/python bench/bench_sniffer.py [--pps 60000] [--blasters 2] [--runs 5]

Prints one JSON object (medians plus every run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import random
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from agent.observe.sniffer import Sniffer
from agent.rawsock import VethPair, in_netns, veth_pair
from agent.wire import SynTagger, Token, encode_token

KEY = b"bench-sniffer-key-0123456789"
PORT = 80


def _ip_tcp(src: str, dst: str, sport: int, flags: str, seq: int, payload: bytes = b"") -> bytes:
    from scapy.layers.inet import IP, TCP
    from scapy.packet import Raw

    pkt = IP(src=src, dst=dst) / TCP(sport=sport, dport=PORT, flags=flags, seq=seq, ack=0)
    if payload:
        pkt = pkt / Raw(payload)
    return bytes(pkt)


def blaster(src: str, dst: str, pps: float, duration: float, cpu: int, out: mp.Queue) -> None:
    os.sched_setaffinity(0, {cpu})
    rnd = random.Random()
    req = b"GET / HTTP/1.1\r\nHost: svc\r\nUser-Agent: load\r\n\r\n"
    pkts = [
        _ip_tcp(src, dst, rnd.randint(1024, 60999), "S" if i % 2 else "PA", rnd.getrandbits(32),
                b"" if i % 2 else req)
        for i in range(4096)
    ]  # fmt: skip
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    addr = (dst, 0)
    sent = 0
    sent_ok = 0
    chunk = 256
    t0 = time.perf_counter()
    end = t0 + duration
    n = len(pkts)
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        ahead = t0 + sent / pps - now
        if ahead > 0:
            time.sleep(ahead)
        for i in range(chunk):
            with contextlib.suppress(OSError):  # ENOBUFS under load: counted as not sent
                s.sendto(pkts[(sent + i) % n], addr)
                sent_ok += 1
        sent += chunk
    out.put(("blaster", sent_ok, time.perf_counter() - t0))


def prober(src: str, dst: str, n: int, duration: float, cpu: int, out: mp.Queue) -> None:
    os.sched_setaffinity(0, {cpu})
    tagger = SynTagger(KEY)
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    isns: list[int] = []
    ids: list[str] = []
    gap = duration / n
    t0 = time.perf_counter()
    for i in range(n):
        isn = tagger.make()
        token = Token.new("client-a/az1/80", "client-a")
        s.sendto(_ip_tcp(src, dst, 61000 + i % 4000, "S", isn), (dst, 0))
        s.sendto(_ip_tcp(src, dst, 61000 + i % 4000, "PA", isn + 1, encode_token(token, KEY)),
                 (dst, 0))  # fmt: skip
        isns.append(isn)
        ids.append(token.probe_id_hex)
        delay = t0 + (i + 1) * gap - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
    out.put(("prober", isns, ids))


async def one_run(pair: VethPair, args: argparse.Namespace) -> dict:
    with in_netns(pair.ns_b):
        sn = Sniffer(pair.if_b, [PORT], key=KEY, target="b", max_observations=1_000_000).open()
    sn.start()
    ctx = mp.get_context("fork")
    q: mp.Queue = ctx.Queue()
    with in_netns(pair.ns_a):  # forked children inherit this thread's namespace
        procs = [
            ctx.Process(
                target=blaster,
                args=(
                    pair.ip_a,
                    pair.ip_b,
                    args.pps / args.blasters,
                    args.duration,
                    args.load_cpu,
                    q,
                ),
            )
            for _ in range(args.blasters)
        ]
        procs.append(
            ctx.Process(
                target=prober,
                args=(pair.ip_a, pair.ip_b, args.tagged, args.duration, args.load_cpu, q),
            )
        )
        for p in procs:
            p.start()
    loop = asyncio.get_running_loop()
    msgs = []
    for _ in procs:  # the loop keeps reading frames while we wait for the children
        msgs.append(await loop.run_in_executor(None, q.get, True, args.duration + 60))
    for p in procs:
        await loop.run_in_executor(None, p.join, 10)
    await asyncio.sleep(0.5)
    sn.poll_kernel_stats()
    obs = sn.drain()
    sn.close()
    isns: set[int] = set()
    ids: set[str] = set()
    bg_sent = 0
    bg_pps = 0.0
    for m in msgs:
        if m[0] == "blaster":
            bg_sent += m[1]
            bg_pps += m[1] / m[2]
        else:
            isns, ids = set(m[1]), set(m[2])
    seen_isns = {o.isn for o in obs if o.kind == "syn_tag"}
    seen_ids = {o.probe_id for o in obs if o.kind == "token"}
    captured = len(isns & seen_isns) + len(ids & seen_ids)
    return {
        "background_pps_achieved": round(bg_pps),
        "background_packets": bg_sent,
        "tagged_sent": len(isns) + len(ids),
        "tagged_recorded": captured,
        "capture_ratio": captured / (len(isns) + len(ids)),
        "false_positive_syn_tags": len(seen_isns - isns),
        "sniffer_packets_seen": sn.packets_seen,
        "kernel_drops": sn.kernel_drops,
        "forged": sn.forged,
        "replayed": sn.replayed,
    }


async def main_async(args: argparse.Namespace, pair: VethPair) -> dict:
    runs = [await one_run(pair, args) for _ in range(args.runs)]
    return {
        "benchmark": "sniffer",
        "target_background_pps": args.pps,
        "blasters": args.blasters,
        "duration_s": args.duration,
        "tagged_per_run": 2 * args.tagged,
        "sniffer_cpu": args.sniffer_cpu,
        "load_cpu": args.load_cpu,
        "median_background_pps": statistics.median(r["background_pps_achieved"] for r in runs),
        "median_capture_ratio": statistics.median(r["capture_ratio"] for r in runs),
        "min_capture_ratio": min(r["capture_ratio"] for r in runs),
        "runs": runs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pps", type=float, default=60000, help="target background pps (total)")
    ap.add_argument("--blasters", type=int, default=2)
    ap.add_argument("--tagged", type=int, default=2000, help="tagged SYNs (and as many tokens)")
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--sniffer-cpu", type=int, default=1)
    ap.add_argument("--load-cpu", type=int, default=0)
    args = ap.parse_args()
    os.sched_setaffinity(0, {args.sniffer_cpu})
    with veth_pair("bf") as pair:
        listener = (
            "import socket,time\ns=socket.socket()\n"
            "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
            f"s.bind(('0.0.0.0',{PORT}));s.listen(4096);print('up',flush=True);time.sleep(3600)\n"
        )
        srv = subprocess.Popen(
            ["ip", "netns", "exec", pair.ns_b, sys.executable, "-c", listener],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert srv.stdout is not None and srv.stdout.readline().strip() == "up"
            out = asyncio.run(main_async(args, pair))
        finally:
            srv.kill()
            srv.wait()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
