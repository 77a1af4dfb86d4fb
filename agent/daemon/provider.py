"""The provider agent: what ``plprobe observe`` and the daemon's provider role run.

Starts, in order, the observation store, the in-band responder on the probe port, the passive
sniffer on the service ports (when ``sniffer.enabled`` and ``agent.observe.sniffer`` is
available), and the HTTP API (``/v1/observations``, ``/metrics``, ``/healthz``) on ``listen``;
then waits for SIGINT/SIGTERM and stops them in reverse order within about a second (each
component's stop is bounded). A second signal cancels the wait at once.

Layers, as in uvicorn: ``agent.cli.observe`` only adds flags; ``run_observe(path)`` (sync) loads the
configuration and the key and wraps the embeddable ``serve``; ``ProviderAgent`` owns the
resources (an ``AsyncExitStack``) so the daemon can run the same thing next to its client role.

What it prints: one line per component with the address it listens on, and a warning line when
authentication is off (``insecure: true``) or the sniffer could not start, so a degraded agent
never looks healthy from its own output.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import signal
import sys
from collections.abc import Callable
from typing import Any, TextIO

from prometheus_client import CollectorRegistry

from agent.config import INSECURE_NOTE, ProviderConfig, parse_listen, read_token_file
from agent.daemon.memory import release_free_memory
from agent.daemon.provider_probes import ProviderProber, ProviderRound
from agent.errors import PlprobeError
from agent.limits import raise_nofile_limit
from agent.observe.evidence import EvidenceService
from agent.observe.responder import Responder, ResponderCounters
from agent.observe.store import ObservationStore
from agent.results import hostport
from agent.wire.replay import ReplayGuard

__all__ = ["ProviderAgent", "serve"]

log = logging.getLogger(__name__)

METRICS_SYNC_S = 1.0
"""How often responder counters and new observations are carried into Prometheus metrics."""

#: the sniffer's plain counter attributes shown under ``counters.sniffer`` in /v1/observations
SNIFFER_COUNTERS: tuple[str, ...] = (
    "packets_seen",
    "syns",
    "data_segments",
    "tagged",
    "tokens",
    "forged",
    "replayed",
    "malformed",
    "untagged",
    "kernel_packets",
    "kernel_drops",
)

_STOP_GRACE_S = 0.8
"""Per component; the whole stop stays under the 2 s an orchestrator's SIGTERM grace needs."""


