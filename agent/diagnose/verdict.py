"""PathEvidence + hop findings -> Verdict: which control blocked the path, which rule, the fix.

Packets decide *whether* and *where*; configuration decides *which control and rule* inside
that stage (docs/DIAGNOSIS.md):

    client outcome       seen at target   stage      blame
    dns_error            -                dns        dns
    timeout / icmp       no               forward    first denied forward hop (endpoint stage
                                                     when it is the endpoint's state/principal)
    timeout / icmp       yes              return     first denied return-direction hop
    refused (RST)        yes              service    target-service (not an access control)
    refused (RST)        no               forward    a hop that can reset: listener, endpoint,
                                                     target health (SGs and NACLs drop silently)
    ok                   -                pass       nothing (unless configuration explains a
                                                     degraded path: fail-open, one target)

Without the provider's evidence (``seen at target`` unknown) the packets alone do not say
where a silent drop was, nor who sent a reset: a configured denial still names the control and
its stage; otherwise the stage is ``unknown`` and ``Verdict.stages`` lists what is left open —
endpoint / forward / return for a timeout, endpoint / forward / service for a reset, dns /
endpoint for a name that does not resolve (a DNS mistake, or an endpoint never created) —
narrowed to the stages of the hops that are not visible when a configuration was read.

Rules that keep the verdict honest:

- the stage comes from packets; configuration is consulted only for hops of that stage;
- a failing path whose stage has no visible denial but has hops that are *not visible* from
  here: ``fail``, ``blocked_at="unknown"``, ``candidates`` = those hops' controls;
- packets and configuration disagree (packets fail where every hop of the stage is visible and
  allowed; or packets pass where configuration denies): ``unknown`` with candidates, never a
  guess. Documented exception: an endpoint whose requester is no longer an allowed principal
  keeps an accepted connection working on AWS, so passing packets there are a ``pass``;
- a passing path is never blamed; it is ``degraded`` when configuration shows why some flows
  fail or would fail (one of several targets blocked or unhealthy, the NLB failing open because
  no target is healthy, part of an ephemeral range denied), or when the round itself was mixed;
- the provider's evidence missing (``seen_at_target == "unknown"``): the stage the client's
  evidence supports is kept, visible denials are named, everything else is a candidate; when
  the provider's evidence could not be had (agent down, channel cut) the verdict says
  "provider evidence unavailable" and names no control the configuration does not deny.

``diagnose_static`` is the same without packets (``plprobe explain``): the stage is that of
the first denied hop.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from agent import controls
from agent.results import ControlState, HopFinding, PathEvidence, ProbeResult, Status, Verdict

CONNECT_PROBES = ("tcp", "syn", "http")
FAILED = ("timeout", "refused", "icmp_unreachable")
# the stage sets come from the catalogue (each Control says its stage, its place on the path,
# whether it resets): ids in path order, the order candidates are listed in
ENDPOINT_CONTROLS = controls.ENDPOINT_STAGE
SERVICE_CONTROLS = controls.SERVICE_STAGE
#: controls that can answer a SYN with a reset without the target seeing it
RESET_CONTROLS = controls.RESETTING
FORWARD_CONTROLS = controls.FORWARD_PATH
RETURN_CONTROLS = controls.RETURN_PATH
#: what every verdict made without the provider's evidence says (never a control by itself)
PROVIDER_UNAVAILABLE = "provider evidence unavailable"
#: where a silent drop can be when nothing says whether a target saw the probe: an endpoint
#: that is not available, a forward hop and a return hop all look like a timeout to the client
#: (docs/AWS-BEHAVIOUR.md, "what a failure looks like on the wire")
SILENT_DROP_STAGES: tuple[str, ...] = ("endpoint", "forward", "return")
#: where a reset can come from when nothing says whether a target sent it: a hop that can
#: reset before the target (lab settings ``no_listener``, ``endpoint_unavailable``) or the
#: target itself (nothing listens)
RESET_STAGES: tuple[str, ...] = ("endpoint", "forward", "service")


# --- what configuration alone predicts ------------------------------------------------------


@dataclass
class Prediction:
    """The configuration's view of one path (no packets)."""

    status: str  # pass / fail / degraded / unknown
    stage: str
    blocking: HopFinding | None = None
    reason: str = ""
    #: every denied hop, in path order (for candidates and "also" notes)
    denied: list[HopFinding] = field(default_factory=list)
    hidden: list[HopFinding] = field(default_factory=list)


