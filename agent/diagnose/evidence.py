"""The provider's evidence as a deployed client gets it: through the endpoint, or not at all.

``EndpointEvidenceSource`` is the ``ObservationSource`` of a client with no route to the
provider VPC (every real cross-account deployment): after its probes it opens one TCP
connection per endpoint to an ENI IP on the responder port, sends an authenticated
``EvidenceQuery`` (its agent id, its private address as the connection leaves, the ports it
probes) and reads the ``EvidenceAnswer`` of whichever target the NLB picked — which speaks
for the whole target group. ENIs are tried in order until one answers. What it learned besides
the observations is kept in ``evidence`` (``ProviderEvidence``): the sharing level the provider
granted, which targets the answer covers and how old each part is, the provider's findings per
path, the bytes and round-trip the channel cost, and whether the channel was cut.

``merge_findings`` joins the consumer's own findings (its snapshot: provider hops are
``not_visible``) with the provider's shared ones, so diagnosis sees both accounts' hops as in
a view of both accounts, without either account reading the other's configuration.

``channel_notes`` is what a verdict says when the channel itself is cut: the responder port
is a second port through the same controls, so "it fails too" and "it passes" are evidence.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from agent.controls import PROVIDER_CONTROLS
from agent.errors import ProbeError, TruncatedError, WireError
from agent.observe.evidence import ask
from agent.results import HopFinding, Observation, PathRef
from agent.wire.evidence import QUERY_PORTS_MAX, EvidenceAnswer, EvidenceQuery, encode_query

__all__ = [
    "EndpointEvidenceSource",
    "EvidenceTarget",
    "ProviderEvidence",
    "channel_notes",
    "merge_findings",
]

_HOP_FIELDS = {f.name for f in dataclasses.fields(HopFinding)}


@dataclass
class ProviderEvidence:
    """Where this round's provider evidence came from, how complete and how fresh it is."""

    #: endpoint (through the endpoint), provider_api (provider_url), injected (a test or
    #: benchmark reference level), none
    source: str = "none"
    #: the provider's sharing level (none / seen-only / findings), "" when nothing answered
    level: str = ""
    #: target -> {"ok", "age_s", "error"?}: what the answer speaks for
    covers: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: path id -> the provider's findings for it
    findings: dict[str, list[HopFinding]] = field(default_factory=dict)
    #: unix time the answer was written by the provider (its clock)
    answered_at: float | None = None
    #: seconds from connect to answer, per query (the channel's cost)
    rtt_s: float = 0.0
    bytes_sent: int = 0
    bytes_received: int = 0
    partial: bool = False
    truncated: bool = False
    #: every ENI refused or timed out on the responder port
    channel_cut: bool = False
    error: str = ""

    @property
    def age_s(self) -> float | None:
        """How old the evidence is now: the answer's age plus its oldest covered part."""
        if self.answered_at is None:
            return None
        oldest = max((float(c.get("age_s", 0.0)) for c in self.covers.values()), default=0.0)
        return max(0.0, time.time() - self.answered_at) + oldest

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "level": self.level,
            "covers": self.covers,
            "findings": {p: len(f) for p, f in self.findings.items()},
            "answered_at": self.answered_at,
            "rtt_s": round(self.rtt_s, 6),
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "partial": self.partial,
            "truncated": self.truncated,
            "channel_cut": self.channel_cut,
            "error": self.error,
        }


@dataclass(frozen=True)
class EvidenceTarget:
    """One endpoint to ask: its ENI IPs (tried in order), the responder port, what it serves.

    ``paths``: port -> the path ids of this endpoint on that port (findings are per port);
    ``azs``: path id -> its AZ id (findings that differ per AZ carry one).
    """

    name: str
    ips: tuple[str, ...]
    port: int
    paths: dict[int, tuple[str, ...]]
    azs: dict[str, str | None] = field(default_factory=dict)

    @property
    def ports(self) -> tuple[int, ...]:
        """Service ports first, the responder port last: an answer short of room drops
        findings from the end."""
        return tuple(sorted(self.paths, key=lambda p: (p == self.port, p)))[:QUERY_PORTS_MAX]


