"""Metric families (agent/metrics.py): names, label sets, culprit series, cardinality, promtool."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.controls import IDS as CONTROL_IDS
from agent.metrics import (
    DURATION_BUCKETS,
    EVIDENCE_SOURCES,
    OTHER_PATH,
    REJECT_REASONS,
    ROLES,
    STATUSES,
    VIAS,
    Metrics,
    make_metrics,
)
from agent.results import OUTCOMES, PROBE_KINDS, Observation, ProbeResult, Verdict

PATH = "client-1/apne1-az1/80"
OTHER = "client-1/apne1-az2/80"


def require_tool(name: str) -> str:
    """The tool's path; skip when missing, unless CI demands it (PLPROBE_REQUIRE_TOOLS=1)."""
    found = shutil.which(name) or (
        f"/usr/bin/{name}" if os.path.exists(f"/usr/bin/{name}") else None
    )
    if found:
        return found
    if os.environ.get("PLPROBE_REQUIRE_TOOLS") == "1":
        pytest.fail(f"{name} is required (PLPROBE_REQUIRE_TOOLS=1) but not installed")
    pytest.skip(f"{name} not installed")


@pytest.fixture
def reg() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def m(reg: CollectorRegistry) -> Metrics:
    return make_metrics(reg)


def result(path: str = PATH, probe: str = "tcp", outcome: str = "ok", **kw: object) -> ProbeResult:
    fields: dict[str, object] = {"started_at": 1_700_000_000.0, "duration_s": 0.004}
    fields.update(kw)
    return ProbeResult(path=path, probe=probe, outcome=outcome, **fields)  # type: ignore[arg-type]


def verdict(status: str, blocked_at: str | None = None, path: str = PATH) -> Verdict:
    return Verdict(path=path, status=status, stage="forward", blocked_at=blocked_at)  # type: ignore[arg-type]


def observation(path: str = PATH, via: str = "sniffer") -> Observation:
    return Observation(
        kind="token",
        target="target-1",
        seen_at=1_700_000_000.0,
        src_ip="10.3.0.100",
        src_port=40000,
        dst_ip="10.3.1.10",
        dst_port=80,
        via=via,  # type: ignore[arg-type]
        path=path,
    )


def culprits(reg: CollectorRegistry, path: str = PATH) -> dict[str, float]:
    return {
        s.labels["control"]: s.value
        for fam in reg.collect()
        if fam.name == "plprobe_path_blocked"
        for s in fam.samples
        if s.labels["path"] == path
    }


def series(reg: CollectorRegistry) -> list[tuple[str, dict[str, str]]]:
    text = generate_latest(reg).decode()
    return [(s.name, s.labels) for fam in text_string_to_metric_families(text) for s in fam.samples]


def test_nothing_is_registered_at_import_time() -> None:
    names = {fam.name for fam in REGISTRY.collect()}
    assert not [n for n in names if n.startswith("plprobe_")]


def test_two_registries_get_independent_families() -> None:
    a, b = CollectorRegistry(), CollectorRegistry()
    make_metrics(a).observe_result(result())
    make_metrics(b)
    labels = {"path": PATH, "probe": "tcp", "result": "ok"}
    assert a.get_sample_value("plprobe_probes_total", labels) == 1
    assert b.get_sample_value("plprobe_probes_total", labels) is None


def test_a_result_is_counted_by_path_kind_and_result(m: Metrics, reg: CollectorRegistry) -> None:
    m.observe_result(result(outcome="timeout"))
    m.observe_result(result(outcome="timeout"))
    m.observe_result(result(outcome="ok"))
    get = reg.get_sample_value
    assert get("plprobe_probes_total", {"path": PATH, "probe": "tcp", "result": "timeout"}) == 2
    assert get("plprobe_probes_total", {"path": PATH, "probe": "tcp", "result": "ok"}) == 1


def test_a_configured_path_has_every_result_counter_at_zero_before_its_first_probe(
    m: Metrics, reg: CollectorRegistry
) -> None:
    m.add_path(PATH, interval_s=10, probes=("tcp", "dns"))
    for kind in ("tcp", "dns"):
        for outcome in OUTCOMES:
            labels = {"path": PATH, "probe": kind, "result": outcome}
            assert reg.get_sample_value("plprobe_probes_total", labels) == 0
    assert reg.get_sample_value("plprobe_path_interval_seconds", {"path": PATH}) == 10