def _stage_of(hop: HopFinding) -> str:
    if hop.control in SERVICE_CONTROLS:
        return "service"
    if hop.direction == "return":
        return "return"
    if hop.control in ENDPOINT_CONTROLS:
        return "endpoint"
    return "forward"


def _blocks_all(hop: HopFinding) -> bool:
    return hop.status == "denied" and not hop.degraded


def _targets(findings: list[HopFinding]) -> list[str]:
    seen: list[str] = []
    for f in findings:
        if f.target and f.target not in seen:
            seen.append(f.target)
    return seen


@dataclass
class _TargetView:
    name: str
    health: HopFinding | None
    #: first hop that blocks traffic to / back from this target
    blocked_by: HopFinding | None
    #: first denied hop of any direction (the root cause of an unhealthy target)
    root: HopFinding | None


def _target_views(findings: list[HopFinding]) -> list[_TargetView]:
    views = []
    for name in _targets(findings):
        mine = [f for f in findings if f.target == name]
        health = next((f for f in mine if f.control == "target-health"), None)
        traffic = [f for f in mine if f.direction in ("forward", "return")]
        blocked = next((f for f in traffic if _blocks_all(f)), None)
        root = next(
            (f for f in mine if f.status == "denied" and f.control != "target-health"), None
        )
        views.append(
            _TargetView(
                name,
                health,
                blocked,
                root or (health if health and health.status == "denied" else None),
            )
        )
    return views


def predict(findings: list[HopFinding]) -> Prediction:
    """What the configuration says about the path, hop order deciding among several denials."""
    denied = [f for f in findings if f.status == "denied"]
    hidden = [f for f in findings if f.status == "not_visible"]
    if not findings:
        return Prediction("unknown", "unknown", reason="no configuration was analysed")
    wide = [f for f in findings if not f.target]
    # 1. a hop on every flow's forward path
    for f in wide:
        if f.direction != "return" and _blocks_all(f):
            return Prediction("fail", _stage_of(f), f, "", denied, hidden)
    # 2. the targets: which receive traffic, which are blocked
    views = _target_views(findings)
    aggregate = next(
        (f for f in wide if f.control == "target-health" and f.direction != "return"), None
    )
    fail_open = aggregate is not None and aggregate.status == "allowed" and bool(aggregate.degraded)
    if views:
        rotation = [
            v for v in views if fail_open or v.health is None or v.health.status != "denied"
        ]
        out = [v for v in views if v not in rotation]
        blocked = [v for v in rotation if v.blocked_by is not None]
        blocking = [v.blocked_by for v in blocked if v.blocked_by is not None]
        if rotation and len(blocked) == len(rotation):
            hop = blocking[0]
            reason = ""
            if fail_open:
                reason = "no target is healthy, so the NLB fails open, and every target blocks"
            return Prediction("fail", _stage_of(hop), hop, reason, denied, hidden)
    # 3. a hop on every flow's return path
    for f in wide:
        if f.direction == "return" and _blocks_all(f):
            return Prediction("fail", "return", f, "", denied, hidden)
    # 4. degraded: some targets, fail-open, partial ranges
    if views:
        if blocked:
            hop = blocking[0]
            names = ", ".join(v.name for v in blocked)
            reason = (
                f"{len(blocked)} of {len(rotation)} targets receiving traffic block it "
                f"({names}): some flows fail"
            )
            return Prediction("degraded", _stage_of(hop), hop, reason, denied, hidden)
        if fail_open and aggregate is not None:
            root: HopFinding | None = next((v.root for v in views if v.root is not None), aggregate)
            return Prediction("degraded", "pass", root, aggregate.degraded, denied, hidden)
        if out:
            root = next((v.root for v in out if v.root is not None), out[0].health)
            names = ", ".join(v.name for v in out)
            reason = f"{names} {'is' if len(out) == 1 else 'are'} unhealthy and out of rotation"
            return Prediction("degraded", "pass", root, reason, denied, hidden)
    partial = next((f for f in denied if f.degraded), None)
    if partial is not None:
        return Prediction("degraded", _stage_of(partial), partial, partial.degraded, denied, hidden)
    if hidden:
        return Prediction("unknown", "pass", None, "", denied, hidden)
    return Prediction("pass", "pass", None, "", denied, hidden)


