"""The ``plprobe`` command: flags only; each command is a plain function in its own module.

Command groups live next to what they drive and register themselves here through
``register(subparsers)``; this module owns the top-level parser, the exit codes and the one
place where the project's errors are turned into a message instead of a traceback:

    exit 0  success (every path passes)
    exit 1  a path failed / is degraded, or a runtime error
    exit 2  bad input (configuration, topology, flags, missing privileges)
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import NoReturn

from agent import __version__
from agent.errors import PlprobeError

#: modules with a ``register(subparsers)`` function, in the order they appear in --help
COMMAND_MODULES: tuple[str, ...] = (
    "agent.cli.check",
    "agent.cli.explain",
    "agent.cli.probe",
    "agent.cli.run",
    "agent.cli.observe",
    "agent.cli.config",
    "agent.cli.lab",
)


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad flags already; make its message match ours."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        print(f"plprobe: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _command_module(argv: Sequence[str]) -> str | None:
    """The one command module ``argv`` needs, or None when it names no known command.

    Why: registering a command imports its module, and every module's imports together
    (the lab, the provider daemon, aiohttp's server, ...) were ~0.1 s of a ``plprobe check``
    that should feel instant. The only top-level option is the flag ``--debug``, so the first
    argument that is not an option is the command. Without one (``--help``, a typo) every
    command is registered, so help and argparse's errors list them all.
    """
    first = next((a for a in argv if not a.startswith("-")), None)
    if first == "version":  # built in: needs no command module at all
        return "version"
    return next((m for m in COMMAND_MODULES if m.rsplit(".", 1)[-1] == first), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The ``plprobe`` parser; given ``argv``, with only the command it names (if any)."""
    parser = _Parser(
        prog="plprobe",
        description="Connection testing for AWS PrivateLink: which control blocked the path.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    version = sub.add_parser("version", help="print the version")
    version.set_defaults(func=lambda args: print(f"plprobe {__version__}") or 0)
    only = _command_module(argv) if argv is not None else None
    for name in (only,) if only else COMMAND_MODULES:
        if name != "version":
            importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except PlprobeError as exc:
        if args.debug:
            raise
        print(f"plprobe: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("plprobe: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
