"""A bounded, thread-safe store of what arrived at this target (``Observation`` records).

The responder (an asyncio task) and the sniffer (which may run in its own thread, as scapy's
``AsyncSniffer`` does) both append here; the observations API reads. Memory is bounded by
``max_entries``: when full, the oldest observation is evicted and the eviction is counted, so a
burst of probes (or of hostile-but-authentic tokens) can never grow the agent without limit and
a reader can tell from ``evicted`` that it may have missed something.

Observations also expire after ``ttl_s`` (config ``observation_ttl``): evidence older than the
client's correlation window is useless, and a quiet target should not hold a burst forever.
Expiry drops from the oldest end on every append and read, and is counted apart from eviction.

Reads are by time: ``since(t)`` returns observations with ``seen_at > t``, oldest first. A poller
that remembers the last ``seen_at`` it received and asks again with it gets each observation once
(timestamps are float seconds with sub-microsecond resolution, so two records sharing one exact
``seen_at`` is vanishingly rare; ``next_since`` in a truncated answer keeps paging exact anyway).
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass

from agent.results import Observation

__all__ = ["DEFAULT_MAX_ENTRIES", "ObservationStore", "Page", "StoreCounters"]

DEFAULT_MAX_ENTRIES = 10_000
"""At ~200 bytes of Python objects each, about 2-4 MB: hours of probes at one path per second."""


@dataclass
class StoreCounters:
    """Monotonic counters (the metrics module turns them into ``_total`` series later)."""

    appended: int = 0
    evicted: int = 0  # dropped because the store was full
    expired: int = 0  # dropped because older than ttl_s
    by_via_responder: int = 0
    by_via_sniffer: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Page:
    """One answer to ``since``: the observations, and whether ``limit`` cut it short."""

    observations: list[Observation]
    truncated: bool
    #: pass this as the next ``since`` to continue (None when nothing was returned)
    next_since: float | None


class ObservationStore:
    """Append-only ring of observations, oldest evicted first."""

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        *,
        ttl_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if ttl_s is not None and not ttl_s > 0:
            raise ValueError("ttl_s must be positive (or None: keep until evicted)")
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self._items: deque[Observation] = deque()
        self._lock = threading.Lock()
        self._counters = StoreCounters()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def append(self, obs: Observation) -> None:
        """Record one observation; evicts (and counts) the oldest when full. Never blocks long."""
        with self._lock:
            self._expire()
            if len(self._items) >= self.max_entries:
                self._items.popleft()
                self._counters.evicted += 1
            self._items.append(obs)
            self._counters.appended += 1
            if obs.via == "responder":
                self._counters.by_via_responder += 1
            elif obs.via == "sniffer":
                self._counters.by_via_sniffer += 1

    def since(
        self, since: float = 0.0, limit: int | None = None, *, agent: str | None = None
    ) -> Page:
        """Observations with ``seen_at > since``, oldest first, at most ``limit`` of them.

        ``agent``: only those of that client agent (the id in their token), so a client
        fetches its own observations, not every client's.

        Sorted by ``seen_at`` (the sniffer's packet timestamps may interleave with the
        responder's), so a truncated page plus ``next_since`` continues without gaps.
        """
        if math.isnan(since):
            raise ValueError("since must be a number")
        if limit is not None and limit < 1:
            raise ValueError("limit must be at least 1")
        with self._lock:
            self._expire()
            hits = [
                o for o in self._items if o.seen_at > since and (agent is None or o.agent == agent)
            ]
        hits.sort(key=lambda o: o.seen_at)
        truncated = limit is not None and len(hits) > limit
        if truncated:
            assert limit is not None
            # never split a group of equal timestamps across pages: next_since would skip it
            cut = limit
            while cut > 0 and hits[cut - 1].seen_at == hits[cut].seen_at:
                cut -= 1
            hits = hits[: cut or limit]
        return Page(
            observations=hits,
            truncated=truncated,
            next_since=hits[-1].seen_at if hits else None,
        )

    def tail(self, cursor: int = 0) -> tuple[list[Observation], int]:
        """Observations appended after ``cursor`` (a previous return value), in append order.

        For consumers that must see each observation once whatever its ``seen_at`` (metrics):
        the cursor counts appends, so a sniffer record stamped earlier than one already read is
        not skipped. Records evicted or expired before the call are gone; the new cursor says
        how far this call got.
        """
        with self._lock:
            appended = self._counters.appended
            fresh = min(max(appended - cursor, 0), len(self._items))
            items = list(itertools.islice(reversed(self._items), fresh))[::-1]
        return items, appended

    def _expire(self) -> None:
        """Drop expired observations from the old end (call with the lock held)."""
        if self.ttl_s is None:
            return
        horizon = self._clock() - self.ttl_s
        items = self._items
        while items and items[0].seen_at < horizon:
            items.popleft()
            self._counters.expired += 1

    @property
    def counters(self) -> StoreCounters:
        """A snapshot copy (safe to read while other threads append)."""
        with self._lock:
            return StoreCounters(**asdict(self._counters))
