"""``make demo`` (``python -m agent.cli.demo``): the product in one minute, on the built-in lab.

1. build the reference lab (two clients, an interface endpoint, an NLB, two targets, two
   accounts) with a provider agent on every target;
2. ``check`` from inside each client: every path passes;
3. break ④ the way people do: the NLB security group allows the endpoint subnet instead of
   the client IPs (with "enforce inbound rules on PrivateLink traffic" on, the NLB sees the
   client's own IP, so every probe is dropped there);
4. ``check``: the verdict names ④ ``nlb-sg-ingress``, the rule that was checked and the fix;
5. restore, ``check`` again: all pass;
6. remove the lab — always, also on Ctrl-C or a failure.

Exit 0 when every step showed what it should, 1 when not, 2 without root (with the reason).
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from typing import TYPE_CHECKING, TextIO

from agent.errors import PlprobeError

if TYPE_CHECKING:
    from agent.lab.lab import Lab

BROKEN = "nlb-sg-ingress"


class _Screen:
    """Short headings and indented detail; the verdict tables are printed as ``check`` does."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.t0 = time.monotonic()
        self.colour = out.isatty() and not os.environ.get("NO_COLOR")

    def _c(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour else text

    def heading(self, step: str, text: str) -> None:
        stamp = f"{time.monotonic() - self.t0:5.1f}s"
        print(f"\n{self._c('1', f'{step} {text}')}  {self._c('2', stamp)}", file=self.out)

    def detail(self, text: str) -> None:
        print(self._c("2", f"    {text}"), file=self.out, flush=True)

    def block(self, text: str) -> None:
        for line in text.rstrip().splitlines():
            print(f"    {line}", file=self.out)
        self.out.flush()


def _check(lab: Lab, screen: _Screen) -> tuple[int, str]:
    """``lab check`` for every client; prints each client's verdict table."""
    from agent.lab.agents import check_clients

    code, text = 0, ""
    for run in check_clients(lab, output="table"):
        table = run.stdout.split("\nconfiguration:", 1)[0]  # the view line: once, below
        screen.detail(f"{run.client}: exit {run.returncode}")
        screen.block(table)
        for line in run.stdout.splitlines():  # where the provider's evidence came from
            if line.startswith("provider evidence:"):
                screen.detail(line)
        if run.returncode == 2 or (run.stderr.strip() and not run.stdout.strip()):
            screen.block(run.stderr)
        code = max(code, run.returncode)
        text += run.stdout
    return code, text


def run_demo(out: TextIO = sys.stdout) -> int:
    from agent.lab import agents
    from agent.lab.lab import Lab, require_privileges
    from agent.sources.topology import load_topology

    screen = _Screen(out)
    try:
        require_privileges()
    except PlprobeError as exc:
        print(f"plprobe demo: {exc}", file=sys.stderr)
        print(
            "The demo builds network namespaces and nftables rules: run it as root, e.g.",
            file=sys.stderr,
        )
        print("    sudo make demo", file=sys.stderr)
        return 2

    lab = Lab(f"demo{secrets.token_hex(3)}", progress=screen.detail)
    ok = True
    print(
        "plprobe demo: AWS PrivateLink across two accounts, emulated on this machine\n"
        "  client-1 (vpc-1, peered) and client-2 (vpc-2) -> interface endpoint 10.2.0.20 ->\n"
        "  NLB 10.3.0.100 (provider account) -> server-1, server-2 (HTTP on 80)\n"
        "  the provider's evidence reaches each client only through the endpoint (port 9721)",
        file=out,
    )
    try:
        screen.heading("[1/6]", "lab up, with a provider agent on every target")
        screen.detail("each client diagnoses with its own account's snapshot and what the")
        screen.detail("provider agents answer through the endpoint on the responder port")
        lab.up(load_topology())
        agents.start_agents(lab, lab.progress)
        lab.wait_health(lambda h: set(h.values()) == {"healthy"}, timeout=10)

        screen.heading("[2/6]", "check from inside each client: every path should pass")
        code, _ = _check(lab, screen)
        ok &= code == 0

        screen.heading(
            "[3/6]",
            "break ④: the NLB security group allows the endpoint subnet, not the client IPs",
        )
        lab.break_control(BROKEN)

        screen.heading("[4/6]", "check: which control, which rule, what to change")
        code, text = _check(lab, screen)
        ok &= code == 1 and BROKEN in text and "fix:" in text

        screen.heading("[5/6]", "restore the lab's original rules")
        lab.restore()

        screen.heading("[6/6]", "check: every path passes again")
        code, _ = _check(lab, screen)
        ok &= code == 0
    except KeyboardInterrupt:
        print("\nplprobe demo: interrupted, removing the lab", file=sys.stderr)
        ok = False
        raise
    except PlprobeError as exc:
        print(f"\nplprobe demo: {exc}", file=sys.stderr)
        ok = False
    finally:
        screen.heading("[done]", "lab down")
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C: still clean
        try:
            lab.down()
        finally:
            signal.signal(signal.SIGINT, previous)
    elapsed = time.monotonic() - screen.t0
    verdict = "as expected" if ok else "NOT as expected (see above)"
    print(f"\nplprobe demo finished in {elapsed:.1f} s: {verdict}", file=out)
    return 0 if ok else 1


def main() -> int:
    # Ctrl-C (even when started with SIGINT ignored) and SIGTERM both tear the lab down
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        return run_demo()
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
