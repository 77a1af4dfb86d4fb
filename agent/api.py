"""The agent's HTTP API (aiohttp): metrics, health, JSON state, and a blackbox-style ``/probe``.

    GET /metrics             Prometheus exposition of the agent's registry (content negotiated)
    GET /healthz             liveness: 200 while the event loop answers
    GET /healthz/ready       readiness (also ``/healthz?ready=1``): 503 until the configuration
                             is loaded and the first round completed
    GET /v1/results          latest ProbeResults per path     {"results": [...]}
    GET /v1/evidence         latest PathEvidence per path     {"evidence": [...]}
    GET /v1/verdicts         latest Verdict per path          {"verdicts": [...]}
    GET /v1/observations     provider role: agent/observe/api.py's handler
    GET /probe?target=T&module=M
                             blackbox-exporter compatible: one probe, its own registry
    POST /-/reload           re-read the configuration file (the daemon's reload path, the same
                             as SIGHUP): 200 on success, 500 with the error (old config kept)

``/v1/*`` takes ``?path=ID`` (repeatable) to filter, and needs ``Authorization: Bearer TOKEN``
when the configuration sets a token (401 with a JSON error otherwise; constant-time compare).

What changes at runtime lives in one holder, ``ApiDeps``: the daemon swaps its dicts (whole
objects, on the event loop) after each round and its ``config`` on reload; app state itself is
frozen at startup, so the app keeps only the holder.

``/probe`` follows blackbox_exporter: a failed probe is a *successful* request whose body says
``probe_success 0`` (plus plprobe's ``plprobe_probe_result{result}`` and, when a verdict is
available, ``plprobe_probe_blocked{control}``); only a bad request (no target, a target the probe
function cannot parse, an unknown module — also counted) is an HTTP error. The deadline is the
scraper's ``X-Prometheus-Scrape-Timeout-Seconds`` minus an offset, or the module's timeout if
that is smaller; with ``handler_cancellation`` a scraper that gives up cancels its probe.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import hdrs, web
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.exposition import choose_encoder

from agent.controls import IDS as CONTROL_IDS
from agent.errors import ConfigError, PlprobeError
from agent.metrics import Metrics
from agent.observe.store import ObservationStore
from agent.results import OUTCOMES, PROBE_KINDS, PathEvidence, ProbeResult, Verdict

__all__ = [
    "DEFAULT_PORT",
    "DEPS_KEY",
    "ApiConfig",
    "ApiDeps",
    "ApiServer",
    "ProbeFn",
    "ProbeModule",
    "ProbeReport",
    "build_app",
    "probe_timeout",
]

log = logging.getLogger(__name__)

DEFAULT_PORT = 9720
MAX_TARGET_LEN = 512


@dataclass(frozen=True)
class ProbeModule:
    """A named probe setting for ``/probe?module=NAME`` (blackbox's modules)."""

    name: str
    prober: str  # a PROBE_KINDS value
    timeout_s: float = 5.0

    def __post_init__(self) -> None:
        if self.prober not in PROBE_KINDS:
            raise ValueError(f"module {self.name!r}: prober {self.prober!r} not in {PROBE_KINDS}")
        if not self.timeout_s > 0:
            raise ValueError(f"module {self.name!r}: timeout_s must be positive")


def _default_modules() -> dict[str, ProbeModule]:
    return {kind: ProbeModule(kind, kind) for kind in PROBE_KINDS}


@dataclass(frozen=True)
class ApiConfig:
    """The API's part of the configuration; replaced as a whole on reload."""

    host: str = "0.0.0.0"  # DESIGN.md: the API listens on :9720
    port: int = DEFAULT_PORT
    #: bearer token required on /v1/* (None: open)
    token: str | None = None
    modules: Mapping[str, ProbeModule] = field(default_factory=_default_modules)
    #: subtracted from the scraper's timeout so the answer arrives before it gives up
    scrape_timeout_offset_s: float = 0.5
    #: agent id reported by /v1/observations
    agent_id: str = ""


@dataclass(frozen=True)
class ProbeReport:
    """What a probe function returns for ``/probe``: the result, and a verdict if it has one."""

    result: ProbeResult
    verdict: Verdict | None = None


#: ``probe_fn(target, module, timeout_s)``; raises ``ValueError`` for a target it cannot parse
ProbeFn = Callable[[str, ProbeModule, float], Awaitable[ProbeReport]]


@dataclass
class ApiDeps:
    """Everything the handlers read, in one mutable holder owned by the daemon."""

    registry: CollectorRegistry
    metrics: Metrics | None = None
    config: ApiConfig = field(default_factory=ApiConfig)
    #: path -> the latest round's results of that path
    results: Mapping[str, Sequence[ProbeResult]] = field(default_factory=dict)
    evidence: Mapping[str, PathEvidence] = field(default_factory=dict)
    verdicts: Mapping[str, Verdict] = field(default_factory=dict)
    #: provider role: the store behind /v1/observations (None: not a provider)
    observations: ObservationStore | None = None
    #: extra counters for /v1/observations, e.g. {"responder": lambda: r.counters.as_dict()}
    observation_counters: Mapping[str, Callable[[], Mapping[str, int]]] = field(
        default_factory=dict
    )
    probe_fn: ProbeFn | None = None
    #: the daemon's reload (``POST /-/reload``): returns (ok, message); None: 404
    reload_fn: Callable[[], Awaitable[tuple[bool, str]]] | None = None
    config_loaded: bool = False
    #: set after the first round (the provider role sets it when its listeners are up)
    first_round_done: bool = False
    started_at: float = field(default_factory=time.time)

    @property
    def ready(self) -> bool:
        return self.config_loaded and self.first_round_done


DEPS_KEY: web.AppKey[ApiDeps] = web.AppKey("plprobe_api_deps", ApiDeps)


def _json_error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


# -- /metrics ------------------------------------------------------------------------------


async def _expose(request: web.Request, registry: CollectorRegistry) -> web.Response:
    """Format a registry for the scraper's Accept header.

    Formatting runs in a worker thread: with 1,000 paths it is ~10^5 lines, long enough to
    stall probes if done on the loop, and prometheus-client's families are lock-protected.
    """
    encoder, content_type = choose_encoder(",".join(request.headers.getall(hdrs.ACCEPT, [])))
    names = request.query.getall("name[]", [])
    source = registry.restricted_registry(names) if names else registry
    body = await asyncio.to_thread(encoder, source)
    response = web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type})
    response.enable_compression()
    return response


