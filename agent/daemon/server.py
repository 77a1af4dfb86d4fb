"""``plprobe run``: the agent as a daemon, for either role, with signals and reload.

Layers, as uvicorn's: ``agent/cli/run.py`` parses flags and loads the file once; ``Daemon``
holds the state; ``serve()`` = startup -> wait for a stop -> shutdown, every resource on one
``AsyncExitStack`` so teardown mirrors setup (only what started is stopped, in reverse order).

**Signals** belong to the daemon (the API server is embedded with ``handle_signals=False``):
SIGTERM/SIGINT set the stop event (a second one cancels at once); the whole stop is bounded
(schedules cancelled, API shutdown 0.5 s, each provider component 0.8 s) to stay within the
2 s an orchestrator grants. SIGHUP and ``POST /-/reload`` call the same ``reload()``, serialised
by one lock: the file is decoded into a *new* config (unknown keys rejected, the key re-read);
a reload that fails for *any* reason (a loader bug included) keeps the old config running, sets
``plprobe_config_last_reload_successful 0``, logs one line and answers ``/-/reload`` with a 500
whose body says why (clipped); a good one is swapped in (the provider's replay guards and
responder counters, and every kept path's last verdict, outlive it): removed paths are
forgotten (metrics, API, logs), new ones added, the schedules restarted. Schedules are
restarted in a ``finally``: a swap that fails or is cancelled half-way restarts the running
configuration's schedules, so the daemon never ends up probing nothing (``POST /-/reload``
also shields the reload from a client that disconnects).

**Client role.** One schedule per distinct ``interval`` (the path's override, else the
client's): every configured endpoint (``paths[]`` entry, which covers its AZs and ports) with
that interval is probed in the same round. Why batched: the per-round framework cost (task
set-up, correlation, diagnosis, publishing, wake-ups) was paid once per endpoint, and with
50 endpoints it, not the packets, was the daemon's CPU (docs/BENCHMARKS.md). A schedule makes
a first round within ``first_jitter_s`` of start, then a round every
``interval × U(1 − jitter, 1)``, measured from the previous round's start. The jitter only
ever *shortens* a period: a break is probed at most ``interval`` after it happens, so
``plprobe_path_up`` flips at most ``interval + timeout × (1 + retries)`` (+ DNS and
diagnosis, milliseconds) after a break — the worst case docs/BENCHMARKS.md measures.
Rounds of different schedules overlap; probes in flight are bounded daemon-wide by one
semaphore (``concurrency``). Each round has an explicit budget (the largest of its
endpoints': DNS + connect attempts + provider fetch + one interval); an overrun is cancelled
and logged. Between rounds a schedule sleeps in one timer: an idle daemon has no periodic
wake-up of its own (the view refresh, when configured, is the only other). After a round:
``agent.diagnose.pipeline`` diagnoses it with the current configuration view
(``agent.sources.views``, its own
slower refresh with backoff; the view's static analysis, when not cached, runs in a worker
thread), and the results, evidence and verdicts are published to the API holder and to the
metrics; one log line per verdict *change* (``agent.logs``). A round that fails in any way
(a bug included) is logged with its traceback and the schedule goes on. Paths labelled at run
time from DNS answers (``<agent>/<ip>/<port>``, ``<agent>/<name>/<port>``) that a round of
their endpoint no longer produces (an ENI IP changed) are forgotten, as a reload forgets
removed paths; ids declared by the configuration are kept.

``/probe`` only probes configured targets (``agent.daemon.targets``: an ENI IP or DNS name of a
configured endpoint, or one its DNS answers produced, with one of its ports; anything else is a
400, so the agent is not an open prober), and its probes take the daemon's one semaphore
(``concurrency``). The target index is rebuilt on reload and updated after each round.
``/healthz/ready`` turns 200 once every endpoint has had its first round.

What a round does not redo (the daemon's idle cost is per-round work; docs/BENCHMARKS.md):
one ``runner.SharedProbes`` (an aiohttp session whose connector still opens a new connection
per http probe, and one SYN engine: raw sockets and BPF filters made once, replaced if a
socket breaks) and one ``pipeline.FindingsCache`` (static analysis once per view and
path) live from client start to stop, and are replaced on reload. Modules only the provider
role or one probe kind needs (the observe stack, botocore) are imported when used; scapy is
not imported at all (the SYN templates are constants, ``agent.probes.syn``).

Memory, when the daemon owns its process (``handle_signals``): malloc arenas capped and freed
heap pages returned to the kernel once every endpoint has had its first round, after each
later round (one per schedule and interval, so ~0.1 ms per 10 s) and after each view refresh
(``agent.daemon.memory``; no-ops off glibc).

**Provider role.** ``agent.daemon.provider.ProviderAgent`` (responder, sniffer when enabled and
permitted — without CAP_NET_RAW it logs and continues — and the observation store) with this
daemon's registry and API; its metric sync exports ``plprobe_target_probes_seen_total{path}``
from the path id in each authenticated token, the same label the client uses, so Prometheus
joins both sides. Ready once the listeners are up.

Nothing here assumes the host: the bind address comes from ``listen`` (or ``--listen``), so
the same Daemon runs on EC2, in ECS, or inside a lab namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TextIO

from prometheus_client import CollectorRegistry

from agent.api.answer import ProbeModule, ProbeReport
from agent.api.bounds import HttpLimits
from agent.api.server import ApiConfig, ApiDeps, ApiServer, build_app
from agent.config import (
    AgentConfig,
    ClientConfig,
    PathConfig,
    ProviderConfig,
    load_config,
    load_key,
    parse_listen,
    read_token_file,
)
from agent.daemon.memory import limit_malloc_arenas, release_free_memory
from agent.daemon.targets import TargetIndex, declared_paths
from agent.diagnose.pipeline import (
    FindingsCache,
    SelfIdentity,
    diagnose_round,
    imds_instance_id,
    self_identity,
    static_findings,
)
from agent.diagnose.rounds import (
    ObservationSource,
    RoundResult,
    SharedProbes,
    raw_allowed,
    run_probe,
    run_round,
)
from agent.errors import ConfigError, PlprobeError
from agent.limits import api_connection_cap, raise_nofile_limit
from agent.logs import VerdictLog, clip, setup_logging
from agent.metrics import Metrics, make_metrics
from agent.probes.base import ProbeContext, ProbeTarget
from agent.results import PROBE_KINDS, PathEvidence, PathRef, ProbeResult, Verdict
from agent.sources.views import ViewKeeper, for_daemon, source_for

if TYPE_CHECKING:
    from agent.daemon.provider import ProviderAgent
    from agent.observe.responder import ResponderCounters
    from agent.observe.store import ObservationStore
    from agent.wire import ReplayGuard

__all__ = ["Daemon", "round_budget", "schedule_groups", "schedule_period"]

log = logging.getLogger(__name__)

#: the API's graceful shutdown, and how long cancelled rounds get to unwind
API_SHUTDOWN_S = 0.5
TASK_CANCEL_S = 0.5
#: how long start-up waits for the first configuration view before probing anyway
FIRST_VIEW_WAIT_S = 10.0
#: runner slack per prober call (agent.diagnose.rounds._GRACE_S)
_GRACE_S = 0.5
_CONNECTING = ("syn", "tcp", "http")
#: a reload error is echoed to the log and to ``POST /-/reload``: bounded (it may quote input)
RELOAD_MESSAGE_MAX = 1024


def schedule_period(interval: float, jitter: float) -> float:
    """Seconds from one round's start to the next: ``interval × U(1 − jitter, 1)``.

    Jitter only shortens the period, so the detection bound stays ``interval`` (plus the
    time to call a failure), never ``interval × (1 + jitter)``.
    """
    return interval * random.uniform(1.0 - min(max(jitter, 0.0), 1.0), 1.0)


def round_budget(config: ClientConfig, path: PathConfig) -> float:
    """The most one endpoint's round may take before it is cut off (explicit, derived)."""
    s = config.for_path(path)
    dns = s.timeout + _GRACE_S
    connect = s.timeout * (1 + s.retries) + _GRACE_S
    fetch = max(config.timeout, 1.0) + 1.0
    return dns + connect + config.provider_delay + fetch + s.interval


