"""``plprobe lab ...``: flags only; every command calls the ``Lab`` API.

    lab up [--topology FILE] [--name NAME] [--with-agents] [--with-prometheus]
                                                build (default: the reference topology);
                                                --with-agents: the daemons as deployed (a
                                                provider agent per target, plprobe run in every
                                                client, each API on 127.0.0.1);
                                                --with-prometheus: also a real Prometheus
                                                with the shipped alerts (prints its URL)
    lab up --from-snapshot CONSUMER_DIR PROVIDER_DIR [--output table|json]
                                                build from real describe-* output; says
                                                what it left out or assumed (replay.py)
    lab export [--name NAME] [--original] [--file FILE]
                                                the running lab as a topology file
    lab down [--name NAME] [--all]              remove everything (idempotent, crash leftovers too)
    lab status [--name NAME] [--output table|json]
    lab break CONTROL [--client NAME] [--name NAME]
    lab restore [--name NAME]                   back to the topology of ``lab up``
    lab apply FILE [--name NAME]                re-render an edited topology in place
    lab exec NODE [--name NAME] -- CMD...       exit with the command's code
    lab snapshot DIR [--name NAME]              AWS-shaped describe-* JSON per account
    lab render [--topology FILE] [--name NAME]  print the plan (no root needed)
    lab probe [--client NAME] [--output table|json]   one probe round inside each client node
    lab check [--client NAME] [--output table|json]   check inside each client node: verdicts
                                                (both agents' evidence, both accounts'
                                                snapshots; exit 0/1/2 like check)

Progress lines go to stderr; results to stdout. Missing root/netns: exit 2.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from agent.controls import BREAKABLE
from agent.lab import faults
from agent.lab.lab import Lab, all_lab_names, require_privileges, teardown
from agent.lab.plan import DEFAULT_NAME, check_lab_name, render
from agent.lab.procs import answer, in_netns
from agent.model import Topology

if TYPE_CHECKING:
    from agent.lab.replay import Replay


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _lab(args: argparse.Namespace) -> Lab:
    return Lab(args.name, progress=_progress)


def _load(path: str | None) -> Topology:
    from agent.sources.topology import load_topology

    return load_topology(path)


def _replay(args: argparse.Namespace) -> Replay | None:
    """``--from-snapshot``: the replayed topology; what was left out/assumed goes to stderr."""
    if not args.from_snapshot:
        return None
    from agent.errors import UnreplayableError
    from agent.lab.replay import ReplayNote, replay_snapshot

    try:
        replay = replay_snapshot(args.from_snapshot)
    except UnreplayableError as exc:
        if args.output == "json":
            notes = [n.to_json() for n in exc.notes if isinstance(n, ReplayNote)]
            print(json.dumps({"lab": args.name, "refused": str(exc), "notes": notes}, indent=2))
        raise
    for note in replay.notes:
        _progress(f"lab up: replay: {note.text()}")
    return replay


def _save_replay(lab: Lab, replay: Replay, output: str) -> None:
    """Keep the replayed document next to the lab state: the file to edit and ``lab apply``."""
    path = lab.dir / "replay.yaml"
    path.write_text(replay.yaml_text(f"plprobe lab up --from-snapshot (lab {lab.name})"))
    _progress(f"lab up: replayed topology in {path} (edit it, then plprobe lab apply it)")
    if output == "json":
        print(json.dumps({"lab": lab.name, "file": str(path), **replay.to_json()}, indent=2))


def cmd_up(args: argparse.Namespace) -> int:
    lab = _lab(args)
    replay = _replay(args)
    lab.up(replay.topology if replay and replay.topology else _load(args.topology))
    if replay is not None:
        _save_replay(lab, replay, args.output)
    if args.with_agents or args.with_prometheus:
        from agent.lab.deploy import start_deployment

        try:
            status = start_deployment(
                lab,
                lab.progress,
                prometheus=args.with_prometheus,
                rules=Path(args.prometheus_rules) if args.prometheus_rules else None,
                prometheus_port=args.prometheus_port,
            )
        except BaseException:
            lab.down()
            raise
        for agent in status["agents"]:
            print(f"{agent['node']}: {agent['command']}, API {agent['host_url']}/")
        if status["prometheus"]:
            print(f"prometheus: {status['prometheus']['url']}")
    return 0


def _redeploy(lab: Lab) -> None:
    """After a change: the deployed daemons' view re-written, what a rebuild killed restarted."""
    from agent.lab.deploy import ensure_deployment

    ensure_deployment(lab, lab.progress)


def _print_runs(runs: list, output: str, key: str) -> int:
    """Table: each client's output under a heading. JSON: one object keyed by client."""
    code = max((r.returncode for r in runs), default=0)
    if output == "json":
        body = {r.client: answer(r)[key] for r in runs}
        print(json.dumps({"clients": body}, indent=2))
        return code
    for r in runs:
        if r.stderr.strip():
            print(r.stderr.rstrip(), file=sys.stderr)
    return code