async def _metrics(request: web.Request) -> web.Response:
    return await _expose(request, request.app[DEPS_KEY].registry)


# -- /healthz ------------------------------------------------------------------------------


def _health_body(deps: ApiDeps) -> dict[str, Any]:
    return {
        "status": "ok",
        "ready": deps.ready,
        "config_loaded": deps.config_loaded,
        "first_round_done": deps.first_round_done,
        "uptime_s": round(time.time() - deps.started_at, 3),
    }


async def _healthz(request: web.Request) -> web.Response:
    if request.query.get("ready", "") not in ("", "0", "false"):
        return await _ready(request)
    return web.json_response(_health_body(request.app[DEPS_KEY]))


async def _ready(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    body = _health_body(deps)
    if not deps.ready:
        body["status"] = "not ready"
    return web.json_response(body, status=200 if deps.ready else 503)


# -- /v1 -----------------------------------------------------------------------------------


@web.middleware
async def _bearer_auth(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Require the configured bearer token on /v1/*; other endpoints stay open (scrapers)."""
    token = request.app[DEPS_KEY].config.token
    guarded = request.path == "/v1" or request.path.startswith(("/v1/", "/-/"))
    if token and guarded:
        scheme, _, given = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), token.encode()
        )
        if not ok:
            return _json_error(
                401, "missing or wrong bearer token", **{hdrs.WWW_AUTHENTICATE: "Bearer"}
            )
    return await handler(request)


def _selected(request: web.Request, paths: Sequence[str]) -> list[str]:
    wanted = request.query.getall("path", [])
    return sorted(p for p in paths if not wanted or p in wanted)


async def _results(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    results = deps.results
    return web.json_response(
        {"results": [r.to_json() for p in _selected(request, list(results)) for r in results[p]]}
    )


async def _evidence(request: web.Request) -> web.Response:
    evidence = request.app[DEPS_KEY].evidence
    return web.json_response(
        {"evidence": [evidence[p].to_json() for p in _selected(request, list(evidence))]}
    )


async def _verdicts(request: web.Request) -> web.Response:
    verdicts = request.app[DEPS_KEY].verdicts
    return web.json_response(
        {"verdicts": [verdicts[p].to_json() for p in _selected(request, list(verdicts))]}
    )


async def _no_observations(request: web.Request) -> web.Response:
    return _json_error(404, "this agent does not run the provider role: no observations")


def _observation_routes(deps: ApiDeps) -> list[web.RouteDef]:
    """agent/observe/api.py's routes when that module and a store are present."""
    if deps.observations is None:
        return [web.get("/v1/observations", _no_observations, allow_head=False)]
    try:
        observe_api = importlib.import_module("agent.observe.api")
    except ImportError:
        log.warning("agent.observe.api is not available: /v1/observations disabled")
        return [web.get("/v1/observations", _no_observations, allow_head=False)]
    routes: list[web.RouteDef] = observe_api.observations_routes(
        deps.observations,
        agent_id=deps.config.agent_id,
        counters=deps.observation_counters,
    )
    return routes


# -- /probe --------------------------------------------------------------------------------


def probe_timeout(header: str | None, module: ProbeModule, offset_s: float) -> float:
    """blackbox_exporter's rule: scrape timeout minus offset, unless the module's is smaller.

    A missing header, or one that leaves no time after the offset, gives the module's timeout.
    ``ValueError`` for a header that is not a number.
    """
    if not header:
        return module.timeout_s
    try:
        scrape = float(header)
    except ValueError:
        raise ValueError(
            f"X-Prometheus-Scrape-Timeout-Seconds is not a number: {header!r}"
        ) from None
    if not math.isfinite(scrape):
        raise ValueError(f"X-Prometheus-Scrape-Timeout-Seconds is not finite: {header!r}")
    budget = scrape - offset_s
    if budget <= 0:
        return module.timeout_s
    return min(budget, module.timeout_s)


def _probe_registry(
    success: bool, duration_s: float, outcome: str, verdict: Verdict | None
) -> CollectorRegistry:
    """A fresh registry per request: the probe's own answer, nothing shared."""
    reg = CollectorRegistry(auto_describe=True)
    Gauge("probe_success", "Whether the probe succeeded.", registry=reg).set(1 if success else 0)
    Gauge("probe_duration_seconds", "How long the probe took.", registry=reg).set(duration_s)
    result = Gauge(
        "plprobe_probe_result", "The probe's client-side result, one-hot.", ["result"], registry=reg
    )
    for value in OUTCOMES:
        result.labels(value).set(1 if value == outcome else 0)
    if verdict is not None and verdict.status == "fail":
        control = verdict.blocked_at if verdict.blocked_at in CONTROL_IDS else "unknown"
        Gauge(
            "plprobe_probe_blocked",
            "1 for the control that blocked the probed path.",
            ["control"],
            registry=reg,
        ).labels(control).set(1)
    return reg


async def _probe(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    config = deps.config
    target = request.query.get("target", "")
    if not target:
        return web.Response(status=400, text="target parameter is missing\n")
    if len(target) > MAX_TARGET_LEN:
        return web.Response(status=400, text="target parameter is too long\n")
    name = request.query.get("module", "tcp")
    module = config.modules.get(name)
    if module is None:
        if deps.metrics is not None:
            deps.metrics.probe_module_unknown.inc()
        return web.Response(status=400, text=f"unknown module {name!r}\n")
    if deps.probe_fn is None:
        return web.Response(status=503, text="this agent does not probe (provider role)\n")
    try:
        timeout_s = probe_timeout(
            request.headers.get("X-Prometheus-Scrape-Timeout-Seconds"),
            module,
            config.scrape_timeout_offset_s,
        )
    except ValueError as exc:
        return web.Response(status=400, text=f"{exc}\n")

    started = time.perf_counter()
    verdict: Verdict | None = None
    try:
        async with asyncio.timeout(timeout_s):
            report = await deps.probe_fn(target, module, timeout_s)
        outcome = report.result.outcome if report.result.outcome in OUTCOMES else "error"
        verdict = report.verdict
    except TimeoutError:
        outcome = "timeout"
    except ValueError as exc:
        return web.Response(status=400, text=f"bad target {target!r}: {exc}\n")
    except PlprobeError as exc:
        log.info("probe of %s (%s) could not run: %s", target, name, exc)
        outcome = "error"
    except Exception:  # a failed probe is a successful request (blackbox_exporter)
        log.exception("probe of %s (%s) failed unexpectedly", target, name)
        outcome = "error"
    duration = time.perf_counter() - started
    success = outcome == "ok" and not (verdict is not None and verdict.status == "fail")
    return await _expose(request, _probe_registry(success, duration, outcome, verdict))


# -- /-/reload -----------------------------------------------------------------------------


async def _reload(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    if deps.reload_fn is None:
        return web.Response(status=404, text="this agent does not reload its configuration\n")
    ok, message = await deps.reload_fn()
    return web.Response(status=200 if ok else 500, text=message.rstrip("\n") + "\n")


# -- app and server ------------------------------------------------------------------------


def build_app(deps: ApiDeps) -> web.Application:
    """The application; everything it serves is read from ``deps`` at request time."""
    app = web.Application(middlewares=[_bearer_auth])
    app[DEPS_KEY] = deps
    app.add_routes(
        [
            web.get("/metrics", _metrics),
            web.get("/healthz", _healthz),
            web.get("/healthz/ready", _ready),
            web.get("/v1/results", _results),
            web.get("/v1/evidence", _evidence),
            web.get("/v1/verdicts", _verdicts),
            web.get("/probe", _probe),
            web.post("/-/reload", _reload),
        ]
    )
    app.add_routes(_observation_routes(deps))
    return app


class ApiServer:
    """The app embedded in the daemon's loop: the daemon owns signals, we only listen.

    ``handler_cancellation=True``: a client that disconnects (a scraper past its timeout)
    cancels its handler, and with it the probe it asked for.
    """

    def __init__(
        self,
        app: web.Application,
        *,
        host: str = "0.0.0.0",
        port: int = DEFAULT_PORT,
        shutdown_timeout: float = 1.0,
    ) -> None:
        self.host = host
        self.port = port
        self._runner = web.AppRunner(
            app,
            handle_signals=False,
            shutdown_timeout=shutdown_timeout,
            handler_cancellation=True,
            access_log=None,
        )
        self._started = False

    async def start(self) -> list[tuple[str, int]]:
        """Listen; returns the bound (host, port) pairs (port 0 picks a free port)."""
        await self._runner.setup()
        self._started = True
        try:
            await web.TCPSite(self._runner, self.host, self.port).start()
        except OSError as exc:
            await self.stop()
            raise ConfigError(
                f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}", key="api"
            ) from exc
        return self.addresses

    @property
    def addresses(self) -> list[tuple[str, int]]:
        return [(str(a[0]), int(a[1])) for a in self._runner.addresses]

    async def stop(self) -> None:
        if self._started:
            self._started = False
            await self._runner.cleanup()

    async def __aenter__(self) -> ApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
