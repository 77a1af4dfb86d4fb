"""The one place that turns a probe round and a configuration view into verdicts.

``check`` calls it once, the daemon after every round; nothing else joins packets with
configuration. For each path of the round:

1. **the flow** — find (client, endpoint ENI, port) in the view's Topology:

   - *the client is this agent.* Its identity is tried in order: the ``agent_id`` as an
     instance name or id (the lab and the recommended setup name agents after their
     instances), the EC2 instance id from IMDS when the view knows it, then the source IP the
     kernel would use to reach the path's ENI IP (a connected UDP socket: a route lookup, no
     packet is sent) — that IP is looked up among the instances, and otherwise analysed as a
     bare client IP (an ECS task or a host not in the view);
   - *the endpoint* is the one with an ENI on the path's IP, else the one whose published DNS
     names include the path's name (a path whose name did not resolve); the ENI is then the one
     in the path's AZ;
   - *the port* is the path's.

   When the consumer account is not visible (a provider-side view), the flow is walked without
   an endpoint so the provider's hops are still evaluated and the consumer's are "not visible".
   A visible consumer account without that endpoint is a mismatch between the agent config and
   the view: the path is diagnosed on packets alone and a note says why — never a guess.

   The lookup itself is ``agent.analyze.flows`` (shared with ``plprobe explain``); this
   module only says who this agent is.

2. ``analyze.path.walk`` over that flow, then ``diagnose.diagnose(evidence, findings)``.

With no view (or a path with no flow) diagnosis runs on packets alone (``findings=[]``).

3. **the provider's share** — when the round's provider evidence came through the endpoint with
   findings (``RoundResult.provider_evidence``), they take the place of the provider hops the
   consumer's view cannot see (``agent.diagnose.evidence.merge_findings``); when the evidence
   channel itself was cut, each verdict says so and compares the service port with the
   responder port through the same ENI instead of guessing.

Step 1 and 2 depend only on the view and the path, never on the packets: the daemon passes a
``FindingsCache`` so they run once per (view, path) instead of every round; a refreshed or
reloaded view is a new Topology object and empties the cache. (When this agent is found by
its source IP, that route lookup is therefore also re-done per view refresh, not per round.)
A cache miss costs ~100 ms per path on a 20k-instance view, so the daemon does not let
``diagnose_round`` compute misses on its event loop: it asks the cache which paths are
``missing``, computes them in a worker thread (``static_findings``, pure: it only reads the
Topology) and ``put``s them back on the loop, after which the round is all hits.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.diagnose.evidence import ProviderEvidence, channel_notes, merge_findings
from agent.diagnose.provider_probes import ProviderProbeSummary, narrow_verdict
from agent.diagnose.rounds import RoundResult
from agent.diagnose.verdict import diagnose, rollup
from agent.errors import PlprobeError
from agent.model import Topology
from agent.results import HopFinding, PathEvidence, PathRef, Verdict
from agent.sources.views import NO_VIEW, ConfigView

if TYPE_CHECKING:  # the analyzer loads with the first view: packets-only runs skip it
    from agent.analyze.flows import Client, Flow

__all__ = [
    "Diagnosis",
    "FindingsCache",
    "SelfIdentity",
    "diagnose_round",
    "find_flow",
    "route_source_ip",
    "static_findings",
]

log = logging.getLogger(__name__)


def route_source_ip(dest_ip: str, port: int = 9) -> str | None:
    """The local address the kernel would use towards ``dest_ip`` (no packet is sent).

    ``connect()`` on a UDP socket only selects a route and a source address.
    """
    try:
        family = socket.AF_INET6 if ipaddress.ip_address(dest_ip).version == 6 else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.connect((dest_ip, port or 9))
            return str(sock.getsockname()[0])
    except (OSError, ValueError):
        return None


@dataclass(frozen=True)
class SelfIdentity:
    """Who "this agent" is in a Topology: names/ids to try, and how to find its own IP."""

    #: instance names or ids, most specific first (agent_id, IMDS instance id)
    names: tuple[str, ...] = ()
    #: a fixed client IP (tests, or a config that knows it); None = ask the kernel per path
    ip: str | None = None
    source_ip: Callable[[str], str | None] = route_source_ip

    def ip_towards(self, dest_ip: str | None) -> str | None:
        if self.ip is not None:
            return self.ip
        return self.source_ip(dest_ip) if dest_ip else None


@dataclass
class Diagnosis:
    """Verdicts for every path of one round, the evidence they rest on, and notes."""

    verdicts: list[Verdict]
    evidence: list[PathEvidence]
    view: ConfigView = NO_VIEW
    #: path id -> why the configuration was not used for it
    notes: dict[str, str] = field(default_factory=dict)
    #: paths on a responder port: plprobe's own evidence channel, not the service
    channel_paths: frozenset[str] = frozenset()

    @property
    def status(self) -> str:
        """The service's status: responder-port paths count only when there is nothing else
        (a passing evidence channel must not turn a failing service into "degraded")."""
        service = [v for v in self.verdicts if v.path not in self.channel_paths]
        return rollup(service or self.verdicts)

    @property
    def all_pass(self) -> bool:
        return bool(self.verdicts) and all(v.status == "pass" for v in self.verdicts)

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "verdicts": [v.to_json() for v in self.verdicts],
            "evidence": [e.to_json() for e in self.evidence],
            "view": self.view.to_json(),
            "notes": dict(self.notes),
        }


# --- the flow -----------------------------------------------------------------------------


def _find_client(topology: Topology, me: SelfIdentity, dest_ip: str | None) -> Client:
    """(name, ip, instance) of this agent in ``topology``; raises LookupError if unknown."""
    from agent.analyze.flows import client_at_ip, client_named

    found = client_named(topology, me.names)
    if found is not None:
        return found
    ip = me.ip_towards(dest_ip)
    if ip is None:
        raise LookupError(
            "this agent is not an instance of the view (tried "
            + ", ".join(me.names or ("no names",))
            + ") and its own IP is unknown"
        )
    return client_at_ip(topology, ip)


def find_flow(topology: Topology, ref: PathRef, me: SelfIdentity) -> Flow:
    """The Flow of one probed path (module docstring); ``LookupError`` with the reason."""
    from agent.analyze.flows import path_flow

    return path_flow(topology, ref, _find_client(topology, me, ref.ip))


# --- static findings, cached per view ---------------------------------------------------


def _static(topology: Topology, ref: PathRef, me: SelfIdentity) -> tuple[list[HopFinding], str]:
    """(findings, "") or ([], why the configuration cannot be used for this path)."""
    try:
        from agent.analyze.path import walk

        return walk(topology, find_flow(topology, ref, me)), ""
    except LookupError as exc:
        return [], str(exc)
    except PlprobeError as exc:
        return [], f"configuration analysis failed: {exc}"


def _key(ref: PathRef) -> tuple[object, ...]:
    return (ref.id, ref.ip, ref.name, ref.port, ref.az_id)


def static_findings(
    topology: Topology, refs: Iterable[PathRef], me: SelfIdentity
) -> list[tuple[PathRef, tuple[list[HopFinding], str]]]:
    """The static findings of each path (a cache's misses); pure, safe in a worker thread."""
    return [(ref, _static(topology, ref, me)) for ref in refs]


class FindingsCache:
    """Static findings per (view, path) for a daemon whose view changes only on refresh.

    Keyed by the Topology *object* (a refresh or reload builds a new one) and this agent's
    identity; anything else empties it. Bounded: paths come from the configuration, and
    ``max_entries`` caps those discovered through DNS. Findings are never mutated downstream,
    so one list serves every round.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self.max_entries = max_entries
        self._topology: Topology | None = None
        self._me: SelfIdentity | None = None
        self._entries: dict[tuple[object, ...], tuple[list[HopFinding], str]] = {}
        #: analyses run (misses) and served from the cache (hits), for tests and profiling
        self.misses = 0
        self.hits = 0

    def _follow(self, topology: Topology, me: SelfIdentity) -> None:
        if topology is not self._topology or me != self._me:
            self._entries.clear()
            self._topology, self._me = topology, me

    def missing(
        self, topology: Topology, refs: Iterable[PathRef], me: SelfIdentity
    ) -> list[PathRef]:
        """The paths ``get`` would have to analyse (to compute off the event loop)."""
        self._follow(topology, me)
        return [ref for ref in refs if _key(ref) not in self._entries]

    def put(
        self,
        topology: Topology,
        me: SelfIdentity,
        computed: Iterable[tuple[PathRef, tuple[list[HopFinding], str]]],
    ) -> None:
        """Store findings computed elsewhere (``static_findings``) for this view."""
        self._follow(topology, me)
        for ref, found in computed:
            self.misses += 1
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[_key(ref)] = found

    def get(
        self, topology: Topology, ref: PathRef, me: SelfIdentity
    ) -> tuple[list[HopFinding], str]:
        self._follow(topology, me)
        key = _key(ref)
        found = self._entries.get(key)
        if found is not None:
            self.hits += 1
            return found
        self.misses += 1
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        found = self._entries[key] = _static(topology, ref, me)
        return found


# --- the round ----------------------------------------------------------------------------


def _refs(round_: RoundResult) -> dict[str, PathRef]:
    refs = {r.id: r for r in round_.paths}
    for ev in round_.evidence:
        if ev.path not in refs:  # a round built by hand (tests) may lack refs
            first = ev.results[0] if ev.results else None
            refs[ev.path] = PathRef(
                id=ev.path,
                agent="",
                name="",
                ip=first.target_ip if first else None,
                port=(first.port or 0) if first else 0,
            )
    return refs


def diagnose_round(
    round_: RoundResult | Sequence[PathEvidence],
    view: ConfigView | Topology | None,
    me: SelfIdentity,
    *,
    paths: Iterable[PathRef] = (),
    now: float | None = None,
    cache: FindingsCache | None = None,
    provider_probes: Mapping[str, ProviderProbeSummary] | None = None,
) -> Diagnosis:
    """One verdict per path of the round: packets decide the stage, the view the rule.

    ``round_`` is a ``RoundResult`` (its ``paths`` say what each path is) or bare evidence
    plus ``paths``. ``view`` may be a ConfigView, a bare Topology, or None (packets only).
    ``cache`` (the daemon's) reuses the static findings of a path while the view is the same.
    ``provider_probes`` (path id -> what the provider's own probes say of its listener and AZ)
    narrows the candidates of a verdict without a culprit (agent.diagnose.provider_probes).
    """
    if isinstance(view, Topology):
        view = ConfigView(view, "snapshot", view.source or "topology", loaded_at=time.time())
    view = view or NO_VIEW
    shared: ProviderEvidence | None = None
    responder: dict[str, tuple[int, ...]] = {}
    if isinstance(round_, RoundResult):
        evidence = list(round_.evidence)
        refs = _refs(round_)
        shared = round_.provider_evidence
        responder = round_.responder_ports
    else:
        evidence = list(round_)
        refs = {}
    refs.update({r.id: r for r in paths})
    stamp = time.time() if now is None else now
    topology = view.topology
    verdicts: list[Verdict] = []
    notes: dict[str, str] = {}
    for ev in evidence:
        findings: list[HopFinding] = []
        ref = refs.get(ev.path)
        if topology is not None and ref is None:
            notes[ev.path] = "the round does not say which endpoint this path probes"
        elif topology is not None and ref is not None:
            findings, note = (cache.get if cache else _static)(topology, ref, me)
            if note:
                notes[ev.path] = note
        if shared is not None and shared.findings.get(ev.path):
            findings = merge_findings(findings, shared.findings[ev.path])
        verdict = diagnose(ev, findings, path=ev.path, now=stamp)
        if shared is not None:
            _note_shared(verdict, ev, shared, refs, evidence, responder.get(ev.path, ()))
        if view.kind != "none" or view.error:
            verdict.evidence.append(view.note())
        if ev.path in notes:
            verdict.evidence.append(f"configuration not used for this path: {notes[ev.path]}")
            log.debug("%s: %s", ev.path, notes[ev.path])
        verdicts.append(verdict)
    if provider_probes:
        verdicts = [narrow_verdict(v, provider_probes.get(v.path)) for v in verdicts]
    channel = frozenset(
        pid for pid, ports in responder.items() if pid in refs and refs[pid].port in ports
    )
    return Diagnosis(
        verdicts=verdicts, evidence=evidence, view=view, notes=notes, channel_paths=channel
    )


def _note_shared(
    verdict: Verdict,
    ev: PathEvidence,
    shared: ProviderEvidence,
    refs: dict[str, PathRef],
    evidence: Sequence[PathEvidence],
    responder: Sequence[int],
) -> None:
    """Say where the provider evidence came from; when the channel was cut, what ports show."""
    if shared.source == "endpoint" and shared.level:
        covered = sorted(t for t, c in shared.covers.items() if c.get("ok"))
        verdict.evidence.append(
            f"provider evidence through the endpoint: level {shared.level}, covers "
            + (", ".join(covered) or "no target")
            + (" (partial)" if shared.partial else "")
        )
    if not shared.channel_cut:
        return
    note = channel_notes(ev.path, refs, {e.path: e.outcome for e in evidence}, responder)
    if note:
        verdict.evidence.append(note)
        verdict.explanation = f"{note}. {verdict.explanation}".strip()


def self_identity(
    agent_id: str, *, instance_id: str | None = None, ip: str | None = None
) -> SelfIdentity:
    """The identity of this agent: its id, then the IMDS instance id when known."""
    names = [agent_id]
    if instance_id and instance_id not in names:
        names.append(instance_id)
    return SelfIdentity(names=tuple(names), ip=ip)


def imds_instance_id(timeout_s: float = 1.0) -> str | None:
    """This EC2 instance's id through IMDSv2, or None off EC2 (blocking: run in a thread)."""
    from agent.sources.aws_live import instance_identity

    with contextlib.suppress(PlprobeError):
        ident = instance_identity(timeout_s=timeout_s)
        return ident.instance_id if ident else None
    return None