def _per_client(args: argparse.Namespace, run: Callable[..., list], key: str) -> int:
    """Run ``run`` (probe_clients or check_clients) for one client or every client in turn.

    One loop for both commands so that ``lab probe`` and ``lab check`` keep the same headings,
    capture rule and exit code.
    """
    lab = _lab(args)
    capture = args.output == "json"
    runs = []
    for client in [args.client] if args.client else [c.name for c in lab.original.clients()]:
        if not capture:
            print(f"== {client} ==", flush=True)
        runs += run(lab, client, output=args.output, capture=capture)
    return _print_runs(runs, args.output, key)


def cmd_probe(args: argparse.Namespace) -> int:
    from agent.lab.agents import probe_clients

    return _per_client(args, probe_clients, "round")


def cmd_check(args: argparse.Namespace) -> int:
    from agent.lab.agents import check_clients

    return _per_client(args, check_clients, "check")


def cmd_down(args: argparse.Namespace) -> int:
    if args.all:
        require_privileges()
        names = all_lab_names()
        for name in names:
            t0 = time.monotonic()
            n = teardown(name)
            _progress(f"lab down: {name}: {n} namespaces removed in {time.monotonic() - t0:.1f} s")
        if not names:
            _progress("lab down: no lab found")
        return 0
    require_privileges()
    _lab(args).down()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from agent.lab.deploy import deployment_status

    lab = _lab(args)
    status = lab.status()
    status["deployment"] = deployment_status(lab)
    if args.output == "json":
        print(json.dumps(status, indent=2))
        return 0
    print(f"lab {status['name']} ({status['source']})")
    print(f"\n{'NODE':30} {'ROLE':9} {'ACCOUNT':10} {'VPC':8} {'AZ':16} {'IP':12} NAMESPACE")
    for n in status["nodes"]:
        print(
            f"{n['node']:30} {n['role']:9} {n['account']:10} {n['vpc']:8} {n['az']:16} "
            f"{n['ip']:12} {n['namespace']}"
        )
    print("\nENDPOINT        STATE              ENIS")
    for ep in status["endpoints"]:
        print(f"{ep['name']:15} {ep['state']:18} {', '.join(ep['enis'])}")
        for name in ep["dns"]:
            print(f"{'':15} {name}")
    print("\nNLB NODE                       TARGETS")
    for node, h in status["health"].items():
        targets = ", ".join(f"{k}={v}" for k, v in sorted(h["targets"].items()))
        fail_open = [p for p, v in h["fail_open"].items() if v]
        extra = f"  (fail open on {', '.join(fail_open)})" if fail_open else ""
        print(f"{node:30} {targets or '-'}{extra}")
    dead = [p["process"] for p in status["processes"] if not p["alive"]]
    if dead:
        print(f"\nnot running: {', '.join(dead)}")
    for w in status["warnings"]:
        print(f"warning: {w}")
    _print_deployment(status["deployment"])
    return 0


def _print_deployment(deployment: dict) -> None:
    if deployment["agents"]:
        print(
            f"\n{'AGENT':16} {'ROLE':9} {'PROCESS':16} {'RUNNING':8} {'API (in node)':24} ON HOST"
        )
        for a in deployment["agents"]:
            print(
                f"{a['node']:16} {a['role']:9} {a['command']:16} "
                f"{'yes' if a['alive'] else 'NO':8} {a['api']:24} {a['host_url'] or '-'}"
            )
    prom = deployment["prometheus"]
    if prom:
        state = "" if prom["alive"] else " (NOT running)"
        print(f"\nprometheus: {prom['url']}{state}  rules: {prom['rules']}")


def cmd_break(args: argparse.Namespace) -> int:
    lab = _lab(args)
    fault = faults.get(args.control)
    if args.client and not fault.per_client:
        _progress(f"lab break: {args.control} is not per client; --client is ignored")
    how = lab.break_control(args.control, args.client)
    _redeploy(lab)
    who = f" for {args.client}" if args.client and fault.per_client else ""
    _progress(f"lab break: {args.control}{who}: {fault.description} ({how})")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    lab = _lab(args)
    how = lab.restore()
    _redeploy(lab)
    _progress(f"lab restore: back to the topology of lab up ({how})")
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    lab = _lab(args)
    how = lab.apply(_load(args.file))
    _redeploy(lab)
    _progress(f"lab apply: {args.file} ({how})")
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    argv = list(args.argv)
    # ``lab exec NODE --name X -- CMD``: REMAINDER swallows options after NODE
    while argv and argv[0] != "--" and argv[0].startswith("--name"):
        if argv[0] == "--name" and len(argv) > 1:
            args.name, argv = argv[1], argv[2:]
        else:
            args.name, argv = argv[0].split("=", 1)[1], argv[1:]
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print("plprobe: lab exec: give a command after --", file=sys.stderr)
        return 2
    lab = _lab(args)
    return subprocess.call(in_netns(lab.ns(args.node), argv), env=lab.env())


