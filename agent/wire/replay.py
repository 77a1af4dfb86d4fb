"""Replay guard: the stateful check a receiver runs on each token whose MAC verified.

Kept apart from the token format because it is the one thing in ``agent.wire`` that is not
pure: it remembers probe ids and reads the clock.
"""

from __future__ import annotations

import heapq
import time
from typing import Protocol

from agent.errors import ReplayError

__all__ = ["Nonced", "ReplayGuard"]


class Nonced(Protocol):
    """What the guard needs of a message: a random id and the sender's timestamp.

    A probe ``Token`` (its probe id) and an ``EvidenceQuery`` (its query id) both qualify, so
    one guard per listener covers both; the ids are 16 random bytes and never collide.
    """

    @property
    def probe_id(self) -> bytes: ...

    @property
    def probe_id_hex(self) -> str: ...

    @property
    def sent_ns(self) -> int: ...


class ReplayGuard:
    """Rejects a token that is stale, from the future, or whose probe id was already accepted.

    Call it only for tokens whose MAC verified, so that only key holders can fill it.

    Memory is bounded by ``max_entries``. An id must be remembered only as long as its token
    would still pass the freshness check (``sent_ns`` within ``window_s`` of now); after that the
    age check alone rejects a replay, so such entries are dropped first. If the guard is full of
    entries that are all still fresh (more than ``max_entries / window_s`` accepted tokens a
    second), the guard does **not** forget an id and hope: it evicts the entry with the oldest
    ``sent_ns`` and raises a floor, and from then on every token sent at or before the floor is
    rejected. The effective window shrinks under overload, but no replay can ever be accepted:
    a forgotten id always has ``sent_ns <= floor``. The floor also rises on ordinary expiry,
    which keeps the guard safe if the caller's clock steps backwards. ``saturated_evictions``
    counts the overload case for a metric.
    """

    def __init__(self, window_s: float = 30.0, max_entries: int = 65536) -> None:
        if not window_s > 0:
            raise ValueError("window_s must be positive")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.window_ns = int(window_s * 1_000_000_000)
        self.max_entries = max_entries
        self.saturated_evictions = 0
        self._seen: dict[bytes, int] = {}
        self._heap: list[tuple[int, bytes]] = []  # (sent_ns, probe_id), oldest first
        self._floor_ns = -1

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, token: Nonced, now_ns: int | None = None) -> None:
        """Accept ``token`` (any ``Nonced``) and remember its id, or raise ReplayError."""
        now = time.time_ns() if now_ns is None else now_ns
        age = now - token.sent_ns
        if age > self.window_ns:
            raise ReplayError(f"token sent {age / 1e9:.3f}s ago, window is {self.window_s}s")
        if -age > self.window_ns:
            raise ReplayError(
                f"token sent {-age / 1e9:.3f}s in the future, window is {self.window_s}s"
            )
        if token.probe_id in self._seen:
            raise ReplayError(f"probe id {token.probe_id_hex} already seen")
        self._expire(now)
        if token.sent_ns <= self._floor_ns:
            raise ReplayError("token older than anything the replay guard still remembers")
        if len(self._seen) >= self.max_entries:
            oldest_sent, oldest_id = self._heap[0]
            if token.sent_ns <= oldest_sent:
                raise ReplayError("replay guard is full of newer tokens")
            heapq.heappop(self._heap)
            del self._seen[oldest_id]
            self._floor_ns = max(self._floor_ns, oldest_sent)
            self.saturated_evictions += 1
        self._seen[token.probe_id] = token.sent_ns
        heapq.heappush(self._heap, (token.sent_ns, token.probe_id))

    @property
    def window_s(self) -> float:
        return self.window_ns / 1e9

    def _expire(self, now_ns: int) -> None:
        horizon = now_ns - self.window_ns
        heap = self._heap
        while heap and heap[0][0] < horizon:
            sent, probe_id = heapq.heappop(heap)
            del self._seen[probe_id]
            self._floor_ns = max(self._floor_ns, sent)
