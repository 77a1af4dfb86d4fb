"""The client's per-path families (agent.metrics.PathFamilies) are plain dicts rendered at
scrape time; to Prometheus they must be indistinguishable from prometheus-client's labelled
Gauge/Counter/Histogram, which they replaced to save ~30 KiB and ~20 µs per path and result.

The reference below drives prometheus-client's own labelled metrics through the same
operations (the code ``Metrics`` had before), and the two expositions must be byte-equal in
both text formats.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from agent.controls import IDS as CONTROL_IDS
from agent.metrics import DURATION_BUCKETS, STATUSES, PathFamilies, make_metrics
from agent.results import OUTCOMES, PROBE_KINDS, ProbeResult, Verdict

PATHS = [f"client-1/apne1-az{i}/80" for i in range(6)]
DURATIONS = (0.0005, 0.001, 0.003, 0.2, 1.0, 11.0, -1.0)


class LabelledReference:
    """The per-path families built with prometheus-client's labelled metrics."""

    def __init__(self, reg: CollectorRegistry) -> None:
        self.up = Gauge(
            "plprobe_path_up",
            "1 when the path passes (or is degraded), 0 when it fails.",
            ["path"],
            registry=reg,
        )
        self.status = Gauge(
            "plprobe_path_status",
            "The path's verdict status, one-hot.",
            ["path", "status"],
            registry=reg,
        )
        self.blocked = Gauge(
            "plprobe_path_blocked",
            "1 for the control that blocks the path (only the current culprit's series exists).",
            ["path", "control"],
            registry=reg,
        )
        self.degraded = Gauge(
            "plprobe_path_degraded", "1 when the path passes only partly.", ["path"], registry=reg
        )
        self.interval = Gauge(
            "plprobe_path_interval_seconds",
            "Configured probe interval of the path.",
            ["path"],
            registry=reg,
        )
        self.duration = Histogram(
            "plprobe_probe_duration_seconds",
            "Duration of probes that got through.",
            ["path", "probe"],
            buckets=DURATION_BUCKETS,
            registry=reg,
        )
        self.probes = Counter(
            "plprobe_probes_total",
            "Probes sent, by kind and client-side result.",
            ["path", "probe", "result"],
            registry=reg,
        )
        self.last = Gauge(
            "plprobe_last_probe_timestamp_seconds",
            "When the path's last probe finished.",
            ["path"],
            registry=reg,
        )
        self.culprit: dict[str, str] = {}

    def add_path(self, path: str, interval: float, kinds: tuple[str, ...]) -> None:
        self.interval.labels(path).set(interval)
        for kind in kinds:
            for outcome in OUTCOMES:
                self.probes.labels(path, kind, outcome)

    def observe(self, r: ProbeResult) -> None:
        for outcome in OUTCOMES:
            self.probes.labels(r.path, r.probe, outcome)
        self.probes.labels(r.path, r.probe, r.outcome).inc()
        if r.outcome == "ok":
            self.duration.labels(r.path, r.probe).observe(max(r.duration_s, 0.0))
        self.last.labels(r.path).set(r.started_at + r.duration_s)

    def verdict(self, path: str, status: str, culprit: str | None) -> None:
        for s in STATUSES:
            self.status.labels(path, s).set(1 if s == status else 0)
        self.degraded.labels(path).set(1 if status == "degraded" else 0)
        if status == "unknown":
            self.up.remove(path)
        else:
            self.up.labels(path).set(0 if status == "fail" else 1)
        culprit = (culprit or "unknown") if status == "fail" else None
        old = self.culprit.pop(path, None)
        if old is not None and old != culprit:
            self.blocked.remove(path, old)
        if culprit is not None:
            self.blocked.labels(path, culprit).set(1)
            self.culprit[path] = culprit

    def forget(self, path: str) -> None:
        for gauge in (self.up, self.degraded, self.interval, self.last):
            gauge.remove(path)
        for s in STATUSES:
            self.status.remove(path, s)
        for c in CONTROL_IDS:
            self.blocked.remove(path, c)
        for kind in PROBE_KINDS:
            self.duration.remove(path, kind)
            for outcome in OUTCOMES:
                self.probes.remove(path, kind, outcome)
        self.culprit.pop(path, None)


