"""Benchmark: plprobe's own CPU per daemon round and per metrics update, without the network.

Why: in the lab a round's CPU is mostly the probes' packets (the emulated network is charged
to the prober's syscalls), which hides what the framework costs. Here every prober answers
``ok`` at once and DNS answers the expected address, so what a round costs is plprobe's own
work: planning, one task per probe, correlation, diagnosis, metrics and the API's state
(``Daemon._round`` on uvloop, as ``plprobe run``).

Per run, in a fresh interpreter: N paths (client-2's shipped path, one port each, probe
kinds dns, tcp, syn, http), one warm-up round, then ``--rounds`` rounds timed with
``time.process_time``; RSS after them (the status page's history is full after 20 rounds).
Also, for the metrics alone: the CPU of one update (a result or a verdict) and of one
``/metrics`` exposition of N paths. No root, no lab.

    python bench/bench_round_cost.py [--paths 1000] [--rounds 25] [--runs 5]

Prints one JSON object (medians and every run).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: object) -> bool:
        return True


def _rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


def _config(work: Path, paths: int):  # type: ignore[no-untyped-def]
    from agent.config import load_config

    doc = yaml.safe_load((REPO / "configs" / "lab" / "client-2.yaml").read_text())
    base = doc["paths"][0]
    doc["paths"] = [{**base, "name": f"ep-{8000 + i}", "ports": [8000 + i]} for i in range(paths)]
    doc.pop("provider_delay", None)
    doc.pop("key_env", None)
    doc["insecure"] = True
    path = work / "client.yaml"
    path.write_text(yaml.dump(doc, Dumper=_NoAliasDumper, sort_keys=False))
    return load_config(path)


def one_run(paths: int, rounds: int) -> dict[str, float]:
    """One measurement in this interpreter (called in a child by ``main``)."""
    import uvloop

    import agent.diagnose.rounds as runner
    import agent.probes.dns as dns
    from agent.daemon.server import Daemon, schedule_groups
    from agent.metrics import make_metrics
    from agent.results import ProbeResult, Verdict

    async def resolve(name: str, ctx: object) -> list[str]:
        return ["10.2.0.20"]

    async def instant(target, ctx):  # type: ignore[no-untyped-def]
        now = time.time()
        return ProbeResult(
            path=target.path.id,
            probe="tcp",
            outcome="ok",
            started_at=now,
            duration_s=0.001,
            target_ip=target.path.ip,
            port=target.port,
        )

    real = runner.get_prober
    dns.resolve_once = resolve  # type: ignore[assignment]
    runner.get_prober = lambda kind: real("dns") if kind == "dns" else instant  # type: ignore[assignment]

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        config = _config(Path(tmp), paths)

        async def rounds_cost() -> None:
            daemon = Daemon(config, b"", handle_signals=False, check_raw=lambda: False)
            ((_, pcs),) = schedule_groups(config).items()
            sub = config.model_copy(update={"paths": pcs})
            await daemon._round(sub, pcs, b"", 600.0)
            started = time.process_time()
            for _ in range(rounds):
                await daemon._round(sub, pcs, b"", 600.0)
            out["round_cpu_ms"] = 1000 * (time.process_time() - started) / rounds
            daemon._trim()
            out["rss_after_rounds_mib"] = _rss_mib()
            await daemon._shared.close()

        uvloop.run(rounds_cost())

    from prometheus_client import CollectorRegistry, generate_latest

    m = make_metrics(CollectorRegistry())
    ops = 0
    started = time.process_time()
    for i in range(paths):
        p = f"client-2/apne1-az4/{8000 + i}"
        m.add_path(p, interval_s=10)
        for kind in ("dns", "tcp", "syn", "http"):
            m.observe_result(
                ProbeResult(path=p, probe=kind, outcome="ok", started_at=1.7e9, duration_s=0.002)
            )
        m.set_verdict(Verdict(path=p, status="pass", stage="forward", blocked_at=None))
        ops += 5
    out["metrics_update_us"] = 1e6 * (time.process_time() - started) / ops
    started = time.process_time()
    text = generate_latest(m.registry)
    out["metrics_exposition_ms"] = 1000 * (time.process_time() - started)
    out["metrics_exposition_bytes"] = len(text)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_run(args.paths, args.rounds)))
        return 0
    runs = []
    for i in range(args.runs):
        argv = [sys.executable, __file__, "--child", "--paths", str(args.paths)]
        argv += ["--rounds", str(args.rounds)]
        done = subprocess.run(argv, capture_output=True, text=True, check=True)
        runs.append(json.loads(done.stdout.splitlines()[-1]))
        print(f"run {i + 1}: {runs[-1]}", file=sys.stderr)
    result = {
        "benchmark": "round_cost",
        "paths": args.paths,
        "rounds": args.rounds,
        "median": {k: statistics.median(r[k] for r in runs) for k in runs[0]},
        "runs": runs,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