# --- text -----------------------------------------------------------------------------------


def _title(control_id: str) -> str:
    c = controls.get(control_id)
    return f"{c.article} {c.title}".strip()


def describe(hop: HopFinding) -> str:
    """One hop in a sentence: control, resource, what was checked."""
    who = f" on {hop.target}" if hop.target else ""
    where = f" ({hop.resource})" if hop.resource else ""
    text = f"{_title(hop.control)}{where}{who}"
    if hop.direction == "health":
        text += " for health checks"
    if hop.status == "allowed":
        return f"{text}: allowed by {hop.rule}" if hop.rule else f"{text}: allowed"
    if hop.status == "not_visible":
        return f"{text}: not visible ({hop.detail})" if hop.detail else f"{text}: not visible"
    text += f": {hop.detail}" if hop.detail else ": denied"
    if hop.checked:
        text += f" [checked: {'; '.join(hop.checked)}]"
    if hop.ra_code:
        text += f" (Reachability Analyzer: {hop.ra_code})"
    return text


def _result_line(r: ProbeResult) -> str:
    if r.probe == "dns":
        line = f"dns: {r.outcome}"
        if r.addresses:
            line += f", resolved {', '.join(r.addresses)}"
        if r.missing:
            line += f", missing {', '.join(r.missing)}"
        if r.extra:
            line += f", unexpected {', '.join(r.extra)}"
    else:
        where = f"{r.target_ip}:{r.port}" if r.target_ip else r.path
        line = f"{r.probe} {where}: {r.outcome}"
        if r.icmp:
            line += f" (ICMP {r.icmp[0]}/{r.icmp[1]})"
        if r.duration_s:
            line += f" after {r.duration_s:.2f} s"
    if r.fallback:
        line += f" ({r.fallback})"
    if r.error:
        line += f": {r.error}"
    return line


def evidence_lines(evidence: PathEvidence) -> list[str]:
    """What was observed, in words: each probe's outcome and what the provider saw."""
    lines = [_result_line(r) for r in evidence.results]
    if evidence.seen_at_target == "yes":
        targets = sorted({o.target for o in evidence.observations}) or ["a target"]
        src = f" from {evidence.source_at_target}" if evidence.source_at_target else ""
        lines.append(f"seen at {', '.join(targets)}{src}")
        if evidence.proxy_endpoint_id:
            lines.append(
                f"PROXY v2: endpoint {evidence.proxy_endpoint_id}, client {evidence.proxy_client}"
            )
    elif evidence.seen_at_target == "no":
        lines.append("not seen at any target")
    else:
        why = f": {evidence.provider_error}" if evidence.provider_error else ""
        lines.append(f"provider evidence unavailable{why}")
    if not lines or not evidence.results:
        lines.insert(0, f"client outcome: {evidence.outcome}")
    return lines


def _intermittent(evidence: PathEvidence) -> bool:
    outcomes = {r.outcome for r in evidence.results if r.probe in CONNECT_PROBES}
    return "ok" in outcomes and bool(outcomes & set(FAILED))


# --- verdict assembly ------------------------------------------------------------------------


