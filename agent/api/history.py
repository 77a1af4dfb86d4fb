"""A bounded history of the daemon's recent probe rounds, for the status page (``/``).

The API's JSON endpoints keep only the latest results per path; a person looking at a broken
path wants the last few rounds side by side, with what each probe sent, what came back and
what the target saw — blackbox_exporter's "recent probes" page. Each round is kept as the
``PathEvidence`` the daemon already built (results joined with the provider's observations),
so recording costs one append; the deque bounds memory whatever the number of endpoints.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from agent.results import PathEvidence

__all__ = ["DEFAULT_ROUNDS", "RoundHistory", "RoundRecord"]

#: rounds kept (all endpoints together): enough for a few rounds of each of a handful
DEFAULT_ROUNDS = 20


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
    """The newest ``limit`` rounds, newest last; mutated only on the event loop."""

    limit: int = DEFAULT_ROUNDS
    _rounds: deque[RoundRecord] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.limit < 1:
            raise ValueError("a round history keeps at least one round")
        self._rounds = deque(maxlen=self.limit)

    def record(
        self,
        endpoint: str,
        started_at: float,
        finished_at: float,
        evidence: Sequence[PathEvidence],
        provider_error: str | None = None,
    ) -> RoundRecord:
        rec = RoundRecord(endpoint, started_at, finished_at, tuple(evidence), provider_error)
        self._rounds.append(rec)
        return rec

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
