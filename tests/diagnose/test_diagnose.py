"""Diagnosis: packets decide the stage, configuration the control; never guess, never blame
a healthy path. Synthetic evidence per the wire table of docs/AWS-BEHAVIOUR.md."""

from __future__ import annotations

import json

import pytest
from scenarios import (
    BY_N,
    SCENARIOS,
    Scenario,
    broken,
    consumer_only,
    multi_az,
    reference,
    s7,
)

from agent.analyze.path import analyze_flow, flows, walk
from agent.diagnose.verdict import diagnose, diagnose_static, rollup
from agent.results import HopFinding, Observation, PathEvidence, ProbeResult

PATH = "client-2/apne1-az4/80"
NOW = 1_700_000_000.0


def evidence(
    outcome: str,
    seen: str,
    *,
    path: str = PATH,
    outcomes: tuple[str, ...] = (),
    provider_error: str | None = None,
) -> PathEvidence:
    """What correlation would hand over: the client's probes and what a target saw."""
    results = [
        ProbeResult(path, "tcp", o, target_ip="10.2.0.20", port=80, duration_s=2.0)
        for o in (outcomes or (outcome,))
    ]
    observations = []
    if seen == "yes":
        observations.append(
            Observation("token", "server-1", NOW, "10.3.0.100", 40001, "10.3.1.10", 80, "sniffer")
        )
    return PathEvidence(
        path,
        outcome,
        seen,  # type: ignore[arg-type]
        results,
        observations,
        source_at_target="10.3.0.100:40001" if seen == "yes" else None,
        provider_error=provider_error,
    )


def verdict_for(s: Scenario, level: str):
    t = broken(s)
    if level == "consumer":
        t = consumer_only(t)
    findings: list[HopFinding] = [] if level == "packets" else analyze_flow(t, s.client, None, 80)
    return diagnose(evidence(*s.wire), findings, path=PATH, now=NOW)


@pytest.mark.parametrize("s", SCENARIOS, ids=lambda s: f"s{s.n}")
def test_both_sides_evidence_names_the_exact_control(s: Scenario) -> None:
    v = verdict_for(s, "full")
    assert v.blocked_at == s.control
    expected = s.status if s.wire[0] == "ok" else "fail"
    assert v.status == expected
    assert v.stage == s.stage


@pytest.mark.parametrize("s", SCENARIOS, ids=lambda s: f"s{s.n}")
def test_client_side_evidence_blames_nothing_it_cannot_see(s: Scenario) -> None:
    v = verdict_for(s, "consumer")
    if s.side == "consumer" or s.control == "target-service":
        assert v.blocked_at == s.control
    else:
        assert v.blocked_at in (None, "unknown")
    if v.blocked_at == "unknown":
        assert s.control in v.candidates or s.control == "service-principal"
        assert v.status == "fail"
    if s.wire[0] == "ok":
        assert v.status == "pass"


@pytest.mark.parametrize("s", SCENARIOS, ids=lambda s: f"s{s.n}")
def test_packets_alone_give_the_stage_and_no_control(s: Scenario) -> None:
    v = verdict_for(s, "packets")
    if s.wire[0] == "ok":
        assert (v.status, v.blocked_at) == ("pass", None)
    elif s.control == "target-service":
        assert (v.blocked_at, v.stage) == ("target-service", "service")
    else:
        assert v.blocked_at == "unknown" and v.status == "fail"
        assert v.stage == ("forward" if s.stage == "endpoint" else s.stage)
        assert s.control in v.candidates


def test_unresolvable_name_is_a_dns_verdict() -> None:
    ev = PathEvidence(
        PATH, "dns_error", "no", [ProbeResult(PATH, "dns", "dns_error", error="NXDOMAIN")]
    )
    v = diagnose(ev, analyze_flow(reference(), "client-2", None, 80), path=PATH, now=NOW)
    assert (v.status, v.stage, v.blocked_at) == ("fail", "dns", "dns")
    assert "NXDOMAIN" in v.explanation and v.fix


def test_cross_zone_off_fails_only_the_az_without_targets_and_rolls_up_degraded() -> None:
    t = multi_az()
    verdicts = []
    for f in flows(t, "client-2", 80):
        wire = (
            evidence("timeout", "no", path=f.path_id)
            if f.az_id == "apne1-az1"
            else evidence("ok", "yes", path=f.path_id)
        )
        verdicts.append(diagnose(wire, walk(t, f), path=f.path_id, now=NOW))
    by_az = {v.path.split("/")[1]: v for v in verdicts}
    assert (by_az["apne1-az1"].status, by_az["apne1-az1"].blocked_at) == ("fail", "target-health")
    assert (by_az["apne1-az4"].status, by_az["apne1-az4"].blocked_at) == ("pass", None)
    assert rollup(verdicts) == "degraded"


