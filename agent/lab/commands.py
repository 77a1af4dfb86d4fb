"""The I/O boundary of the lab: every command it runs goes through a ``CommandRunner``.

The real runner is ``subprocess.run`` (the lab is driven from the CLI and from tests, not from
the agent's event loop); ``FakeRunner`` records argv lists so rendering and the applier's
command order can be tested without root. Commands are argv lists, never shell strings.
Failures become ``ApplyError(argv, returncode, stderr)``; a missing binary a ``LabError``.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from agent.errors import ApplyError, LabError


class CommandRunner:
    """Runs one argv and turns a failure into ``ApplyError``; subclasses say how it runs.

    The signature and the failure rule live here once, so the real runner and the fake (and
    a test's runner that injects failures) cannot drift apart.
    """

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess[str]:
        args = list(argv)
        proc = self._execute(args, input, timeout)
        if check and proc.returncode != 0:
            raise ApplyError(args, proc.returncode, self._failure_detail(args, input, proc))
        return proc

    def _execute(
        self, args: list[str], input: str | None, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        raise NotImplementedError

    def _failure_detail(
        self, args: list[str], input: str | None, proc: subprocess.CompletedProcess[str]
    ) -> str:
        """What ``ApplyError`` says besides the argv and the exit code."""
        return proc.stderr


class SubprocessRunner(CommandRunner):
    """Runs commands for real; output is captured as text."""

    def _execute(
        self, args: list[str], input: str | None, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                args, input=input, capture_output=True, text=True, timeout=timeout
            )
        except FileNotFoundError as exc:
            raise LabError(f"{args[0]}: not installed (needed by the lab)") from exc
        except subprocess.TimeoutExpired as exc:
            raise ApplyError(args, -1, f"timed out after {timeout} s") from exc
        except OSError as exc:
            raise LabError(f"{' '.join(args)}: {exc}") from exc

    def _failure_detail(
        self, args: list[str], input: str | None, proc: subprocess.CompletedProcess[str]
    ) -> str:
        # an nft ruleset error names a line of its input: show the input with it
        if input and "nft" in args:
            return proc.stderr + "\n--- input ---\n" + input
        return proc.stderr


@dataclass
class FakeRunner(CommandRunner):
    """Records every call; ``fail`` decides which argv fails (returncode 1)."""

    calls: list[tuple[list[str], str | None]] = field(default_factory=list)
    fail: Callable[[list[str]], bool] = field(default=lambda argv: False)

    def _execute(
        self, args: list[str], input: str | None, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        self.calls.append((args, input))
        return subprocess.CompletedProcess(args, 1 if self.fail(args) else 0, "", "")

    def _failure_detail(
        self, args: list[str], input: str | None, proc: subprocess.CompletedProcess[str]
    ) -> str:
        return "fake failure"