def control_states(
    findings: Iterable[HopFinding], evidence: PathEvidence | None = None
) -> list[ControlState]:
    """Per catalogue control: verified allowed / blocked / not visible (catalogue order)."""
    by: dict[str, list[HopFinding]] = {}
    for f in findings:
        by.setdefault(f.control, []).append(f)
    states: list[ControlState] = []
    for cid in controls.IDS:
        if cid == "unknown":
            continue
        hops = by.get(cid, [])
        denied = [h for h in hops if h.status == "denied"]
        if cid == "dns" and evidence is not None:
            dns = [r for r in evidence.results if r.probe == "dns"]
            if evidence.outcome == "dns_error":
                states.append(ControlState(cid, "blocked", "the name does not resolve"))
            elif dns and all(r.outcome == "ok" and not r.missing for r in dns):
                states.append(ControlState(cid, "allowed", "resolves to the endpoint's IPs"))
            continue
        if (
            cid == "target-service"
            and evidence is not None
            and evidence.outcome == "refused"
            and evidence.seen_at_target == "yes"
        ):
            states.append(ControlState(cid, "blocked", "the target answered with a reset"))
            continue
        if denied:
            where = sorted({h.target for h in denied if h.target})
            detail = denied[0].detail
            if where and len(where) < len(_targets(hops)):
                detail = f"{', '.join(where)} only: {detail}"
            states.append(ControlState(cid, "blocked", detail))
        elif any(h.status == "not_visible" for h in hops):
            hidden = next(h for h in hops if h.status == "not_visible")
            states.append(ControlState(cid, "not_visible", hidden.detail))
        elif hops:
            note = next((h.degraded for h in hops if h.degraded), "")
            states.append(ControlState(cid, "allowed", note))
    return states


def _unique(ids: Iterable[str]) -> list[str]:
    out: list[str] = []
    for i in ids:
        if i not in out:
            out.append(i)
    return out


def _verdict(
    path: str,
    status: Status,
    stage: str,
    now: float,
    findings: list[HopFinding],
    evidence: PathEvidence | None,
    *,
    blocking: HopFinding | None = None,
    blocked_at: str | None = None,
    candidates: Iterable[str] = (),
    explanation: str = "",
    fix: str = "",
    stages: Iterable[str] = (),
) -> Verdict:
    if blocking is not None:
        blocked_at = blocked_at or blocking.control
        fix = fix or blocking.fix or controls.get(blocking.control).fix
    if blocked_at == "unknown" and not fix:
        fix = controls.get("unknown").fix
    return Verdict(
        path=path,
        status=status,
        stage=stage,
        blocked_at=blocked_at,
        candidates=_unique(candidates),
        evidence=evidence_lines(evidence) if evidence is not None else [],
        explanation=explanation,
        fix=fix,
        checked_at=now,
        controls=control_states(findings, evidence),
        findings=list(findings),
        stages=_unique(stages) if stage == "unknown" else [],
    )


def _also(pred: Prediction, blocking: HopFinding | None) -> str:
    others = [d for d in pred.denied if d is not blocking and not d.target]
    if not others:
        return ""
    return " Also denied: " + "; ".join(describe(d) for d in others[:3]) + "."


def diagnose_static(findings: list[HopFinding], *, path: str, now: float) -> Verdict:
    """Configuration only (``plprobe explain``): the stage of the first denied hop."""
    pred = predict(findings)
    hidden_controls = [h.control for h in pred.hidden]
    if pred.status == "fail":
        assert pred.blocking is not None
        text = f"configuration blocks the path: {describe(pred.blocking)}."
        if pred.reason:
            text += f" {pred.reason[0].upper()}{pred.reason[1:]}."
        return _verdict(
            path,
            "fail",
            pred.stage,
            now,
            findings,
            None,
            blocking=pred.blocking,
            candidates=[d.control for d in pred.denied],
            explanation=text + _also(pred, pred.blocking),
        )
    if pred.status == "degraded":
        assert pred.blocking is not None
        text = f"the path works but is degraded: {pred.reason}. {describe(pred.blocking)}."
        return _verdict(
            path,
            "degraded",
            pred.stage,
            now,
            findings,
            None,
            blocking=pred.blocking,
            candidates=[d.control for d in pred.denied],
            explanation=text,
        )
    if pred.status == "unknown":
        text = (
            "every visible hop allows the flow, but "
            + ", ".join(_unique(hidden_controls))
            + " cannot be seen from here: the path is not verified"
            if hidden_controls
            else pred.reason
        )
        return _verdict(
            path, "unknown", pred.stage, now, findings, None,
            candidates=hidden_controls, explanation=text,
        )  # fmt: skip
    return _verdict(
        path, "pass", "pass", now, findings, None,
        explanation="every hop of the path allows the flow, in both directions",
    )  # fmt: skip


