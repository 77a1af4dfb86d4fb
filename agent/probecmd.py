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

from agent.config import ClientConfig, load_config, load_key
from agent.errors import ConfigError
from agent.runner import RoundResult, run_round

__all__ = ["format_table", "probe_command", "register"]

INSECURE_NOTE = "WARNING: insecure: true - probe tokens and replies are NOT authenticated"


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
    config = load_config(path)
    if not isinstance(config, ClientConfig):
        raise ConfigError(
            "plprobe probe needs role: client (this is a provider config; use plprobe observe)",
            path=path,
            key="role",
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


def _rtt(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}ms"


def format_table(result: RoundResult) -> str:
    """A fixed-column table; notes (errors, fallbacks, provider problems) below it."""
    header = ("PATH", "OUTCOME", "SEEN AT TARGET", "SOURCE AT TARGET", "RTT")
    rows = [
        (
            ev.path,
            ev.outcome,
            ev.seen_at_target,
            ev.source_at_target or "-",
            _rtt(ev.rtt_s),
        )
        for ev in result.evidence
    ]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    notes: list[str] = []
    if result.insecure:
        notes.append(INSECURE_NOTE)
    if result.provider_error:
        notes.append(f"provider: {result.provider_error}")
    for ev in result.evidence:
        if ev.proxy_endpoint_id or ev.proxy_client:
            notes.append(
                f"{ev.path}: PROXY v2 endpoint {ev.proxy_endpoint_id or '-'} "
                f"client {ev.proxy_client or '-'}"
            )
        for r in ev.results:
            if r.fallback:
                notes.append(f"{ev.path}: {r.fallback}")
            if r.outcome != "ok" and r.error:
                notes.append(f"{ev.path}: {r.probe} {r.outcome}: {r.error}")
    text = "\n".join(lines) + "\n"
    if notes:
        text += "\n" + "\n".join(dict.fromkeys(notes)) + "\n"
    return text
