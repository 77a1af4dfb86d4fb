"""The fault matrix at the configuration level: the static findings alone must name the control
and the rule of each fault (the scenarios live in ``tests/scenarios.py``)."""

from __future__ import annotations

import pytest
from scenarios import (
    BY_N,
    LOGS_ENDPOINT,
    SCENARIOS,
    Scenario,
    broken,
    consumer_only,
    findings_for,
    first_denied,
    multi_az,
    the_nlb,
)

from agent.analyze.path import flows, walk
from agent.diagnose.verdict import diagnose_static

# --- configuration-level matrix -------------------------------------------------------------


@pytest.mark.parametrize("s", SCENARIOS, ids=lambda s: f"s{s.n}")
def test_static_verdict_names_the_control_of_each_fault(s: Scenario) -> None:
    t = broken(s)
    v = diagnose_static(findings_for(t, s.client), path="p", now=0.0)
    assert (v.status, v.blocked_at) == (s.status, s.control)
    if s.control is not None:
        assert v.stage == s.stage
        assert v.fix


@pytest.mark.parametrize("s", [s for s in SCENARIOS if s.control], ids=lambda s: f"s{s.n}")
def test_the_blamed_hop_names_the_rule_or_resource(s: Scenario) -> None:
    t = broken(s)
    v = diagnose_static(findings_for(t, s.client), path="p", now=0.0)
    hop = next(f for f in v.findings if f.control == s.control and f.status == "denied")
    text = " ".join([hop.resource, hop.rule, hop.detail, *hop.checked, hop.fix, hop.target])
    for needle in s.rule_text:
        assert needle in text, (needle, text)


@pytest.mark.parametrize("s", [s for s in SCENARIOS if s.bystander], ids=lambda s: f"s{s.n}")
def test_the_other_client_is_not_blamed(s: Scenario) -> None:
    t = broken(s)
    assert s.bystander is not None
    v = diagnose_static(findings_for(t, s.bystander), path="p", now=0.0)
    assert (v.status, v.blocked_at) == ("pass", None)


def test_multi_az_blames_target_health_only_on_the_az_without_targets() -> None:
    t = multi_az()
    verdicts = {
        f.az_id: diagnose_static(walk(t, f), path=f.path_id, now=0.0)
        for f in flows(t, "client-2", 80)
    }
    assert verdicts["apne1-az1"].blocked_at == "target-health"
    assert verdicts["apne1-az1"].status == "fail"
    hop = first_denied(verdicts["apne1-az1"].findings)
    assert hop.ra_code == "ELBV2_NO_TARGETS_IN_AZ"
    assert (verdicts["apne1-az4"].status, verdicts["apne1-az4"].blocked_at) == ("pass", None)


def test_multi_az_with_cross_zone_on_passes_on_both_azs() -> None:
    t = multi_az()
    the_nlb(t).cross_zone = True
    for f in flows(t, "client-2", 80):
        assert diagnose_static(walk(t, f), path=f.path_id, now=0.0).status == "pass"


# --- several endpoints in the consumer account (issue 14, problem 2) ------------------------


def _walked_resources(findings) -> str:
    return " ".join(f.resource for f in findings)


def test_with_an_aws_service_endpoint_the_path_walks_the_services_endpoint() -> None:
    t = broken(BY_N[39])
    service_endpoint = next(e for e in t.endpoints.values() if e.id != LOGS_ENDPOINT)
    walked = _walked_resources(findings_for(t, "client-1"))
    assert service_endpoint.id in walked
    assert LOGS_ENDPOINT not in walked and "sg-0awslogs" not in walked


def test_the_consumer_alone_never_takes_the_aws_service_endpoint_for_the_path() -> None:
    t = consumer_only(broken(BY_N[38]))
    v = diagnose_static(findings_for(t, "client-1"), path="p", now=0.0)
    assert (v.status, v.blocked_at) == ("fail", "endpoint-sg-ingress")
    assert "sg-0awslogs" not in _walked_resources(v.findings)
