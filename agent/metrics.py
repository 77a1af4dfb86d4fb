"""Every Prometheus metric family of plprobe, in one place.

``make_metrics(registry)`` builds the families into a registry the caller owns; nothing is
registered at import time, so tests use a private ``CollectorRegistry`` and the daemon one of
its own. The ``Metrics`` methods take the records of ``agent.results`` so no other module needs
to know a metric name.

Naming follows Prometheus conventions: ``plprobe_`` prefix, base units (seconds), ``_total``
only on counters. Every label value comes from a bounded set:

    path      path ids from the configuration (client side); from authenticated tokens on the
              provider side, capped at ``max_seen_paths`` (the rest are counted as ``_other``)
    probe     agent.results.PROBE_KINDS         result   agent.results.OUTCOMES
    control   agent.controls.IDS                status   STATUSES
    via       VIAS                              reason   REJECT_REASONS
    source    EVIDENCE_SOURCES                  role     ROLES
    hop       HOPS (provider probes)            consumer configured expected consumers
A value outside its set is a programming error and raises ``ValueError``: a typo must never turn
into a new time series. There is never a per-probe label (probe ids live in the JSON API).

Two choices the alert rules rely on (``deploy/prometheus/alerts.yml``):

- ``plprobe_path_blocked{path,control}`` has **only the culprit's series**, value 1, while the
  path is down; there is no series for a passing path, and the old culprit's series is removed
  when the culprit changes. A down path always has exactly one culprit (``unknown`` when the
  verdict names none), so ``plprobe_path_up == 0`` joins ``on(path) group_left(control)`` with
  ``plprobe_path_blocked`` without a ``== 1`` filter and at most one series per path exists.
- ``plprobe_probes_total`` is created at 0 for every (probe kind, result) of a path as soon as the
  path is known, so ``increase()`` sees a path's first failure (a counter that appears at 1
  loses its first increment in PromQL).

``plprobe_probe_duration_seconds`` observes only probes that got through (``ok``): it answers
"how long does the path take when it works"; failures are counted by result in
``plprobe_probes_total`` and would otherwise pile up at the timeout and hide the latency.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import disable_created_metrics as _disable_created_metrics
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from agent import __version__
from agent.controls import IDS as CONTROL_IDS
from agent.results import OUTCOMES, PROBE_KINDS, Observation, ProbeResult, Verdict

__all__ = [
    "DURATION_BUCKETS",
    "EVIDENCE_SOURCES",
    "HOPS",
    "OTHER_PATH",
    "REJECT_REASONS",
    "RESPONDER_REASON_FIELDS",
    "ROLES",
    "STATUSES",
    "VIAS",
    "Metrics",
    "PathFamilies",
    "make_metrics",
]

#: 1 ms .. 10 s, roughly 1-2.5-5 per decade: same-AZ connects are ~1 ms, timeouts are seconds
DURATION_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
STATUSES: tuple[str, ...] = ("pass", "fail", "degraded", "unknown")
VIAS: tuple[str, ...] = ("responder", "sniffer")
REJECT_REASONS: tuple[str, ...] = ("malformed", "forged", "replayed", "over_limit", "timeout")
EVIDENCE_SOURCES: tuple[str, ...] = ("provider_api", "endpoint", "injected", "snapshot", "aws")
#: what a provider agent may share through the endpoint (agent/wire/evidence.py)
SHARE_LEVELS: tuple[str, ...] = ("none", "seen-only", "findings")
ROLES: tuple[str, ...] = ("client", "provider", "both")
#: what a provider probe tests (``agent.daemon.provider_probes.HOPS``; kept equal by a test)
HOPS: tuple[str, ...] = ("nlb", "target", "health")
#: ``agent.observe.responder.ResponderCounters`` field -> rejection reason
RESPONDER_REASON_FIELDS: Mapping[str, str] = {
    "malformed": "malformed",
    "forged": "forged",
    "replayed": "replayed",
    "over_limit": "over_limit",
    "shed": "over_limit",  # closed to make room for newer work: the same cause, a full server
    "shed_per_source": "over_limit",
    "timeouts": "timeout",
}
#: provider-side path label for tokens beyond ``max_seen_paths`` distinct path ids
OTHER_PATH = "_other"
DEFAULT_MAX_SEEN_PATHS = 10_000
_OUTCOME_INDEX: Mapping[str, int] = {o: i for i, o in enumerate(OUTCOMES)}
_OK = _OUTCOME_INDEX["ok"]


def _check(kind: str, value: str, allowed: Iterable[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{kind} {value!r} is not one of {', '.join(allowed)}")
    return value


#: (name, HELP, type) of the client's per-path families, in exposition order
_PATH_UP = ("plprobe_path_up", "1 when the path passes (or is degraded), 0 when it fails.", "gauge")
_PATH_STATUS = ("plprobe_path_status", "The path's verdict status, one-hot.", "gauge")
_PATH_BLOCKED = (
    "plprobe_path_blocked",
    "1 for the control that blocks the path (only the current culprit's series exists).",
    "gauge",
)
_PATH_DEGRADED = ("plprobe_path_degraded", "1 when the path passes only partly.", "gauge")
_PATH_INTERVAL = (
    "plprobe_path_interval_seconds",
    "Configured probe interval of the path.",
    "gauge",
)
_PROBE_DURATION = (
    "plprobe_probe_duration_seconds",
    "Duration of probes that got through.",
    "histogram",
)
#: a counter family is named without ``_total``; its samples carry it (as prometheus-client)
_PROBES = ("plprobe_probes", "Probes sent, by kind and client-side result.", "counter")
_LAST_PROBE = (
    "plprobe_last_probe_timestamp_seconds",
    "When the path's last probe finished.",
    "gauge",
)
_PATH_FAMILIES = (
    _PATH_UP,
    _PATH_STATUS,
    _PATH_BLOCKED,
    _PATH_DEGRADED,
    _PATH_INTERVAL,
    _PROBE_DURATION,
    _PROBES,
    _LAST_PROBE,
)


class PathFamilies:
    """The client's per-path families as plain dicts, turned into samples only when scraped.

    Why not prometheus-client's labelled metrics: they keep an object per label set (a child
    with its own lock, a value object per counter and per histogram bucket), ~35 KiB per path
    with four probe kinds, most of a 1,000-path daemon's memory, and ~25 µs per probe result.
    Here a path is a few floats and two short lists per probe kind. Names, HELP, types, labels
    and sample order are those prometheus-client produced (a test compares the expositions).

    Every method is called from the event loop; ``collect`` runs in the scrape's worker
    thread, so both sides take ``_lock`` (held for dict/list updates and the snapshot copy,
    never while rendering).
    """

    def __init__(self, buckets: Iterable[float] = DURATION_BUCKETS) -> None:
        self._bounds: tuple[float, ...] = (*buckets, float("inf"))
        self._le: tuple[str, ...] = tuple(floatToGoString(b) for b in self._bounds)
        self._lock = threading.Lock()
        self.up: dict[str, float] = {}
        #: path -> its verdict status (exported one-hot over STATUSES)
        self.status: dict[str, str] = {}
        #: path -> the culprit whose series exists (at most one per path)
        self.blocked: dict[str, str] = {}
        self.degraded: dict[str, float] = {}
        self.interval: dict[str, float] = {}
        self.last_probe: dict[str, float] = {}
        #: (path, probe kind) -> one count per OUTCOMES entry
        self.probes: dict[tuple[str, str], list[float]] = {}
        #: (path, probe kind) -> a count per bucket (not cumulative, +Inf last), then the sum
        self.durations: dict[tuple[str, str], list[float]] = {}

    # -- updates (event loop) --------------------------------------------------------------

    def set(self, family: dict[str, float], path: str, value: float) -> None:
        with self._lock:
            family[path] = float(value)

    def set_status(self, path: str, status: str) -> None:
        with self._lock:
            self.status[path] = status

    def set_blocked(self, path: str, culprit: str | None) -> None:
        with self._lock:
            if culprit is None:
                self.blocked.pop(path, None)
            else:
                self.blocked[path] = culprit

    def discard(self, family: dict[str, float], path: str) -> None:
        with self._lock:
            family.pop(path, None)

    def create(self, path: str, kind: str) -> None:
        with self._lock:
            self.probes.setdefault((path, kind), [0.0] * len(OUTCOMES))

    def count(self, path: str, kind: str, outcome_index: int) -> None:
        with self._lock:
            self.probes.setdefault((path, kind), [0.0] * len(OUTCOMES))[outcome_index] += 1.0

    def observe(self, path: str, kind: str, seconds: float) -> None:
        """One duration into the histogram: the first bucket whose bound is >= it."""
        i = bisect_left(self._bounds, seconds)
        with self._lock:
            counts = self.durations.get((path, kind))
            if counts is None:
                counts = self.durations[(path, kind)] = [0.0] * (len(self._bounds) + 1)
            counts[i] += 1.0
            counts[-1] += seconds

    def forget(self, path: str) -> None:
        """Remove every series of a path."""
        with self._lock:
            for family in (self.up, self.status, self.blocked, self.degraded):
                family.pop(path, None)
            self.interval.pop(path, None)
            self.last_probe.pop(path, None)
            for kind in PROBE_KINDS:
                self.probes.pop((path, kind), None)
                self.durations.pop((path, kind), None)

    # -- prometheus-client Collector protocol (scrape thread) ------------------------------

    def describe(self) -> list[Metric]:
        """The family names, so the registry refuses a second collector with the same ones."""
        return [Metric(name, doc, typ) for name, doc, typ in _PATH_FAMILIES]

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            up, status, blocked = dict(self.up), dict(self.status), dict(self.blocked)
            degraded, interval = dict(self.degraded), dict(self.interval)
            last_probe = dict(self.last_probe)
            probes = [(k, list(v)) for k, v in self.probes.items()]
            durations = [(k, list(v)) for k, v in self.durations.items()]
        yield self._gauge(_PATH_UP, up)
        fam = Metric(*_PATH_STATUS)
        fam.samples = [
            Sample(fam.name, {"path": p, "status": s}, 1.0 if s == st else 0.0, None, None)
            for p, st in status.items()
            for s in STATUSES
        ]
        yield fam
        fam = Metric(*_PATH_BLOCKED)
        fam.samples = [
            Sample(fam.name, {"path": p, "control": c}, 1.0, None, None) for p, c in blocked.items()
        ]
        yield fam
        yield self._gauge(_PATH_DEGRADED, degraded)
        yield self._gauge(_PATH_INTERVAL, interval)
        yield self._histogram(durations)
        fam = Metric(*_PROBES)
        total = fam.name + "_total"
        fam.samples = [
            Sample(total, {"path": p, "probe": k, "result": o}, v, None, None)
            for (p, k), values in probes
            for o, v in zip(OUTCOMES, values, strict=True)
        ]
        yield fam
        yield self._gauge(_LAST_PROBE, last_probe)

    @staticmethod
    def _gauge(spec: tuple[str, str, str], values: dict[str, float]) -> Metric:
        fam = Metric(*spec)
        fam.samples = [Sample(fam.name, {"path": p}, v, None, None) for p, v in values.items()]
        return fam

    def _histogram(self, durations: list[tuple[tuple[str, str], list[float]]]) -> Metric:
        fam = Metric(*_PROBE_DURATION)
        bucket, count, total = fam.name + "_bucket", fam.name + "_count", fam.name + "_sum"
        samples = fam.samples
        for (path, kind), counts in durations:
            acc = 0.0
            for le, n in zip(self._le, counts, strict=False):  # counts[-1] is the sum
                acc += n
                samples.append(
                    Sample(bucket, {"path": path, "probe": kind, "le": le}, acc, None, None)
                )
            samples.append(Sample(count, {"path": path, "probe": kind}, acc, None, None))
            samples.append(Sample(total, {"path": path, "probe": kind}, counts[-1], None, None))
        return fam


@dataclass
class Metrics:
    """The families of one registry, and the operations the agent performs on them."""

    registry: CollectorRegistry
    #: the client's per-path families (path_up/status/blocked/degraded/interval, probe
    #: duration, probes_total, last probe), kept flat: see ``PathFamilies``
    paths: PathFamilies
    target_seen: Counter
    responder_rejected: Counter
    sniffer_packets: Counter
    sniffer_dropped: Counter
    build_info: Gauge
    reload_ok: Gauge
    reload_ok_time: Gauge
    raw_fallback: Gauge
    evidence_up: Gauge
    evidence_age: Gauge
    evidence_level: Gauge
    evidence_targets: Gauge
    evidence_bytes: Counter
    probe_module_unknown: Counter
    provider_up: Gauge
    provider_probes: Counter
    provider_duration: Histogram
    provider_last_round: Gauge
    provider_round_cpu: Counter
    provider_rounds: Counter
    consumer_expected: Gauge
    max_seen_paths: int = DEFAULT_MAX_SEEN_PATHS
    _seen_paths: set[str] = field(default_factory=set)
    _responder_last: dict[str, int] = field(default_factory=dict)
    #: provider probe path -> hop, of the series that exist (removed when no longer probed)
    _provider_paths: dict[str, str] = field(default_factory=dict)
    _expected: set[str] = field(default_factory=set)

    # -- client side -----------------------------------------------------------------------

    def add_path(
        self, path: str, *, interval_s: float, probes: Iterable[str] = PROBE_KINDS
    ) -> None:
        """Declare a configured path: its interval, and its counters created at 0."""
        self.paths.set(self.paths.interval, path, interval_s)
        for kind in probes:
            self._known(path, _check("probe kind", kind, PROBE_KINDS))

    def observe_result(self, result: ProbeResult) -> None:
        """Count one probe result; time it when it got through; stamp the path's last probe."""
        kind = _check("probe kind", result.probe, PROBE_KINDS)
        index = _OUTCOME_INDEX[_check("outcome", result.outcome, OUTCOMES)]
        paths = self.paths
        paths.count(result.path, kind, index)
        if index == _OK:
            paths.observe(result.path, kind, max(result.duration_s, 0.0))
        finished = result.started_at + result.duration_s if result.started_at else time.time()
        paths.set(paths.last_probe, result.path, finished)
        if result.fallback or kind == "syn":
            self.raw_fallback.labels(kind).set(1 if result.fallback else 0)

    def _known(self, path: str, kind: str) -> None:
        """Create a path's counters of one probe kind at 0, once."""
        self.paths.create(path, kind)

    def set_verdict(self, verdict: Verdict) -> None:
        """Export a path's diagnosis: up, status, degraded and (while down) the culprit.

        ``pass`` and ``degraded`` are up; ``fail`` is down with exactly one culprit series
        (``blocked_at``, or ``unknown``); ``unknown`` (no evidence to decide) removes
        ``path_up`` rather than claim either, and shows in ``path_status``.
        """
        path = verdict.path
        status = _check("status", verdict.status, STATUSES)
        culprit = None
        if status == "fail":
            culprit = verdict.blocked_at or "unknown"
            _check("control", culprit, CONTROL_IDS)
        paths = self.paths
        paths.set_status(path, status)
        paths.set(paths.degraded, path, 1 if status == "degraded" else 0)
        if status == "unknown":
            paths.discard(paths.up, path)
        else:
            paths.set(paths.up, path, 0 if status == "fail" else 1)
        paths.set_blocked(path, culprit)

    def forget_path(self, path: str) -> None:
        """Remove every series of a path (removed from the configuration on reload)."""
        self.paths.forget(path)
        for via in VIAS:
            self._remove(self.target_seen, path, via)
        self._seen_paths.discard(path)

    # -- provider side ---------------------------------------------------------------------

    def observe_observation(self, obs: Observation) -> None:
        """Count a probe that arrived at this target, by the path id its token carried.

        Observations without a path id (a SYN tag alone) cannot be joined with the client by
        path and are not counted here. Path ids come from authenticated tokens, so only key
        holders choose them; still, at most ``max_seen_paths`` distinct ids get a series.
        """
        if not obs.path:
            return
        via = _check("via", obs.via, VIAS)
        path = obs.path
        if path not in self._seen_paths:
            if len(self._seen_paths) >= self.max_seen_paths:
                path = OTHER_PATH
            else:
                self._seen_paths.add(path)
                for v in VIAS:
                    self.target_seen.labels(path, v)
        self.target_seen.labels(path, via).inc()

    def reject(self, reason: str, count: int = 1) -> None:
        """Count responder input that was refused (never believed)."""
        self.responder_rejected.labels(_check("reason", reason, REJECT_REASONS)).inc(count)

    def sync_responder(self, counters: Mapping[str, int]) -> None:
        """Carry a responder's plain counters (``ResponderCounters.as_dict()``) into counters.

        Adds the increase since the previous call; a value lower than last time means a new
        responder instance, whose whole value is then the increase.
        """
        for fname, reason in RESPONDER_REASON_FIELDS.items():
            now = int(counters.get(fname, 0))
            last = self._responder_last.get(fname, 0)
            delta = now - last if now >= last else now
            if delta:
                self.reject(reason, delta)
            self._responder_last[fname] = now

    def new_responder(self) -> None:
        """A new responder instance starts (reload): its counters start at zero again."""
        self._responder_last.clear()

    def count_sniffer(self, packets: int = 0, dropped: int = 0) -> None:
        """Add the sniffer's packets matched by the BPF filter, and those the kernel dropped."""
        if packets:
            self.sniffer_packets.inc(packets)
        if dropped:
            self.sniffer_dropped.inc(dropped)

    # -- provider probes (agent/daemon/provider_probes.py) -----------------------------------

    def observe_provider_round(
        self, results: Iterable[tuple[str, ProbeResult]], *, cpu_s: float, finished_at: float
    ) -> None:
        """Export one round of the provider's own probes: ``(hop, result)`` pairs.

        Per path: ``plprobe_provider_path_up`` (1 got through, 0 failed), the counters by
        result (created at 0 for every result when the path first appears, as on the client),
        and the duration of those that got through. Paths the round no longer probes (the
        configuration or the view changed) lose their series, so a removed target is not
        reported down forever.
        """
        now: dict[str, str] = {}
        for hop, result in results:
            _check("hop", hop, HOPS)
            outcome = _check("outcome", result.outcome, OUTCOMES)
            path = result.path
            if path not in self._provider_paths:
                for o in OUTCOMES:
                    self.provider_probes.labels(path, hop, o)
            now[path] = hop
            self.provider_probes.labels(path, hop, outcome).inc()
            self.provider_up.labels(path, hop).set(1 if outcome == "ok" else 0)
            if outcome == "ok":
                self.provider_duration.labels(path, hop).observe(max(result.duration_s, 0.0))
        for path, hop in self._provider_paths.items():
            if now.get(path) != hop:
                self._remove(self.provider_up, path, hop)
                self._remove(self.provider_duration, path, hop)
                for o in OUTCOMES:
                    self._remove(self.provider_probes, path, hop, o)
        self._provider_paths = now
        self.provider_rounds.inc()
        self.provider_round_cpu.inc(max(cpu_s, 0.0))
        self.provider_last_round.set(finished_at)

    def set_expected_consumers(self, consumers: Iterable[str]) -> None:
        """The client agent ids this provider expects probes from (configuration).

        A gauge at 1 per configured consumer, so the alert can name a consumer that never
        arrived at all; consumers seen once are learned by the alert from the counters.
        """
        wanted = set(consumers)
        for name in self._expected - wanted:
            self._remove(self.consumer_expected, name)
        for name in sorted(wanted):
            self.consumer_expected.labels(name).set(1)
        self._expected = wanted

    # -- self ------------------------------------------------------------------------------

    def config_reloaded(self, ok: bool, when: float | None = None) -> None:
        """Record a (re)load attempt; a failed one keeps the last success timestamp."""
        self.reload_ok.set(1 if ok else 0)
        if ok:
            self.reload_ok_time.set(time.time() if when is None else when)

    def set_raw_socket_fallback(self, probe: str, fell_back: bool) -> None:
        self.raw_fallback.labels(_check("probe kind", probe, PROBE_KINDS)).set(
            1 if fell_back else 0
        )

    def set_evidence_source(self, source: str, up: bool) -> None:
        """Whether the last fetch from an evidence source succeeded."""
        self.evidence_up.labels(_check("source", source, EVIDENCE_SOURCES)).set(1 if up else 0)

    def set_provider_evidence(
        self,
        source: str,
        *,
        up: bool,
        level: str = "",
        age_s: float | None = None,
        covered: int = 0,
        missing: int = 0,
        sent: int = 0,
        received: int = 0,
    ) -> None:
        """Where the last round's provider evidence came from, what was shared, how fresh.

        ``level`` is the provider's sharing level ("" when nothing answered: every level 0);
        ``age_s`` how old the evidence was when used (None: no evidence, the series is NaN);
        ``covered``/``missing`` the targets the answer speaks for or says it lacks.
        """
        self.set_evidence_source(source, up)
        for lv in SHARE_LEVELS:
            self.evidence_level.labels(lv).set(1 if lv == level else 0)
        self.evidence_age.labels(source).set(float("nan") if age_s is None else age_s)
        self.evidence_targets.labels("covered").set(covered)
        self.evidence_targets.labels("missing").set(missing)
        if sent:
            self.evidence_bytes.labels("sent").inc(sent)
        if received:
            self.evidence_bytes.labels("received").inc(received)

    @staticmethod
    def _remove(metric: Gauge | Counter | Histogram, *labels: str) -> None:
        # prometheus-client's remove() ignores an absent series
        metric.remove(*labels)


