"""The provider's own probe metrics (``plprobe_provider_...``) and its expected consumers."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from agent.metrics import Metrics, make_metrics
from agent.results import OUTCOMES, ProbeResult

NLB = "server-1/apne1-az4/80"
TARGET = "server-1/server-2/80"


@pytest.fixture
def reg() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def m(reg: CollectorRegistry) -> Metrics:
    return make_metrics(reg, role="provider")


def res(path: str, outcome: str, duration: float = 0.002) -> ProbeResult:
    return ProbeResult(path=path, probe="tcp", outcome=outcome, duration_s=duration)


def test_a_round_sets_path_up_per_path_and_hop(m: Metrics, reg: CollectorRegistry) -> None:
    m.observe_provider_round(
        [("nlb", res(NLB, "timeout")), ("target", res(TARGET, "ok"))], cpu_s=0.01, finished_at=5
    )
    assert reg.get_sample_value("plprobe_provider_path_up", {"path": NLB, "hop": "nlb"}) == 0
    assert reg.get_sample_value("plprobe_provider_path_up", {"path": TARGET, "hop": "target"}) == 1


def test_counters_of_every_result_exist_at_zero_from_the_first_round(
    m: Metrics, reg: CollectorRegistry
) -> None:
    m.observe_provider_round([("nlb", res(NLB, "ok"))], cpu_s=0, finished_at=1)
    for outcome in OUTCOMES:
        value = reg.get_sample_value(
            "plprobe_provider_probes_total", {"path": NLB, "hop": "nlb", "result": outcome}
        )
        assert value == (1 if outcome == "ok" else 0), outcome


def test_only_probes_that_got_through_are_timed(m: Metrics, reg: CollectorRegistry) -> None:
    m.observe_provider_round(
        [("nlb", res(NLB, "ok", 0.003)), ("target", res(TARGET, "timeout", 2.0))],
        cpu_s=0,
        finished_at=1,
    )
    count = "plprobe_provider_probe_duration_seconds_count"
    assert reg.get_sample_value(count, {"path": NLB, "hop": "nlb"}) == 1
    assert reg.get_sample_value(count, {"path": TARGET, "hop": "target"}) is None


def test_a_path_no_longer_probed_loses_its_series(m: Metrics, reg: CollectorRegistry) -> None:
    m.observe_provider_round(
        [("nlb", res(NLB, "ok")), ("target", res(TARGET, "ok"))], cpu_s=0, finished_at=1
    )
    m.observe_provider_round([("nlb", res(NLB, "ok"))], cpu_s=0, finished_at=2)
    assert (
        reg.get_sample_value("plprobe_provider_path_up", {"path": TARGET, "hop": "target"}) is None
    )
    assert (
        reg.get_sample_value(
            "plprobe_provider_probes_total", {"path": TARGET, "hop": "target", "result": "ok"}
        )
        is None
    )


def test_rounds_cpu_and_the_last_round_time_are_exported(
    m: Metrics, reg: CollectorRegistry
) -> None:
    m.observe_provider_round([], cpu_s=0.25, finished_at=100)
    m.observe_provider_round([], cpu_s=0.5, finished_at=130)
    assert reg.get_sample_value("plprobe_provider_probe_rounds_total") == 2
    assert reg.get_sample_value("plprobe_provider_probe_cpu_seconds_total") == 0.75
    assert reg.get_sample_value("plprobe_provider_last_round_timestamp_seconds") == 130


def test_an_unknown_hop_is_a_programming_error(m: Metrics) -> None:
    with pytest.raises(ValueError, match="hop"):
        m.observe_provider_round([("nlb-node", res(NLB, "ok"))], cpu_s=0, finished_at=1)


def test_expected_consumers_follow_the_configuration(m: Metrics, reg: CollectorRegistry) -> None:
    m.set_expected_consumers(["client-1", "client-2"])
    m.set_expected_consumers(["client-2"])
    name = "plprobe_provider_consumer_expected"
    assert reg.get_sample_value(name, {"consumer": "client-1"}) is None
    assert reg.get_sample_value(name, {"consumer": "client-2"}) == 1