def test_healthy_baseline_blames_nothing() -> None:
    v = diagnose(
        evidence("ok", "yes"), analyze_flow(reference(), "client-2", None, 80), path=PATH, now=NOW
    )
    assert (v.status, v.stage, v.blocked_at, v.candidates) == ("pass", "pass", None, [])
    assert not [c for c in v.controls if c.state != "allowed"]
    assert any("seen at server-1" in line for line in v.evidence)


def test_packets_fail_where_configuration_allows_everything_is_unknown() -> None:
    v = diagnose(
        evidence("timeout", "no"),
        analyze_flow(reference(), "client-2", None, 80),
        path=PATH,
        now=NOW,
    )
    assert v.status == "unknown" and v.blocked_at is None
    assert "disagree" in v.explanation and v.candidates


def test_packets_pass_where_configuration_denies_is_unknown_not_blame() -> None:
    findings = analyze_flow(broken(BY_N[8]), "client-2", None, 80)
    v = diagnose(evidence("ok", "yes"), findings, path=PATH, now=NOW)
    assert (v.status, v.blocked_at) == ("unknown", None)
    assert "nlb-sg-ingress" in v.candidates and "disagree" in v.explanation


def test_a_removed_principal_with_an_accepted_connection_passes() -> None:
    findings = analyze_flow(broken(BY_N[7]), "client-2", None, 80)
    v = diagnose(evidence("ok", "yes"), findings, path=PATH, now=NOW)
    assert (v.status, v.blocked_at) == ("pass", None)
    assert "stay up" in v.explanation


def test_failing_packets_with_hidden_hops_list_only_that_stages_hidden_controls() -> None:
    findings = analyze_flow(consumer_only(reference()), "client-2", None, 80)
    v = diagnose(evidence("timeout", "no"), findings, path=PATH, now=NOW)
    assert (v.status, v.blocked_at) == ("fail", "unknown")
    assert "nlb-sg-ingress" in v.candidates
    assert "client-sg-egress" not in v.candidates
    v = diagnose(evidence("timeout", "yes"), findings, path=PATH, now=NOW)
    assert (v.stage, v.blocked_at, v.candidates) == ("return", "unknown", ["provider-nacl"])


def test_provider_agent_down_leaves_forward_and_return_open_and_lists_candidates() -> None:
    """A timeout the target could not confirm or deny: the consumer sees its own hops allow the
    flow and the endpoint available, so the drop is a provider hop, forward or return."""
    findings = analyze_flow(consumer_only(broken(BY_N[8])), "client-2", None, 80)
    down = evidence("timeout", "unknown", provider_error="connection refused")
    v = diagnose(down, findings, path=PATH, now=NOW)
    assert (v.status, v.stage, v.blocked_at) == ("fail", "unknown", "unknown")
    assert v.stages == ["forward", "return"]
    assert "nlb-sg-ingress" in v.candidates and "provider-nacl" in v.candidates
    assert any("connection refused" in line for line in v.evidence)


def test_provider_agent_down_with_both_snapshots_still_names_a_visible_denial() -> None:
    findings = analyze_flow(broken(BY_N[8]), "client-2", None, 80)
    v = diagnose(evidence("timeout", "unknown"), findings, path=PATH, now=NOW)
    assert (v.status, v.blocked_at) == ("fail", "nlb-sg-ingress")


def test_a_reset_not_seen_at_the_target_names_the_missing_listener() -> None:
    findings = analyze_flow(broken(BY_N[18]), "client-2", None, 80)
    v = diagnose(evidence("refused", "no"), findings, path=PATH, now=NOW)
    assert (v.status, v.stage, v.blocked_at) == ("fail", "forward", "nlb-listener")


def test_a_reset_from_a_target_with_everything_allowed_is_the_service() -> None:
    v = diagnose(
        evidence("refused", "yes"),
        analyze_flow(reference(), "client-2", None, 80),
        path=PATH,
        now=NOW,
    )
    assert (v.status, v.stage, v.blocked_at) == ("fail", "service", "target-service")
    assert "server-1" in v.fix


def test_a_mixed_round_is_degraded_with_the_configured_cause() -> None:
    findings = analyze_flow(broken(BY_N[13]), "client-2", None, 80)
    v = diagnose(evidence("ok", "yes", outcomes=("ok", "timeout")), findings, path=PATH, now=NOW)
    assert (v.status, v.blocked_at) == ("degraded", "target-sg-ingress")


def test_a_mixed_round_without_a_configured_cause_is_degraded_and_undetermined() -> None:
    v = diagnose(evidence("ok", "yes", outcomes=("ok", "timeout")), [], path=PATH, now=NOW)
    assert (v.status, v.blocked_at) == ("degraded", "unknown") and v.candidates


