"""``plprobe explain``: static analysis only — no packets, the same verdict shape as ``check``.

Reads a topology (the lab YAML with ``--topology``, or AWS-CLI snapshot directories, one per
account, with ``--snapshot``), walks every AZ path from the client to the endpoint and prints
one verdict per path. Exit 0 when every path passes, 1 when any fails, is degraded or cannot
be verified from the configuration that was read, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TextIO

from agent.diagnose.explain import explain
from agent.diagnose.report import verdict_table
from agent.diagnose.verdict import rollup
from agent.errors import ConfigError
from agent.model import Topology
from agent.results import Verdict


def load(args: argparse.Namespace) -> Topology:
    """The topology the flags name; the snapshot loader is imported only when used."""
    if args.topology is not None:
        from agent.sources.topology import load_topology

        return load_topology(args.topology)
    dirs = [Path(d) for d in args.snapshot]
    for d in dirs:
        if not d.is_dir():
            raise ConfigError(f"not a directory: {d}", key="--snapshot")
    from agent.sources.aws_snapshot import load_snapshot

    return load_snapshot(dirs)


def render_table(verdicts: list[Verdict], *, colour: bool) -> str:
    """One row per path (status, blocked_at), then the rule and the fix (agent.diagnose.report)."""
    return verdict_table(verdicts, colour=colour, stage=False)


def render_notes(notes: list[str]) -> str:
    """What the reader could not take as given (input cut short, resources skipped): printed
    below the verdicts so that a "not visible" caused by the input is never silent."""
    return "".join(f"note: {n}\n" for n in notes)


def render_json(verdicts: list[Verdict], notes: list[str] | None = None) -> str:
    body: dict[str, object] = {
        "status": rollup(verdicts),
        "verdicts": [v.to_json() for v in verdicts],
    }
    if notes:
        body["notes"] = list(notes)
    return json.dumps(body, indent=2)


def exit_code(verdicts: list[Verdict]) -> int:
    return 0 if verdicts and all(v.status == "pass" for v in verdicts) else 1


def run(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stream = out or sys.stdout
    topology = load(args)
    verdicts = explain(topology, args.client, args.port, args.endpoint)
    if args.output == "json":
        print(render_json(verdicts, topology.notes), file=stream)
    else:
        colour = stream.isatty() and not os.environ.get("NO_COLOR")
        print(render_table(verdicts, colour=colour), file=stream)
        stream.write(render_notes(topology.notes))
    return exit_code(verdicts)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "explain",
        help="static analysis of a client's path through the endpoint (no packets)",
        description="Walk every hop of the PrivateLink path on configuration alone and name "
        "the control, the rule and the fix. Exit 0 when every path passes, 1 otherwise, "
        "2 on bad input.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--snapshot",
        metavar="DIR",
        nargs="+",
        action="extend",
        help="AWS-CLI snapshot directories (one per account)",
    )
    src.add_argument("--topology", metavar="FILE", help="a lab topology YAML file")
    p.add_argument("--from", dest="client", required=True, metavar="CLIENT",
                   help="client instance name, id or private IP")  # fmt: skip
    p.add_argument("--port", type=int, required=True, help="the service port")
    p.add_argument("--endpoint", default=None, help="endpoint id or name (default: routable)")
    p.add_argument("--output", choices=("table", "json"), default="table")
    p.set_defaults(func=run)