def schedule_groups(config: ClientConfig) -> dict[float, list[PathConfig]]:
    """The client's schedules: interval -> the ``paths[]`` entries probed at that interval
    (in configuration order), each group one round per interval."""
    groups: dict[float, list[PathConfig]] = {}
    for pc in config.paths:
        groups.setdefault(config.for_path(pc).interval, []).append(pc)
    return groups


def _modules(config: AgentConfig) -> dict[str, ProbeModule]:
    """``/probe`` modules: each probe kind, and each endpoint by its ``name``."""
    modules = {kind: ProbeModule(kind, kind) for kind in PROBE_KINDS}
    if isinstance(config, ClientConfig):
        for p in config.paths:
            if p.name in modules:
                continue
            kind = next((k for k in p.probes if k in _CONNECTING), p.probes[0])
            timeout = config.for_path(p).timeout + _GRACE_S
            modules[p.name] = ProbeModule(p.name, kind, timeout_s=timeout)
    return modules


class Daemon:
    """One agent process: API, metrics, and the client schedules or the provider listeners."""

    def __init__(
        self,
        config: AgentConfig,
        key: bytes,
        *,
        listen: str | None = None,
        out: TextIO | None = None,
        registry: CollectorRegistry | None = None,
        provider: ObservationSource | None = None,
        me: SelfIdentity | None = None,
        check_raw: Callable[[], bool] = raw_allowed,
        handle_signals: bool = True,
        jitter: float = 0.1,
        first_jitter_s: float = 1.0,
        responder_port: int | None = None,
    ) -> None:
        self.config = config
        self.key = key
        self.listen = listen or config.listen
        self.out = out
        self.registry = registry or CollectorRegistry()
        self.metrics: Metrics = make_metrics(self.registry, role=config.role)
        self.provider = provider
        self.check_raw = check_raw
        self.handle_signals = handle_signals
        self.jitter = jitter
        self.first_jitter_s = first_jitter_s
        self.responder_port = responder_port
        self._me = me
        self.deps = ApiDeps(registry=self.registry, metrics=self.metrics)
        self.stop_event = asyncio.Event()
        self.ready = asyncio.Event()
        self.api_addresses: list[tuple[str, int]] = []
        self.reloads = 0
        self._reload_lock = asyncio.Lock()
        self._hup_tasks: set[asyncio.Task[Any]] = set()
        self._main: asyncio.Task[Any] | None = None
        self._signals = 0
        # client role
        self._schedules: dict[int, asyncio.Task[None]] = {}
        self._sem = asyncio.Semaphore(config.concurrency if isinstance(config, ClientConfig) else 1)
        self._keeper: ViewKeeper | None = None
        self._keeper_task: asyncio.Task[None] | None = None
        self._owner: dict[str, PathConfig] = {}
        self._refs: dict[str, PathRef] = {}
        self._first_pending: set[int] = set()
        self._declared: set[str] = set()
        #: which configured path a /probe target names (agent.daemon.targets)
        self._targets = TargetIndex()
        self._vlog = VerdictLog()
        self._shared = SharedProbes()
        self._findings = FindingsCache()
        # provider role
        self._agent: ProviderAgent | None = None
        self._store: ObservationStore | None = None
        #: outlive a provider restart on reload (see ProviderAgent): created at first start
        self._guard: ReplayGuard | None = None
        self._responder_counters: ResponderCounters | None = None
        self._sniffer_guard: ReplayGuard | None = None

    def _say(self, line: str) -> None:
        if self.out is not None:
            print(line, file=self.out, flush=True)

    # -- lifecycle --------------------------------------------------------------------------

    async def serve(self) -> int:
        """Start, run until a stop signal (or ``stop()``), stop everything; returns 0."""
        self._main = asyncio.current_task()
        if self.handle_signals:  # the daemon owns the process: its allocator and fd limit too
            limit_malloc_arenas()
            raise_nofile_limit()
        async with contextlib.AsyncExitStack() as stack:
            if self.handle_signals:
                self._install_signals(stack)
            await self._startup(stack)
            if self.handle_signals:  # the daemon owns the process: its privileges too
                self._drop_privileges()
            self._say("plprobe run: ready" if self.deps.ready else "plprobe run: started")
            await self.stop_event.wait()
            self._say("plprobe run: stopping")
        return 0

    def stop(self) -> None:
        self.stop_event.set()

    def _drop_privileges(self) -> None:
        """Listeners, raw sockets and sniffer are open: keep only what may reopen (privileges)."""
        from agent.privileges import drop_capabilities, needed_capabilities

        cfg = self.config
        ports = [p for _, p in self.api_addresses]
        if isinstance(cfg, ClientConfig):
            raw = any("syn" in p.probes for p in cfg.paths)
        else:
            raw = cfg.sniffer.enabled
            ports.append(cfg.responder.port)
        drop_capabilities(needed_capabilities(raw=raw, ports=ports))

    async def _startup(self, stack: contextlib.AsyncExitStack) -> None:
        cfg = self.config
        self.metrics.config_reloaded(True)
        self.deps.config = self._api_config(cfg)
        self.deps.reload_fn = self.reload
        self.deps.config_loaded = True
        if isinstance(cfg, ClientConfig):
            self.deps.probe_fn = self._probe
        else:
            from agent.observe.store import ObservationStore  # provider role only

            self._store = ObservationStore(
                max_entries=cfg.max_observations, ttl_s=cfg.observation_ttl
            )
            self.deps.observations = self._store
            self.deps.observation_counters = self._live_counters()
        host, port = parse_listen(self.listen)
        responder = cfg.responder.max_connections if isinstance(cfg, ProviderConfig) else 0
        server = ApiServer(
            build_app(self.deps),
            host=host,
            port=port,
            shutdown_timeout=API_SHUTDOWN_S,
            limits=HttpLimits(max_connections=api_connection_cap(other_listeners=responder)),
            trim=release_free_memory if self.handle_signals else None,
        )
        self.api_addresses = await server.start()
        stack.push_async_callback(server.stop)
        who = f"plprobe run: agent {cfg.agent_id} ({cfg.role})"
        self._say(who + (", authentication OFF (insecure: true)" if cfg.insecure else ""))
        for h, p in self.api_addresses:
            self._say(f"plprobe run: API on http://{f'[{h}]' if ':' in h else h}:{p}")
        if isinstance(cfg, ClientConfig):
            stack.push_async_callback(self._stop_client)
            await self._start_client(cfg)
        else:
            stack.push_async_callback(self._stop_provider)
            await self._start_provider(cfg, self.key)
            self._set_ready()
        stack.push_async_callback(self._cancel_hups)

    def _install_signals(self, stack: contextlib.AsyncExitStack) -> None:
        loop = asyncio.get_running_loop()
        handlers = {
            signal.SIGTERM: self._on_stop_signal,
            signal.SIGINT: self._on_stop_signal,
            signal.SIGHUP: self._on_hup,
        }
        for sig, fn in handlers.items():
            try:
                loop.add_signal_handler(sig, fn)
            except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
                continue
            stack.callback(loop.remove_signal_handler, sig)

    def _on_stop_signal(self) -> None:
        self._signals += 1
        if self._signals == 1:
            log.info("stop requested")
            self.stop_event.set()
        elif self._main is not None:  # a second signal: do not wait for anything
            self._main.cancel()

    def _on_hup(self) -> None:
        task = asyncio.create_task(self.reload(), name="plprobe-reload")
        self._hup_tasks.add(task)
        task.add_done_callback(self._hup_done)

    def _hup_done(self, task: asyncio.Task[Any]) -> None:
        """Retrieve a SIGHUP reload's outcome: nothing is left for asyncio to complain about."""
        self._hup_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:  # reload() does not raise
            log.error("reload after SIGHUP failed: %s", clip(repr(task.exception()), 512))

    async def _cancel_hups(self) -> None:
        await _cancel_all(list(self._hup_tasks))

    def _set_ready(self) -> None:
        self.deps.first_round_done = True
        if not self.ready.is_set():
            self.ready.set()
            log.info("ready")
            self._trim()

    def _trim(self) -> None:
        if self.handle_signals:
            release_free_memory()

    def _view_refreshed(self, kind: str, ok: bool) -> None:
        self.metrics.set_evidence_source(kind, ok)
        if ok:
            self._trim()

    def _api_config(self, config: AgentConfig) -> ApiConfig:
        host, port = parse_listen(self.listen)
        return ApiConfig(
            host=host,
            port=port,
            token=read_token_file(config, "api_token_file"),
            modules=_modules(config),
            agent_id=config.agent_id,
        )

    # -- reload -----------------------------------------------------------------------------

    async def reload(self) -> tuple[bool, str]:
        """Re-read the config file (SIGHUP, ``POST /-/reload``); keep the old one if bad.

        Never raises (a cancellation aside): *any* failure, a loader bug included, keeps the
        running configuration, sets ``plprobe_config_last_reload_successful 0`` and logs one
        line, so SIGHUP cannot leave "Task exception was never retrieved" behind and the API
        always has a message to answer with.
        """
        async with self._reload_lock:
            source = self.config.source
            try:
                if source is None:
                    raise ConfigError("the configuration did not come from a file")
                new = await asyncio.to_thread(load_config, source)
                key = load_key(new)
                if new.role != self.config.role:
                    raise ConfigError(
                        f"role cannot change on reload ({self.config.role} -> {new.role}); "
                        "restart the agent",
                        path=source,
                        key="role",
                    )
                await self._apply(new, key)
            except Exception as exc:  # every failure is reported the same way
                return self._reload_failed(exc)
            self.reloads += 1
            self.metrics.config_reloaded(True)
            log.info(
                "configuration reloaded from %s",
                source,
                extra={"fields": {"event": "reload", "ok": True}},
            )
            return True, "configuration reloaded"

    def _reload_failed(self, exc: Exception) -> tuple[bool, str]:
        """Report a failed reload: metric 0, one log line, one message for the API."""
        self.metrics.config_reloaded(False)
        if isinstance(exc, PlprobeError):
            why = str(exc)
        else:  # a bug in the loader: say what it was, keep the traceback at debug level
            why = f"unexpected {type(exc).__name__}: {exc}"
            log.debug("reload failed unexpectedly", exc_info=exc)
        why = clip(why, RELOAD_MESSAGE_MAX)
        log.error(
            "reload failed, keeping the running configuration: %s",
            why,
            extra={"fields": {"event": "reload", "ok": False}},
        )
        return False, f"reload failed, running configuration kept: {why}"

    async def _apply(self, new: AgentConfig, key: bytes) -> None:
        """Swap in a validated config; raises (keeping the old one) if it cannot be applied."""
        if new.listen != self.config.listen and self.listen == self.config.listen:
            log.warning("listen changed to %s: takes effect after a restart", new.listen)
        api = self._api_config(new)  # may raise (token file): before anything changes
        if isinstance(new, ClientConfig):
            view_source = for_daemon(source_for(new))  # may raise (missing snapshot dir)
            await self._swap_client(new, key, view_source)
        else:
            assert isinstance(new, ProviderConfig)
            await self._swap_provider(new, key)
        if new.log_format != self.config.log_format:
            setup_logging(new.log_format)
        self.config, self.key = new, key
        self.deps.config = api

    # -- client role ------------------------------------------------------------------------

    async def _start_client(self, config: ClientConfig) -> None:
        self._sem = asyncio.Semaphore(config.concurrency)
        await self._start_view(for_daemon(source_for(config)), config)
        self._start_schedules(config, self.key)

    async def _start_view(self, source: Any, config: ClientConfig) -> None:
        keeper = ViewKeeper(
            source,
            interval_s=config.config_sources.refresh_interval,
            on_refresh=self._view_refreshed,
        )
        self._keeper = keeper
        if source is None:
            return
        if self._me is None and source.kind == "aws":
            instance_id = await asyncio.to_thread(imds_instance_id)
            self._me = self_identity(config.agent_id, instance_id=instance_id)
        first = asyncio.create_task(keeper.refresh())
        done, _ = await asyncio.wait({first}, timeout=FIRST_VIEW_WAIT_S)
        if not done:
            log.warning(
                "configuration view %s not read within %.0fs: probing without it for now",
                source.description,
                FIRST_VIEW_WAIT_S,
            )
        keeper.next_due = time.time() + (keeper.interval_s if done else 0.0)
        self._keeper_task = asyncio.create_task(self._keep_view(keeper, first))

    @staticmethod
    async def _keep_view(keeper: ViewKeeper, first: asyncio.Task[Any]) -> None:
        with contextlib.suppress(Exception):
            await first
        await keeper.run()

    def _identity(self) -> SelfIdentity:
        return self._me or self_identity(self.config.agent_id)

    def _start_schedules(self, config: ClientConfig, key: bytes) -> None:
        declared = declared_paths(config)
        for pid, pc in declared.items():
            self.metrics.add_path(pid, interval_s=config.for_path(pc).interval, probes=pc.probes)
            self._owner[pid] = pc
        self._declared = set(declared)
        self._targets.rebuild(config, self._refs.values())
        groups = schedule_groups(config)
        self._first_pending = set(range(len(groups)))
        for i, (interval, pcs) in enumerate(groups.items()):
            self._schedules[i] = asyncio.create_task(
                self._schedule(config, i, pcs, key), name=f"plprobe-schedule-{interval:g}s"
            )

    async def _stop_schedules(self) -> None:
        tasks = list(self._schedules.values())
        self._schedules.clear()
        await _cancel_all(tasks)

    async def _stop_client(self) -> None:
        await self._stop_schedules()
        if self._keeper_task is not None:
            await _cancel_all([self._keeper_task])
            self._keeper_task = None
        await self._shared.close()

    async def _swap_client(self, new: ClientConfig, key: bytes, view_source: Any) -> None:
        old = self.config
        assert isinstance(old, ClientConfig)
        await self._stop_schedules()
        started = False
        try:
            keep = {pid for pid, pc in self._owner.items() if pc in new.paths}
            keep |= set(declared_paths(new))
            for pid in sorted(set(self._owner) - keep):
                self._forget(pid)
            if (
                self._keeper is None
                or view_source != self._keeper.source
                or (new.config_sources.refresh_interval != old.config_sources.refresh_interval)
            ):
                if self._keeper_task is not None:
                    await _cancel_all([self._keeper_task])
                    self._keeper_task = None
                await self._start_view(view_source, new)
            if new.concurrency != old.concurrency:
                self._sem = asyncio.Semaphore(new.concurrency)
            # probe resources and cached analysis follow the new config (key, paths, identity)
            old_shared, self._shared = self._shared, SharedProbes()
            self._findings = FindingsCache()
            self._start_schedules(new, key)
            started = True
            await old_shared.close()
        finally:
            if not started:  # failed or cancelled half-way: never leave the daemon idle
                log.error("reload interrupted: restarting the running configuration's schedules")
                self._start_schedules(old, self.key)

    def _forget(self, pid: str, why: str = "removed from the configuration") -> None:
        self.metrics.forget_path(pid)
        self._owner.pop(pid, None)
        if self._refs.pop(pid, None) is not None:
            self._targets.forget(pid)
        self._vlog.forget(pid)
        self.deps.results = {k: v for k, v in self.deps.results.items() if k != pid}
        self.deps.evidence = {k: v for k, v in self.deps.evidence.items() if k != pid}
        self.deps.verdicts = {k: v for k, v in self.deps.verdicts.items() if k != pid}
        self.deps.history.forget(pid)
        log.info("path %s %s", pid, why)

    async def _schedule(
        self, config: ClientConfig, index: int, pcs: list[PathConfig], key: bytes
    ) -> None:
        """Probe endpoints that share an interval forever, in one round each interval."""
        loop = asyncio.get_running_loop()
        interval = config.for_path(pcs[0]).interval
        sub = config.model_copy(update={"paths": pcs})
        budget = max(round_budget(config, pc) for pc in pcs)
        await asyncio.sleep(random.uniform(0, min(self.first_jitter_s, interval)))
        while True:
            started = loop.time()
            await self._round(sub, pcs, key, budget)
            if index in self._first_pending:
                self._first_pending.discard(index)
                if not self._first_pending:
                    self._set_ready()
            else:
                self._trim()  # a batched round's transient heap, back to the kernel
            period = schedule_period(interval, self.jitter)
            await asyncio.sleep(max(0.0, started + period - loop.time()))

    async def _round(
        self, sub: ClientConfig, pcs: list[PathConfig], key: bytes, budget: float
    ) -> RoundResult | None:
        names = ", ".join(pc.name for pc in pcs[:3])
        if len(pcs) > 3:
            names += f" (+{len(pcs) - 3} more)"
        try:
            try:
                async with asyncio.timeout(budget):
                    result = await run_round(
                        sub,
                        key=key,
                        provider=self.provider,
                        check_raw=self.check_raw,
                        semaphore=self._sem,
                        shared=self._shared,
                    )
            except TimeoutError:
                log.warning("round of %s overran its %.1fs budget and was cancelled", names, budget)
                return None
            await self._publish(result, pcs)
        except PlprobeError as exc:
            log.warning("round of %s could not run: %s", names, exc)
            return None
        except Exception:  # a bug must not end this schedule for good
            log.exception("round of %s failed; the schedule continues", names)
            return None
        return result

    async def _diagnose(self, result: RoundResult) -> Any:
        """``diagnose_round`` with the view's uncached analysis done in a worker thread."""
        view = self._keeper.view if self._keeper is not None else None
        me, cache = self._identity(), self._findings
        topology = view.topology if view is not None else None
        if topology is not None:
            missing = cache.missing(topology, result.paths, me)
            if missing:
                computed = await asyncio.to_thread(static_findings, topology, missing, me)
                cache.put(topology, me, computed)
        return diagnose_round(result, view, me, cache=cache)

    async def _publish(self, result: RoundResult, pcs: list[PathConfig]) -> None:
        """Diagnose a round and hand everything to metrics, the API holder and the log."""
        diagnosis = await self._diagnose(result)
        config = self.config
        assert isinstance(config, ClientConfig)
        seen = {ref.id for ref in result.paths}
        # by identity: comparing pydantic models field by field was quadratic in paths
        mine = {id(pc) for pc in pcs}
        for pid, owner in list(self._owner.items()):  # run-time ids the round no longer has
            if pid not in seen and pid not in self._declared and id(owner) in mine:
                self._forget(pid, "no longer produced by its endpoint's DNS answers")
        for ref in result.paths:
            if self._refs.get(ref.id) != ref:  # a ref seen before is indexed already
                self._refs[ref.id] = ref
                self._targets.add(ref)
            if ref.id not in self._owner:
                pc = result.path_configs.get(ref.id, pcs[0])
                self._owner[ref.id] = pc
                interval = config.for_path(pc).interval
                self.metrics.add_path(ref.id, interval_s=interval, probes=pc.probes)
        by_path: dict[str, list[ProbeResult]] = {}
        for r in result.results:
            by_path.setdefault(r.path, []).append(r)
            try:
                self.metrics.observe_result(r)
            except ValueError as exc:  # an outcome outside the catalogue: a bug, not a crash
                log.error("cannot export result of %s: %s", r.path, exc)
        verdicts: dict[str, Verdict] = {}
        for v in diagnosis.verdicts:
            verdicts[v.path] = v
            try:
                self.metrics.set_verdict(v)
            except ValueError as exc:
                log.error("cannot export verdict of %s: %s", v.path, exc)
        fetched = result.observations is not None and not result.provider_error
        shared = result.provider_evidence
        if shared is not None and shared.source in ("endpoint", "injected"):
            self.metrics.set_provider_evidence(
                shared.source,
                up=fetched,
                level=shared.level,
                age_s=shared.age_s,
                covered=sum(1 for c in shared.covers.values() if c.get("ok")),
                missing=sum(1 for c in shared.covers.values() if not c.get("ok")),
                sent=shared.bytes_sent,
                received=shared.bytes_received,
            )
        elif self.provider is not None or any(config.for_path(pc).provider_urls for pc in pcs):
            self.metrics.set_evidence_source("provider_api", fetched)
        evidence: dict[str, PathEvidence] = {e.path: e for e in diagnosis.evidence}
        self.deps.results = {**self.deps.results, **by_path}
        self.deps.evidence = {**self.deps.evidence, **evidence}
        self.deps.verdicts = {**self.deps.verdicts, **verdicts}
        self.deps.history.record(
            ", ".join(p.name for p in pcs),  # endpoints sharing a schedule share a round
            result.started_at,
            result.finished_at,
            diagnosis.evidence,
            result.provider_error,
        )
        self._vlog.update(diagnosis.verdicts)

    # -- /probe (blackbox multi-target) -----------------------------------------------------

    async def _probe(self, target: str, module: ProbeModule, timeout_s: float) -> ProbeReport:
        """One probe of ``target`` (host:port) with ``module`` (a kind or an endpoint name)."""
        config = self.config
        assert isinstance(config, ClientConfig)
        host, ref, pc = self._targets.resolve(target, module.name, self._owner, config.agent_id)
        kind = module.prober
        port = ref.port
        ctx = ProbeContext(
            agent_id=config.agent_id,
            key=self.key,
            insecure=config.insecure,
            timeout_s=timeout_s,
            retries=0,
            raw_allowed=False,
        )
        responder = pc is not None and port in pc.responder_ports
        if kind == "dns":
            expected = tuple(sorted(set(pc.expected_ips.values()))) if pc else ()
            dns_ref = replace(ref, ip=None, name=host)
            probe_target = ProbeTarget(path=dns_ref, expected_ips=expected)
        else:
            probe_target = ProbeTarget(
                path=ref,
                responder=responder,
                http_path=pc.http_path if pc else "/",
                http_host=pc.http_host if pc else None,
            )
        result = await run_probe(kind, probe_target, ctx, self._sem, False)
        verdict = self.deps.verdicts.get(ref.id) if result.outcome != "ok" else None
        return ProbeReport(result=result, verdict=verdict)

    # -- provider role ----------------------------------------------------------------------

    def _live_counters(self) -> Mapping[str, Callable[[], Mapping[str, int]]]:
        """Counter sources that follow the current ProviderAgent across reloads."""

        def source(name: str) -> Callable[[], Mapping[str, int]]:
            def read() -> Mapping[str, int]:
                agent = self._agent
                fn = agent.counter_sources().get(name) if agent is not None else None
                return fn() if fn is not None else {}

            return read

        return {name: source(name) for name in ("responder", "sniffer")}

    async def _start_provider(self, config: ProviderConfig, key: bytes) -> None:
        from agent.daemon.provider import ProviderAgent  # provider role only
        from agent.observe.responder import ResponderCounters
        from agent.wire import ReplayGuard

        assert self._store is not None
        if self._guard is None:
            self._guard = ReplayGuard(window_s=config.responder.replay_window)
            self._responder_counters = ResponderCounters()
            self._sniffer_guard = ReplayGuard(window_s=config.responder.replay_window)
        agent = ProviderAgent(
            config,
            key,
            responder_port=self.responder_port,
            out=self.out,
            registry=self.registry,
            metrics=self.metrics,
            store=self._store,
            serve_api=False,
            replay_guard=self._guard,
            responder_counters=self._responder_counters,
            sniffer_guard=self._sniffer_guard,
        )
        await agent.start()
        self._agent = agent
        if agent.sniffer_error:
            log.warning(
                "sniffer not running: %s (continuing with the responder)", agent.sniffer_error
            )

    async def _stop_provider(self) -> None:
        agent, self._agent = self._agent, None
        if agent is not None:
            await agent.stop()

    async def _swap_provider(self, new: ProviderConfig, key: bytes) -> None:
        old = self.config
        assert isinstance(old, ProviderConfig)
        same = (
            new.responder == old.responder
            and new.sniffer == old.sniffer
            and new.agent_id == old.agent_id
            and new.insecure == old.insecure
            and new.expected_endpoint_ids == old.expected_endpoint_ids
            and new.probes == old.probes
            and key == self.key
        )
        if same:
            return
        await self._stop_provider()
        try:
            await self._start_provider(new, key)
        except Exception:
            log.error("the new provider configuration cannot start; restarting the old one")
            await self._start_provider(old, self.key)
            raise


async def _cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    for t in tasks:
        t.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=TASK_CANCEL_S)


def default_out() -> TextIO:
    return sys.stdout
