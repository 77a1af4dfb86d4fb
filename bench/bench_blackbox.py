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
        [--variant NAME=LOOP,FAST ...]

``--variant`` (repeatable) runs several plprobe daemons side by side instead of the one
default daemon, each started through ``bench/_variant.py`` with an event loop (``asyncio`` or
``uvloop``) and a ``/probe`` fast-path setting (``on``, ``off``, ``default``), e.g.
``--variant aiohttp-uvloop=uvloop,off --variant fast-asyncio=asyncio,on``; every variant and
blackbox_exporter get one batch per run, in an order that rotates from run to run.

Prints one JSON object: medians, the ratio plprobe/blackbox (goal <= 0.8), every run.
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
    KEY,
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
VARIANT = Path(__file__).resolve().parent / "_variant.py"
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


def _plprobe_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/probe?target={TARGET}&module=tcp"


def _variants(specs: list[str]) -> dict[str, tuple[str, str]]:
    """``NAME=LOOP,FAST`` -> {NAME: (LOOP, FAST)}; none: the default daemon as shipped."""
    out: dict[str, tuple[str, str]] = {}
    for spec in specs:
        name, _, rest = spec.partition("=")
        loop, _, fast = rest.partition(",")
        out[name] = (loop or "asyncio", fast or "default")
    return out


def measure(args: argparse.Namespace) -> dict:
    from agent.sources.topology import load_topology

    variants = _variants(args.variant)
    with workdir("bench-bb") as work, lab_session(load_topology(), "bb") as lab:
        exporters: list[tuple[str, str, int]] = []  # (name, url, pid)
        procs = []
        try:
            if not variants:
                cfg = client_config(work, interval=3600, listen="127.0.0.1:9720")
                procs.append(spawn_agent(lab, "client-2", cfg, work / "plprobe.log"))
                exporters.append(("plprobe", PLPROBE_URL, procs[-1].pid))
            for i, (name, (loop, fast)) in enumerate(variants.items()):
                port = 9721 + i
                cfg = client_config(
                    work, f"client-{name}.yaml", interval=3600, listen=f"127.0.0.1:{port}"
                )
                argv = [sys.executable, str(VARIANT), "--loop", loop, "--fast-probe", fast]
                argv += ["--", "run", "--config", str(cfg)]
                procs.append(
                    spawn(
                        lab,
                        "client-2",
                        argv,
                        work / f"{name}.log",
                        env={"PLPROBE_KEY": KEY},
                        ready_line="plprobe run: API on",
                    )
                )
                exporters.append((name, _plprobe_url(port), procs[-1].pid))
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
            procs.append(bb)
            exporters.append(("blackbox", BLACKBOX_URL, bb.pid))
            time.sleep(3)  # plprobe's first scheduled round (within 1 s of start) is over
            for name, url, pid in exporters:
                warm = batch(lab, pid, url, 50, args.rate)
                if warm["failed"]:
                    raise RuntimeError(f"{name}: warm-up probes failed: {warm}")
            runs = []
            for i in range(args.runs):
                shift = i % len(exporters)
                order = exporters[shift:] + exporters[:shift]
                if i % 2:
                    order.reverse()
                run: dict = {}
                for name, url, pid in order:
                    run[name] = batch(lab, pid, url, args.probes, args.rate)
                window = args.probes / args.rate
                idle0 = {n: cpu_seconds(p) for n, _, p in exporters}
                time.sleep(window)
                for n, _, p in exporters:
                    run[n]["idle_cpu_s"] = round(cpu_seconds(p) - idle0[n], 4)
                for n, _, _ in exporters:
                    r = run[n]
                    r["cpu_ms_per_probe"] = round(r["cpu_s"] / args.probes * 1000, 4)
                    net = max(r["cpu_s"] - r["idle_cpu_s"], 0.0)
                    r["net_cpu_ms_per_probe"] = round(net / args.probes * 1000, 4)
                bb_ms = run["blackbox"]["cpu_ms_per_probe"]
                bb_net = max(run["blackbox"]["net_cpu_ms_per_probe"], 1e-9)
                for n, _, _ in exporters:
                    if n != "blackbox":
                        run[n]["ratio"] = round(run[n]["cpu_ms_per_probe"] / bb_ms, 3)
                        run[n]["net_ratio"] = round(run[n]["net_cpu_ms_per_probe"] / bb_net, 3)
                log(f"run {i + 1}/{args.runs}: {json.dumps(run)}")
                runs.append(run)
        finally:
            for proc in procs:
                stop(proc)
    names = [n for n, _, _ in exporters]
    out: dict = {
        "benchmark": "blackbox",
        "target": TARGET,
        "path": "client-2 -> endpoint ENI -> NLB -> server (reference lab)",
        "probes_per_run": args.probes,
        "rate_per_s": args.rate,
        "runs_n": args.runs,
        "variants": {n: {"loop": v[0], "fast_probe": v[1]} for n, v in variants.items()},
        "goal": "plprobe cpu per probe <= 0.8 x blackbox_exporter's",
    }
    for n in names:
        out[f"median_{n}_cpu_ms_per_probe"] = median([r[n]["cpu_ms_per_probe"] for r in runs])
        out[f"median_{n}_net_cpu_ms_per_probe"] = median(
            [r[n]["net_cpu_ms_per_probe"] for r in runs]
        )
        if n != "blackbox":
            out[f"median_{n}_ratio"] = median([r[n]["ratio"] for r in runs])
            out[f"median_{n}_net_ratio"] = median([r[n]["net_ratio"] for r in runs])
    out["runs"] = runs
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--probes", type=int, default=500)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=LOOP,FAST")
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
