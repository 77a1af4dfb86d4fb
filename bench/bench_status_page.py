"""The status page's weight and render time (agent/api/page.py), by number of paths.

Each case: N paths (a third blocked, with the rule and fix of a real nlb-sg-ingress verdict),
every path's latest evidence, and a full round history (``DEFAULT_ROUNDS`` rounds of 12 paths,
so the "recent rounds" section is at its bound). Reports the HTML's bytes, gzipped bytes (the
API compresses it) and the median render time over ``--repeat`` renders.

    python bench/bench_status_page.py [--paths 1,24,1000] [--repeat 20]
"""

from __future__ import annotations

import argparse
import gzip
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agent.api.history import DEFAULT_ROUNDS, RoundHistory
from agent.api.page import PageData, render_page
from agent.results import HopFinding, Observation, PathEvidence, ProbeResult, Verdict

NOW = time.time()
FIX = (
    "add to sg-084d10d96ddb45ce6 (nlb) an inbound rule TCP 80 from 10.2.1.15/32 (client-2); "
    "rule sg-084d10d96ddb45ce6 ingress TCP 80 from 10.2.0.0/24 allows 10.2.0.0/24, which covers "
    "the endpoint ENI, but the NLB sees the client's private IP"
)


def verdict(path: str, blocked: bool) -> Verdict:
    if not blocked:
        return Verdict(path=path, status="pass", stage="pass", blocked_at=None, checked_at=NOW)
    finding = HopFinding(
        hop="nlb-sg-ingress",
        control="nlb-sg-ingress",
        status="denied",
        resource="sg-084d10d96ddb45ce6 (nlb)",
        detail="no ingress rule allows tcp 80 for 10.2.1.15",
    )
    return Verdict(
        path=path,
        status="fail",
        stage="forward",
        blocked_at="nlb-sg-ingress",
        explanation="the probe timed out; configuration names it: NLB security group ingress",
        fix=FIX,
        checked_at=NOW,
        findings=[finding],
    )


def evidence(path: str, i: int) -> PathEvidence:
    results = [
        ProbeResult(path, kind, "ok", f"{i:08x}{k}", NOW, 0.002, target_ip="10.2.0.20", port=80)
        for k, kind in enumerate(("tcp", "syn", "http"))
    ]
    seen = [
        Observation("token", "server-1", NOW, "10.3.0.5", 40000, "10.3.1.10", 80, "responder",
                    probe_id=f"{i:08x}0", path=path, agent="client-2")
    ]  # fmt: skip
    return PathEvidence(path, "ok", "yes", results=results, observations=seen)


def case(n: int) -> PageData:
    paths = [f"client-{c}/apne1-az{a}/{p}" for c in range(1, 200) for a in (1, 2, 4)
             for p in (80, 443, 8080, 9000)][:n]  # fmt: skip
    ev = {p: evidence(p, i) for i, p in enumerate(paths)}
    history = RoundHistory()
    for r in range(DEFAULT_ROUNDS):
        history.record("orders-api", NOW - 10 * r, NOW - 10 * r + 1, [ev[p] for p in paths[:12]])
    return PageData(
        agent_id="client-2",
        role="client",
        ready=True,
        verdicts={p: verdict(p, i % 3 == 0) for i, p in enumerate(paths)},
        evidence=ev,
        rounds=history.newest_first(),
        started_at=NOW - 3600,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--paths", default="1,24,1000")
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    print(f"{'paths':>6} {'bytes':>9} {'gzip':>7} {'render ms':>10}")
    for n in (int(x) for x in args.paths.split(",")):
        data = case(n)
        times = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            page = render_page(data, now=NOW)
            times.append(time.perf_counter() - t0)
        body = page.encode()
        ms = statistics.median(times) * 1e3
        print(f"{n:>6} {len(body):>9} {len(gzip.compress(body)):>7} {ms:>10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
