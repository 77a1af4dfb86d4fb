"""Benchmark: ``plprobe check`` as a user runs it, inside client-2 of a reference lab.

Goal (issue 11): wall <= 0.3 s on the healthy path; on a broken path (``nlb-sg-ingress``
broken: every SYN silently dropped) wall <= timeout x (1 + retries) + 0.3 s = 2.3 s with
client-2's shipped config (``timeout: 1``, ``retries: 1``).

Each run is ``ip netns exec <client-2> python -m agent check --config configs/lab/client-2.yaml``
started from this process; wall = fork to exit (``time.perf_counter``), CPU = the child's
user + system time (``os.wait4``). Several source trees can be compared (``--tree
before=/tmp/old``): the runs interleave tree by tree, so load on the shared machine hits every
tree alike. ``--tree`` defaults to this checkout.

    sudo .venv/bin/python bench/bench_check.py --runs 7 [--tree before=DIR --tree after=.]

Prints one JSON object (medians plus every run).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _labkit import CLIENT_2, KEY, REPO, lab_session, log, median, require_root, workdir


def _run_check(lab, tree: Path, pycache: Path) -> tuple[float, float, int]:
    """(wall s, CPU s, exit code) of one ``plprobe check`` from ``tree`` inside client-2.

    Bytecode is cached (in ``pycache``, not in the tree) as for an installed package: the
    first, unmeasured run of each tree writes it.
    """
    env = {**os.environ, **lab.env(), "PLPROBE_KEY": KEY, "PYTHONPATH": str(tree)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    argv = ["ip", "netns", "exec", lab.ns("client-2"), sys.executable, "-m", "agent", "check"]
    argv += ["--config", str(CLIENT_2)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, cwd=tree, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, proc.returncode


def measure(args: argparse.Namespace) -> dict:
    from agent.sources.topology import load_topology

    trees = dict(t.split("=", 1) for t in args.tree) if args.tree else {"this": str(REPO)}
    runs: dict[str, dict[str, list]] = {
        case: {label: [] for label in trees} for case in ("healthy", "broken")
    }
    with workdir("bench-check") as pycache, lab_session(load_topology(None), "chk") as lab:
        for case in ("healthy", "broken"):
            if case == "broken":
                lab.break_control("nlb-sg-ingress")
            want = 0 if case == "healthy" else 1
            for tree in trees.values():  # warm the page cache and .pyc files
                _run_check(lab, Path(tree).resolve(), pycache)
            for i in range(args.runs):
                order = list(trees.items())
                if i % 2:
                    order.reverse()
                for label, tree in order:
                    wall, cpu, code = _run_check(lab, Path(tree).resolve(), pycache)
                    if code != want:
                        raise RuntimeError(f"{case} run of {label}: exit {code}, expected {want}")
                    runs[case][label].append((round(wall, 3), round(cpu, 3)))
                    log(f"{case} {label} run {i + 1}: wall {wall:.3f} s, cpu {cpu:.3f} s")
    out: dict = {
        "benchmark": "check",
        "command": f"ip netns exec <client-2> python -m agent check --config {CLIENT_2.name}",
        "goal": "healthy wall <= 0.3 s; broken wall <= 2.3 s (timeout 1 s x 2 attempts + 0.3)",
        "trees": trees,
    }
    for case, by_tree in runs.items():
        out[case] = {
            label: {
                "median_wall_s": median([w for w, _ in rs]),
                "median_cpu_s": median([c for _, c in rs]),
                "runs": rs,
            }
            for label, rs in by_tree.items()
        }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--tree", action="append", default=[], metavar="LABEL=DIR", help="source tree to run"
    )
    args = parser.parse_args()
    require_root()
    print(json.dumps(measure(args), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