def diagnose(
    evidence: PathEvidence | None, findings: list[HopFinding], *, path: str, now: float
) -> Verdict:
    """One verdict from the packets (``evidence``) and the configuration (``findings``).

    ``findings`` may be empty (packets only) and may be partial (not-visible hops); evidence
    ``None`` falls back to ``diagnose_static``.

    Peer down is not a blocked control: when the provider's evidence could not be had (its
    agent is down, or the channel to it is cut: ``provider_error``), a failing verdict says
    "provider evidence unavailable" first, and names a control only if the configuration
    denies it; a control inferred from packets alone is demoted to a candidate.
    """
    verdict = _diagnose(evidence, findings, path=path, now=now)
    if evidence is not None and evidence.seen_at_target == "unknown" and evidence.provider_error:
        return _without_provider(verdict, evidence, findings)
    return verdict


def _without_provider(
    verdict: Verdict, evidence: PathEvidence, findings: list[HopFinding]
) -> Verdict:
    if verdict.status == "pass" or evidence.outcome == "dns_error":  # no packet was sent
        return verdict
    denied = {f.control for f in findings if f.status == "denied"}
    if verdict.blocked_at not in (None, "unknown") and verdict.blocked_at not in denied:
        verdict.candidates = _unique([verdict.blocked_at, *verdict.candidates])
        verdict.blocked_at = "unknown"
        verdict.fix = controls.get("unknown").fix
    if PROVIDER_UNAVAILABLE not in verdict.explanation:
        verdict.explanation = f"{PROVIDER_UNAVAILABLE}: {verdict.explanation}"
    return verdict


def _diagnose(
    evidence: PathEvidence | None, findings: list[HopFinding], *, path: str, now: float
) -> Verdict:
    if evidence is None:
        return diagnose_static(findings, path=path, now=now)
    pred = predict(findings)
    outcome = evidence.outcome
    seen = evidence.seen_at_target
    if outcome == "dns_error":
        dns = next((r for r in evidence.results if r.probe == "dns"), None)
        detail = f": {dns.error}" if dns and dns.error else ""
        # an endpoint AWS refused to create has no DNS name: the principal is the cause
        refused = next(
            (f for f in findings if f.control == "service-principal" and _blocks_all(f)), None
        )
        if refused is not None:
            return _verdict(
                path,
                "fail",
                "endpoint",
                now,
                findings,
                evidence,
                blocking=refused,
                candidates=["service-principal", "dns"],
                explanation=f"the endpoint's name does not resolve{detail}, and the consumer "
                f"is not an allowed principal, so the endpoint cannot exist: {describe(refused)}",
            )
        if not findings:
            # packets alone cannot tell a DNS mistake from an endpoint that does not exist
            # (AWS refused to create it: the principal) — say both, blame neither
            return _verdict(
                path,
                "fail",
                "unknown",
                now,
                findings,
                evidence,
                blocked_at="unknown",
                candidates=["dns", "service-principal"],
                stages=["dns", "endpoint"],
                explanation=f"the endpoint's name does not resolve{detail}; without the "
                "consumer's configuration a DNS problem and an endpoint that was never created "
                "look the same",
                fix="check that the endpoint exists in the consumer account "
                "(aws ec2 describe-vpc-endpoints) and that the name is one of its DnsEntries; "
                "if it does not exist, the service must allow this account's principal first",
            )
        # the consumer's view has no such endpoint, and the provider's is not here
        missing = next(
            (f for f in findings if f.hop == "endpoint-exists" and f.status == "not_visible"),
            None,
        )
        if missing is not None:
            return _verdict(
                path,
                "fail",
                "unknown",
                now,
                findings,
                evidence,
                blocked_at="unknown",
                candidates=["service-principal", "dns"],
                stages=["endpoint", "dns"],
                explanation=f"the endpoint's name does not resolve{detail}; {missing.detail}",
                fix=missing.fix,
            )
        return _verdict(
            path,
            "fail",
            "dns",
            now,
            findings,
            evidence,
            blocked_at="dns",
            candidates=["dns"],
            explanation=f"the endpoint's name does not resolve{detail}; no packet was sent",
            fix=controls.get("dns").fix,
        )
    if outcome == "error":
        return _verdict(
            path,
            "unknown",
            "unknown",
            now,
            findings,
            evidence,
            explanation="the probe could not run, so the packets say nothing about the path",
        )
    if outcome == "ok" and not _intermittent(evidence):
        return _passing(evidence, findings, pred, path, now)
    if outcome == "ok" or _intermittent(evidence):
        return _mixed(evidence, findings, pred, path, now)
    if outcome == "refused":
        return _reset(evidence, findings, pred, path, now)
    # timeout / icmp_unreachable: a silent drop somewhere
    if seen == "yes":
        return _in_stage(evidence, findings, pred, path, now, "return", ("return",))
    if seen == "no":
        return _in_stage(evidence, findings, pred, path, now, "forward", ("forward", "health"))
    return _no_provider(evidence, findings, pred, path, now)