def test_only_probes_that_got_through_are_timed(m: Metrics, reg: CollectorRegistry) -> None:
    m.observe_result(result(outcome="ok", duration_s=0.003))
    m.observe_result(result(outcome="timeout", duration_s=2.0))
    labels = {"path": PATH, "probe": "tcp"}
    assert reg.get_sample_value("plprobe_probe_duration_seconds_count", labels) == 1
    assert reg.get_sample_value("plprobe_probe_duration_seconds_sum", labels) == pytest.approx(
        0.003
    )
    assert (
        reg.get_sample_value("plprobe_probe_duration_seconds_bucket", {**labels, "le": "0.005"})
        == 1
    )


def test_duration_buckets_cover_one_millisecond_to_ten_seconds() -> None:
    assert DURATION_BUCKETS[0] == 0.001
    assert DURATION_BUCKETS[-1] == 10.0
    assert list(DURATION_BUCKETS) == sorted(DURATION_BUCKETS)


def test_last_probe_timestamp_is_when_the_probe_finished(
    m: Metrics, reg: CollectorRegistry
) -> None:
    m.observe_result(result(started_at=1_700_000_000.0, duration_s=1.5))
    assert reg.get_sample_value(
        "plprobe_last_probe_timestamp_seconds", {"path": PATH}
    ) == pytest.approx(1_700_000_001.5)


def test_a_failed_path_is_down_with_its_culprit(m: Metrics, reg: CollectorRegistry) -> None:
    m.set_verdict(verdict("fail", "nlb-sg-ingress"))
    assert reg.get_sample_value("plprobe_path_up", {"path": PATH}) == 0
    assert culprits(reg) == {"nlb-sg-ingress": 1}
    assert reg.get_sample_value("plprobe_path_status", {"path": PATH, "status": "fail"}) == 1
    assert reg.get_sample_value("plprobe_path_status", {"path": PATH, "status": "pass"}) == 0


def test_a_new_culprit_replaces_the_old_culprit_series(m: Metrics, reg: CollectorRegistry) -> None:
    m.set_verdict(verdict("fail", "nlb-sg-ingress"))
    m.set_verdict(verdict("fail", "target-sg-ingress"))
    assert culprits(reg) == {"target-sg-ingress": 1}


def test_a_passing_path_is_up_and_has_no_culprit(m: Metrics, reg: CollectorRegistry) -> None:
    m.set_verdict(verdict("fail", "client-sg-egress"))
    m.set_verdict(verdict("pass"))
    assert reg.get_sample_value("plprobe_path_up", {"path": PATH}) == 1
    assert culprits(reg) == {}


def test_a_failure_that_names_no_control_blames_unknown(m: Metrics, reg: CollectorRegistry) -> None:
    m.set_verdict(verdict("fail", None))
    assert culprits(reg) == {"unknown": 1}


def test_a_degraded_path_is_up_and_flagged_degraded(m: Metrics, reg: CollectorRegistry) -> None:
    m.set_verdict(verdict("degraded"))
    assert reg.get_sample_value("plprobe_path_up", {"path": PATH}) == 1
    assert reg.get_sample_value("plprobe_path_degraded", {"path": PATH}) == 1


def test_an_undecided_path_claims_neither_up_nor_down(m: Metrics, reg: CollectorRegistry) -> None:
    m.set_verdict(verdict("fail", "dns"))
    m.set_verdict(verdict("unknown"))
    assert reg.get_sample_value("plprobe_path_up", {"path": PATH}) is None
    assert culprits(reg) == {}
    assert reg.get_sample_value("plprobe_path_status", {"path": PATH, "status": "unknown"}) == 1


def test_forget_path_removes_every_series_of_that_path_only(
    m: Metrics, reg: CollectorRegistry
) -> None:
    for p in (PATH, OTHER):
        m.add_path(p, interval_s=10)
        m.observe_result(result(path=p))
        m.set_verdict(verdict("fail", "dns", path=p))
        m.observe_observation(observation(path=p))
    m.forget_path(PATH)
    paths = {labels.get("path") for _, labels in series(reg)}
    assert PATH not in paths
    assert OTHER in paths


@pytest.mark.parametrize(
    ("call", "bad"),
    [
        (lambda m: m.observe_result(result(probe="icmp")), "icmp"),
        (lambda m: m.observe_result(result(outcome="weird")), "weird"),
        (lambda m: m.set_verdict(verdict("fail", "my-firewall")), "my-firewall"),
        (lambda m: m.set_verdict(verdict("broken")), "broken"),
        (lambda m: m.reject("too_loud"), "too_loud"),
        (lambda m: m.set_evidence_source("ldap", True), "ldap"),
        (lambda m: m.add_path(PATH, interval_s=1, probes=("ping",)), "ping"),
    ],
)
def test_a_label_value_outside_its_bounded_set_is_refused(m: Metrics, call, bad: str) -> None:
    with pytest.raises(ValueError, match=bad):
        call(m)


