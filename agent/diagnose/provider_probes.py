"""Join the provider's own probes into diagnosis: which side of ④ a failure is on.

The provider agent probes from inside the provider VPC (``agent.daemon.provider_probes``):
through each NLB node and listener to a target, and each target directly. For a consumer path
(AZ, port) that fails, the provider's probe of the same listener through the same AZ's NLB
node splits the candidates in two:

    provider -> NLB -> target   fails too   a provider-side control behind the NLB's front door:
                                            ④ egress, ⑤, the provider NACLs, the listener,
                                            target health, the service
                                passes      the consumer side, or a control that depends on the
                                            consumer's address: ④ ingress (and a provider NACL
                                            rule) for consumer addresses
    target directly             refused     the service is not listening (target-service)
                                passes      the service is up: not target-service

Everything here is pure: the summary is built from the results' JSON (what the provider agent
exports and may share through the endpoint), so the client, the provider and tests use the
same code. ``narrow_verdict`` only narrows the candidates of a verdict that names no culprit
and adds one evidence line; it never overrides a culprit that configuration named (it says
when the provider's probes disagree with it), and never blames a passing path.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from agent import controls
from agent.results import Verdict

__all__ = [
    "CONSUMER_OR_INGRESS",
    "PROVIDER_INSIDE",
    "Narrowing",
    "ProviderProbeSummary",
    "narrow",
    "narrow_verdict",
    "summarize",
]

HopState = Literal["ok", "fail", "refused", "unknown"]

#: what a provider->NLB->target probe that fails too can blame: behind the NLB's front door
PROVIDER_INSIDE: frozenset[str] = frozenset(
    {
        "nlb-sg-egress",
        "target-sg-ingress",
        "provider-nacl",
        "nlb-listener",
        "target-health",
        "target-service",
    }
)
#: what remains when the provider's own probe passes: the consumer side, the endpoint, and
#: the provider controls that decide by the consumer's address (④ ingress, a NACL rule)
CONSUMER_OR_INGRESS: frozenset[str] = frozenset(
    {c.id for c in controls.CATALOGUE if c.side == "consumer"}
    | set(controls.ENDPOINT_STAGE)
    | {"nlb-sg-ingress", "provider-nacl"}
)


@dataclass(frozen=True)
class ProviderProbeSummary:
    """What the provider's own probes say about one consumer path's listener and AZ."""

    #: provider -> NLB node of the path's AZ -> listener of the path's port -> a target
    nlb: HopState = "unknown"
    #: the targets directly on the traffic port (any ok: ok; all refused: refused)
    target: HopState = "unknown"
    #: the targets directly on the health-check port
    health: HopState = "unknown"

    @property
    def known(self) -> bool:
        return (self.nlb, self.target, self.health) != ("unknown",) * 3

    def to_json(self) -> dict[str, str]:
        return {"nlb": self.nlb, "target": self.target, "health": self.health}


def _state(outcomes: Sequence[str]) -> HopState:
    if not outcomes:
        return "unknown"
    if "ok" in outcomes:
        return "ok"
    if all(o == "refused" for o in outcomes):
        return "refused"
    return "fail"


def summarize(
    results: Iterable[Mapping[str, Any]], *, az_id: str | None, port: int
) -> ProviderProbeSummary:
    """The summary for a consumer path in ``az_id`` on ``port`` from provider probe results.

    ``results`` are ``ProviderProbeResult.to_json()`` dicts (``hop``, ``where``, ``port``,
    ``outcome``). The NLB hop counts only the node of the path's AZ and the listener of its
    port; the target hops count every target probed (the view says which targets serve the
    listener, the results do not), the health hop falling back to the traffic port's state
    when the health check uses the traffic port (no separate probe).
    """
    nlb: list[str] = []
    target: list[str] = []
    health: list[str] = []
    for r in results:
        hop, outcome = r.get("hop"), str(r.get("outcome", ""))
        if hop == "nlb" and r.get("port") == port and (az_id is None or r.get("where") == az_id):
            nlb.append(outcome)
        elif hop == "target":
            target.append(outcome)
        elif hop == "health":
            health.append(outcome)
    t = _state(target)
    return ProviderProbeSummary(nlb=_state(nlb), target=t, health=_state(health) if health else t)


@dataclass(frozen=True)
class Narrowing:
    """Candidates left after the provider's probes, which side they are on, and why."""

    candidates: tuple[str, ...]
    side: Literal["provider", "consumer", "unknown"]
    reason: str


def _ordered(ids: Iterable[str]) -> tuple[str, ...]:
    """Path order (client -> target), the order candidates are listed in."""

    def position(control_id: str) -> int:
        control = controls.BY_ID.get(control_id)
        return 99 if control is None else control.path_position or 0

    return tuple(sorted(set(ids), key=position))


def narrow(candidates: Iterable[str], summary: ProviderProbeSummary) -> Narrowing:
    """Keep the candidates the provider's probes allow (all of them when they say nothing).

    ``candidates`` empty means "anything on the path": the result is then the whole side.
    """
    given = set(candidates) - {"unknown"}
    if summary.nlb == "unknown":
        return Narrowing(_ordered(given), "unknown", "no provider probe of this listener and AZ")
    if summary.nlb == "ok":
        allowed = set(CONSUMER_OR_INGRESS)
        reason = (
            "the provider's own probe through the NLB node of this AZ to a target passes, so "
            "the provider's side behind the NLB works: the consumer side or ④ ingress for "
            "the consumer's address"
        )
        side: Literal["provider", "consumer"] = "consumer"
    else:
        allowed = set(PROVIDER_INSIDE)
        reason = "the provider's own probe through the NLB node of this AZ fails too"
        if summary.target == "refused":
            allowed = {"target-service"}
            reason += ", and the targets refuse a direct connection: the service is down"
        elif summary.target == "ok":
            allowed.discard("target-service")
            reason += ", while the targets answer directly: the NLB's path to them"
            if summary.health in ("fail", "refused"):
                reason += " (the health-check port does not answer: target health)"
                allowed = {"target-health", "target-sg-ingress", "provider-nacl"}
        reason += ": a provider-side control"
        side = "provider"
    kept = given & allowed if given else allowed
    if given and not kept:
        return Narrowing(
            _ordered(given),
            "unknown",
            f"the provider's probes disagree with the candidates ({reason})",
        )
    return Narrowing(_ordered(kept), side, reason)


def narrow_verdict(verdict: Verdict, summary: ProviderProbeSummary | None) -> Verdict:
    """The verdict with candidates narrowed by the provider's probes, and one evidence line.

    Only a failing or undecided verdict without a named culprit is narrowed; a named culprit
    is kept (a line says when the provider's probes point at the other side); a pass is left
    as it is. Returns a new Verdict; the input is not changed.
    """
    if summary is None or not summary.known or verdict.status == "pass":
        return verdict
    n = narrow(verdict.candidates, summary)
    line = f"provider probes (nlb {summary.nlb}, target {summary.target}): {n.reason}"
    if verdict.blocked_at not in (None, "unknown"):
        control = controls.BY_ID.get(verdict.blocked_at)
        inside = verdict.blocked_at in PROVIDER_INSIDE
        disagrees = (summary.nlb == "ok" and inside) or (
            summary.nlb in ("fail", "refused") and not inside
        )
        if disagrees and control is not None:
            line += f"; this disagrees with {control.title}"
        return replace(verdict, evidence=[*verdict.evidence, line])
    if verdict.status not in ("fail", "unknown"):
        return replace(verdict, evidence=[*verdict.evidence, line])
    return replace(verdict, candidates=list(n.candidates), evidence=[*verdict.evidence, line])