def _passing(
    evidence: PathEvidence, findings: list[HopFinding], pred: Prediction, path: str, now: float
) -> Verdict:
    if pred.status == "degraded":
        assert pred.blocking is not None
        return _verdict(
            path,
            "degraded",
            "pass",
            now,
            findings,
            evidence,
            blocking=pred.blocking,
            candidates=[d.control for d in pred.denied],
            explanation=f"the probes pass, but {pred.reason}: {describe(pred.blocking)}.",
        )
    if pred.status == "fail":
        assert pred.blocking is not None
        hop = pred.blocking
        if hop.control == "service-principal" and "keeps working" in hop.detail:
            return _verdict(
                path,
                "pass",
                "pass",
                now,
                findings,
                evidence,
                explanation="the probes pass: the endpoint's connection was accepted before its "
                f"principal was removed, and accepted connections stay up ({hop.detail})",
            )
        return _verdict(
            path,
            "unknown",
            "pass",
            now,
            findings,
            evidence,
            candidates=[d.control for d in pred.denied],
            explanation="packets and configuration disagree: the probes pass, but the "
            f"configuration says the path is blocked at {describe(hop)}. The configuration may "
            "be stale, or the analysis may miss a rule; nothing is blamed",
        )
    hidden = _unique(h.control for h in pred.hidden)
    note = f" ({', '.join(hidden)} not visible from here)" if hidden else ""
    return _verdict(
        path,
        "pass",
        "pass",
        now,
        findings,
        evidence,
        explanation=f"the probes pass{note}",
    )


def _mixed(
    evidence: PathEvidence, findings: list[HopFinding], pred: Prediction, path: str, now: float
) -> Verdict:
    """Some probes of the round passed and some failed: intermittent."""
    failed = sorted(
        {r.outcome for r in evidence.results if r.outcome in FAILED and r.probe in CONNECT_PROBES}
    )
    base = f"some probes pass and some fail ({', '.join(failed)}): the path is intermittent"
    if pred.blocking is not None and pred.status in ("degraded", "fail"):
        return _verdict(
            path,
            "degraded",
            pred.stage,
            now,
            findings,
            evidence,
            blocking=pred.blocking,
            candidates=[d.control for d in pred.denied],
            explanation=f"{base}; configuration: {pred.reason or describe(pred.blocking)}.",
        )
    hidden = _unique(h.control for h in pred.hidden)
    return _verdict(
        path,
        "degraded",
        "forward",
        now,
        findings,
        evidence,
        blocked_at="unknown",
        candidates=hidden or ["target-health", "target-sg-ingress", "provider-nacl"],
        explanation=f"{base}; no visible configuration explains it",
    )