def test_a_target_counts_arrivals_by_token_path_and_via(m: Metrics, reg: CollectorRegistry) -> None:
    m.observe_observation(observation(via="responder"))
    m.observe_observation(observation(via="sniffer"))
    m.observe_observation(observation(via="sniffer"))
    get = reg.get_sample_value
    assert get("plprobe_target_probes_seen_total", {"path": PATH, "via": "responder"}) == 1
    assert get("plprobe_target_probes_seen_total", {"path": PATH, "via": "sniffer"}) == 2


def test_an_arrival_without_a_path_id_is_not_counted_per_path(
    m: Metrics, reg: CollectorRegistry
) -> None:
    m.observe_observation(observation(path=""))
    assert not [s for s in series(reg) if s[0] == "plprobe_target_probes_seen_total"]


def test_token_path_ids_beyond_the_cap_share_one_series(reg: CollectorRegistry) -> None:
    m = make_metrics(reg, max_seen_paths=2)
    for i in range(5):
        m.observe_observation(observation(path=f"c/az/{i}"))
    seen = {
        labels["path"] for name, labels in series(reg) if name == "plprobe_target_probes_seen_total"
    }
    assert seen == {"c/az/0", "c/az/1", OTHER_PATH}
    assert (
        reg.get_sample_value(
            "plprobe_target_probes_seen_total", {"path": OTHER_PATH, "via": "sniffer"}
        )
        == 3
    )


def test_responder_rejections_start_at_zero_for_every_reason(reg: CollectorRegistry) -> None:
    make_metrics(reg)
    for reason in REJECT_REASONS:
        assert reg.get_sample_value("plprobe_responder_rejected_total", {"reason": reason}) == 0


def test_responder_counters_carry_over_as_increases_across_a_restart(
    m: Metrics, reg: CollectorRegistry
) -> None:
    m.sync_responder({"forged": 3, "timeouts": 1, "accepted": 50})
    m.sync_responder({"forged": 5, "timeouts": 1})
    m.sync_responder({"forged": 2})  # a new responder instance counts from zero
    get = reg.get_sample_value
    assert get("plprobe_responder_rejected_total", {"reason": "forged"}) == 7
    assert get("plprobe_responder_rejected_total", {"reason": "timeout"}) == 1


def test_sniffer_packets_and_drops_are_counted(m: Metrics, reg: CollectorRegistry) -> None:
    m.count_sniffer(packets=10, dropped=2)
    m.count_sniffer(packets=5)
    assert reg.get_sample_value("plprobe_sniffer_packets_total") == 15
    assert reg.get_sample_value("plprobe_sniffer_dropped_total") == 2


def test_a_syn_probe_that_fell_back_to_tcp_raises_the_fallback_flag(
    m: Metrics, reg: CollectorRegistry
) -> None:
    assert reg.get_sample_value("plprobe_raw_socket_fallback", {"probe": "syn"}) == 0
    m.observe_result(result(probe="syn", fallback="syn fell back to tcp: no CAP_NET_RAW"))
    assert reg.get_sample_value("plprobe_raw_socket_fallback", {"probe": "syn"}) == 1
    m.observe_result(result(probe="syn"))
    assert reg.get_sample_value("plprobe_raw_socket_fallback", {"probe": "syn"}) == 0


def test_a_failed_reload_keeps_the_last_success_time(m: Metrics, reg: CollectorRegistry) -> None:
    m.config_reloaded(True, when=1_700_000_000.0)
    m.config_reloaded(False)
    assert reg.get_sample_value("plprobe_config_last_reload_successful") == 0
    assert (
        reg.get_sample_value("plprobe_config_last_reload_success_timestamp_seconds")
        == 1_700_000_000.0
    )


def test_build_info_carries_version_and_role(reg: CollectorRegistry) -> None:
    make_metrics(reg, role="provider", version="9.9.9")
    assert reg.get_sample_value("plprobe_build_info", {"version": "9.9.9", "role": "provider"}) == 1


def test_evidence_source_reachability(m: Metrics, reg: CollectorRegistry) -> None:
    m.set_evidence_source("provider_api", False)
    assert reg.get_sample_value("plprobe_evidence_source_up", {"source": "provider_api"}) == 0


