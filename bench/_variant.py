"""Run the ``plprobe`` CLI with a chosen event loop and ``/probe`` fast path (bench only).

    python bench/_variant.py --loop uvloop|asyncio --fast-probe on|off|default
        [--profile FILE] -- run --config F

Why a wrapper: the benchmarks compare variants of the same daemon side by side (issue 11:
plain aiohttp on uvloop vs the fast path vs blackbox_exporter) without product flags that
exist only to be measured. ``--loop`` replaces the daemon's ``event_loop_factory`` (and the
loop policy, for trees older than it); ``--fast-probe`` forces ``ApiServer(fast_probe=...)``
when the installed ``ApiServer`` still has that option (``default``: leave it alone);
``--profile`` writes a cProfile of the whole run to FILE at exit (the profiles in
docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--fast-probe", choices=("on", "off", "default"), default="default")
    parser.add_argument("--profile", metavar="FILE", help="write a cProfile here at exit")
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if args.loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        new_loop = uvloop.new_event_loop
    else:
        asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())
        new_loop = asyncio.new_event_loop
    from agent.cli import run

    if hasattr(run, "event_loop_factory"):  # the daemon picks its loop itself
        run.event_loop_factory = lambda: new_loop
    if args.fast_probe != "default":
        from agent.api import server

        init = server.ApiServer.__init__
        if "fast_probe" not in inspect.signature(init).parameters:
            sys.exit("this ApiServer has no fast path: use --fast-probe default")
        fast = args.fast_probe == "on"

        def patched(self, *a, **kw):  # type: ignore[no-untyped-def]
            kw["fast_probe"] = fast
            init(self, *a, **kw)

        server.ApiServer.__init__ = patched  # type: ignore[method-assign]
    from agent.cli import main as cli_main

    if not args.profile:
        return cli_main(argv)
    import cProfile

    profiler = cProfile.Profile()
    try:
        return profiler.runcall(cli_main, argv)
    finally:
        profiler.dump_stats(args.profile)


if __name__ == "__main__":
    raise SystemExit(main())
