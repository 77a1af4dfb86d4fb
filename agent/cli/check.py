"""``plprobe check --config FILE [--snapshot DIR ...] [--aws] [--output table|json]``.

One probe round plus diagnosis: which control blocked each path, which rule, the fix.

    exit 0  every path passes
    exit 1  any path fails, is degraded or cannot be decided (unknown)
    exit 2  bad input: the config, a provider config, a missing snapshot directory or a
            malformed snapshot (``agent/cli.py`` turns ConfigError/SourceError into 2)

The configuration view: ``--snapshot`` directories (one per account) or ``--aws`` (live,
read-only, the consumer side), else the config's ``config_sources``, else packets alone. The
round and the view's read run concurrently. A snapshot that cannot be read is bad input; a live
AWS read that fails is not (the network, not the user): the verdicts then rest on packets
alone and the output says so.

Table output: one row per path (status, stage, blocked at), then the rule and the fix indented
below it; colour only on a terminal (and never with ``NO_COLOR``). JSON:
``{"status", "verdicts": [...], "evidence": [...], "view", "notes", "provider_error"}`` with
the stable Verdict field names (docs/ARCHITECTURE.md).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from agent.config import INSECURE_NOTE, ClientConfig, load_config, load_key, require_role
from agent.diagnose.check import check, exit_code, render_json, render_table
from agent.diagnose.pipeline import SelfIdentity
from agent.diagnose.rounds import ObservationSource
from agent.errors import SourceError
from agent.sources.views import ConfigView, source_for

__all__ = ["check_command", "register"]


def check_command(
    config_path: str,
    *,
    snapshot: Sequence[str] | None = None,
    aws: bool = False,
    output: str = "table",
    out: TextIO | None = None,
    err: TextIO | None = None,
    me: SelfIdentity | None = None,
    provider: ObservationSource | None = None,
) -> int:
    """Load, probe, diagnose, print; returns the exit code (module docstring)."""
    stream = out or sys.stdout
    errs = err or sys.stderr
    config = require_role(load_config(config_path), ClientConfig, command="check")
    key = load_key(config)
    source = source_for(config, snapshot_dirs=snapshot, aws=aws)
    diagnosis, round_ = asyncio.run(check(config, key, source=source, me=me, provider=provider))
    view: ConfigView = diagnosis.view
    if view.error and view.kind == "snapshot":
        raise SourceError(f"cannot read the configuration view: {view.error}")
    notes: list[str] = []
    if round_.insecure:
        notes.append(INSECURE_NOTE)
        print(INSECURE_NOTE, file=errs)
    if round_.provider_error:
        notes.append(f"provider: {round_.provider_error}")
    if view.topology is not None:  # input cut short, resources skipped (docs/SNAPSHOT.md)
        notes.extend(view.topology.notes)
    if view.error:
        print(f"plprobe check: {view.note()}", file=errs)
    if output == "json":
        print(render_json(diagnosis, round_), file=stream)
    else:
        colour = stream.isatty() and not os.environ.get("NO_COLOR")
        stream.write(render_table(diagnosis, colour=colour, notes=notes, round_=round_))
    return exit_code(diagnosis)


def register(subparsers: Any) -> None:
    """Add ``check`` to the ``plprobe`` command (agent/cli.py calls this)."""
    p = subparsers.add_parser(
        "check",
        help="one probe round plus diagnosis: the control, the rule and the fix per path",
        description="Probe every configured path once and diagnose it with the configuration "
        "view (snapshot directories, live AWS, or the config's config_sources). Exit 0 when "
        "every path passes, 1 when any fails, is degraded or unknown, 2 on bad input.",
    )
    p.add_argument("--config", required=True, metavar="FILE", help="client agent config")
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--snapshot",
        metavar="DIR",
        nargs="+",
        action="extend",
        default=None,
        help="AWS-CLI snapshot directories, one per account (overrides config_sources)",
    )
    src.add_argument(
        "--aws", action="store_true", help="read the consumer account live (read-only)"
    )
    p.add_argument("--output", choices=("table", "json"), default="table")
    p.set_defaults(
        func=lambda args: check_command(
            args.config, snapshot=args.snapshot, aws=args.aws, output=args.output
        )
    )