def targets_from_paths(refs: Iterable[tuple[str, PathRef, Sequence[int]]]) -> list[EvidenceTarget]:
    """(endpoint name, path, responder ports) of a round -> one target per endpoint."""
    ips: dict[str, list[str]] = {}
    ports: dict[str, int] = {}
    paths: dict[str, dict[int, list[str]]] = {}
    azs: dict[str, str | None] = {}
    for name, ref, responder_ports in refs:
        if not responder_ports or ref.ip is None:
            continue
        ports.setdefault(name, min(responder_ports))
        if ref.ip not in ips.setdefault(name, []):
            ips[name].append(ref.ip)
        paths.setdefault(name, {}).setdefault(ref.port, []).append(ref.id)
        azs[ref.id] = ref.az_id
    return [
        EvidenceTarget(
            name,
            tuple(ips[n]),
            ports[n],
            {p: tuple(ids) for p, ids in sorted(paths[n].items())},
            {pid: azs[pid] for ids in paths[n].values() for pid in ids},
        )
        for n in sorted(ips)
    ]


def _finding(raw: dict[str, Any]) -> HopFinding:
    return HopFinding(**{k: v for k, v in raw.items() if k in _HOP_FIELDS})


class EndpointEvidenceSource:
    """Provider evidence through the endpoint on the responder port (module docstring)."""

    def __init__(
        self,
        targets: Sequence[EvidenceTarget],
        *,
        agent_id: str,
        key: bytes,
        insecure: bool = False,
        timeout_s: float = 3.0,
    ) -> None:
        self.targets = list(targets)
        self.agent_id = agent_id
        self.key = key
        self.insecure = insecure
        self.timeout_s = timeout_s
        self.evidence = ProviderEvidence(source="endpoint")
        #: endpoint name -> why it gave no answer (partial evidence for the runner)
        self.failures: dict[str, str] = {}

    async def _one(
        self, target: EvidenceTarget, since: float
    ) -> tuple[EvidenceAnswer, float, int] | str:
        reasons = []
        since_ns = max(0, int(since * 1e9))
        sizes: list[int] = []

        def make(local: str) -> EvidenceQuery:
            q = EvidenceQuery.new(self.agent_id, local, since_ns, ports=target.ports)
            sizes.append(len(encode_query(q, self.key, insecure=self.insecure)))
            return q

        for ip in target.ips:
            started = time.monotonic()
            try:
                answer = await ask(
                    ip,
                    target.port,
                    make,
                    self.key,
                    insecure=self.insecure,
                    timeout_s=self.timeout_s,
                )
            except TimeoutError:
                reasons.append(f"{ip}:{target.port}: no answer within {self.timeout_s:g}s")
            except TruncatedError:
                reasons.append(f"{ip}:{target.port}: closed without an answer")
            except OSError as exc:
                reasons.append(f"{ip}:{target.port}: {exc.strerror or exc}")
            except WireError as exc:
                reasons.append(f"{ip}:{target.port}: {exc}")
            else:
                return answer, time.monotonic() - started, sizes[-1] if sizes else 0
        return "; ".join(reasons) or "no ENI IP to ask"

    async def fetch(self, since: float) -> list[Observation]:
        ev = self.evidence = ProviderEvidence(source="endpoint")
        self.failures = {}
        if not self.targets:
            ev.error = "no responder port configured: no evidence channel through the endpoint"
            raise ProbeError(ev.error)
        answers = await asyncio.gather(*(self._one(t, since) for t in self.targets))
        out: list[Observation] = []
        seen: set[tuple[object, ...]] = set()
        levels = []
        for target, got in zip(self.targets, answers, strict=True):
            if isinstance(got, str):
                self.failures[target.name] = f"{target.name}: {got}"
                continue
            answer, rtt, sent = got
            levels.append(answer.level)
            ev.rtt_s += rtt
            ev.bytes_sent += sent
            ev.bytes_received += answer.wire_bytes
            ev.partial |= answer.partial
            ev.truncated |= answer.truncated
            stamp = answer.sent_ns / 1e9
            ev.answered_at = stamp if ev.answered_at is None else min(ev.answered_at, stamp)
            for c in answer.covers:
                ev.covers[c.target] = {
                    "ok": c.ok,
                    "age_s": c.age_s,
                    **({"error": c.error} if c.error else {}),
                }
            for raw in answer.observations:
                try:
                    obs = Observation.from_json(raw)
                except (TypeError, ValueError):
                    continue
                key = (obs.target, obs.probe_id, obs.via, obs.seen_at, obs.isn)
                if key not in seen:
                    seen.add(key)
                    out.append(obs)
            for raw in answer.findings:
                port, az = raw.get("port"), raw.get("az")
                try:
                    finding = _finding(raw)
                except (TypeError, ValueError):
                    continue
                for pid in target.paths.get(port, ()) if isinstance(port, int) else ():
                    if az is None or target.azs.get(pid) in (az, None):
                        ev.findings.setdefault(pid, []).append(finding)
        ev.level = min(levels, key=("none", "seen-only", "findings").index) if levels else ""
        if self.failures:
            ev.error = "; ".join(self.failures.values())
        if len(self.failures) == len(self.targets):
            ev.channel_cut = True
            raise ProbeError(
                "evidence channel cut: no answer through the endpoint on the responder port ("
                + ev.error
                + ")"
            )
        if levels and all(lv == "none" for lv in levels):
            raise ProbeError(
                "the provider shares nothing (sharing level none): which probes arrived is unknown"
            )
        if ev.partial and not self.failures:
            missing = [t for t, c in ev.covers.items() if not c["ok"]]
            self.failures["peers"] = "the answer does not cover " + ", ".join(missing)
        return out


