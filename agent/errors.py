"""The project's exception tree, in one place.

Only these types cross a module boundary; foreign failures (OSError, subprocess,
scapy, botocore, pydantic) are translated where they happen with ``raise X from exc``
and are caught only in the CLI, the HTTP API and the probe runner.

    PlprobeError                 base; ``exit_code`` tells the CLI what to return
    ├── ConfigError              bad input (file, line, column, key) -> exit 2
    │   └── TopologyError        a topology file that is not a consistent VPC layout
    ├── WireError                bytes that are not a valid token / reply / PROXY header
    │   ├── TruncatedError       more bytes are needed
    │   ├── MalformedError       the bytes can never be valid
    │   ├── ForgedError          HMAC does not verify
    │   └── ReplayError          valid HMAC, outside the freshness window or seen before
    ├── ProbeError               a probe could not run (not: a probe that failed)
    │   └── PrivilegeError       CAP_NET_RAW / root missing
    ├── LabError                 the emulator could not do what was asked
    │   ├── PrivilegeError       (also) not root / no netns support -> exit 2
    │   ├── RenderError          a topology the lab cannot render
    │   │   └── UnreplayableError  a snapshot the lab cannot rebuild (says what and why)
    │   └── ApplyError           a command failed (argv, returncode, stderr)
    └── SourceError              a configuration source could not be read -> exit 2
"""

from __future__ import annotations

from collections.abc import Sequence


class PlprobeError(Exception):
    """Base class; ``exit_code`` is what the CLI returns when this escapes a command."""

    exit_code = 1


class ConfigError(PlprobeError):
    """Bad input: names the file, the 1-based line/column and the dotted key."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        col: int | None = None,
        key: str | None = None,
    ) -> None:
        self.message = message
        self.path = path
        self.line = line
        self.col = col
        self.key = key
        super().__init__(str(self))

    def __str__(self) -> str:
        where = self.path or "<input>"
        if self.line is not None:
            where += f":{self.line}"
            if self.col is not None:
                where += f":{self.col}"
        key = f" {self.key}:" if self.key else ""
        return f"{where}:{key} {self.message}"


class TopologyError(ConfigError):
    """A topology that parses but does not describe a consistent set of VPC resources."""


class WireError(PlprobeError):
    """Bytes on the wire that cannot be accepted."""


class TruncatedError(WireError):
    """The buffer ends before the structure does; more bytes may complete it."""


class MalformedError(WireError):
    """The bytes are not, and can never become, a valid structure."""


class ForgedError(WireError):
    """The authenticator does not verify under our key."""


class ReplayError(WireError):
    """An authentic token that is too old, from the future, or already seen."""


class ProbeError(PlprobeError):
    """A probe could not be run at all (as opposed to a probe whose result is a failure)."""


class LabError(PlprobeError):
    """The lab emulator could not do what was asked."""


class PrivilegeError(LabError, ProbeError):
    """Root, CAP_NET_RAW or network-namespace support is missing."""

    exit_code = 2


class RenderError(LabError):
    """A topology that the lab cannot turn into namespaces and nftables."""

    exit_code = 2


class UnreplayableError(RenderError):
    """A snapshot the lab cannot rebuild; ``notes`` say which resources and why.

    ``notes`` are ``agent.lab.replay.ReplayNote`` values (kept untyped here so the ground
    floor does not import the lab).
    """

    def __init__(self, message: str, notes: Sequence[object] = ()) -> None:
        self.notes = list(notes)
        super().__init__(message)


class ApplyError(LabError):
    """A command run while applying the lab failed."""

    def __init__(self, argv: Sequence[str], returncode: int, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        super().__init__(f"{' '.join(self.argv)} exited {returncode}: {stderr.strip()}")


class SourceError(PlprobeError):
    """A configuration source (snapshot directory, live AWS) could not be read."""

    exit_code = 2
