"""``plprobe probe --config client.yaml [--output table|json]``: one round, per-path evidence.

Exit codes (agent/cli.py): 0 every path ok, 1 any path not ok, 2 bad input (the config, a
provider config given to a client command, a missing key). A run without authentication
(``insecure: true``) says so on stderr and in the JSON, every time.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any, TextIO

from agent.config import INSECURE_NOTE, ClientConfig, load_config, load_key, require_role
from agent.diagnose.report import format_table
from agent.diagnose.rounds import run_round

__all__ = ["probe_command", "register"]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "probe",
        help="run one round of probes and print per-path evidence",
        description="Run one round of probes from a client config and print, per path, the "
        "outcome, whether the target saw the probe, the source it saw and the round trip.",
    )
    parser.add_argument("--config", required=True, metavar="FILE", help="client agent config")
    parser.add_argument("--output", choices=("table", "json"), default="table")
    parser.set_defaults(func=lambda args: probe_command(args.config, output=args.output))


def probe_command(path: str, *, output: str = "table", out: TextIO | None = None) -> int:
    config = require_role(
        load_config(path), ClientConfig, command="probe", hint="use plprobe observe"
    )
    key = load_key(config)
    result = asyncio.run(run_round(config, key=key))
    stream = out or sys.stdout
    if config.insecure:
        print(INSECURE_NOTE, file=sys.stderr)
    if output == "json":
        json.dump(result.to_json(), stream, indent=2, sort_keys=False)
        stream.write("\n")
    else:
        stream.write(format_table(result))
    return 0 if result.all_ok else 1