def _first_denied(
    findings: list[HopFinding], directions: tuple[str, ...], only: tuple[str, ...] = ()
) -> HopFinding | None:
    """The hop to blame inside a stage: path-wide first, then targets (all blocked first)."""
    hops = [
        f
        for f in findings
        if f.status == "denied"
        and f.direction in directions
        and (not only or f.control in only)
        and not (f.target and f.control == "target-health")
    ]
    wide = [f for f in hops if not f.target]
    for f in wide:
        if _blocks_all(f):
            return f
    # among targets, prefer a control that blocks every target (the usual single mistake)
    names = _targets(findings)
    by_control: dict[str, set[str]] = {}
    for f in hops:
        if f.target:
            by_control.setdefault(f.control, set()).add(f.target)
    for f in hops:
        if f.target and by_control[f.control] >= set(names):
            return f
    return hops[0] if hops else None


def _in_stage(
    evidence: PathEvidence,
    findings: list[HopFinding],
    pred: Prediction,
    path: str,
    now: float,
    stage: str,
    directions: tuple[str, ...],
) -> Verdict:
    seen_text = (
        "the probe reached a target but no reply came back"
        if stage == "return"
        else "the probe timed out and never reached a target"
    )
    hop = _first_denied(findings, directions)
    if hop is not None:
        real_stage = _stage_of(hop) if stage == "forward" else "return"
        return _verdict(
            path,
            "fail",
            real_stage,
            now,
            findings,
            evidence,
            blocking=hop,
            candidates=[d.control for d in pred.denied if d.direction in directions],
            explanation=f"{seen_text}: blocked at {describe(hop)}.",
        )
    return _undetermined(evidence, findings, pred, path, now, stage, directions, seen_text)


def _undetermined(
    evidence: PathEvidence,
    findings: list[HopFinding],
    pred: Prediction,
    path: str,
    now: float,
    stage: str,
    directions: tuple[str, ...],
    seen_text: str,
    stage_controls: tuple[str, ...] = (),
    open_stages: tuple[str, ...] = (),
) -> Verdict:
    """No visible hop explains the failure: candidates, never a guess.

    ``open_stages``: the packets do not single out a stage (no provider evidence), only these;
    the hidden hops narrow them, and more than one left makes the stage ``unknown`` with
    ``Verdict.stages`` listing them.
    """
    hidden_hops = [
        h
        for h in pred.hidden
        if h.direction in directions and (not stage_controls or h.control in stage_controls)
    ]
    hidden = _unique(h.control for h in hidden_hops)
    stages: list[str] = list(open_stages)
    if open_stages and hidden_hops:
        seen_stages = {_stage_of(h) for h in hidden_hops}
        stages = [st for st in open_stages if st in seen_stages] or stages
    if stages:
        stage = stages[0] if len(stages) == 1 else "unknown"
    where = f"the {stage} path" if stage != "unknown" else f"the path ({' or '.join(stages)})"
    if hidden:
        return _verdict(
            path,
            "fail",
            stage,
            now,
            findings,
            evidence,
            blocked_at="unknown",
            candidates=hidden,
            stages=stages,
            explanation=f"{seen_text}; every visible hop of {where} allows it, and "
            f"{', '.join(hidden)} cannot be seen from here",
        )
    default = stage_controls or (
        FORWARD_CONTROLS + RETURN_CONTROLS
        if stage == "unknown"
        else RETURN_CONTROLS
        if stage == "return"
        else FORWARD_CONTROLS
    )
    if not findings:
        return _verdict(
            path,
            "fail",
            stage,
            now,
            findings,
            evidence,
            blocked_at="unknown",
            candidates=default,
            stages=stages,
            explanation=f"{seen_text}; no configuration was read, so the control cannot be "
            "singled out"
            + (f", nor whether it was {' or '.join(stages)}" if stage == "unknown" else ""),
        )
    others = [describe(d) for d in pred.denied]
    also = f" Configuration denies elsewhere: {'; '.join(others)}." if others else ""
    return _verdict(
        path,
        "unknown",
        stage,
        now,
        findings,
        evidence,
        candidates=[d.control for d in pred.denied] + list(default),
        stages=stages,
        explanation=f"packets and configuration disagree: {seen_text}, but every hop of "
        f"{where} allows it in the configuration (stale snapshot, or a control this "
        f"analysis does not model).{also}",
    )


