"""The records that flow between probes, observers, correlation, analysis and diagnosis.

One definition each, shared by the client agent, the provider agent, the API and the CLI.
Field names of ``to_json()`` output are stable (docs/ARCHITECTURE.md): tests and users rely on them.

    ProbeResult   client side: what one probe of one kind on one path saw
    Observation   provider side: what arrived at a target (token or ISN tag)
    PathEvidence  correlate(ProbeResult..., Observation...) for one path
    HopFinding    static analysis: one hop of the flow, allowed / denied / not visible
    Verdict       diagnosis for one path
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

#: client outcomes, nmap-style for SYN probes (docs/DIAGNOSIS.md)
Outcome = Literal["ok", "refused", "timeout", "icmp_unreachable", "dns_error", "error"]
OUTCOMES: tuple[str, ...] = ("ok", "refused", "timeout", "icmp_unreachable", "dns_error", "error")

ProbeKind = Literal["dns", "tcp", "syn", "http"]
PROBE_KINDS: tuple[str, ...] = ("dns", "tcp", "syn", "http")

SeenAtTarget = Literal["yes", "no", "unknown"]
HopStatus = Literal["allowed", "denied", "not_visible"]
Status = Literal["pass", "fail", "degraded", "unknown"]
Stage = Literal["dns", "endpoint", "forward", "return", "service", "pass", "unknown"]
STAGES: tuple[str, ...] = ("dns", "endpoint", "forward", "return", "service", "pass", "unknown")


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def hostport(ip: object | None, port: int | None) -> str | None:
    """``ip:port``, ``[ip]:port`` for IPv6: the one spelling of an address in every record.

    Correlation compares these strings across the client's reply and the provider's
    observations, so they must all come from here. ``ip`` is text or an ``ipaddress`` object;
    None when either half is missing (a PROXY v2 LOCAL header, a reply without PROXY data).
    """
    if ip is None or port is None:
        return None
    text = str(ip)
    return f"[{text}]:{port}" if ":" in text else f"{text}:{port}"


class _Json:
    def to_json(self) -> dict[str, Any]:
        return _plain(self)


@dataclass
class PathRef(_Json):
    """What a path is: (client agent, endpoint ENI/AZ, port); ``id`` is the metric label."""

    id: str  # e.g. "client-2/apne1-az4/80"
    agent: str
    name: str  # the DNS name probed (regional / zonal / private)
    ip: str | None  # endpoint ENI IP (None for a DNS-only path)
    port: int
    az_id: str | None = None


#: the AZ segment of a path whose AZ is not known (an endpoint or ENI absent from the view)
UNKNOWN_AZ = "unknown-az"


def path_id(client: str, az_id: str | None, port: int) -> str:
    """The stable path id, the metric label and probe token field: ``client-2/apne1-az4/80``.

    ``az_id`` is the path's AZ id, or — for a runner path without per-AZ information — the
    label that stands in for it (the ENI IP the regional name resolved to, the path's name
    when nothing resolved). A missing AZ (``None`` or ``""``: static analysis of a flow
    without an endpoint ENI) is spelled ``unknown-az`` rather than left empty, so the id
    keeps its three segments and still splits into client / AZ / port.
    """
    return f"{client}/{az_id or UNKNOWN_AZ}/{port}"


@dataclass
class ProbeResult(_Json):
    """One probe of one kind on one path, as the client saw it."""

    path: str
    probe: str  # a PROBE_KINDS value
    outcome: str  # an OUTCOMES value
    probe_id: str = ""  # hex of the token's probe id ("" when no token was sent)
    started_at: float = 0.0  # unix seconds
    duration_s: float = 0.0
    #: phase -> seconds (dns, connect, tls, first_byte, ...)
    phases: dict[str, float] = field(default_factory=dict)
    target_ip: str | None = None
    port: int | None = None
    #: ICMP type/code for icmp_unreachable
    icmp: tuple[int, int] | None = None
    #: the reply of the responder, when the port is a responder port (decoded, authenticated)
    reply: dict[str, Any] | None = None
    #: DNS probes: resolved, missing and unexpected addresses
    addresses: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    #: http status, syn ISN tag, ...
    detail: dict[str, Any] = field(default_factory=dict)
    #: e.g. "syn fell back to tcp: no CAP_NET_RAW"
    fallback: str | None = None
    error: str | None = None


@dataclass
class Observation(_Json):
    """A probe that arrived at a target, as the provider agent saw it."""

    kind: Literal["token", "syn_tag"]
    target: str  # the provider agent id (instance name)
    seen_at: float  # unix seconds
    src_ip: str  # source the target saw (the NLB's private IP)
    src_port: int
    dst_ip: str
    dst_port: int
    via: Literal["responder", "sniffer"]
    probe_id: str = ""  # token probe id (hex); "" for a syn tag
    path: str = ""  # from the token
    agent: str = ""  # the client agent id, from the token
    isn: int | None = None  # for syn tags
    #: PROXY protocol v2, when present
    proxy_endpoint_id: str | None = None
    proxy_src: str | None = None  # "ip:port" of the client
    proxy_dst: str | None = None  # "ip:port" the client connected to (the endpoint ENI)
    answered: bool = True  # responder replied / service answered (False: RST or no reply)

    @classmethod
    def from_json(cls, raw: object) -> Observation:
        """The inverse of ``to_json()``, for observations fetched from a provider agent's API.

        Unknown keys are ignored, so a newer provider agent can add fields without breaking an
        older client. ValueError if ``raw`` is not a JSON object, TypeError if a required field
        is missing.
        """
        if not isinstance(raw, dict):
            raise ValueError("an observation is a JSON object")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


@dataclass
class PathEvidence(_Json):
    """The client's results joined with what the provider saw, for one path."""

    path: str
    outcome: str  # the deciding client outcome over the probe kinds
    seen_at_target: SeenAtTarget
    results: list[ProbeResult] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)
    source_at_target: str | None = None  # "ip:port" the target saw
    proxy_endpoint_id: str | None = None
    proxy_client: str | None = None
    rtt_s: float | None = None
    #: the provider's evidence could not be fetched: why
    provider_error: str | None = None


