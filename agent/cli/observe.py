"""``plprobe observe --config provider.yaml``: the provider agent in the foreground.

Flags only: load the configuration and the key, then run ``agent.daemon.provider.serve`` until
SIGINT/SIGTERM (a second signal cancels at once: exit 130).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from agent.config import ProviderConfig, load_config, load_key, require_role
from agent.daemon.provider import serve

__all__ = ["register", "run_observe"]


def run_observe(config_path: str, *, allow_root: bool = False) -> int:
    """Load the configuration and key, then run ``serve`` until a signal."""
    from agent.privileges import check_root

    config = require_role(load_config(config_path), ProviderConfig, command="observe")
    key = load_key(config)
    check_root("observe", allow=allow_root)  # before anything listens
    try:
        return asyncio.run(serve(config, key, own_process=True))
    except asyncio.CancelledError:  # second signal
        return 130


def register(subparsers: Any) -> None:
    """Add ``observe`` to the ``plprobe`` command (agent/cli.py calls this)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "observe",
        help="run the provider agent in the foreground (responder, sniffer, /v1/observations)",
        description=(
            "Provider agent on an NLB target: answer probe tokens on the responder port, "
            "watch the service ports, serve /v1/observations; stop with Ctrl-C or SIGTERM."
        ),
    )
    parser.add_argument("--config", required=True, metavar="FILE", help="provider config YAML")
    parser.add_argument(
        "--allow-root",
        action="store_true",
        help="run even as root (refused otherwise; also PLPROBE_ALLOW_ROOT=1)",
    )
    parser.set_defaults(func=lambda args: run_observe(args.config, allow_root=args.allow_root))
