"""Soak: both daemons in the lab for a long time, faults flapping, reloads, provider restarts.

A reference lab; ``plprobe run`` as the provider agent in server-1 and server-2
(configs/lab/provider.yaml) and as the client agent in client-2 (configs/lab/client-2.yaml
with a short interval and the lab's snapshot as its configuration view, re-written after each
change). Every ``--flap`` seconds the next change of the cycle is applied: break nlb-sg-ingress,
restore, cut the client NACL, restore, take the target service down, restore. Every
``--reload`` seconds the client and server-1 get SIGHUP; every ``--restart`` seconds server-2's
agent is stopped (SIGTERM) and started again.

Measured:

* after each change, the latency until the client's verdict shows it (``plprobe_path_up``
  flips, and after a restore no ``plprobe_path_blocked`` series is left: no stale culprit);
  every verdict in ``/v1/verdicts`` is fresh (``checked_at`` within a few intervals);
* RSS and open descriptors of the client and of server-1 (never restarted) every 5 s; growth is
  the median of the last fifth of the samples over the median of the first fifth, sampled from
  the end of the first full fault cycle (or a third of the run, if sooner: the warm-up of
  caches and allocator arenas);
* reloads that did not report ``plprobe_config_last_reload_successful 1``.

    sudo .venv/bin/python bench/soak.py --minutes 60            # the hour (not CI)
    sudo .venv/bin/python bench/soak.py --minutes 2.5 --flap 20  # what tests/lab runs

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _labkit import (
    PROVIDER,
    client_config,
    get,
    lab_session,
    log,
    metric_value,
    require_root,
    rss_bytes,
    spawn_agent,
    stop,
    wait_for,
    workdir,
)

PATH = "client-2/apne1-az4/80"
#: (what, control): None restores the lab
CYCLE: tuple[tuple[str, str | None], ...] = (
    ("break", "nlb-sg-ingress"),
    ("restore", None),
    ("nacl cut", "client-nacl"),
    ("restore", None),
    ("target down", "target-service"),
    ("restore", None),
)
SETTLE_TIMEOUT_S = 30.0


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Samples:
    rss: list[int] = field(default_factory=list)
    fds: list[int] = field(default_factory=list)

    def add(self, pid: int) -> None:
        with contextlib.suppress(OSError):
            self.rss.append(rss_bytes(pid))
            self.fds.append(fd_count(pid))

    def summary(self) -> dict[str, Any]:
        n = max(1, len(self.rss) // 5)
        first, last = statistics.median(self.rss[:n]), statistics.median(self.rss[-n:])
        return {
            "samples": len(self.rss),
            "rss_first_mb": round(first / 2**20, 1),
            "rss_last_mb": round(last / 2**20, 1),
            "rss_max_mb": round(max(self.rss) / 2**20, 1),
            "rss_growth_pct": round(100 * (last - first) / first, 2),
            "fds_first": self.fds[0],
            "fds_last": self.fds[-1],
            "fds_max": max(self.fds),
        }


def _blocked_series(text: str) -> list[str]:
    return [
        line
        for line in text.splitlines()
        if line.startswith("plprobe_path_blocked{") and f'path="{PATH}"' in line
    ]


def soak(minutes: float, flap_s: float, reload_s: float, restart_s: float) -> dict[str, Any]:
    from agent.lab.expose import exposed
    from agent.lab.snapshot import write_snapshot
    from agent.sources.topology import load_topology

    interval = 2.0
    topology = load_topology()
    topology.lab.health_check_interval_s = 0.5
    with workdir("soak") as work, lab_session(topology, "soak") as lab:

        def snapshot() -> list[Path]:
            return write_snapshot(lab.topology, work / "snapshot", lab.target_health())

        cfg = client_config(
            work,
            interval=interval,
            timeout=0.5,
            retries=0,
            config_sources={
                "snapshot_dirs": [str(d) for d in snapshot()],
                "refresh_interval": 1.0,
            },
        )
        providers = {
            node: spawn_agent(
                lab, node, PROVIDER, work / f"{node}.log", env={"PLPROBE_AGENT_ID": node}
            )
            for node in ("server-1", "server-2")
        }
        client = spawn_agent(lab, "client-2", cfg, work / "client.log")
        changes: list[dict[str, Any]] = []
        reload_failures = 0
        reloads = restarts = 0
        stale: list[str] = []
        samples = {"client": Samples(), "server-1": Samples()}
        try:
            with (
                exposed(lab.ns("client-2"), 9720) as cport,
                exposed(lab.ns("server-1"), 9720) as pport,
            ):
                curl = f"http://127.0.0.1:{cport}"
                purl = f"http://127.0.0.1:{pport}"

                def metrics() -> str:
                    return get(curl + "/metrics", 2)

                def settled(expect_up: bool) -> Callable[[], bool]:
                    def check() -> bool:
                        text = metrics()
                        up = metric_value(text, "plprobe_path_up", path=PATH)
                        blocked = _blocked_series(text)
                        if expect_up:
                            return up == 1.0 and not blocked
                        return up == 0.0 and len(blocked) == 1

                    return check

                wait_for("client path up", settled(True), 60)
                started = time.monotonic()
                deadline = started + minutes * 60
                next_flap = started + flap_s
                next_reload = started + reload_s
                next_restart = started + restart_s
                next_sample = started
                step = 0
                warm = False
                while time.monotonic() < deadline:
                    now = time.monotonic()
                    if now >= next_sample:
                        if warm:
                            samples["client"].add(client.pid)
                            samples["server-1"].add(providers["server-1"].pid)
                        next_sample = now + 5.0
                    if now >= next_reload:
                        for proc, url in ((client, curl), (providers["server-1"], purl)):
                            proc.send_signal(signal.SIGHUP)
                            reloads += 1
                            time.sleep(0.5)
                            ok = metric_value(
                                get(url + "/metrics", 2), "plprobe_config_last_reload_successful"
                            )
                            reload_failures += ok != 1.0
                        next_reload = now + reload_s
                    if now >= next_restart:
                        stop(providers["server-2"])
                        providers["server-2"] = spawn_agent(
                            lab,
                            "server-2",
                            PROVIDER,
                            work / "server-2.log",
                            env={"PLPROBE_AGENT_ID": "server-2"},
                        )
                        restarts += 1
                        next_restart = now + restart_s
                    if now >= next_flap:
                        what, control = CYCLE[step % len(CYCLE)]
                        t0 = time.monotonic()
                        if control is None:
                            lab.restore()
                        else:
                            lab.break_control(control, client="client-2")
                        snapshot()
                        try:
                            wait_for(what, settled(control is None), SETTLE_TIMEOUT_S, 0.1)
                            latency: float | None = round(time.monotonic() - t0, 2)
                        except TimeoutError:
                            latency = None
                        text = metrics()
                        culprit = [
                            s.split('control="')[1].split('"')[0] for s in _blocked_series(text)
                        ]
                        verdicts = json.loads(get(curl + "/v1/verdicts", 2))["verdicts"]
                        for v in verdicts:
                            age = time.time() - float(v["checked_at"])
                            if age > 3 * interval + 3:
                                stale.append(f"{v['path']} {age:.1f}s old after {what}")
                        changes.append(
                            {"change": what, "control": control, "latency_s": latency,
                             "culprit": culprit[0] if culprit else None}
                        )  # fmt: skip
                        log(f"{round(time.monotonic() - started)}s: {json.dumps(changes[-1])}")
                        step += 1
                        if step == len(CYCLE) or time.monotonic() - started > minutes * 20:
                            warm = True  # a full cycle or a third of the run: caches are warm
                        next_flap = time.monotonic() + flap_s
                    time.sleep(0.2)
                lab.restore()
                snapshot()
                with contextlib.suppress(TimeoutError):
                    wait_for("final restore", settled(True), SETTLE_TIMEOUT_S, 0.1)
                if not samples["client"].rss:  # too short to warm up: sample now
                    samples["client"].add(client.pid)
                    samples["server-1"].add(providers["server-1"].pid)
                final_blocked = _blocked_series(metrics())
        finally:
            stop(client)
            for proc in providers.values():
                stop(proc)
    latencies = [c["latency_s"] for c in changes if c["latency_s"] is not None]
    return {
        "benchmark": "soak",
        "minutes": minutes,
        "flap_s": flap_s,
        "client_interval_s": interval,
        "changes_n": len(changes),
        "changes_unsettled": sum(c["latency_s"] is None for c in changes),
        "median_latency_s": statistics.median(latencies) if latencies else None,
        "max_latency_s": max(latencies) if latencies else None,
        "reloads": reloads,
        "reload_failures": reload_failures,
        "provider_restarts": restarts,
        "stale_verdicts": stale,
        "blocked_series_after_final_restore": final_blocked,
        "client": samples["client"].summary(),
        "server-1": samples["server-1"].summary(),
        "changes": changes,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--flap", type=float, default=180.0, help="seconds between changes")
    parser.add_argument("--reload", type=float, default=60.0, help="seconds between SIGHUPs")
    parser.add_argument("--restart", type=float, default=300.0, help="provider restart period")
    args = parser.parse_args()
    require_root()
    result = soak(args.minutes, args.flap, args.reload, args.restart)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
