"""``plprobe run --config FILE [--listen HOST:PORT]``: the daemon (agent/daemon/), either role.

Flags only: the file is loaded and checked once here (a bad file exits 2 before anything
listens), logging is set up per ``log_format``, then ``Daemon.serve()`` runs on uvloop's event
loop (``event_loop_factory``) until SIGTERM or SIGINT. ``python -m agent.cli.run --config
FILE`` is the same command without the ``plprobe`` wrapper (used by tests and by images that
start the daemon directly).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from agent.config import check_listen, load_config, load_key
from agent.errors import ConfigError

__all__ = ["event_loop_factory", "main", "register", "run_daemon"]


def run_daemon(
    config_path: str, *, listen: str | None = None, debug: bool = False, allow_root: bool = False
) -> int:
    """Load the config and key, then serve until a stop signal; 130 after a second signal."""
    from agent.daemon.server import Daemon
    from agent.logs import setup_logging
    from agent.privileges import check_root

    check_root("run", allow=allow_root)

    config = load_config(config_path)
    if listen is not None:
        try:
            check_listen(listen)
        except ValueError as exc:
            raise ConfigError(str(exc), key="--listen") from None
    key = load_key(config)
    check_root("run", allow=allow_root)  # before anything listens
    setup_logging(config.log_format, level=logging.DEBUG if debug else logging.INFO)

    async def main() -> int:
        daemon = Daemon(config, key, listen=listen, out=sys.stdout)
        return await daemon.serve()

    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            return runner.run(main())
    except asyncio.CancelledError:  # second signal
        return 130


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """The daemon's event loop: uvloop's.

    Why: a daemon's cost per round and per ``/probe`` is mostly event-loop work (wake-ups,
    socket readiness, timers, the resolver's thread hand-off, which uvloop does in C through
    libuv's pool — still the system ``getaddrinfo``); uvloop cut the CPU per ``/probe`` by
    ~10 % and a round's by more (docs/BENCHMARKS.md). One-shot commands keep asyncio's loop:
    importing uvloop would cost them more than it saves.
    """
    import uvloop

    return uvloop.new_event_loop


def _add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE", help="agent config YAML")
    parser.add_argument(
        "--listen", default=None, metavar="HOST:PORT", help="override the config's listen"
    )
    parser.add_argument(
        "--allow-root",
        action="store_true",
        help="run even as root (refused otherwise; also PLPROBE_ALLOW_ROOT=1)",
    )


def register(subparsers: Any) -> None:
    """Add ``run`` to the ``plprobe`` command (agent/cli.py calls this)."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "run",
        help="run the agent as a daemon (client or provider role, from the config)",
        description="Run continuously: probe on a schedule and diagnose (client), or answer "
        "and observe probes (provider); serve /metrics, /healthz, /v1/* and /probe. "
        "SIGHUP or POST /-/reload re-reads the config; SIGTERM stops within 2 s.",
    )
    _add_flags(parser)
    parser.set_defaults(
        func=lambda args: run_daemon(
            args.config,
            listen=args.listen,
            debug=getattr(args, "debug", False),
            allow_root=args.allow_root,
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m agent.cli.run``: the ``run`` command on its own, through the one CLI entry
    (same exit codes, same error messages); ``--debug`` may come anywhere."""
    from agent.cli import main as cli_main

    args = list(sys.argv[1:] if argv is None else argv)
    debug = ["--debug"] if "--debug" in args else []
    return cli_main([*debug, "run", *(a for a in args if a != "--debug")])


if __name__ == "__main__":
    raise SystemExit(main())