def workload(
    apply_result: Callable[[ProbeResult], object],
    apply_verdict: Callable[[str, str, str | None], object],
    add_path: Callable[[str, float, tuple[str, ...]], object],
    forget: Callable[[str], object],
) -> None:
    """Every kind of update the daemon makes, in an order that creates, moves and removes."""
    for i, p in enumerate(PATHS):
        add_path(p, 10.0 + i, PROBE_KINDS[: 1 + i % 4])
    for i, p in enumerate(PATHS):
        for j, kind in enumerate(PROBE_KINDS):
            for n, outcome in enumerate(OUTCOMES):
                if (i + j + n) % 3 == 0:
                    d = DURATIONS[(i + j + n) % len(DURATIONS)]
                    apply_result(
                        ProbeResult(
                            path=p, probe=kind, outcome=outcome, started_at=1.7e9, duration_s=d
                        )
                    )  # type: ignore[arg-type]
        status = STATUSES[i % 4]
        apply_verdict(p, status, CONTROL_IDS[i] if status == "fail" else None)
    apply_verdict(PATHS[1], "fail", CONTROL_IDS[3])  # the culprit moves
    apply_verdict(PATHS[5], "fail", None)  # a failure without a culprit: "unknown"
    apply_verdict(PATHS[0], "unknown", None)  # path_up removed ...
    apply_verdict(PATHS[0], "fail", CONTROL_IDS[2])  # ... and back, at the end
    forget(PATHS[3])
    add_path(PATHS[3], 5.0, ("dns",))


def flat_exposition() -> tuple[bytes, bytes]:
    reg = CollectorRegistry()
    m = make_metrics(reg)

    def verdict(path: str, status: str, culprit: str | None) -> None:
        m.set_verdict(Verdict(path=path, status=status, stage="forward", blocked_at=culprit))  # type: ignore[arg-type]

    workload(
        m.observe_result,
        verdict,
        lambda p, s, kinds: m.add_path(p, interval_s=s, probes=kinds),
        m.forget_path,
    )
    families = [f for f in reg.collect() if f.name in REFERENCE_NAMES]
    probe = CollectorRegistry()
    probe.register(_Fixed(families))
    return generate_latest(probe), openmetrics_latest(probe)


def labelled_exposition() -> tuple[bytes, bytes]:
    reg = CollectorRegistry()
    ref = LabelledReference(reg)
    workload(ref.observe, ref.verdict, ref.add_path, ref.forget)
    return generate_latest(reg), openmetrics_latest(reg)


class _Fixed:
    """A collector that yields given families (to render only the per-path ones)."""

    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


REFERENCE_NAMES = {
    "plprobe_path_up",
    "plprobe_path_status",
    "plprobe_path_blocked",
    "plprobe_path_degraded",
    "plprobe_path_interval_seconds",
    "plprobe_probe_duration_seconds",
    "plprobe_probes",
    "plprobe_last_probe_timestamp_seconds",
}


def test_per_path_families_render_exactly_as_labelled_prometheus_client_metrics() -> None:
    flat_text, flat_om = flat_exposition()
    ref_text, ref_om = labelled_exposition()
    assert flat_text == ref_text
    assert flat_om == ref_om


def test_the_per_path_family_names_cannot_be_registered_twice() -> None:
    reg = CollectorRegistry()
    make_metrics(reg)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        reg.register(PathFamilies())


def test_a_scrape_during_updates_sees_consistent_histograms() -> None:
    """``collect`` runs in the scrape's worker thread while the event loop keeps updating."""
    families = PathFamilies()
    stop = threading.Event()

    def update() -> None:
        i = 0
        while not stop.is_set():
            path = f"c/az/{i % 500}"
            families.create(path, "tcp")
            families.count(path, "tcp", 0)
            families.observe(path, "tcp", 0.002)
            if i % 7 == 0:
                families.forget(f"c/az/{(i * 3) % 500}")
            i += 1

    writer = threading.Thread(target=update)
    writer.start()
    try:
        for _ in range(30):
            for fam in families.collect():
                if fam.name != "plprobe_probe_duration_seconds":
                    continue
                by_series: dict[str, dict[str, float]] = {}
                for s in fam.samples:
                    key = s.labels["path"]
                    if s.name.endswith("_bucket"):
                        by_series.setdefault(key, {})[s.labels["le"]] = s.value
                    elif s.name.endswith("_count"):
                        by_series.setdefault(key, {})["count"] = s.value
                for values in by_series.values():
                    assert values["+Inf"] == values["count"]
    finally:
        stop.set()
        writer.join()