def _reset(
    evidence: PathEvidence, findings: list[HopFinding], pred: Prediction, path: str, now: float
) -> Verdict:
    seen = evidence.seen_at_target
    service = next(
        (f for f in findings if f.control == "target-service" and f.status == "denied"), None
    )
    if seen == "yes":
        explanation = (
            "the target received the probe and answered with a reset: the path is open and "
            "nothing listens on the port (not an access control)"
        )
        target = next((o.target for o in evidence.observations), "the target")
        port = next((o.dst_port for o in evidence.observations), None)
        fix = (
            service.fix
            if service is not None
            else f"start the service on {target}" + (f" port {port}" if port else "")
        )
        return _verdict(
            path,
            "fail",
            "service",
            now,
            findings,
            evidence,
            blocked_at="target-service",
            candidates=["target-service"],
            explanation=explanation,
            fix=fix,
        )
    seen_text = "the connection was reset"
    if seen == "no":
        seen_text += " before reaching any target"
    hop = _first_denied(findings, ("forward",), RESET_CONTROLS)
    if hop is None and seen == "unknown" and service is not None:
        hop = service
    if hop is not None:
        return _verdict(
            path,
            "fail",
            _stage_of(hop),
            now,
            findings,
            evidence,
            blocking=hop,
            candidates=[d.control for d in pred.denied],
            explanation=f"{seen_text}: {describe(hop)}.",
        )
    reset_controls = RESET_CONTROLS + (("target-service",) if seen == "unknown" else ())
    return _undetermined(
        evidence,
        findings,
        pred,
        path,
        now,
        "forward",
        ("forward", "health"),
        seen_text,
        reset_controls,
        RESET_STAGES if seen == "unknown" else (),
    )


def _no_provider(
    evidence: PathEvidence, findings: list[HopFinding], pred: Prediction, path: str, now: float
) -> Verdict:
    """A silent drop and no provider evidence: forward and return cannot be told apart."""
    why = f" ({evidence.provider_error})" if evidence.provider_error else ""
    seen_text = (
        f"{PROVIDER_UNAVAILABLE}{why}: the probe timed out, and forward and return cannot be "
        "told apart"
    )
    hop = _first_denied(findings, ("forward", "health"))
    if hop is None:
        hop = _first_denied(findings, ("return",))
    if hop is not None:
        return _verdict(
            path,
            "fail",
            _stage_of(hop),
            now,
            findings,
            evidence,
            blocking=hop,
            candidates=[d.control for d in pred.denied],
            explanation=f"{seen_text}; configuration names it: {describe(hop)}.",
        )
    return _undetermined(
        evidence,
        findings,
        pred,
        path,
        now,
        "forward",
        ("forward", "health", "return"),
        seen_text,
        open_stages=SILENT_DROP_STAGES,
    )


def rollup(verdicts: Iterable[Verdict]) -> str:
    """One status for several paths (AZs, clients): some failing and some passing = degraded."""
    statuses = [v.status for v in verdicts]
    if not statuses:
        return "unknown"
    if all(s == "pass" for s in statuses):
        return "pass"
    if all(s == "fail" for s in statuses):
        return "fail"
    if "pass" in statuses or "degraded" in statuses:
        return "degraded"
    return "fail" if "fail" in statuses else "unknown"