def test_the_client_exports_where_its_evidence_came_from_and_how_fresh_it_is(
    m: Metrics, reg: CollectorRegistry
) -> None:
    m.set_provider_evidence(
        "endpoint", up=True, level="findings", age_s=0.25, covered=2, missing=1, sent=73,
        received=900,
    )  # fmt: skip
    get = reg.get_sample_value
    assert get("plprobe_evidence_source_up", {"source": "endpoint"}) == 1
    assert get("plprobe_evidence_age_seconds", {"source": "endpoint"}) == 0.25
    assert get("plprobe_evidence_share_level", {"level": "findings"}) == 1
    assert get("plprobe_evidence_share_level", {"level": "seen-only"}) == 0
    assert get("plprobe_evidence_targets", {"state": "missing"}) == 1
    assert get("plprobe_evidence_bytes_total", {"direction": "received"}) == 900


def test_a_round_without_provider_evidence_has_no_age(m: Metrics, reg: CollectorRegistry) -> None:
    m.set_provider_evidence("endpoint", up=False)
    age = reg.get_sample_value("plprobe_evidence_age_seconds", {"source": "endpoint"})
    assert age is not None and age != age  # NaN: no evidence, not "fresh"


def test_series_stay_bounded_with_a_thousand_paths(reg: CollectorRegistry) -> None:
    m = make_metrics(reg)
    paths = [f"client-{i % 10}/apne1-az{i % 3 + 1}/{1000 + i}" for i in range(1000)]
    for i, p in enumerate(paths):
        m.add_path(p, interval_s=10)
        for kind in PROBE_KINDS:
            for outcome in OUTCOMES:
                m.observe_result(result(path=p, probe=kind, outcome=outcome))
        # every path changes culprit a few times, some pass in the end
        for control in CONTROL_IDS[: 1 + i % 4]:
            m.set_verdict(verdict("fail", control, path=p))
        if i % 2:
            m.set_verdict(verdict("pass", path=p))
        m.observe_observation(observation(path=p, via=VIAS[i % 2]))
    m.reject("forged")
    m.set_evidence_source("aws", True)
    m.config_reloaded(True)
    found = series(reg)

    kinds, results, buckets = len(PROBE_KINDS), len(OUTCOMES), len(DURATION_BUCKETS) + 1
    per_path = (
        kinds * results  # probes_total
        + kinds * (buckets + 2)  # histogram buckets (+Inf), _sum, _count
        + len(STATUSES)
        + 1  # blocked: the culprit only
        + 4  # up, degraded, interval, last probe
        + len(VIAS)  # seen at target
    )
    fixed = len(REJECT_REASONS) + 2 + 1 + 2 + len(PROBE_KINDS) + len(EVIDENCE_SOURCES)
    assert len(found) <= len(paths) * per_path + fixed

    allowed = {
        "path": set(paths),
        "probe": set(PROBE_KINDS),
        "result": set(OUTCOMES),
        "control": set(CONTROL_IDS),
        "status": set(STATUSES),
        "via": set(VIAS),
        "reason": set(REJECT_REASONS),
        "source": set(EVIDENCE_SOURCES),
        "role": set(ROLES),
        "le": {str(b) for b in DURATION_BUCKETS} | {"+Inf"},
    }
    for name, labels in found:
        for key, value in labels.items():
            if key == "version":
                continue
            assert value in allowed[key], (name, key, value)
    blocked = [labels for name, labels in found if name == "plprobe_path_blocked"]
    assert len(blocked) == len(paths) // 2  # one culprit per failing path, none for passing


def test_promtool_accepts_the_exposition(m: Metrics, reg: CollectorRegistry) -> None:
    promtool = require_tool("promtool")
    m.add_path(PATH, interval_s=10)
    m.observe_result(result())
    m.observe_result(result(probe="syn", fallback="no CAP_NET_RAW"))
    m.set_verdict(verdict("fail", "target-sg-ingress"))
    m.observe_observation(observation())
    m.config_reloaded(True)
    m.set_evidence_source("snapshot", True)
    m.count_sniffer(packets=1)
    proc = subprocess.run(
        [promtool, "check", "metrics"],
        input=generate_latest(reg),
        capture_output=True,
        timeout=20,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    assert proc.stdout.decode().strip() == "", proc.stdout.decode()


def test_a_new_responder_after_reload_counts_from_zero_even_past_the_old_value(
    m: Metrics, reg: CollectorRegistry
) -> None:
    m.sync_responder({"forged": 10})
    m.new_responder()
    m.sync_responder({"forged": 12})  # the new instance saw 12 of its own
    assert reg.get_sample_value("plprobe_responder_rejected_total", {"reason": "forged"}) == 22
