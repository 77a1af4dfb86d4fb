"""Benchmark: daemon footprint with 50 (or ``--paths N``) paths at a 10 s interval.

Goals: 50 paths (issue 5): <= 0.5 % of one core and <= 60 MB RSS for the client daemon;
1,000 paths (issue 11): <= 5 % of one core, <= 100 MB, and no round overruns its interval.

The 50 paths are 50 *working* paths, not 49 refused ones: the bench topology is
configs/lab/reference.yaml plus 49 extra NLB listeners (ports 8001-8049, all forwarding to the
``server-80`` target group, as several listeners may on AWS) and the SG rules that let
client-2 through on them (client-2 egress, endpoint ingress, NLB ingress from 10.2.1.15). The
client daemon (``plprobe run``, role client, inside client-2) gets 50 ``paths`` entries, one
per port (ports 80, 8001-8049), each with the shipped probe kinds ``dns, tcp, syn, http``,
``interval: 10``, ``timeout: 1``, ``retries: 1``, and the lab's snapshot as configuration view
(so every round is diagnosed, as in production). Provider daemons run on server-1/server-2
(responder + sniffer on port 80: they see every probe) and are measured too.

After ``--warmup`` seconds, each daemon's CPU time (utime+stime, /proc/<pid>/stat) and RSS
(/proc/<pid>/statm) are sampled every ``--sample`` seconds for ``--duration`` seconds.
CPU share = CPU seconds / wall seconds over the whole window (and the median of the per-minute
shares); RSS = maximum and last sample. At the end the client's /metrics (through
``agent.lab.expose``) must show 50 paths up, and the probe counters say how much work was done.

Round spans: at every 6th sample the client's ``/v1/results`` is read (through
``agent.lab.expose``) and the span of the latest round (first probe start to last probe end,
from the results' own timestamps) is recorded; the maximum must stay below the interval.

    sudo .venv/bin/python bench/bench_footprint.py [--duration 600] [--warmup 30] [--paths 50]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import time
from pathlib import Path

import yaml
from _labkit import (
    PROVIDER,
    REPO,
    client_config,
    cpu_seconds,
    dump_yaml,
    get,
    lab_session,
    log,
    median,
    require_root,
    rss_bytes,
    spawn_agent,
    stop,
    workdir,
)

EXTRA_PORTS = list(range(8001, 8050))
PORTS = [80, *EXTRA_PORTS]


def set_paths(n: int) -> None:
    """Use ``n`` paths: port 80 plus ``n - 1`` extra listeners from 8001 up."""
    global EXTRA_PORTS, PORTS
    EXTRA_PORTS = list(range(8001, 8001 + n - 1))
    PORTS = [80, *EXTRA_PORTS]


def bench_topology(work: Path):
    """reference.yaml + 49 listeners and the SG rules for them (see the module docstring)."""
    from agent.sources.topology import load_topology

    data = yaml.safe_load((REPO / "configs" / "lab" / "reference.yaml").read_text())
    res = data["resources"]
    for port in EXTRA_PORTS:
        res["aws_lb_listener"][f"nlb-{port}"] = {
            "account": "provider",
            "load_balancer_arn": "nlb",
            "port": port,
            "protocol": "TCP",
            "default_action": {"type": "forward", "target_group_arn": "server-80"},
        }
    lo, hi = EXTRA_PORTS[0], EXTRA_PORTS[-1]
    rules = res["aws_security_group_rule"]
    rules["client-2-egress-bench"] = {
        **rules["client-2-egress-endpoint"],
        "from_port": lo,
        "to_port": hi,
    }
    rules["endpoint-from-client-2-bench"] = {
        **rules["endpoint-from-client-2"],
        "from_port": lo,
        "to_port": hi,
    }
    rules["nlb-from-client-2-bench"] = {
        **rules["nlb-from-client-2"],
        "from_port": lo,
        "to_port": hi,
    }
    path = work / "footprint.yaml"
    path.write_text(dump_yaml(data))
    return load_topology(path)


def client_paths() -> list[dict]:
    base = yaml.safe_load((REPO / "configs" / "lab" / "client-2.yaml").read_text())["paths"][0]
    return [{**base, "name": f"ep-{port}", "ports": [port]} for port in PORTS]


def _sample(pids: dict[str, int]) -> dict[str, tuple[float, int]]:
    return {n: (cpu_seconds(p), rss_bytes(p)) for n, p in pids.items()}


def round_span(port: int) -> float | None:
    """Seconds from the first probe start to the last probe end of the latest round."""
    try:
        results = json.loads(get(f"http://127.0.0.1:{port}/v1/results", timeout=10))["results"]
    except (OSError, ValueError, KeyError):
        return None
    if not results:
        return None
    # the latest round: the results after the last gap of more than 2 s between probe starts
    # (a round starts its probes back to back; rounds of one schedule are ~9-10 s apart)
    starts = sorted(r["started_at"] for r in results)
    first = starts[0]
    for a, b in itertools.pairwise(starts):
        if b - a > 2.0:
            first = b
    recent = [r for r in results if r["started_at"] >= first]
    return max(r["started_at"] + r["duration_s"] for r in recent) - first


def measure(args: argparse.Namespace) -> dict:
    from agent.lab.expose import exposed
    from agent.lab.snapshot import write_snapshot

    with workdir("bench-fp") as work:
        topo = bench_topology(work)
        with lab_session(topo, "fp") as lab:
            dirs = write_snapshot(lab.topology, work / "snapshot", lab.target_health())
            cfg = client_config(
                work,
                interval=10,
                timeout=1,
                retries=1,
                paths=client_paths(),
                config_sources={"snapshot_dirs": [str(d) for d in dirs]},
            )
            procs = {"client": spawn_agent(lab, "client-2", cfg, work / "client.log")}
            for node in ("server-1", "server-2"):
                procs[node] = spawn_agent(
                    lab, node, PROVIDER, work / f"{node}.log", {"PLPROBE_AGENT_ID": node}
                )
            pids = {n: p.pid for n, p in procs.items()}
            spans: list[float] = []
            try:
                with exposed(lab.ns("client-2"), 9720) as port:
                    log(f"warm-up {args.warmup} s")
                    time.sleep(args.warmup)
                    t0 = time.monotonic()
                    first = last = _sample(pids)
                    samples = [(0.0, first)]
                    while time.monotonic() - t0 < args.duration:
                        left = max(0.0, args.duration - (time.monotonic() - t0))
                        time.sleep(min(args.sample, left))
                        last = _sample(pids)
                        samples.append((time.monotonic() - t0, last))
                        # every 6th sample: /v1/results of 1,000 paths costs the client CPU
                        span = round_span(port) if len(samples) % 6 == 0 else None
                        if span is not None:
                            spans.append(span)
                        c = last["client"]
                        log(
                            f"t={samples[-1][0]:.0f}s client cpu {c[0] - first['client'][0]:.2f}s "
                            f"rss {c[1] / 2**20:.1f} MiB round span {span}"
                        )
                    wall = samples[-1][0]
                    metrics = get(f"http://127.0.0.1:{port}/metrics", timeout=30)
            finally:
                for p in procs.values():
                    stop(p)
            out_logs = (work / "client.log").read_text()
    overruns = out_logs.count("overran its")
    out_logs = out_logs[-2000:]
    up = re.findall(r'^plprobe_path_up\{path="[^"]+"\} (\S+)$', metrics, re.M)
    probes = sum(
        float(v) for v in re.findall(r"^plprobe_probes_total\{[^}]*\} (\S+)$", metrics, re.M)
    )
    result: dict = {
        "benchmark": "footprint",
        "paths": len(PORTS),
        "interval_s": 10,
        "probe_kinds": ["dns", "tcp", "syn", "http"],
        "duration_s": round(wall, 1),
        "warmup_s": args.warmup,
        "paths_up_at_end": sum(1 for v in up if float(v) == 1.0),
        "paths_exported": len(up),
        "client_probes_total_at_end": int(probes),
        "goal": "50 paths: client <= 0.5 % of one core, <= 60 MB RSS; 1,000 paths: <= 5 %, "
        "<= 100 MB, no round overruns its interval",
        "round_span_max_s": round(max(spans), 3) if spans else None,
        "round_span_median_s": median(spans) if spans else None,
        "rounds_cut_off_for_overrunning": overruns,
    }
    for name in pids:
        cpu = last[name][0] - first[name][0]
        per_minute = []
        by_t = {round(t): s for t, s in samples}
        times = sorted(by_t)
        for i, t in enumerate(times):
            later = [u for u in times[i:] if u - t >= 60]
            if later:
                u = later[0]
                per_minute.append((by_t[u][name][0] - by_t[t][name][0]) / (u - t) * 100)
        rss = [s[name][1] for _, s in samples]
        result[name] = {
            "cpu_s": round(cpu, 3),
            "cpu_percent_of_core": round(cpu / wall * 100, 3),
            "median_cpu_percent_per_minute": median(per_minute) if per_minute else None,
            "rss_max_mib": round(max(rss) / 2**20, 1),
            "rss_last_mib": round(rss[-1] / 2**20, 1),
        }
    if result["paths_up_at_end"] != len(PORTS):
        result["warning"] = "not every path was up at the end; client log tail: " + out_logs
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--warmup", type=float, default=30.0)
    parser.add_argument("--sample", type=float, default=10.0)
    parser.add_argument("--paths", type=int, default=50)
    args = parser.parse_args()
    set_paths(args.paths)
    require_root()
    print(json.dumps(measure(args), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
