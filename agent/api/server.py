"""The agent's HTTP API (aiohttp): metrics, health, JSON state, and a blackbox-style ``/probe``.

    GET /                    the status page (agent.api.page): paths, verdicts, recent rounds
    GET /metrics             Prometheus exposition of the agent's registry (content negotiated)
    GET /healthz             liveness: 200 while the event loop answers
    GET /healthz/ready       readiness (also ``/healthz?ready=1``): 503 until the configuration
                             is loaded and the first round completed
    GET /v1/results          latest ProbeResults per path     {"results": [...]}
    GET /v1/evidence         latest PathEvidence per path     {"evidence": [...]}
    GET /v1/verdicts         latest Verdict per path          {"verdicts": [...]}
    GET /v1/observations     provider role: agent/observe/api.py's handler
    GET /probe?target=T&module=M
                             blackbox-exporter compatible: one probe, its own small answer
    POST /-/reload           re-read the configuration file (the daemon's reload path, the same
                             as SIGHUP): 200 on success, 500 with the error (old config kept);
                             a client that disconnects does not cancel a reload once started

``/v1/*`` takes ``?path=ID`` (repeatable) to filter, and needs ``Authorization: Bearer TOKEN``
when the configuration sets a token (401 with a JSON error otherwise; constant-time compare).
The status page ``/`` shows what ``/v1/*`` does, so it is guarded by the same token; a browser
cannot send a bearer header without script, so ``/`` also takes HTTP Basic with the token as
the password (the browser asks for it; the user name is ignored).

What changes at runtime lives in one holder, ``ApiDeps``: the daemon swaps its dicts (whole
objects, on the event loop) after each round and its ``config`` on reload; app state itself is
frozen at startup, so the app keeps only the holder.

``/probe`` follows blackbox_exporter (``agent.api.answer``: a failed probe is a *successful*
request whose body says ``probe_success 0``; only a bad request is an HTTP error); with
``handler_cancellation`` a scraper that gives up cancels its probe.

``/probe`` is the one endpoint on a hot path (a scraper asks once per target per interval): its
answer is rendered from text precomputed at import (``agent.api.answer.render_probe``), and
the daemon runs on uvloop (``agent.cli.run``). Every request, ``/probe`` included, goes
through aiohttp's router and middleware: a hand-written HTTP fast path below aiohttp was
measured against plain aiohttp on uvloop and removed — it saved ~0.1 ms of CPU per request,
bypassed the middleware, depended on aiohttp internals and broke on uvloop's transports
(docs/BENCHMARKS.md).

Modules, without a cycle: ``answer`` (the probe answer, a leaf) <- this module (the aiohttp
app and ``ApiServer``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import importlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import hdrs, web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from agent.api.answer import SCRAPE_TIMEOUT_HEADER, ProbeFn, ProbeModule, answer_probe
from agent.api.bounds import BoundedRequestHandler, ConnectionTable, HttpLimits, Refused
from agent.api.history import RoundHistory
from agent.api.page import PageData, page_headers, render_page
from agent.errors import ConfigError
from agent.logs import clip
from agent.metrics import Metrics
from agent.observe.store import ObservationStore
from agent.results import PROBE_KINDS, PathEvidence, ProbeResult, Verdict

__all__ = [
    "DEFAULT_PORT",
    "DEPS_KEY",
    "ApiConfig",
    "ApiDeps",
    "ApiServer",
    "build_app",
]

log = logging.getLogger(__name__)

DEFAULT_PORT = 9720


def _default_modules() -> dict[str, ProbeModule]:
    return {kind: ProbeModule(kind, kind) for kind in PROBE_KINDS}


@dataclass(frozen=True)
class ApiConfig:
    """The API's part of the configuration; replaced as a whole on reload."""

    host: str = "0.0.0.0"  # the API listens on :9720 (docs/CONFIGURATION.md)
    port: int = DEFAULT_PORT
    #: bearer token required on /v1/* (None: open)
    token: str | None = None
    modules: Mapping[str, ProbeModule] = field(default_factory=_default_modules)
    #: subtracted from the scraper's timeout so the answer arrives before it gives up
    scrape_timeout_offset_s: float = 0.5
    #: agent id reported by /v1/observations
    agent_id: str = ""


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
    #: the last rounds, for the status page (the client daemon records each round)
    history: RoundHistory = field(default_factory=RoundHistory)
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


