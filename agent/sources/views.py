"""Configuration views: where diagnosis reads the Topology from, and how often it re-reads it.

A *view* is what this agent's own credentials let it see of the AWS configuration: AWS-CLI
snapshot directories (``config_sources.snapshot_dirs`` or ``check --snapshot``), live AWS
(``config_sources.aws`` or ``check --aws``), or nothing (packets alone). Each source is a plain
blocking ``load() -> Topology`` — the snapshot parser and boto3 are synchronous — and the
``ViewKeeper`` runs it in a worker thread with an explicit timeout, so the event loop never waits
on a disk or on AWS.

Refresh policy (the daemon; ``check`` loads once):

- a view refreshes on its own interval (``config_sources.refresh_interval``, default 300 s),
  slower than probing: configuration changes rarely and live reads cost API calls;
- a failed refresh keeps the last good view and says so (``ConfigView.error`` and
  ``stale_since``): a flaky API must not turn a diagnosed path into a packets-only one;
- after a failure the next attempt comes sooner than the interval but backs off exponentially
  (``backoff_initial_s`` doubling up to the interval), so an outage is not hammered;
- only one load runs at a time: a load that overruns its timeout keeps its thread (threads
  cannot be cancelled) and the next refresh is skipped until it has finished — a skipped
  refresh still moves ``next_due`` on by the backoff, and ``run()`` always sleeps at least
  ``min_sleep_s``, so a hung read can never turn the refresh loop into a busy loop that
  starves the event loop (and with it the very thread completion it waits for);
- a source that fails in an unexpected way (a bug: any exception) is logged with its
  traceback and treated like any failed refresh, so the refresh task never dies.

Snapshot reading and memory (the daemon): comparing each file with the AWS API's output shape
needs botocore's EC2 service model, which costs ~23 MiB of resident memory for as long as the
process lives (measured: a client daemon 54 -> 77 MiB, against a 60 MB goal). That comparison
only adds advisory notes (every member plprobe uses is checked by the parser itself, with the
same error either way), so a ``SnapshotSource(botocore_notes=False)`` — what ``plprobe run``
uses, via ``for_daemon`` — skips it and never imports botocore. One-shot commands (``check``,
``explain``) keep the notes.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from agent.config import AgentConfig, AwsSource, ClientConfig
from agent.errors import ConfigError, PlprobeError, SourceError
from agent.model import Topology
from agent.sources.aws_actions import Side

__all__ = [
    "ConfigView",
    "LiveSource",
    "SnapshotSource",
    "ViewKeeper",
    "ViewSource",
    "fingerprint",
    "for_daemon",
    "load_once",
    "source_for",
]

log = logging.getLogger(__name__)

#: seconds a live AWS read may take (many paginated describe-* calls with retries)
LIVE_TIMEOUT_S = 120.0
#: seconds a snapshot directory read may take
SNAPSHOT_TIMEOUT_S = 30.0


class ViewSource(Protocol):
    """One place configuration can be read from; ``load`` blocks (run it in a thread)."""

    # Read-only properties: the sources are frozen dataclasses (and ``description`` is computed).

    @property
    def kind(self) -> str:
        """The ``plprobe_evidence_source_up{source}`` label: "snapshot" or "aws"."""
        ...

    @property
    def description(self) -> str:
        """For messages: the directories, the region / role."""
        ...

    @property
    def timeout_s(self) -> float: ...

    def load(self) -> Topology: ...


#: how often a snapshot is re-read when its files change while being read
_SNAPSHOT_READ_TRIES = 3


def _fingerprint(dirs: Sequence[Path]) -> str:
    """A digest of every file under ``dirs`` (names and content): "did the snapshot change"."""
    digest = hashlib.sha256()
    for d in dirs:
        for f in sorted(d.rglob("*")):
            if f.is_file():
                digest.update(f"{f.relative_to(d)}\0{d}\0".encode())
                try:
                    digest.update(f.read_bytes())
                except OSError as exc:
                    raise SourceError(f"{f}: cannot read: {exc.strerror or exc}") from exc
    return digest.hexdigest()


def fingerprint(dirs: Sequence[Path]) -> str:
    """Public name of the snapshot digest, for readers that reload on change (provider)."""
    return _fingerprint(dirs)


@dataclass(frozen=True)
class SnapshotSource:
    """AWS-CLI snapshot directories, one per account (agent/sources/aws_snapshot.py)."""

    dirs: tuple[Path, ...]
    timeout_s: float = SNAPSHOT_TIMEOUT_S
    kind: str = "snapshot"
    #: compare the files with botocore's output shapes for advisory notes (module docstring)
    botocore_notes: bool = field(default=True, compare=False)

    @property
    def description(self) -> str:
        return "snapshot " + ", ".join(str(d) for d in self.dirs)

    def load(self) -> Topology:
        from agent.sources.aws_snapshot import load_snapshot, parse_accounts, read_account_dir

        for d in self.dirs:
            if not d.is_dir():
                raise SourceError(f"snapshot directory not found: {d}")
        if self.botocore_notes:
            return load_snapshot(list(self.dirs))
        for _ in range(_SNAPSHOT_READ_TRIES):
            before = _fingerprint(self.dirs)
            topology = parse_accounts([read_account_dir(d, validate=False) for d in self.dirs])
            if _fingerprint(self.dirs) == before:  # not a mix of old and new files
                return topology
        raise SourceError(f"{self.description}: the files kept changing while being read")


@dataclass(frozen=True)
class LiveSource:
    """Live, read-only AWS for the side this agent runs on (its own credentials).

    The client reads the consumer account, the provider the provider account: each side
    evaluates only what its own credentials can read (docs/DIAGNOSIS.md).
    """

    side: Side
    aws: AwsSource
    timeout_s: float = LIVE_TIMEOUT_S
    kind: str = "aws"

    @property
    def description(self) -> str:
        parts = [f"aws {self.side}"]
        if self.aws.region:
            parts.append(self.aws.region)
        if self.aws.profile:
            parts.append(f"profile {self.aws.profile}")
        if self.aws.role_arn:
            parts.append(f"role {self.aws.role_arn}")
        return " ".join(parts)

    def load(self) -> Topology:
        from agent.sources.aws_live import LiveOptions, load_live

        options = LiveOptions(
            region=self.aws.region, profile=self.aws.profile, role_arn=self.aws.role_arn
        )
        return load_live([(self.side, options)])


def source_for(
    config: AgentConfig,
    *,
    snapshot_dirs: Sequence[str] | None = None,
    aws: bool = False,
) -> ViewSource | None:
    """The view source: command-line flags win, else ``config_sources``; ``None`` = packets only.

    Snapshot directories in the config are relative to the config file; those on the command
    line to the working directory. A missing directory is bad input (``ConfigError``).
    """
    side: Side = "consumer" if isinstance(config, ClientConfig) else "provider"
    if snapshot_dirs:
        dirs = tuple(Path(d).expanduser() for d in snapshot_dirs)
        key = "--snapshot"
    elif aws:
        return LiveSource(side, config.config_sources.aws or AwsSource())
    elif config.config_sources.snapshot_dirs:
        dirs = tuple(config.resolve_file(d) for d in config.config_sources.snapshot_dirs)
        key = "config_sources.snapshot_dirs"
    elif config.config_sources.aws is not None:
        return LiveSource(side, config.config_sources.aws)
    else:
        return None
    for d in dirs:
        if not d.is_dir():
            raise ConfigError(f"snapshot directory not found: {d}", path=config.source, key=key)
    return SnapshotSource(dirs)


def for_daemon(source: ViewSource | None) -> ViewSource | None:
    """The source as a long-running daemon reads it: snapshot validation in a child."""
    if isinstance(source, SnapshotSource) and source.botocore_notes:
        return replace(source, botocore_notes=False)
    return source


@dataclass(frozen=True)
class ConfigView:
    """The configuration diagnosis uses right now, and how fresh it is."""

    topology: Topology | None
    kind: str  # "snapshot" | "aws" | "none"
    description: str = "no configuration view: diagnosis on packets alone"
    #: when ``topology`` was read (unix seconds; 0 = never)
    loaded_at: float = 0.0
    #: the last refresh failed: why (the topology, if any, is the last good one)
    error: str | None = None
    #: since when refreshes have been failing (None: the last one succeeded)
    stale_since: float | None = None

    @property
    def stale(self) -> bool:
        return self.error is not None

    def note(self) -> str:
        """One line for verdict evidence and logs: which view, and whether it is stale."""
        if self.topology is None:
            if self.error:
                return f"configuration view unavailable ({self.description}): {self.error}"
            return self.description
        text = f"configuration: {self.description}, read {_ago(self.loaded_at)}"
        if self.error:
            text += f"; refresh failing since {_ago(self.stale_since or 0)}: {self.error}"
        return text

    def to_json(self) -> dict[str, object]:
        body: dict[str, object] = {
            "source": self.kind,
            "description": self.description,
            "loaded_at": self.loaded_at or None,
            "stale": self.stale,
            "error": self.error,
        }
        if self.topology is not None and self.topology.notes:
            # what the reader could not take as given (input cut short, resources skipped)
            body["notes"] = list(self.topology.notes)
        return body


def _ago(when: float) -> str:
    if not when:
        return "never"
    return f"{max(time.time() - when, 0.0):.0f}s ago"


NO_VIEW = ConfigView(topology=None, kind="none")


@dataclass
class ViewKeeper:
    """Holds the current view and refreshes it on its own interval, with backoff on failure."""

    source: ViewSource | None
    interval_s: float = 300.0
    backoff_initial_s: float = 5.0
    clock: Callable[[], float] = time.time
    #: called after every refresh attempt with (source kind, success)
    on_refresh: Callable[[str, bool], None] | None = None
    view: ConfigView = field(init=False)
    failures: int = field(default=0, init=False)
    #: ``run()`` sleeps at least this long between attempts (module docstring)
    min_sleep_s: float = 0.1
    next_due: float = field(default=0.0, init=False)
    _inflight: asyncio.Future[Topology] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.source is None:
            self.view = NO_VIEW
        else:
            self.view = ConfigView(None, self.source.kind, self.source.description)

    def backoff_s(self) -> float:
        """Delay before the next attempt after ``failures`` consecutive failures."""
        if self.failures == 0:
            return self.interval_s
        return min(self.backoff_initial_s * 2 ** (self.failures - 1), self.interval_s)

    async def refresh(self) -> ConfigView:
        """Read the source once (in a thread, bounded); keep the last good view on failure."""
        source = self.source
        if source is None:
            return self.view
        if self._inflight is not None and not self._inflight.done():
            log.warning("configuration view: previous read of %s still running", source.kind)
            self.next_due = self.clock() + self.backoff_s()
            return self.view
        self._inflight = asyncio.ensure_future(asyncio.to_thread(source.load))
        now = self.clock()
        try:
            async with asyncio.timeout(source.timeout_s):
                topology = await asyncio.shield(self._inflight)
        except TimeoutError:
            self._failed(source, f"no answer within {source.timeout_s:g}s", now)
        except PlprobeError as exc:
            self._failed(source, str(exc), now)
        except (OSError, ValueError) as exc:  # a source bug must not stop the daemon
            self._failed(source, f"{type(exc).__name__}: {exc}", now)
        except Exception as exc:  # a bug in a source: log it, keep refreshing
            log.exception("configuration view %s: unexpected error", source.description)
            self._failed(source, f"{type(exc).__name__}: {exc}", now)
        else:
            if self.view.stale:
                log.info("configuration view %s recovered", source.description)
            self.failures = 0
            self.view = ConfigView(topology, source.kind, source.description, loaded_at=now)
            self.next_due = now + self.interval_s
            self._report(source.kind, True)
        return self.view

    def _failed(self, source: ViewSource, error: str, now: float) -> None:
        self.failures += 1
        self.view = replace(self.view, error=error, stale_since=self.view.stale_since or now)
        self.next_due = now + self.backoff_s()
        kept = "keeping the last good view" if self.view.topology else "no view yet"
        log.warning(
            "configuration view %s: refresh failed (%s); %s; next attempt in %.0fs",
            source.description,
            error,
            kept,
            self.next_due - now,
        )
        self._report(source.kind, False)

    def _report(self, kind: str, ok: bool) -> None:
        if self.on_refresh is not None:
            self.on_refresh(kind, ok)

    async def run(self) -> None:
        """Refresh whenever due, forever (cancel to stop); the first refresh is immediate."""
        if self.source is None:
            return
        if self.next_due <= self.clock():
            await self.refresh()
        while True:
            await asyncio.sleep(max(self.next_due - self.clock(), self.min_sleep_s))
            await self.refresh()


async def load_once(source: ViewSource | None) -> ConfigView:
    """One read for ``check``; a failure is returned in the view, not raised."""
    keeper = ViewKeeper(source)
    return await keeper.refresh()
