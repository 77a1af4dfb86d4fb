"""agent/diagnose/provider_probes.py: the provider's own probes say which side a failure is on.

Each test gives the provider probe results (their JSON, as exported and shared) and the
candidates a consumer's verdict left open, and checks what remains.
"""

from __future__ import annotations

from agent.diagnose.pipeline import SelfIdentity, diagnose_round
from agent.diagnose.provider_probes import (
    CONSUMER_OR_INGRESS,
    PROVIDER_INSIDE,
    ProviderProbeSummary,
    narrow,
    narrow_verdict,
    summarize,
)
from agent.results import PathEvidence, ProbeResult, Verdict

AZ = "apne1-az4"
EVERYTHING = [
    "client-sg-egress",
    "client-nacl",
    "endpoint-sg-ingress",
    "nlb-sg-ingress",
    "nlb-listener",
    "nlb-sg-egress",
    "provider-nacl",
    "target-sg-ingress",
    "target-service",
    "target-health",
]


def r(hop: str, where: str, port: int, outcome: str) -> dict[str, object]:
    return {"hop": hop, "where": where, "port": port, "outcome": outcome}


def failing(candidates: list[str], blocked_at: str = "unknown") -> Verdict:
    return Verdict(
        path=f"client-1/{AZ}/80",
        status="fail",
        stage="forward",
        blocked_at=blocked_at,
        candidates=list(candidates),
    )


# -- summarize ----------------------------------------------------------------------------


def test_the_nlb_hop_counts_only_the_node_of_the_paths_az_and_the_listener_of_its_port() -> None:
    results = [
        r("nlb", AZ, 80, "timeout"),
        r("nlb", "apne1-az1", 80, "ok"),
        r("nlb", AZ, 9721, "ok"),
    ]
    assert summarize(results, az_id=AZ, port=80).nlb == "fail"


def test_one_target_answering_makes_the_target_hop_ok() -> None:
    results = [r("target", "server-1", 80, "refused"), r("target", "server-2", 80, "ok")]
    assert summarize(results, az_id=AZ, port=80).target == "ok"


def test_every_target_refusing_is_refused_and_health_follows_the_traffic_port() -> None:
    results = [r("target", "server-1", 80, "refused"), r("target", "server-2", 80, "refused")]
    s = summarize(results, az_id=AZ, port=80)
    assert (s.target, s.health) == ("refused", "refused")


def test_no_provider_probe_of_the_path_is_unknown() -> None:
    assert summarize([], az_id=AZ, port=80) == ProviderProbeSummary()
    assert not ProviderProbeSummary().known


# -- narrow -------------------------------------------------------------------------------


def test_provider_path_failing_too_keeps_only_provider_side_controls_behind_the_nlb() -> None:
    n = narrow(EVERYTHING, ProviderProbeSummary(nlb="fail"))
    assert n.side == "provider"
    assert set(n.candidates) == set(EVERYTHING) & PROVIDER_INSIDE
    assert "nlb-sg-ingress" not in n.candidates
    assert "client-sg-egress" not in n.candidates


def test_provider_path_passing_keeps_the_consumer_side_and_nlb_ingress() -> None:
    n = narrow(EVERYTHING, ProviderProbeSummary(nlb="ok", target="ok"))
    assert n.side == "consumer"
    assert set(n.candidates) == set(EVERYTHING) & CONSUMER_OR_INGRESS
    assert "nlb-sg-ingress" in n.candidates
    assert "nlb-sg-egress" not in n.candidates and "target-service" not in n.candidates


def test_targets_refusing_directly_point_at_the_service() -> None:
    n = narrow(EVERYTHING, ProviderProbeSummary(nlb="fail", target="refused"))
    assert n.candidates == ("target-service",)


def test_targets_answering_directly_rule_the_service_out() -> None:
    n = narrow(EVERYTHING, ProviderProbeSummary(nlb="fail", target="ok", health="ok"))
    assert "target-service" not in n.candidates
    assert {"nlb-sg-egress", "target-sg-ingress", "nlb-listener"} <= set(n.candidates)


def test_a_dead_health_check_port_points_at_target_health() -> None:
    n = narrow(EVERYTHING, ProviderProbeSummary(nlb="fail", target="ok", health="fail"))
    assert "target-health" in n.candidates and "nlb-listener" not in n.candidates


def test_candidates_are_listed_in_path_order() -> None:
    n = narrow(EVERYTHING, ProviderProbeSummary(nlb="fail"))
    assert n.candidates == (
        "nlb-listener",
        "nlb-sg-egress",
        "provider-nacl",
        "target-sg-ingress",
        "target-service",
        "target-health",
    )


def test_no_candidates_given_means_the_whole_side() -> None:
    n = narrow([], ProviderProbeSummary(nlb="fail"))
    assert set(n.candidates) == PROVIDER_INSIDE


def test_probes_that_contradict_every_candidate_keep_them_and_say_so() -> None:
    n = narrow(["client-sg-egress"], ProviderProbeSummary(nlb="fail"))
    assert n.side == "unknown"
    assert n.candidates == ("client-sg-egress",)
    assert "disagree" in n.reason


def test_no_provider_probe_narrows_nothing() -> None:
    n = narrow(EVERYTHING, ProviderProbeSummary())
    assert set(n.candidates) == set(EVERYTHING) and n.side == "unknown"


# -- narrow_verdict -----------------------------------------------------------------------


def test_a_verdict_without_culprit_gets_narrowed_candidates_and_an_evidence_line() -> None:
    v = narrow_verdict(failing(EVERYTHING), ProviderProbeSummary(nlb="ok", target="ok"))
    assert v.blocked_at == "unknown"
    assert "nlb-sg-egress" not in v.candidates and "nlb-sg-ingress" in v.candidates
    assert v.evidence[-1].startswith("provider probes (nlb ok, target ok)")


def test_a_named_culprit_is_kept_and_a_disagreement_is_said() -> None:
    v = narrow_verdict(
        failing(["nlb-sg-egress"], blocked_at="nlb-sg-egress"), ProviderProbeSummary(nlb="ok")
    )
    assert v.blocked_at == "nlb-sg-egress" and v.candidates == ["nlb-sg-egress"]
    assert "disagrees with NLB security group egress" in v.evidence[-1]


def test_a_passing_verdict_is_never_touched() -> None:
    passing = Verdict(path="p", status="pass", stage="pass", blocked_at=None)
    assert narrow_verdict(passing, ProviderProbeSummary(nlb="fail")) is passing


def test_the_input_verdict_is_not_changed() -> None:
    original = failing(EVERYTHING)
    narrow_verdict(original, ProviderProbeSummary(nlb="fail"))
    assert original.candidates == EVERYTHING and original.evidence == []


def test_the_pipeline_narrows_through_its_provider_probes_argument() -> None:
    pid = f"client-1/{AZ}/80"
    ev = PathEvidence(
        path=pid,
        outcome="timeout",
        seen_at_target="unknown",
        results=[ProbeResult(path=pid, probe="tcp", outcome="timeout", port=80)],
    )
    me = SelfIdentity(names=("client-1",))
    plain = diagnose_round([ev], None, me).verdicts[0]
    narrowed = diagnose_round(
        [ev], None, me, provider_probes={pid: ProviderProbeSummary(nlb="fail")}
    ).verdicts[0]
    assert narrowed.blocked_at == plain.blocked_at
    assert set(narrowed.candidates) <= PROVIDER_INSIDE
    assert set(plain.candidates) - set(narrowed.candidates)