def make_metrics(
    registry: CollectorRegistry,
    *,
    role: str = "client",
    version: str = __version__,
    max_seen_paths: int = DEFAULT_MAX_SEEN_PATHS,
) -> Metrics:
    """Build every family into ``registry`` and create the known label values up front.

    Also turns off prometheus-client's ``_created`` series (a process-wide switch): Prometheus
    stores them as separate gauges in the text format, which would double every counter's
    and histogram's series for no use.
    """
    _check("role", role, ROLES)
    _disable_created_metrics()
    r = registry
    paths = PathFamilies(DURATION_BUCKETS)
    r.register(paths)  # first: its families come out where the labelled ones used to
    m = Metrics(
        registry=r,
        paths=paths,
        target_seen=Counter(
            "plprobe_target_probes_seen_total",
            "Authenticated probes that arrived at this target, by the path id in their token.",
            ["path", "via"],
            registry=r,
        ),
        responder_rejected=Counter(
            "plprobe_responder_rejected_total",
            "Responder input refused, by reason.",
            ["reason"],
            registry=r,
        ),
        sniffer_packets=Counter(
            "plprobe_sniffer_packets_total", "Packets the sniffer's filter passed.", registry=r
        ),
        sniffer_dropped=Counter(
            "plprobe_sniffer_dropped_total",
            "Packets the kernel dropped before the sniffer read them.",
            registry=r,
        ),
        build_info=Gauge(
            "plprobe_build_info",
            "Always 1; the version and role as labels.",
            ["version", "role"],
            registry=r,
        ),
        reload_ok=Gauge(
            "plprobe_config_last_reload_successful",
            "1 when the last configuration (re)load succeeded.",
            registry=r,
        ),
        reload_ok_time=Gauge(
            "plprobe_config_last_reload_success_timestamp_seconds",
            "When the configuration was last loaded successfully.",
            registry=r,
        ),
        raw_fallback=Gauge(
            "plprobe_raw_socket_fallback",
            "1 when a raw-socket probe kind fell back to a plain connect (no CAP_NET_RAW).",
            ["probe"],
            registry=r,
        ),
        evidence_up=Gauge(
            "plprobe_evidence_source_up",
            "1 when the last fetch from the evidence source succeeded.",
            ["source"],
            registry=r,
        ),
        evidence_age=Gauge(
            "plprobe_evidence_age_seconds",
            "How old the provider evidence of the last round was when it was used.",
            ["source"],
            registry=r,
        ),
        evidence_level=Gauge(
            "plprobe_evidence_share_level",
            "The sharing level the provider granted in its last answer, one-hot.",
            ["level"],
            registry=r,
        ),
        evidence_targets=Gauge(
            "plprobe_evidence_targets",
            "Provider targets the last answer covers, and those it says it is missing.",
            ["state"],
            registry=r,
        ),
        evidence_bytes=Counter(
            "plprobe_evidence_bytes_total",
            "Bytes of evidence queries sent and answers received through the endpoint.",
            ["direction"],
            registry=r,
        ),
        probe_module_unknown=Counter(
            "plprobe_probe_module_unknown_total",
            "/probe requests naming a module that is not configured.",
            registry=r,
        ),
        provider_up=Gauge(
            "plprobe_provider_path_up",
            "1 when the provider's own probe on the path got through in the last round, else 0.",
            ["path", "hop"],
            registry=r,
        ),
        provider_probes=Counter(
            "plprobe_provider_probes_total",
            "Probes the provider agent sent from inside the provider VPC, by hop and result.",
            ["path", "hop", "result"],
            registry=r,
        ),
        provider_duration=Histogram(
            "plprobe_provider_probe_duration_seconds",
            "Duration of the provider's own probes that got through.",
            ["path", "hop"],
            buckets=DURATION_BUCKETS,
            registry=r,
        ),
        provider_last_round=Gauge(
            "plprobe_provider_last_round_timestamp_seconds",
            "When the provider's last probe round finished.",
            registry=r,
        ),
        provider_round_cpu=Counter(
            "plprobe_provider_probe_cpu_seconds_total",
            "CPU time the provider agent spent in its probe rounds.",
            registry=r,
        ),
        provider_rounds=Counter(
            "plprobe_provider_probe_rounds_total",
            "Provider probe rounds run.",
            registry=r,
        ),
        consumer_expected=Gauge(
            "plprobe_provider_consumer_expected",
            "1 for each client agent id this provider is configured to expect probes from.",
            ["consumer"],
            registry=r,
        ),
        max_seen_paths=max_seen_paths,
    )
    m.build_info.labels(version, role).set(1)
    for reason in REJECT_REASONS:
        m.responder_rejected.labels(reason)
    m.raw_fallback.labels("syn").set(0)
    return m
