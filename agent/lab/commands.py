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
from typing import Protocol

from agent.errors import ApplyError, LabError


class CommandRunner(Protocol):
    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess[str]: ...


class SubprocessRunner:
    """Runs commands for real; output is captured as text."""

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess[str]:
        try:
            proc = subprocess.run(
                list(argv), input=input, capture_output=True, text=True, timeout=timeout
            )
        except FileNotFoundError as exc:
            raise LabError(f"{argv[0]}: not installed (needed by the lab)") from exc
        except subprocess.TimeoutExpired as exc:
            raise ApplyError(argv, -1, f"timed out after {timeout} s") from exc
        except OSError as exc:
            raise LabError(f"{' '.join(argv)}: {exc}") from exc
        if check and proc.returncode != 0:
            detail = proc.stderr
            if input and "nft" in argv:
                detail += "\n--- input ---\n" + input
            raise ApplyError(argv, proc.returncode, detail)
        return proc


@dataclass
class FakeRunner:
    """Records every call; ``fail`` decides which argv fails (returncode 1)."""

    calls: list[tuple[list[str], str | None]] = field(default_factory=list)
    fail: Callable[[list[str]], bool] = field(default=lambda argv: False)

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess[str]:
        args = list(argv)
        self.calls.append((args, input))
        rc = 1 if self.fail(args) else 0
        if check and rc:
            raise ApplyError(args, rc, "fake failure")
        return subprocess.CompletedProcess(args, rc, "", "")