def cmd_snapshot(args: argparse.Namespace) -> int:
    lab = _lab(args)
    dirs = lab.snapshot(Path(args.dir))
    names = ", ".join(str(d) for d in dirs)
    _progress(f"lab snapshot: {len(dirs)} account directories: {names}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """The running lab (or its ``lab up`` topology) as a topology file ``lab apply`` reads."""
    from agent.lab.replay import export_text

    lab = _lab(args)
    topology = lab.original if args.original else lab.topology
    which = "as built by lab up" if args.original else "as it runs now"
    text = export_text(
        topology,
        header=f"plprobe lab export --name {lab.name}: the lab {which}",
        description=f"exported from lab {lab.name} ({topology.source or 'unknown source'})",
    )
    if args.file:
        Path(args.file).write_text(text)
        _progress(f"lab export: {args.file}")
    else:
        sys.stdout.write(text)
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    check_lab_name(args.name)
    plan = render(_load(args.topology), args.name)
    sys.stdout.write(plan.text())
    return 0


def cmd_expose(args: argparse.Namespace) -> int:
    """Forward 127.0.0.1:LOCAL to PORT inside NODE: the lab's stand-in for a monitoring network.

    The lab's VPCs are isolated like AWS's, so Prometheus on the host cannot reach an agent
    inside a node; this forwards one port until Ctrl-C.
    """
    from agent.lab import expose

    lab = _lab(args)
    return expose.main(
        [
            "--netns",
            lab.ns(args.node),
            "--upstream",
            f"127.0.0.1:{args.port}",
            "--port",
            str(args.local_port),
        ]
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    lab = subparsers.add_parser("lab", help="the local emulation of the PrivateLink path")
    sub = lab.add_subparsers(dest="lab_command", metavar="LAB_COMMAND")
    sub.required = True

    def add(
        name: str, func: Callable[[argparse.Namespace], int], help_: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--name", default=DEFAULT_NAME, help="lab name (default: %(default)s)")
        p.set_defaults(func=func)
        return p

    p = add("up", cmd_up, "build the lab")
    p.add_argument("--topology", help="topology YAML (default: the reference topology)")
    p.add_argument(
        "--with-agents",
        action="store_true",
        help="run the daemons as deployed: a provider agent on every target, plprobe run in "
        "every client; each agent's API on 127.0.0.1 (lab status lists them)",
    )
    p.add_argument(
        "--with-prometheus",
        action="store_true",
        help="also run a real Prometheus (Debian package) with the shipped alerts scraping every "
        "agent (implies --with-agents); prints its URL",
    )
    p.add_argument(
        "--prometheus-rules",
        metavar="FILE",
        help="rule file for that Prometheus (default: deploy/prometheus/alerts.yml)",
    )
    p.add_argument(
        "--prometheus-port", type=int, default=0, help="its port on 127.0.0.1 (default: any free)"
    )
    p.add_argument(
        "--from-snapshot",
        nargs=2,
        metavar=("CONSUMER_DIR", "PROVIDER_DIR"),
        help="build from describe-* snapshot directories (docs/SNAPSHOT.md) instead",
    )
    p.add_argument("--output", choices=("table", "json"), default="table")
    p = add("down", cmd_down, "remove the lab")
    p.add_argument("--all", action="store_true", help="remove every lab on this machine")
    p = add("status", cmd_status, "nodes, endpoint state, target health")
    p.add_argument("--output", choices=("table", "json"), default="table")
    p = add("break", cmd_break, "break one control the realistic way")
    p.add_argument("control", choices=BREAKABLE, metavar="CONTROL", help=", ".join(BREAKABLE))
    p.add_argument("--client", help="break it for this client only (per-client controls)")
    add("restore", cmd_restore, "return to the topology of lab up")
    p = add("apply", cmd_apply, "re-render an edited topology in place")
    p.add_argument("file")
    p = add("exec", cmd_exec, "run a command inside a node's namespace")
    p.add_argument("node")
    p.add_argument("argv", nargs=argparse.REMAINDER)
    p = add("snapshot", cmd_snapshot, "write AWS-shaped describe-* JSON for both accounts")
    p.add_argument("dir")
    p = add("probe", cmd_probe, "one probe round inside each client node, with provider evidence")
    p.add_argument("--client", help="only this client (default: every client)")
    p.add_argument("--output", choices=("table", "json"), default="table")
    p = add("check", cmd_check, "check inside each client node: verdicts with both accounts' view")
    p.add_argument("--client", help="only this client (default: every client)")
    p.add_argument("--output", choices=("table", "json"), default="table")
    p = add("expose", cmd_expose, "forward 127.0.0.1:LOCAL to PORT inside NODE (for Prometheus)")
    p.add_argument("node")
    p.add_argument("port", type=int, nargs="?", default=9720, help="port inside the node")
    p.add_argument("--local-port", type=int, default=0, help="local port (default: any free)")
    p = add("export", cmd_export, "write the running lab as a topology file")
    p.add_argument("--original", action="store_true", help="the topology of lab up instead")
    p.add_argument("--file", help="write here instead of stdout")
    p = add("render", cmd_render, "print the plan without applying it (no root needed)")
    p.add_argument("--topology", help="topology YAML (default: the reference topology)")
