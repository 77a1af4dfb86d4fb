"""Benchmark: CPU seconds per TCP probe, plprobe vs prometheus-blackbox-exporter, one run.

Both exporters run inside client-2's namespace of a reference lab and probe the same target
through the whole lab path (client-2 -> endpoint ENI 10.2.0.20:80 -> NLB -> server-1/2:80):

* ``plprobe run`` (client role, configs/lab/client-2.yaml with its schedule pushed to 1 h so
  only ``/probe`` work is measured) driven through ``/probe?target=10.2.0.20:80&module=tcp``
  (connect, send the 64-byte token, half-close, drain, close);
* ``/usr/bin/prometheus-blackbox-exporter`` (Debian) with a ``tcp_connect`` module
  (``prober: tcp``), driven through ``/probe?target=10.2.0.20:80&module=tcp_connect``.

A driver process, also inside client-2 (so no forwarder sits in between), asks one exporter
for ``--probes`` probes at ``--rate`` per second, sequentially (like a scraper), and checks
every answer says ``probe_success 1``. Each exporter's CPU time (utime+stime of the process,
all threads, /proc/<pid>/stat) is read before and after its batch. The two batches alternate
order from run to run; an idle window of the same length measures what each process burns
without probes (reported, and subtracted in the ``net`` numbers).

    sudo .venv/bin/python bench/bench_blackbox.py [--probes 500] [--rate 50] [--runs 5]

Prints one JSON object: medians, the ratio plprobe/blackbox (goal <= 1), every run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from pathlib import Path

from _labkit import (
    BLACKBOX,
    client_config,
    cpu_seconds,
    lab_session,
    log,
    median,
    require_root,
    spawn,
    spawn_agent,
    stop,
    workdir,
)

TARGET = "10.2.0.20:80"
PLPROBE_URL = f"http://127.0.0.1:9720/probe?target={TARGET}&module=tcp"
BLACKBOX_URL = f"http://127.0.0.1:9115/probe?target={TARGET}&module=tcp_connect"
BLACKBOX_CONFIG = "modules:\n  tcp_connect:\n    prober: tcp\n    timeout: 2s\n"


def drive(url: str, count: int, rate: float) -> dict:
    """Inside the namespace: ``count`` sequential GETs on a fixed schedule of ``rate``/s."""
    ok = failed = 0
    start = time.monotonic()
    for i in range(count):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                body = resp.read().decode()
            ok += "\nprobe_success 1" in "\n" + body
            failed += "\nprobe_success 1" not in "\n" + body
        except OSError:
            failed += 1
    return {"ok": ok, "failed": failed, "wall_s": round(time.monotonic() - start, 3)}


def batch(lab, pid: int, url: str, count: int, rate: float) -> dict:
    argv = [sys.executable, str(Path(__file__).resolve()), "--drive", url]
    argv += ["--probes", str(count), "--rate", str(rate)]
    before = cpu_seconds(pid)
    proc = lab.exec("client-2", argv, timeout=count / rate * 3 + 30)
    after = cpu_seconds(pid)
    if proc.returncode != 0:
        raise RuntimeError(f"driver failed: {proc.stderr[-800:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["cpu_s"] = round(after - before, 4)
    return result


def measure(args: argparse.Namespace) -> dict:
    from agent.sources.topology import load_topology

    with workdir("bench-bb") as work, lab_session(load_topology(), "bb") as lab:
        cfg = client_config(work, interval=3600, listen="127.0.0.1:9720")
        plp = spawn_agent(lab, "client-2", cfg, work / "plprobe.log")
        (work / "blackbox.yml").write_text(BLACKBOX_CONFIG)
        bb = spawn(
            lab,
            "client-2",
            [
                BLACKBOX,
                f"--config.file={work / 'blackbox.yml'}",
                "--web.listen-address=127.0.0.1:9115",
            ],
            work / "blackbox.log",
            ready_line="Listening on",
        )
        try:
            time.sleep(3)  # plprobe's first scheduled round (within 1 s of start) is over
            for name, url, pid in (("plprobe", PLPROBE_URL, plp.pid), ("bb", BLACKBOX_URL, bb.pid)):
                warm = batch(lab, pid, url, 50, args.rate)
                if warm["failed"]:
                    raise RuntimeError(f"{name}: warm-up probes failed: {warm}")
            runs = []
            for i in range(args.runs):
                order = [("plprobe", PLPROBE_URL, plp.pid), ("blackbox", BLACKBOX_URL, bb.pid)]
                if i % 2:
                    order.reverse()
                run: dict = {}
                for name, url, pid in order:
                    run[name] = batch(lab, pid, url, args.probes, args.rate)
                window = args.probes / args.rate
                idle0 = {n: cpu_seconds(p) for n, p in (("plprobe", plp.pid), ("blackbox", bb.pid))}
                time.sleep(window)
                for n, p in (("plprobe", plp.pid), ("blackbox", bb.pid)):
                    run[n]["idle_cpu_s"] = round(cpu_seconds(p) - idle0[n], 4)
                for n in ("plprobe", "blackbox"):
                    r = run[n]
                    r["cpu_ms_per_probe"] = round(r["cpu_s"] / args.probes * 1000, 4)
                    net = max(r["cpu_s"] - r["idle_cpu_s"], 0.0)
                    r["net_cpu_ms_per_probe"] = round(net / args.probes * 1000, 4)
                run["ratio"] = round(
                    run["plprobe"]["cpu_ms_per_probe"] / run["blackbox"]["cpu_ms_per_probe"], 3
                )
                run["net_ratio"] = round(
                    run["plprobe"]["net_cpu_ms_per_probe"]
                    / max(run["blackbox"]["net_cpu_ms_per_probe"], 1e-9),
                    3,
                )
                log(f"run {i + 1}/{args.runs}: {json.dumps(run)}")
                runs.append(run)
        finally:
            stop(plp)
            stop(bb)
    return {
        "benchmark": "blackbox",
        "target": TARGET,
        "path": "client-2 -> endpoint ENI -> NLB -> server (reference lab)",
        "probes_per_run": args.probes,
        "rate_per_s": args.rate,
        "runs_n": args.runs,
        "median_plprobe_cpu_ms_per_probe": median([r["plprobe"]["cpu_ms_per_probe"] for r in runs]),
        "median_blackbox_cpu_ms_per_probe": median(
            [r["blackbox"]["cpu_ms_per_probe"] for r in runs]
        ),
        "median_ratio": median([r["ratio"] for r in runs]),
        "median_plprobe_net_cpu_ms_per_probe": median(
            [r["plprobe"]["net_cpu_ms_per_probe"] for r in runs]
        ),
        "median_blackbox_net_cpu_ms_per_probe": median(
            [r["blackbox"]["net_cpu_ms_per_probe"] for r in runs]
        ),
        "median_net_ratio": median([r["net_ratio"] for r in runs]),
        "goal": "plprobe cpu per probe <= blackbox_exporter (ratio <= 1)",
        "runs": runs,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--probes", type=int, default=500)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--drive", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        print(json.dumps(drive(args.drive, args.probes, args.rate)))
        return 0
    require_root()
    print(json.dumps(measure(args), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