def test_fail_open_passes_packets_but_is_degraded_with_the_reason() -> None:
    findings = analyze_flow(broken(BY_N[11]), "client-2", None, 80)
    v = diagnose(evidence("ok", "yes"), findings, path=PATH, now=NOW)
    assert (v.status, v.blocked_at) == ("degraded", "nlb-sg-egress")
    assert "fails open" in v.explanation and "8080" in v.fix


def test_a_probe_that_could_not_run_says_nothing() -> None:
    v = diagnose(evidence("error", "unknown"), [], path=PATH, now=NOW)
    assert (v.status, v.blocked_at) == ("unknown", None)


def test_no_evidence_is_the_static_verdict() -> None:
    findings = analyze_flow(broken(BY_N[1]), "client-2", None, 80)
    assert diagnose(None, findings, path=PATH, now=NOW) == diagnose_static(
        findings, path=PATH, now=NOW
    )


def test_controls_report_allowed_blocked_and_not_visible() -> None:
    findings = analyze_flow(consumer_only(broken(BY_N[1])), "client-2", None, 80)
    states = {
        c.control: c.state
        for c in diagnose(evidence("timeout", "no"), findings, path=PATH, now=NOW).controls
    }
    assert states["client-sg-egress"] == "blocked"
    assert states["endpoint-sg-ingress"] == "allowed"
    assert states["nlb-sg-ingress"] == "not_visible"


def test_one_blocked_target_is_reported_as_that_target_only() -> None:
    findings = analyze_flow(broken(BY_N[13]), "client-2", None, 80)
    states = {c.control: c for c in diagnose_static(findings, path=PATH, now=NOW).controls}
    assert states["target-sg-ingress"].state == "blocked"
    assert states["target-sg-ingress"].detail.startswith("server-2 only")


def test_verdict_json_has_the_stable_field_names() -> None:
    v = diagnose(
        evidence("timeout", "no"),
        analyze_flow(broken(BY_N[8]), "client-2", None, 80),
        path=PATH,
        now=NOW,
    )
    data = json.loads(json.dumps(v.to_json()))
    assert {
        "path",
        "status",
        "stage",
        "blocked_at",
        "candidates",
        "evidence",
        "explanation",
        "fix",
        "checked_at",
        "controls",
        "findings",
    } <= set(data)
    assert data["checked_at"] == NOW and data["blocked_at"] == "nlb-sg-ingress"
    assert "10.2.1.15/32" in data["fix"]


def test_no_dns_name_because_the_principal_was_refused_blames_the_principal() -> None:
    ev = PathEvidence(PATH, "dns_error", "no", [ProbeResult(PATH, "dns", "dns_error")])
    findings = analyze_flow(broken(BY_N[7]), "client-2", None, 80)
    v = diagnose(ev, findings, path=PATH, now=NOW)
    assert (v.status, v.stage, v.blocked_at) == ("fail", "endpoint", "service-principal")


def test_an_empty_target_group_blames_target_health() -> None:
    t = reference()
    next(iter(t.target_groups.values())).targets.clear()
    findings = analyze_flow(t, "client-2", None, 80)
    v = diagnose(evidence("timeout", "no"), findings, path=PATH, now=NOW)
    assert (v.status, v.blocked_at) == ("fail", "target-health")
    assert "no registered targets" in v.explanation


def _never_created(t):
    """What AWS shows after refusing CreateVpcEndpoint: no endpoint in any account."""
    s7(t)
    t.endpoints.clear()
    return t


def test_a_missing_endpoint_seen_from_the_consumer_alone_is_undetermined_not_dns() -> None:
    ev = PathEvidence(PATH, "dns_error", "unknown", [ProbeResult(PATH, "dns", "dns_error")])
    findings = analyze_flow(consumer_only(_never_created(reference())), "client-2", None, 80)
    v = diagnose(ev, findings, path=PATH, now=NOW)
    assert (v.status, v.stage, v.blocked_at) == ("fail", "unknown", "unknown")
    assert v.stages == ["endpoint", "dns"]
    assert v.candidates == ["service-principal", "dns"]
    assert "never created" in v.explanation


def test_a_missing_endpoint_with_the_providers_view_names_the_refused_principal() -> None:
    ev = PathEvidence(PATH, "dns_error", "no", [ProbeResult(PATH, "dns", "dns_error")])
    findings = analyze_flow(_never_created(reference()), "client-2", None, 80)
    v = diagnose(ev, findings, path=PATH, now=NOW)
    assert (v.status, v.blocked_at) == ("fail", "service-principal")
    assert "arn:aws:iam::111111111111:root" in v.fix