@dataclass
class HopFinding(_Json):
    """One hop of a flow, evaluated on configuration."""

    hop: str  # e.g. "client-sg-egress", "nlb-sg-ingress", "return:client-nacl-in"
    control: str  # a catalogue id
    status: HopStatus
    resource: str = ""  # "sg-… (client-2)", "acl-… (vpc-3-default)"
    rule: str = ""  # the rule that allowed / denied
    checked: list[str] = field(default_factory=list)  # rules that were evaluated
    detail: str = ""
    ra_code: str = ""  # Reachability Analyzer code, when one matches
    fix: str = ""  # the smallest concrete fix for a denial
    #: "forward" (client -> target), "return" (replies), "health" (NLB health checks)
    direction: str = "forward"
    #: the target instance's name for per-target hops ("" = the hop is on every flow)
    target: str = ""
    #: why this hop degrades the path without blocking every flow (fail-open, part of an
    #: ephemeral range denied); "" = it does not
    degraded: str = ""


@dataclass
class ControlState(_Json):
    control: str
    state: Literal["allowed", "blocked", "not_visible"]
    detail: str = ""


@dataclass
class Verdict(_Json):
    """Diagnosis of one path (stable JSON field names, docs/ARCHITECTURE.md)."""

    path: str
    status: Status
    stage: str  # a STAGES value
    blocked_at: str | None  # a catalogue id, or None
    candidates: list[str] = field(default_factory=list)
    evidence: list[str] = field(default_factory=list)
    explanation: str = ""
    fix: str = ""
    checked_at: float = 0.0
    controls: list[ControlState] = field(default_factory=list)
    findings: list[HopFinding] = field(default_factory=list)
    #: when ``stage`` is ``unknown``: the stages the evidence leaves open, in path order (a
    #: timeout with no provider evidence looks the same whether the endpoint, a forward hop or
    #: the return path dropped it; the verdict lists them instead of picking one)
    stages: list[str] = field(default_factory=list)