def _token_matches(given: str, token: str) -> bool:
    return hmac.compare_digest(given.strip().encode(), token.encode())


def _page_authorized(header: str, token: str) -> bool:
    """``/``: the bearer token, or HTTP Basic with the token as the password."""
    scheme, _, given = header.partition(" ")
    if scheme.lower() == "bearer":
        return _token_matches(given, token)
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(given.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return False
    return _token_matches(decoded.partition(":")[2], token)


@web.middleware
async def _bearer_auth(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Require the configured token on /v1/*, /-/* and the page; /metrics, /probe stay open."""
    token = request.app[DEPS_KEY].config.token
    if not token:
        return await handler(request)
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    if request.path == "/":
        if not _page_authorized(header, token):
            return web.Response(
                status=401,
                text="this agent's page needs its API token (as the password)\n",
                headers={hdrs.WWW_AUTHENTICATE: 'Basic realm="plprobe", charset="UTF-8"'},
            )
        return await handler(request)
    guarded = request.path == "/v1" or request.path.startswith(("/v1/", "/-/"))
    if guarded:
        scheme, _, given = header.partition(" ")
        ok = scheme.lower() == "bearer" and _token_matches(given, token)
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


# -- / (the status page) -------------------------------------------------------------------

#: observations listed on a provider agent's page
_PAGE_OBSERVATIONS = 50


def page_data(deps: ApiDeps) -> PageData:
    """What the status page shows, read from the holder at request time."""
    observations: list[Any] = []
    counters: dict[str, int] = {}
    store = deps.observations
    if store is not None:
        appended = store.counters.appended
        recent, _ = store.tail(max(0, appended - _PAGE_OBSERVATIONS))
        observations = list(reversed(recent))
        counters = {"stored": len(store), "received": appended}
    return PageData(
        agent_id=deps.config.agent_id,
        role="provider" if store is not None else "client",
        ready=deps.ready,
        verdicts=deps.verdicts,
        evidence=deps.evidence,
        results=deps.results,
        rounds=deps.history.newest_first(),
        observations=observations,
        observation_counters=counters,
        started_at=deps.started_at,
    )


async def _page(request: web.Request) -> web.Response:
    """Rendered in a worker thread, like /metrics: ~50 ms with 1,000 paths would stall probes.

    ``page_data`` is read on the loop; the daemon replaces its dicts whole, never mutates them,
    so the thread renders a consistent snapshot.
    """
    body = await asyncio.to_thread(render_page, page_data(request.app[DEPS_KEY]))
    response = web.Response(body=body.encode(), headers=page_headers())
    response.enable_compression()
    return response


# -- /probe --------------------------------------------------------------------------------


async def _probe(request: web.Request) -> web.Response:
    """``/probe``: blackbox_exporter's contract (``agent.api.answer.answer_probe``)."""
    query = request.query
    status, content_type, body = await answer_probe(
        request.app[DEPS_KEY],
        query.get("target", ""),
        query.get("module", "tcp"),
        request.headers.get(SCRAPE_TIMEOUT_HEADER),
        ",".join(request.headers.getall(hdrs.ACCEPT, ())),
    )
    return web.Response(status=status, body=body, headers={hdrs.CONTENT_TYPE: content_type})


# -- /-/reload -----------------------------------------------------------------------------

#: reloads whose client went away: referenced until they finish (the loop keeps weak refs)
_RELOADS: set[asyncio.Future[tuple[bool, str]]] = set()
#: a reload message may quote the configuration file: bounded in the answer
_RELOAD_BODY_MAX = 2048


async def _reload(request: web.Request) -> web.Response:
    """200 with "configuration reloaded", or 500 saying why and that the old config runs."""
    deps = request.app[DEPS_KEY]
    if deps.reload_fn is None:
        return web.Response(status=404, text="this agent does not reload its configuration\n")
    # shielded: handler_cancellation must not cut a reload in half (schedules stopped, new
    # ones not started) because the client went away; the task is kept until it finishes
    task = asyncio.ensure_future(deps.reload_fn())
    _RELOADS.add(task)
    task.add_done_callback(_reload_done)
    try:
        ok, message = await asyncio.shield(task)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # the daemon's reload never raises; any other reload_fn may
        log.error("reload failed: %s", clip(repr(exc)))
        ok, message = False, f"reload failed, running configuration kept: {type(exc).__name__}"
    text = clip(message.rstrip("\n"), _RELOAD_BODY_MAX) + "\n"
    return web.Response(status=200 if ok else 500, text=text)


def _reload_done(task: asyncio.Future[tuple[bool, str]]) -> None:
    _RELOADS.discard(task)
    if not task.cancelled():
        task.exception()  # retrieved here (answered in _reload): never "never retrieved"


# -- app and server ------------------------------------------------------------------------


def build_app(
    deps: ApiDeps, *, client_max_size: int = HttpLimits.client_max_size
) -> web.Application:
    """The application; everything it serves is read from ``deps`` at request time."""
    app = web.Application(middlewares=[_bearer_auth], client_max_size=client_max_size)
    app[DEPS_KEY] = deps
    app.add_routes(
        [
            web.get("/", _page),
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


# -- server --------------------------------------------------------------------------------


class ApiServer:
    """The app embedded in the daemon's loop: the daemon owns signals, we only listen.

    ``handler_cancellation=True``: a client that disconnects (a scraper past its timeout)
    cancels its handler, and with it the probe it asked for.

    Every connection is bounded (``agent.api.bounds``): aiohttp's own limits from ``limits``
    and ours on top (head timeout and size, ``max_connections`` with shed-the-oldest-idle at
    accept). ``table.counters`` counts what the bounds cut.
    """

    def __init__(
        self,
        app: web.Application,
        *,
        host: str = "0.0.0.0",
        port: int = DEFAULT_PORT,
        shutdown_timeout: float = 1.0,
        limits: HttpLimits | None = None,
        trim: Callable[[], object] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.deps = app[DEPS_KEY]
        self.limits = limits or HttpLimits()
        self.table = ConnectionTable(self.limits.max_connections, trim=trim)
        self._runner = web.AppRunner(
            app,
            handle_signals=False,
            shutdown_timeout=shutdown_timeout,
            handler_cancellation=True,
            access_log=None,
            **self.limits.handler_args(),
        )
        self._server: asyncio.Server | None = None
        self._started = False

    def _protocol(self) -> asyncio.Protocol:
        """A fresh aiohttp connection handler (tracked by aiohttp for its own shutdown)."""
        server = self._runner.server
        if not self.table.admit():  # every slot busy with a request: refuse at accept
            return Refused()
        if server is None:  # start() sets the runner up before it listens
            raise RuntimeError("the API server is not set up")
        return BoundedRequestHandler.for_server(server, self.limits, self.table)

    async def start(self) -> list[tuple[str, int]]:
        """Listen; returns the bound (host, port) pairs (port 0 picks a free port)."""
        await self._runner.setup()
        self._started = True
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                self._protocol,
                self.host or None,
                self.port,
                backlog=self.limits.backlog,
                reuse_address=True,
            )
        except OSError as exc:
            await self.stop()
            raise ConfigError(
                f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}", key="api"
            ) from exc
        return self.addresses

    @property
    def addresses(self) -> list[tuple[str, int]]:
        if self._server is None:
            return []
        return [(str(s.getsockname()[0]), int(s.getsockname()[1])) for s in self._server.sockets]

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        if self._server is not None:
            self._server.close()
            self._server = None
        await self._runner.cleanup()

    async def __aenter__(self) -> ApiServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
