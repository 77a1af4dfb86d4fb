"""Benchmark: detection latency, from ``lab break`` to ``plprobe_path_up`` 0 and to the alert.

A reference lab; the client daemon (``plprobe run``, configs/lab/client-2.yaml as shipped:
``interval: 10``, ``timeout: 1``, ``retries: 1``, jitter +/-10 %) inside client-2 with the lab's
snapshot as its configuration view (re-written after each break and restore, re-read every
``--view-refresh`` s, so the alert names the control); its API exposed on 127.0.0.1 by
``agent.lab.expose``; a real Prometheus (Debian) scraping it every ``--scrape`` s, evaluating
every ``--scrape`` s, with the SHIPPED deploy/prometheus/alerts.yml (``for: 1m`` on
PrivateLinkPathDown) unless ``--for`` overrides it.

Per break (``--control``, default nlb-sg-ingress): wait a random 0..interval s (so the break
lands at a random phase of the probe schedule), ``Lab.break_control``, then poll the agent's
/metrics every 50 ms until ``plprobe_path_up{path="client-2/apne1-az4/80"}`` is 0 (time to
flip), and Prometheus' /api/v1/alerts every 250 ms until PrivateLinkPathDown is pending and then
firing; then restore and wait until the path is up and the alert is gone (recovery).

Goal (issue 5): flip <= interval + timeout (11 s with the shipped config). The alert adds the
scrape interval, the rule evaluation interval and the rule's ``for:``.

    sudo .venv/bin/python bench/bench_detection.py [--breaks 5] [--scrape 5] [--for 1m]

Prints one JSON object: medians and every break.
"""

from __future__ import annotations

import argparse
import json
import random
import time

import yaml
from _labkit import (
    REPO,
    Prometheus,
    client_config,
    get,
    lab_session,
    log,
    median,
    metric_value,
    require_root,
    scrape_config,
    spawn_agent,
    stop,
    wait_for,
    workdir,
)

PATH = "client-2/apne1-az4/80"
ALERT = "PrivateLinkPathDown"


def rules_copy(work, for_: str | None):
    src = REPO / "deploy" / "prometheus" / "alerts.yml"
    if for_ is None:
        return src
    data = yaml.safe_load(src.read_text())
    for group in data["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == ALERT:
                rule["for"] = for_
    out = work / "alerts.yml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out


def measure(args: argparse.Namespace) -> dict:
    from agent.lab.expose import exposed
    from agent.lab.snapshot import write_snapshot
    from agent.sources.topology import load_topology

    interval, timeout = 10.0, 1.0
    with workdir("bench-det") as work, lab_session(load_topology(), "det") as lab:

        def snapshot() -> list:
            return write_snapshot(lab.topology, work / "snapshot", lab.target_health())

        cfg = client_config(
            work,
            config_sources={
                "snapshot_dirs": [str(d) for d in snapshot()],
                "refresh_interval": args.view_refresh,
            },
        )
        client = spawn_agent(lab, "client-2", cfg, work / "client.log")
        breaks = []
        try:
            with exposed(lab.ns("client-2"), 9720) as port:
                metrics_url = f"http://127.0.0.1:{port}/metrics"

                def path_up() -> float | None:
                    return metric_value(get(metrics_url, 2), "plprobe_path_up", path=PATH)

                config = scrape_config({"client-2": port}, f"{args.scrape:g}s", f"{args.scrape:g}s")
                with Prometheus(work, config, rules_copy(work, args.for_)) as prom:
                    wait_for("path up", lambda: path_up() == 1.0, 30)
                    for i in range(args.breaks):
                        time.sleep(random.uniform(0, interval))
                        t0 = time.monotonic()
                        lab.break_control(args.control)
                        snapshot()
                        wait_for("path_up 0", lambda: path_up() == 0.0, 60, 0.05)
                        flip = time.monotonic() - t0
                        wait_for("pending", lambda: prom.alerts(ALERT), 120, 0.25)
                        pending = time.monotonic() - t0
                        firing_alerts = wait_for(
                            "firing", lambda: prom.alerts(ALERT, "firing"), 300, 0.25
                        )
                        firing = time.monotonic() - t0
                        control = firing_alerts[0]["labels"].get("control")  # type: ignore[index]
                        t1 = time.monotonic()
                        lab.restore()
                        snapshot()
                        wait_for("path_up 1", lambda: path_up() == 1.0, 60, 0.05)
                        up = time.monotonic() - t1
                        wait_for("resolved", lambda: not prom.alerts(ALERT), 120, 0.25)
                        resolved = time.monotonic() - t1
                        b = {
                            "flip_s": round(flip, 2),
                            "alert_pending_s": round(pending, 2),
                            "alert_firing_s": round(firing, 2),
                            "alert_control": control,
                            "restore_to_up_s": round(up, 2),
                            "restore_to_resolved_s": round(resolved, 2),
                        }
                        log(f"break {i + 1}/{args.breaks}: {json.dumps(b)}")
                        breaks.append(b)
        finally:
            stop(client)
    flips = [b["flip_s"] for b in breaks]
    return {
        "benchmark": "detection",
        "control": args.control,
        "client": {"interval_s": interval, "timeout_s": timeout, "retries": 1, "jitter": 0.1},
        "prometheus": {
            "scrape_interval_s": args.scrape,
            "evaluation_interval_s": args.scrape,
            "for": args.for_ or "1m (shipped)",
        },
        "breaks_n": len(breaks),
        "median_flip_s": median(flips),
        "max_flip_s": max(flips),
        "goal_flip_s": interval + timeout,
        "median_alert_pending_s": median([b["alert_pending_s"] for b in breaks]),
        "median_alert_firing_s": median([b["alert_firing_s"] for b in breaks]),
        "median_restore_to_up_s": median([b["restore_to_up_s"] for b in breaks]),
        "median_restore_to_resolved_s": median([b["restore_to_resolved_s"] for b in breaks]),
        "breaks": breaks,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--breaks", type=int, default=5)
    parser.add_argument("--control", default="nlb-sg-ingress")
    parser.add_argument("--scrape", type=float, default=5.0, help="scrape = evaluation interval")
    parser.add_argument("--for", dest="for_", default=None, help="override the alert's for:")
    parser.add_argument("--view-refresh", type=float, default=2.0)
    args = parser.parse_args()
    require_root()
    print(json.dumps(measure(args), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