def merge_findings(consumer: list[HopFinding], provider: list[HopFinding]) -> list[HopFinding]:
    """The consumer's hops with its not-visible provider hops replaced by the provider's.

    The consumer's walk leaves one ``not_visible`` hop per provider control, in path order;
    the provider's findings (per target, in path order) take the place of that block. Hops the
    consumer could see itself (a view of both accounts) are kept as they are.
    """
    shared = [p for p in provider if p.control in PROVIDER_CONTROLS and p.status != "not_visible"]
    if not shared:
        return consumer
    if not consumer:
        return list(shared)
    out: list[HopFinding] = []
    inserted = False
    for hop in consumer:
        if hop.control in PROVIDER_CONTROLS and hop.status == "not_visible":
            if not inserted:
                out.extend(shared)
                inserted = True
            continue
        out.append(hop)
    return out


def channel_notes(
    path: str, refs: dict[str, PathRef], outcomes: dict[str, str], responder: Sequence[int]
) -> str:
    """What a cut evidence channel says about ``path`` by comparing it with the responder port.

    The responder port crosses the same controls as the service port (the deployment mirrors
    every rule), so on the same ENI: both failing the same way means a control that covers
    both ports (or the whole path); the service port alone failing means a rule or service
    specific to it; failing differently (a reset on one, silence on the other) means two
    causes, and the responder port says nothing about the service port's.
    """
    ref = refs.get(path)
    mine = outcomes.get(path)
    if ref is None or ref.port in responder or mine is None or mine == "ok":
        return ""
    twins = [
        r for r in refs.values() if r.ip == ref.ip and r.port in responder and r.id in outcomes
    ]
    if not twins:
        return "evidence channel cut: provider evidence unavailable, no responder port to compare"
    twin = twins[0]
    theirs = outcomes[twin.id]
    if theirs == "ok":
        return (
            f"the responder port {twin.port} passes through the same endpoint ENI while port "
            f"{ref.port} fails: the block is specific to port {ref.port}"
        )
    if theirs != mine:
        return (
            f"evidence channel cut: the responder port {twin.port} fails differently "
            f"({theirs}) from port {ref.port} ({mine}): no provider evidence, two causes"
        )
    return (
        f"evidence channel cut: the responder port {twin.port} fails like port {ref.port} "
        f"({mine}), so the block is not specific to the service port (a control covering "
        "both ports)"
    )