def test_an_unresolvable_name_on_packets_alone_names_both_candidates() -> None:
    """No configuration: a DNS mistake and an endpoint that was never created look the same."""
    ev = PathEvidence(PATH, "dns_error", "unknown", [ProbeResult(PATH, "dns", "dns_error")])
    v = diagnose(ev, [], path=PATH, now=NOW)
    assert (v.status, v.stage, v.blocked_at) == ("fail", "unknown", "unknown")
    assert set(v.candidates) == {"dns", "service-principal"}
    assert v.stages == ["dns", "endpoint"]


# -- packets only: the stage is claimed only as far as the packets show it -------------------

#: what the client alone sees: its probes' outcomes, no provider agent, no configuration
PACKETS_ONLY = "provider evidence not used at this evidence level"


def test_a_timeout_on_packets_alone_leaves_endpoint_forward_and_return_open() -> None:
    """Endpoint not accepted, an SG drop and a lost reply all time out at the client."""
    v = diagnose(
        evidence("timeout", "unknown", provider_error=PACKETS_ONLY), [], path=PATH, now=NOW
    )
    assert (v.status, v.stage, v.blocked_at) == ("fail", "unknown", "unknown")
    assert v.stages == ["endpoint", "forward", "return"]


def test_a_timeout_on_packets_alone_lists_forward_and_return_candidates() -> None:
    v = diagnose(
        evidence("timeout", "unknown", provider_error=PACKETS_ONLY), [], path=PATH, now=NOW
    )
    assert {"endpoint-acceptance", "nlb-sg-ingress", "provider-nacl", "route"} <= set(v.candidates)


def test_a_reset_on_packets_alone_leaves_the_service_and_the_resetting_hops_open() -> None:
    """Nothing listening on the target and a hop that resets (lab settings) look the same."""
    v = diagnose(
        evidence("refused", "unknown", provider_error=PACKETS_ONLY), [], path=PATH, now=NOW
    )
    assert (v.status, v.stage, v.blocked_at) == ("fail", "unknown", "unknown")
    assert v.stages == ["endpoint", "forward", "service"]
    assert "target-service" in v.candidates


def test_a_timeout_the_target_saw_keeps_its_single_stage_and_lists_no_stages() -> None:
    v = diagnose(evidence("timeout", "yes"), [], path=PATH, now=NOW)
    assert (v.stage, v.stages) == ("return", [])


def test_a_configured_denial_without_provider_evidence_keeps_its_stage() -> None:
    findings = analyze_flow(consumer_only(broken(BY_N[1])), "client-2", None, 80)
    v = diagnose(
        evidence("timeout", "unknown", provider_error=PACKETS_ONLY), findings, path=PATH, now=NOW
    )
    assert (v.stage, v.blocked_at, v.stages) == ("forward", "client-sg-egress", [])


# -- provider evidence unavailable: the peer being down is not a blocked control -------------

#: the provider agent is down (its API refuses) / the evidence channel is cut (no answer)
PEER_DOWN = (
    "provider observations unavailable: http://10.3.1.10:9720/v1/observations: "
    "Cannot connect to host 10.3.1.10:9720 [Connection refused]",
    "provider observations unavailable: http://10.3.1.10:9720/v1/observations: no answer within 3s",
)
FAILING = [s for s in SCENARIOS if s.wire[0] not in ("ok", "dns_error")]


def _peer_down_verdict(s: Scenario, level: str, why: str) -> tuple[object, list[HopFinding]]:
    t = broken(s)
    if level == "consumer":
        t = consumer_only(t)
    findings: list[HopFinding] = [] if level == "packets" else analyze_flow(t, s.client, None, 80)
    ev = evidence(s.wire[0], "unknown", provider_error=why)
    return diagnose(ev, findings, path=PATH, now=NOW), findings


@pytest.mark.parametrize("why", PEER_DOWN, ids=["agent-down", "channel-cut"])
@pytest.mark.parametrize("level", ["packets", "consumer", "full"])
@pytest.mark.parametrize("s", FAILING, ids=lambda s: f"s{s.n}")
def test_without_provider_evidence_a_verdict_says_so_and_names_only_configured_denials(
    s: Scenario, level: str, why: str
) -> None:
    v, findings = _peer_down_verdict(s, level, why)
    assert "provider evidence unavailable" in v.explanation
    if v.blocked_at not in (None, "unknown"):
        denied = {f.control for f in findings if f.status == "denied"}
        assert v.blocked_at in denied, "a control named without configuration naming it"


@pytest.mark.parametrize("level", ["packets", "consumer"])
def test_a_reset_with_the_provider_down_is_not_blamed_on_the_service(level: str) -> None:
    t = reference() if level == "consumer" else None
    findings = analyze_flow(consumer_only(t), "client-2", None, 80) if t is not None else []
    ev = evidence("refused", "unknown", provider_error=PEER_DOWN[0])
    v = diagnose(ev, findings, path=PATH, now=NOW)
    assert v.blocked_at in ("unknown", None) and v.status != "pass"
    assert "target-service" in v.candidates