class ProviderAgent:
    """The provider role's resources: store, responder, sniffer, API; started and stopped as one.

    ``responder_port`` / ``api_listen`` override the configuration (tests bind port 0).
    The daemon (``plprobe run``) passes its own ``registry``/``metrics`` and ``serve_api=False``:
    it serves one API for both roles (with ``/-/reload``) from ``store`` and
    ``counter_sources()``, and keeps the store across a provider restart on reload.

    ``replay_guard`` and ``responder_counters`` are passed by an owner that restarts the
    provider (the daemon's reload): a fresh guard would accept, a second time, a token the
    previous responder accepted within its window, and fresh counters would restart the
    ``/v1/observations`` counts at 0. The guard's window follows ``responder.replay_window``
    (safe in both directions: the guard's floor rejects anything it may have forgotten).
    """

    def __init__(
        self,
        config: ProviderConfig,
        key: bytes,
        *,
        responder_port: int | None = None,
        api_listen: str | None = None,
        out: TextIO | None = None,
        registry: CollectorRegistry | None = None,
        metrics: Any = None,
        store: ObservationStore | None = None,
        serve_api: bool = True,
        replay_guard: ReplayGuard | None = None,
        responder_counters: ResponderCounters | None = None,
        sniffer_guard: ReplayGuard | None = None,
    ) -> None:
        self.config = config
        self.key = key
        self.out = out
        self.store = store or ObservationStore(
            max_entries=config.max_observations, ttl_s=config.observation_ttl
        )
        self.registry = registry or CollectorRegistry()
        self._serve_api = serve_api
        self.responder: Responder | None = None
        self.evidence: EvidenceService | None = None
        self.sniffer: Any = None
        self.sniffer_error: str | None = None
        self.api_addresses: list[tuple[str, int]] = []
        #: the provider's own probes (``probes.enabled``), see agent/daemon/provider_probes.py
        self.prober: ProviderProber | None = None
        self._responder_port = responder_port
        self._api_listen = api_listen or config.listen
        self._stack = contextlib.AsyncExitStack()
        self._metrics: Any = metrics
        if replay_guard is None:  # not ``or``: an empty guard has len() 0, so it is falsy
            replay_guard = ReplayGuard(window_s=config.responder.replay_window)
        self.replay_guard = replay_guard
        self.replay_guard.window_ns = int(config.responder.replay_window * 1_000_000_000)
        self._carried_counters = responder_counters
        #: the sniffer's own guard (it sees the same tokens as the responder: not shared)
        self.sniffer_guard = sniffer_guard
        #: observations already in a kept store were counted by the agent before a reload
        self.sync_cursor = self.store.counters.appended

    def _say(self, line: str) -> None:
        if self.out is not None:
            print(line, file=self.out, flush=True)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Start everything; on a failure, stop what already started and re-raise."""
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        cfg = self.config
        if self._metrics is not None and self._carried_counters is None:
            self._metrics.new_responder()  # a fresh responder's counters start at 0
        who = f"plprobe observe: agent {cfg.agent_id} (provider)"
        self._say(who + (", authentication OFF (insecure: true)" if cfg.insecure else ""))
        if cfg.insecure:
            log.warning(INSECURE_NOTE)

        rc = cfg.responder
        if rc.enabled and cfg.evidence.enabled:
            self.evidence = self._make_evidence()
        if rc.enabled:
            self.responder = Responder(
                key=self.key,
                insecure=cfg.insecure,
                agent_id=cfg.agent_id,
                store=self.store,
                host=rc.bind,
                port=rc.port if self._responder_port is None else self._responder_port,
                proxy_v2=rc.proxy_v2,
                max_connections=rc.max_connections,
                read_timeout=rc.read_timeout,
                max_bytes=rc.max_bytes,
                replay_guard=self.replay_guard,
                expected_endpoint_ids=cfg.expected_endpoint_ids,
                counters=self._carried_counters,
                trim=release_free_memory,  # after a flood: RSS back near its baseline
                evidence=self.evidence,
            )
            await self.responder.start()
            self._stack.push_async_callback(self.responder.stop, _STOP_GRACE_S)
            host, port = self.responder.addresses[0]
            self._say(
                f"responder listening on {host}:{port} "
                f"(proxy_v2 {'on' if rc.proxy_v2 else 'off'}, "
                f"max_connections {rc.max_connections}, read_timeout {rc.read_timeout}s)"
            )
            if self.evidence is not None:
                self._say(
                    f"evidence answers on {host}:{port}: share {self.evidence.share}, "
                    f"{len(self.evidence.peers)} peer(s)"
                )
        else:
            self._say("responder disabled")

        await self._start_sniffer()
        if self._serve_api:
            await self._start_api()
        await self._start_probes()
        self._stack.push_async_callback(self._cancel_task, self._start_metrics_sync())

    def _make_evidence(self) -> EvidenceService:
        """The evidence service; findings only at ``share: findings`` with a view to read."""
        from agent.observe.findings import provider_findings_for

        ec = self.config.evidence
        view = provider_findings_for(self.config)
        findings = view if ec.share == "findings" else None
        if ec.share == "findings" and findings is None:
            self._say("WARNING: evidence share is findings but no config_sources: none to share")
        port = self.config.responder.port
        discover = None
        if not ec.peers and view is not None:

            async def discover() -> list[str]:
                return await view.peers(port)

        return EvidenceService(
            key=self.key,
            insecure=self.config.insecure,
            agent_id=self.config.agent_id,
            store=self.store,
            share=ec.share,
            peers=ec.peers,
            peer_timeout=ec.peer_timeout,
            max_answer_bytes=ec.max_answer_bytes,
            findings=findings.findings if findings is not None else None,
            discover=discover,
        )

    async def stop(self) -> None:
        """Stop in reverse order of start; every step is bounded."""
        await self._stack.aclose()

    async def __aenter__(self) -> ProviderAgent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- components -------------------------------------------------------------------------

    async def _start_sniffer(self) -> None:
        """Start the passive sniffer if configured and present; degrade loudly, not fatally.

        The responder alone is still useful evidence, so a missing module or missing
        privileges (CAP_NET_RAW) is a warning on the console and in ``sniffer_error``.
        """
        sc = self.config.sniffer
        if not sc.enabled:
            self._say("sniffer disabled")
            return
        try:
            module = importlib.import_module("agent.observe.sniffer")
        except ImportError as exc:
            self.sniffer_error = f"agent.observe.sniffer is not available ({exc})"
        else:
            try:
                self.sniffer = self._make_sniffer(module)
                self.sniffer.start()
            except (PlprobeError, OSError, ValueError) as exc:
                self.sniffer, self.sniffer_error = None, str(exc)
        if self.sniffer is None:
            self._say(f"WARNING: sniffer not running: {self.sniffer_error}")
            log.warning("sniffer not running: %s", self.sniffer_error)
            return
        self._stack.push_async_callback(self._stop_sniffer)
        ports = ",".join(str(p) for p in sc.ports)
        self._say(f"sniffer on {sc.interface}, service ports {ports}")

    def _make_sniffer(self, module: Any) -> Any:
        sc = self.config.sniffer
        sniffer = module.Sniffer(
            sc.interface,
            sc.ports,
            key=self.key,
            target=self.config.agent_id,
            insecure=self.config.insecure,
            sink=self.store.append,
            replay_window_s=self.config.responder.replay_window,
        )
        if self.sniffer_guard is not None:  # carried across a restart: no double count
            self.sniffer_guard.window_ns = sniffer.replay.window_ns
            sniffer.replay = self.sniffer_guard
        return sniffer

    async def _stop_sniffer(self) -> None:
        if self.sniffer is None:
            return
        try:
            self.sniffer.close()
        except (PlprobeError, OSError) as exc:
            log.warning("sniffer did not stop cleanly: %s", exc)

    async def _start_probes(self) -> None:
        """Start the provider's own probe rounds (``probes.enabled``) as one background task.

        With ``probes.discover`` a view keeper re-reads the provider's configuration view on
        ``config_sources.refresh_interval``; each round plans from the view it has then.
        """
        pc = self.config.probes
        if self._metrics is not None:
            self._metrics.set_expected_consumers(pc.expected_consumers)
        if not pc.enabled:
            return
        topology: Callable[[], Any] = lambda: None  # noqa: E731 - the no-view default
        if pc.discover:
            from agent.sources.views import ViewKeeper, for_daemon, source_for

            keeper = ViewKeeper(
                for_daemon(source_for(self.config)),
                interval_s=self.config.config_sources.refresh_interval,
            )
            task = asyncio.create_task(keeper.run(), name="plprobe-provider-view")
            self._stack.push_async_callback(self._cancel_task, task)
            topology = lambda: keeper.view.topology  # noqa: E731
        self.prober = ProviderProber(
            self.config, self.key, topology=topology, on_round=self._export_round
        )
        task = asyncio.create_task(self.prober.run(), name="plprobe-provider-probes")
        self._stack.push_async_callback(self._cancel_task, task)
        self._say(
            f"provider probes every {pc.interval:g}s "
            f"({'discovered from the provider view' if pc.discover else 'configured'})"
        )

    def _export_round(self, round_: ProviderRound) -> None:
        if self._metrics is None:
            return
        self._metrics.observe_provider_round(
            ((r.hop, r.result) for r in round_.results),
            cpu_s=round_.cpu_s,
            finished_at=round_.started_at + round_.duration_s,
        )

    def counter_sources(self) -> dict[str, Callable[[], dict[str, int]]]:
        """Plain counters of the responder and sniffer, for ``/v1/observations``."""
        return self._counter_sources()

    def _counter_sources(self) -> dict[str, Callable[[], dict[str, int]]]:
        sources: dict[str, Callable[[], dict[str, int]]] = {}
        if self.responder is not None:
            responder = self.responder
            sources["responder"] = responder.counters.as_dict
        if self.evidence is not None:
            sources["evidence"] = self.evidence.counters.as_dict
        if self.sniffer is not None:
            sniffer = self.sniffer
            sources["sniffer"] = lambda: {
                name: int(getattr(sniffer, name)) for name in SNIFFER_COUNTERS
            }
        return sources

    async def _start_api(self) -> None:
        from agent.api.bounds import HttpLimits
        from agent.api.server import ApiConfig, ApiDeps, ApiServer, build_app
        from agent.limits import api_connection_cap

        if self._metrics is None:
            from agent.metrics import make_metrics

            self._metrics = make_metrics(self.registry, role="provider")
        host, port = parse_listen(self._api_listen)
        deps = ApiDeps(
            registry=self.registry,
            metrics=self._metrics,
            config=ApiConfig(
                host=host,
                port=port,
                token=read_token_file(self.config, "api_token_file"),
                agent_id=self.config.agent_id,
            ),
            observations=self.store,
            observation_counters=self._counter_sources(),
            config_loaded=True,
            first_round_done=True,  # a provider is ready once its listeners are up
        )
        cap = api_connection_cap(other_listeners=self.config.responder.max_connections)
        server = ApiServer(
            build_app(deps),
            host=host,
            port=port,
            shutdown_timeout=_STOP_GRACE_S,
            limits=HttpLimits(max_connections=cap),
            trim=release_free_memory,
        )
        self.api_addresses = await server.start()
        self._stack.push_async_callback(server.stop)
        for h, p in self.api_addresses:
            self._say(f"observations API on http://{hostport(h, p)}/v1/observations")

    def _start_metrics_sync(self) -> asyncio.Task[None]:
        return asyncio.create_task(self._metrics_sync(), name="plprobe-observe-metrics")

    async def _metrics_sync(self) -> None:
        """Carry counters and new observations into Prometheus families, once a second.

        A copy on a timer rather than a hook in the responder keeps the hot path free of
        metric code and works the same for the sniffer's thread.
        """
        while True:
            try:
                self.sync_cursor = self.sync_metrics(self.sync_cursor)
            except Exception:  # a bug here must not freeze the provider's metrics for good
                log.exception("provider metrics sync failed; retrying")
            await asyncio.sleep(METRICS_SYNC_S)

    def sync_metrics(self, cursor: int) -> int:
        """One sync step; returns the store cursor for the next call."""
        if self.sniffer is not None:
            self.sniffer.drain()  # its own ring duplicates the store (it also feeds the sink)
        m = self._metrics
        if m is None:
            return cursor
        if self.responder is not None:
            m.sync_responder(self.responder.counters.as_dict())
        if self.sniffer is not None:
            packets, drops = self.sniffer.kernel_packets, self.sniffer.kernel_drops
            with contextlib.suppress(OSError):
                self.sniffer.poll_kernel_stats()
            m.count_sniffer(
                packets=self.sniffer.kernel_packets - packets,
                dropped=self.sniffer.kernel_drops - drops,
            )
        fresh, cursor = self.store.tail(cursor)
        for obs in fresh:
            m.observe_observation(obs)
        return cursor

    @staticmethod
    async def _cancel_task(task: asyncio.Task[None]) -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def serve(
    config: ProviderConfig,
    key: bytes,
    *,
    stop: asyncio.Event | None = None,
    out: TextIO | None = sys.stdout,
    responder_port: int | None = None,
    api_listen: str | None = None,
    on_ready: Callable[[ProviderAgent], None] | None = None,
    own_process: bool = False,
) -> int:
    """Run the provider agent until ``stop`` is set or SIGINT/SIGTERM arrives; returns 0.

    ``own_process`` (``plprobe observe``): the agent owns the process, so it raises its open
    file limit and, once started, drops the capabilities it no longer needs (agent.privileges).
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals == 1:
            stop.set()
        elif main is not None:  # a second signal: do not wait for anything
            main.cancel()

    if own_process:
        raise_nofile_limit()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass
    agent = ProviderAgent(
        config, key, responder_port=responder_port, api_listen=api_listen, out=out
    )
    try:
        async with agent:
            if own_process:
                _drop_privileges(agent)
            if on_ready is not None:
                on_ready(agent)
            await stop.wait()
            if out is not None:
                print("plprobe observe: stopping", file=out, flush=True)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    return 0


def _drop_privileges(agent: ProviderAgent) -> None:
    """Listeners and sniffer are open: keep CAP_NET_RAW only if the sniffer may reopen."""
    from agent.privileges import drop_capabilities, needed_capabilities

    ports = [p for _, p in agent.api_addresses]
    if agent.responder is not None:
        ports.append(agent.responder.bound_port)
    drop_capabilities(needed_capabilities(raw=agent.config.sniffer.enabled, ports=ports))
