"""A bounded history of the daemon's recent probe rounds, for the status page (``/``).

The API's JSON endpoints keep only the latest results per path; a person looking at a broken
path wants the last few rounds side by side, with what each probe sent, what came back and
what the target saw — blackbox_exporter's "recent probes" page. Each round is kept as the
``PathEvidence`` the daemon already built (results joined with the provider's observations),
so recording costs one append.

Memory is bounded by probe results, not only by rounds: endpoints that share an interval share
one round, so with 1,000 paths a single round holds 5,000 results (~3 MiB of evidence), and
20 such rounds were most of a 1,000-path daemon's memory. The page shows at most
``agent.api.page.MAX_PROBE_ROWS`` results, newest round first; the history keeps exactly what
that can show (``max_results``) and no more.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from agent.results import PathEvidence

__all__ = ["DEFAULT_RESULTS", "DEFAULT_ROUNDS", "RoundHistory", "RoundRecord"]

#: rounds kept (all endpoints together): enough for a few rounds of each of a handful
DEFAULT_ROUNDS = 20
#: probe results kept, all rounds together: what the status page can show
#: (``agent.api.page.MAX_PROBE_ROWS``; a test keeps the two equal)
DEFAULT_RESULTS = 120


@dataclass(frozen=True)
class RoundRecord:
    """One finished round of one configured endpoint."""

    endpoint: str  # the ``paths[].name`` of the configuration
    started_at: float  # unix seconds
    finished_at: float
    evidence: tuple[PathEvidence, ...] = ()
    #: why the provider's side is missing from this round, if it is
    provider_error: str | None = None

    @property
    def duration_s(self) -> float:
        return max(0.0, self.finished_at - self.started_at)


@dataclass
class RoundHistory:
    """The newest ``limit`` rounds, newest last; mutated only on the event loop.

    Of those, only what a reader showing ``max_results`` probe results (newest round first,
    a round's evidence in order) can reach is kept: a round's evidence up to the item that
    reaches the bound, and rounds while the newer ones hold fewer results than the bound
    (plus the next older one, emptied, as a marker that older rounds existed).
    """

    limit: int = DEFAULT_ROUNDS
    max_results: int = DEFAULT_RESULTS
    _rounds: deque[RoundRecord] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError("a round history keeps at least one round")
        if self.max_results < 1:
            raise ValueError("a round history keeps at least one probe result")
        self._rounds = deque(maxlen=self.limit)

    def record(
        self,
        endpoint: str,
        started_at: float,
        finished_at: float,
        evidence: Sequence[PathEvidence],
        provider_error: str | None = None,
    ) -> RoundRecord:
        kept: list[PathEvidence] = []
        budget = self.max_results
        for ev in evidence:
            if budget <= 0:
                break
            kept.append(ev)
            budget -= len(ev.results)
        rec = RoundRecord(endpoint, started_at, finished_at, tuple(kept), provider_error)
        self._rounds.append(rec)
        self._drop_unreachable()
        return rec

    def _drop_unreachable(self) -> None:
        """Drop the rounds older than the newest ones that hold ``max_results`` results.

        The first unreachable round stays, without its evidence, so a reader can still say
        that older rounds exist (the page's "older rounds not shown").
        """
        shown = 0
        keep = 0
        for rec in reversed(self._rounds):
            keep += 1
            if shown >= self.max_results:
                if rec.evidence:
                    self._rounds[-keep] = dataclasses.replace(rec, evidence=())
                break
            shown += sum(len(ev.results) for ev in rec.evidence)
        for _ in range(len(self._rounds) - keep):
            self._rounds.popleft()

    def forget(self, path: str) -> None:
        """Drop a path's evidence from every kept round (the path left the configuration)."""
        kept = []
        for rec in self._rounds:
            evidence = tuple(e for e in rec.evidence if e.path != path)
            if evidence:
                kept.append(
                    RoundRecord(
                        rec.endpoint,
                        rec.started_at,
                        rec.finished_at,
                        evidence,
                        rec.provider_error,
                    )
                )
        self._rounds.clear()
        self._rounds.extend(kept)

    def newest_first(self) -> list[RoundRecord]:
        return list(reversed(self._rounds))

    def __len__(self) -> int:
        return len(self._rounds)

    def __iter__(self) -> Iterator[RoundRecord]:
        return iter(self._rounds)
