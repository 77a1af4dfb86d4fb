"""One probe round: targets from the config, probes with bounded concurrency, provider evidence,
correlation. The daemon calls ``run_round`` every interval; ``plprobe probe`` calls it once.

A round, in order:

1. **DNS.** Every configured name is resolved (regional and private against all expected ENI
   IPs, each zonal name against its AZ's IP). DNS probes run when ``dns`` is in ``probes`` or
   when the ENI IPs must be discovered (no ``expected_ips``); their results are copied onto
   every path they speak for (regional/private: all AZs; zonal: its AZ).
2. **Paths.** One per (endpoint ENI/AZ, port), id ``<agent_id>/<az_id>/<port>``. The ENI IP of
   an AZ is ``expected_ips[az]`` when configured, else what the AZ's zonal name resolves to.
   Regional addresses that no zonal name explains become paths labelled by the IP itself
   (``<agent_id>/<ip>/<port>``). A name that does not resolve and leaves an AZ without an IP
   still yields a path (``<agent_id>/<az>/<port>``, or ``<agent_id>/<name>/<port>`` for a
   regional-only endpoint) carrying the ``dns_error``.
3. **Connect probes** (syn, tcp, http; http is skipped on responder ports, which do not speak
   HTTP) under one semaphore (``concurrency``), each attempt inside ``asyncio.timeout``; a
   timeout, unreachable or error is retried ``retries`` times with a new token (all probe ids
   are kept in ``detail["probe_ids"]``), a refusal is final. The syn engine retries itself.
   CAP_NET_RAW is checked once per round (``raw_allowed``); without it, without the syn
   module, or for an IPv6 ENI address (the SYN engine speaks IPv4 only), ``syn`` runs the tcp
   prober and says so in ``ProbeResult.fallback``.
4. **Provider evidence.** As deployed, through the endpoint: when no ``provider_url`` is
   configured and an endpoint has ``responder_ports``, ``EndpointEvidenceSource``
   (``agent.diagnose.evidence``) asks the provider fleet on the responder port of that
   endpoint's ENIs; the answer also carries the provider's sharing level, coverage and
   findings (``RoundResult.provider_evidence``). Otherwise, after ``provider_delay`` (sniffer
   lag), ``GET /v1/observations?since=``
   (``since`` = round start minus ``correlation_window``: the provider filters by its own
   clock, and the window is what absorbs the skew between the two; ``agent=`` this agent, so
   a provider returns only this client's observations) from every ``provider_url`` with a
   timeout, or from the ``provider`` passed in (the lab
   passes one). A failure makes ``seen_at_target`` unknown with the reason; if only some
   providers answered, a "no" becomes "unknown" (the silent one may have seen it).
5. **Correlation** (``agent.diagnose.correlate``).

Only here are prober exceptions caught: a ``ProbeError`` (or a bug) becomes an ``error``
result for that probe, never a failed round.

**Per round or per daemon.** A one-off round (``check``, ``probe``) opens its own aiohttp
session and SYN engine and closes them at the end. The daemon passes ``shared``
(``SharedProbes``), which keeps both for the process's lifetime: the SYN engine's sockets and
filters are made once and replaced only when a socket breaks or the key changes; the
session's connector still opens a NEW connection for every http probe (``force_close``), so
each probe exercises connection setup, as a per-round session did.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from agent.config import ClientConfig, PathConfig
from agent.diagnose.correlate import correlate
from agent.diagnose.evidence import EndpointEvidenceSource, ProviderEvidence, targets_from_paths
from agent.errors import PlprobeError, ProbeError
from agent.probes import get_prober
from agent.probes.base import ProbeContext, ProbeTarget
from agent.probes.dns import MEMO_KEY as DNS_MEMO_KEY
from agent.results import Observation, PathEvidence, PathRef, ProbeResult, path_id

if TYPE_CHECKING:  # aiohttp is imported where a session is made: not every round needs it
    import aiohttp

__all__ = [
    "HttpObservationSource",
    "ObservationSource",
    "RoundResult",
    "SharedProbes",
    "build_dns_targets",
    "raw_allowed",
    "run_probe",
    "run_round",
]

log = logging.getLogger(__name__)

#: slack on top of a prober's own deadline before the runner cuts it off
_GRACE_S = 0.5
_KIND_ORDER = {"dns": 0, "syn": 1, "tcp": 2, "http": 3}
_FINAL = frozenset({"ok", "refused", "dns_error"})
_SYN_FALLBACK = "syn: no CAP_NET_RAW, used tcp"
_SYN_V6_FALLBACK = "syn: IPv4 only, used tcp for an IPv6 address"


class ObservationSource(Protocol):
    """Where provider observations come from (HTTP API, the lab, a test)."""

    async def fetch(self, since: float) -> list[Observation]:
        """Observations seen at or after ``since``; raise ``PlprobeError`` when unavailable."""
        ...


@dataclass
class RoundResult:
    """Everything one round produced."""

    evidence: list[PathEvidence]
    results: list[ProbeResult]
    observations: list[Observation] | None
    provider_error: str | None
    started_at: float
    finished_at: float
    insecure: bool = False
    raw_allowed: bool = False
    paths: list[PathRef] = field(default_factory=list)
    #: path id -> the ``paths[]`` entry it came from (a round may cover several entries)
    path_configs: dict[str, PathConfig] = field(default_factory=dict)
    #: where the provider evidence came from, its level, coverage, findings, cost
    provider_evidence: ProviderEvidence | None = None
    #: path id -> responder ports of its endpoint (to compare ports when the channel is cut)
    responder_ports: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def all_ok(self) -> bool:
        return bool(self.evidence) and all(ev.outcome == "ok" for ev in self.evidence)

    def to_json(self) -> dict[str, Any]:
        return {
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "insecure": self.insecure,
            "raw_allowed": self.raw_allowed,
            "provider_error": self.provider_error,
            "provider_evidence": (
                self.provider_evidence.to_json() if self.provider_evidence is not None else None
            ),
            "paths": [ev.to_json() for ev in self.evidence],
        }


def raw_allowed() -> bool:
    """Can this process open a raw socket (CAP_NET_RAW)? Checked once per round."""
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
    except OSError:
        return False
    sock.close()
    return True


# ------------------------------------------------------------------------------ provider


class HttpObservationSource:
    """``GET <url>/v1/observations?since=`` from each provider agent, merged."""

    MAX_PAGES = 20

    def __init__(
        self,
        urls: Sequence[str],
        *,
        timeout_s: float = 3.0,
        token: str | None = None,
        session: aiohttp.ClientSession | None = None,
        agent: str | None = None,
    ) -> None:
        self.urls = [u if u.endswith("/v1/observations") else f"{u}/v1/observations" for u in urls]
        self.timeout_s = timeout_s
        self.token = token
        self.session = session
        #: ask only for this client agent's observations (``?agent=``); None: all
        self.agent = agent
        #: urls that failed in the last fetch, with the reason (partial evidence)
        self.failures: dict[str, str] = {}

    async def _one(
        self, session: aiohttp.ClientSession, url: str, since: float
    ) -> list[Observation]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        out: list[Observation] = []
        cursor = since
        for _ in range(self.MAX_PAGES):
            params = {"since": f"{cursor:.6f}"}
            if self.agent:
                params["agent"] = self.agent
            async with (
                asyncio.timeout(self.timeout_s),
                session.get(url, params=params, headers=headers) as resp,
            ):
                if resp.status != 200:
                    raise ProbeError(f"{url}: HTTP {resp.status}")
                body = await resp.json(content_type=None)
            items = body.get("observations") if isinstance(body, dict) else body
            if not isinstance(items, list):
                raise ProbeError(f"{url}: no observations list in the answer")
            try:
                out.extend(Observation.from_json(o) for o in items)
            except (TypeError, ValueError) as exc:
                raise ProbeError(f"{url}: bad observation: {exc}") from exc
            nxt = body.get("next_since") if isinstance(body, dict) else None
            if (
                not (isinstance(body, dict) and body.get("truncated"))
                or not isinstance(nxt, int | float)
                or nxt <= cursor
            ):
                return out
            cursor = float(nxt)
        return out

    async def fetch(self, since: float) -> list[Observation]:
        import aiohttp

        own = self.session is None
        session = self.session or aiohttp.ClientSession(trust_env=False)
        self.failures = {}
        try:
            answers = await asyncio.gather(
                *(self._one(session, url, since) for url in self.urls), return_exceptions=True
            )
        finally:
            if own:
                await session.close()
        out: list[Observation] = []
        for url, answer in zip(self.urls, answers, strict=True):
            if isinstance(answer, BaseException):
                if isinstance(answer, asyncio.CancelledError):
                    raise answer
                reason = (
                    f"no answer within {self.timeout_s:g}s"
                    if isinstance(answer, TimeoutError)
                    else str(answer) or type(answer).__name__
                )
                self.failures[url] = reason if url in reason else f"{url}: {reason}"
            else:
                out.extend(answer)
        if self.failures and len(self.failures) == len(self.urls):
            raise ProbeError("; ".join(self.failures.values()))
        return out


# ------------------------------------------------------------------------------ targets


@dataclass
class _DnsName:
    kind: str  # regional | zonal | private
    name: str
    az: str | None
    expected: tuple[str, ...]


def _dns_names(agent_id: str, p: PathConfig) -> list[_DnsName]:
    all_ips = tuple(sorted(set(p.expected_ips.values())))
    out: list[_DnsName] = []
    if p.regional:
        out.append(_DnsName("regional", p.regional, None, all_ips))
    for az, name in sorted(p.zonal.items()):
        ip = p.expected_ips.get(az)
        out.append(_DnsName("zonal", name, az, (ip,) if ip else ()))
    if p.private:
        out.append(_DnsName("private", p.private, None, all_ips))
    return out


def build_dns_targets(agent_id: str, p: PathConfig) -> list[tuple[_DnsName, ProbeTarget]]:
    """One DNS target per configured name (path id ``<agent>/dns/<kind>[/<az>]``, internal)."""
    out = []
    for n in _dns_names(agent_id, p):
        pid = f"{agent_id}/dns/{n.kind}" + (f"/{n.az}" if n.az else "")
        ref = PathRef(id=pid, agent=agent_id, name=n.name, ip=None, port=0, az_id=n.az)
        out.append((n, ProbeTarget(path=ref, expected_ips=n.expected)))
    return out


@dataclass
class _Path:
    ref: PathRef
    config: PathConfig
    dns: list[ProbeResult]


def _plan_paths(
    agent_id: str, p: PathConfig, dns: list[tuple[_DnsName, ProbeResult]]
) -> list[_Path]:
    """(AZ or IP label, ENI IP or None) per endpoint, then one path per port."""
    zonal_ips: dict[str, str | None] = {}
    regional: list[str] = []
    for n, r in dns:
        if n.kind == "zonal" and n.az:
            zonal_ips[n.az] = r.addresses[0] if r.addresses else None
        elif r.addresses:
            regional.extend(a for a in r.addresses if a not in regional)
    slots: dict[str, tuple[str | None, str | None]] = {}  # label -> (az_id, ip)
    az: str | None  # the loops below bind a slot's parts, either of which may be missing
    ip: str | None
    if p.expected_ips:
        for az, ip in sorted(p.expected_ips.items()):
            slots[az] = (az, ip)
    else:
        for az, ip in sorted(zonal_ips.items()):
            slots[az] = (az, ip)
        known = {ip for _, ip in slots.values() if ip}
        for ip in sorted(set(regional) - known, key=_ip_order):
            slots[ip] = (None, ip)
        if not slots:
            slots[p.name] = (None, None)  # nothing resolved: a path to carry the dns_error

    display = p.regional or p.private or next(iter(sorted(p.zonal.values())), None)
    out: list[_Path] = []
    for label, (az, ip) in slots.items():
        name = p.zonal.get(az, display) if az else display
        for port in p.ports:
            pid = path_id(agent_id, label, port)
            ref = PathRef(id=pid, agent=agent_id, name=name or ip or "", ip=ip, port=port, az_id=az)
            mine = [
                dataclasses.replace(r, path=pid, port=port, detail=dict(r.detail))
                for n, r in dns
                if n.kind != "zonal" or n.az == az
            ]
            out.append(_Path(ref, p, mine))
    return out


# ------------------------------------------------------------------------------ running


def _ip_order(text: str) -> tuple[int, ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """Sort key for addresses of both families (IPv4 first; they do not compare directly)."""
    ip = ipaddress.ip_address(text)
    return ip.version, ip


def _is_v6(text: str | None) -> bool:
    try:
        return text is not None and ipaddress.ip_address(text).version == 6
    except ValueError:
        return False


def _error_result(target: ProbeTarget, kind: str, message: str, started: float) -> ProbeResult:
    return ProbeResult(
        path=target.path.id,
        probe=kind,
        outcome="error",
        started_at=started,
        duration_s=time.time() - started,
        target_ip=target.path.ip,
        port=target.port or None,
        error=message,
    )


async def _attempt(
    prober: Callable[[ProbeTarget, ProbeContext], Awaitable[ProbeResult]],
    kind: str,
    target: ProbeTarget,
    ctx: ProbeContext,
    budget_s: float,
) -> ProbeResult:
    started = time.time()
    try:
        async with asyncio.timeout(budget_s):
            return await prober(target, ctx)
    except TimeoutError:
        result = _error_result(target, kind, "", started)
        result.outcome = "timeout"
        result.error = f"the {kind} prober overran its {budget_s:g}s budget"
        return result
    except PlprobeError as exc:
        return _error_result(target, kind, f"{type(exc).__name__}: {exc}", started)
    except Exception as exc:  # a bug in a prober must not sink the round; log it loudly
        log.exception("%s prober failed on %s", kind, target.path.id)
        return _error_result(target, kind, f"internal error: {type(exc).__name__}: {exc}", started)


async def run_probe(
    kind: str, target: ProbeTarget, ctx: ProbeContext, sem: asyncio.Semaphore, raw: bool
) -> ProbeResult:
    """One probe of ``target`` with retries, under ``sem``; never raises for a failed probe.

    Public because the daemon's ``/probe`` runs single probes through the same path as a
    round (same fallbacks from syn to tcp, same retry rule, same result fields).
    """
    fallback: str | None = None
    prober = get_prober(kind)
    if kind == "syn" and (prober is None or not raw):
        fallback = _SYN_FALLBACK if prober is not None else "syn: prober unavailable, used tcp"
        prober = get_prober("tcp")
    elif kind == "syn" and _is_v6(target.path.ip):
        fallback = _SYN_V6_FALLBACK
        prober = get_prober("tcp")
    assert prober is not None
    engine_retries = kind == "syn" and fallback is None
    attempts = 1 if engine_retries else 1 + max(ctx.retries, 0)
    budget = ctx.timeout_s * (1 + ctx.retries if engine_retries else 1) + _GRACE_S
    ids: list[str] = []
    result: ProbeResult | None = None
    tries = 0
    async with sem:
        while tries < attempts:
            tries += 1
            result = await _attempt(prober, kind, target, ctx, budget)
            if result.probe_id:
                ids.append(result.probe_id)
            if result.outcome in _FINAL:
                break
    assert result is not None
    result.path = target.path.id
    result.probe = kind
    if fallback:
        result.fallback = fallback
    if not engine_retries:
        result.detail["attempts"] = tries
    if len(ids) > 1:
        result.detail["probe_ids"] = ids
    return result


async def _dns_round(
    config: ClientConfig, ctx_for: Callable[[PathConfig], ProbeContext], sem: asyncio.Semaphore
) -> list[list[tuple[_DnsName, ProbeResult]]]:
    """The DNS results of every ``paths[]`` entry, one probe per distinct target.

    Entries that share names (one endpoint configured once per port, a round batching many
    endpoints) share the probe: the same name, kind, AZ, expected addresses and timeout give
    the same ``<agent>/dns/...`` result, so it is probed once and handed to each entry (the
    planner copies results per path). Why: with 1,000 such entries, 2,000 probe tasks per
    round cost more than the resolutions they repeated.
    """
    dns = get_prober("dns")
    assert dns is not None
    shared: dict[tuple[object, ...], asyncio.Future[ProbeResult]] = {}

    async def run(t: ProbeTarget, ctx: ProbeContext) -> ProbeResult:
        async with sem:
            return await _attempt(dns, "dns", t, ctx, ctx.timeout_s + _GRACE_S)

    plans: list[list[tuple[_DnsName, asyncio.Future[ProbeResult]]]] = []
    for p in config.paths:
        if "dns" not in p.probes and p.expected_ips:
            plans.append([])
            continue
        ctx = ctx_for(p)
        plan = []
        for n, t in build_dns_targets(config.agent_id, p):
            key = (n.kind, n.name, n.az, n.expected, ctx.timeout_s, ctx.retries)
            if key not in shared:
                shared[key] = asyncio.ensure_future(run(t, ctx))
            plan.append((n, shared[key]))
        plans.append(plan)
    if shared:
        await asyncio.gather(*shared.values())
    return [[(n, fut.result()) for n, fut in plan] for plan in plans]


def _read_token(config: ClientConfig) -> str | None:
    if not config.provider_token_file:
        return None
    try:
        return config.resolve_file(config.provider_token_file).read_text().strip() or None
    except OSError as exc:
        raise ProbeError(f"provider_token_file: {exc}") from exc


async def run_round(
    config: ClientConfig,
    *,
    key: bytes,
    provider: ObservationSource | None = None,
    check_raw: Callable[[], bool] = raw_allowed,
    semaphore: asyncio.Semaphore | None = None,
    shared: SharedProbes | None = None,
) -> RoundResult:
    """Run one round of probes for every configured path and correlate with the provider.

    ``semaphore`` bounds probes in flight across rounds that run at once (the daemon runs
    one round per schedule — the endpoints that share an interval — and shares one);
    default: ``concurrency``.
    ``shared``: the daemon's long-lived session and SYN engine (module docstring); without
    it the round opens and closes its own.
    """
    started = time.time()
    raw = check_raw() if any("syn" in p.probes for p in config.paths) else False
    base = ProbeContext(
        agent_id=config.agent_id,
        key=key,
        insecure=config.insecure,
        timeout_s=config.timeout,
        retries=config.retries,
        raw_allowed=raw,
    )
    base.extras[DNS_MEMO_KEY] = {}  # one resolution per name per round (agent.probes.dns)
    contexts: dict[int, ProbeContext] = {}

    def ctx_for(p: PathConfig) -> ProbeContext:
        if id(p) not in contexts:
            s = config.for_path(p)
            contexts[id(p)] = dataclasses.replace(base, timeout_s=s.timeout, retries=s.retries)
        return contexts[id(p)]

    sem = semaphore or asyncio.Semaphore(config.concurrency)
    async with contextlib.AsyncExitStack() as stack:
        if any("http" in p.probes for p in config.paths):
            from agent.probes.http import SESSION_KEY, make_session

            if shared is not None:
                session = shared.http_session(limit=config.concurrency)
            else:
                session = make_session(limit=config.concurrency)
                stack.push_async_callback(session.close)
            base.extras[SESSION_KEY] = session
        if raw:
            if shared is not None:
                engine = await shared.syn_engine(key, insecure=config.insecure)
                if engine is not None:
                    base.extras["syn_engine"] = engine
                raw = engine is not None
            else:
                raw = await _open_syn_engine(base, stack)
            base.raw_allowed = raw
            for c in contexts.values():
                c.raw_allowed = raw

        dns = await _dns_round(config, ctx_for, sem)
        paths = [
            path
            for p, d in zip(config.paths, dns, strict=True)
            for path in _plan_paths(config.agent_id, p, d)
        ]
        jobs: list[Awaitable[ProbeResult]] = []
        for path in paths:
            if path.ref.ip is None:
                continue
            ctx = ctx_for(path.config)
            ctx.raw_allowed = raw
            responder = path.ref.port in path.config.responder_ports
            target = ProbeTarget(
                path=path.ref,
                responder=responder,
                http_path=path.config.http_path,
                http_host=path.config.http_host,
            )
            for kind in path.config.probes:
                if kind == "dns" or (kind == "http" and responder):
                    continue
                jobs.append(run_probe(kind, target, ctx, sem, raw))
        connect_results = list(await asyncio.gather(*jobs))

    results = [r for path in paths for r in path.dns] + connect_results
    order = {path.ref.id: i for i, path in enumerate(paths)}
    results.sort(key=lambda r: (order.get(r.path, len(order)), _KIND_ORDER.get(r.probe, 9)))

    if provider is None and not _configured_urls(config):
        targets = targets_from_paths(
            (path.config.name, path.ref, path.config.responder_ports) for path in paths
        )
        if targets:
            provider = EndpointEvidenceSource(
                targets,
                agent_id=config.agent_id,
                key=key,
                insecure=config.insecure,
                timeout_s=max(config.timeout, 1.0) + 2.0,
            )
    observations, provider_error, partial = await _fetch_observations(
        config,
        provider,
        since=started - config.correlation_window,
        # 0: nothing was sent (no ENI address), so no evidence is expected and nothing waited
        last_sent=max((r.started_at + r.duration_s for r in connect_results), default=0.0),
    )
    evidence_meta = getattr(provider, "evidence", None)
    if not isinstance(evidence_meta, ProviderEvidence):
        if provider is None:
            kind = "provider_api" if _configured_urls(config) else "none"
        else:
            kind = "provider_api" if isinstance(provider, HttpObservationSource) else "injected"
        evidence_meta = ProviderEvidence(source=kind, error=provider_error or partial or "")
    window = config.correlation_window
    evidence = correlate(results, observations, window_s=window, provider_error=provider_error)
    if partial:
        for ev in evidence:
            if ev.seen_at_target == "no":
                ev.seen_at_target = "unknown"
                ev.provider_error = partial
    return RoundResult(
        evidence=evidence,
        results=results,
        observations=observations,
        provider_error=provider_error or partial,
        started_at=started,
        finished_at=time.time(),
        insecure=config.insecure,
        raw_allowed=raw,
        paths=[path.ref for path in paths],
        path_configs={path.ref.id: path.config for path in paths},
        provider_evidence=evidence_meta,
        responder_ports={p.ref.id: tuple(p.config.responder_ports) for p in paths},
    )


async def _open_syn_engine(ctx: ProbeContext, stack: contextlib.AsyncExitStack) -> bool:
    """One SynEngine for the round (shared by all syn probes); False when it cannot open."""
    try:
        from agent.probes import syn
    except ImportError:
        return False
    try:
        engine = syn.SynEngine(tagger=syn.tagger_for(ctx), templates=await syn.load_templates())
        engine.open()
    except PlprobeError as exc:
        log.info("syn engine unavailable, syn probes fall back to tcp: %s", exc)
        return False
    stack.callback(engine.close)
    ctx.extras["syn_engine"] = engine
    return True


class SharedProbes:
    """Probe resources a daemon keeps across rounds: one aiohttp session, one SYN engine.

    Why: building them per round was most of an idle daemon's CPU (scapy templates, raw
    socket setup and BPF attach, a session with its connector and trace config per round).
    What stays per probe is what a probe must exercise: a new TCP connection (the session's
    connector uses ``force_close``) and a fresh SYN with a new tagged ISN.

    The engine is opened on first use and handed out while ``healthy``; a broken one (a
    socket closed or failing under it) is closed and replaced at the next round, and a failed
    open is retried at the next round (that round's syn probes fall back to tcp and say so).
    A different key (reload) replaces the engine too, so its SYN tags follow the key.
    ``close()`` (daemon stop or reload) closes both.
    """

    def __init__(self, *, socket_factory: Any = None) -> None:
        self._factory = socket_factory
        self._session: aiohttp.ClientSession | None = None
        self._engine: Any = None  # agent.probes.syn.SynEngine (lazy: raw sockets only)
        self._engine_key: bytes | None = None
        self._lock = asyncio.Lock()
        #: engines opened so far (1 in a healthy daemon; tests and logs read it)
        self.engine_opens = 0

    def http_session(self, *, limit: int = 64) -> aiohttp.ClientSession:
        """The daemon's session (fresh connection per request); made on first use."""
        if self._session is None or self._session.closed:
            from agent.probes.http import make_session

            self._session = make_session(limit=limit)
        return self._session

    async def syn_engine(self, key: bytes, *, insecure: bool = False) -> Any:
        """An open, healthy SynEngine for ``key``, or None when raw probing is unavailable."""
        async with self._lock:
            engine = self._engine
            if engine is not None and (not engine.healthy or self._engine_key != key):
                if not engine.healthy:
                    log.warning(
                        "syn engine unusable (%s): opening a new one",
                        engine.failure or "sockets closed",
                    )
                engine.close()
                self._engine = engine = None
            if engine is None:
                engine = await self._open(key, insecure)
                if engine is None:
                    return None
            engine.forget_routes()
            return engine

    async def _open(self, key: bytes, insecure: bool) -> Any:
        try:
            from agent.probes import syn
        except ImportError:
            return None
        ctx = ProbeContext(agent_id="", key=key, insecure=insecure)
        extra = {"socket_factory": self._factory} if self._factory is not None else {}
        try:
            templates = await syn.load_templates()
            engine = syn.SynEngine(tagger=syn.tagger_for(ctx), templates=templates, **extra)
            engine.open()
        except PlprobeError as exc:
            log.info("syn engine unavailable, syn probes fall back to tcp: %s", exc)
            return None
        self._engine, self._engine_key = engine, key
        self.engine_opens += 1
        return engine

    async def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            engine.close()
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()


def _client_errors() -> tuple[type[Exception], ...]:
    """aiohttp's client errors, once aiohttp is loaded (before that nothing can raise them)."""
    import sys

    aiohttp = sys.modules.get("aiohttp")
    return (aiohttp.ClientError,) if aiohttp is not None else ()


def _configured_urls(config: ClientConfig) -> list[str]:
    urls: list[str] = []
    for p in config.paths:
        urls.extend(u for u in config.for_path(p).provider_urls if u not in urls)
    return urls


async def _fetch_observations(
    config: ClientConfig,
    provider: ObservationSource | None,
    *,
    since: float,
    last_sent: float | None = None,
) -> tuple[list[Observation] | None, str | None, str | None]:
    """(observations or None, why there are none, why they may be incomplete).

    ``provider_delay`` is the sniffer's lag after the round's last probe (``last_sent``: the
    latest end of a connect probe, wall clock), not a fixed pause: what has already passed
    since then is not waited again, and a round that sent no probe (``last_sent`` 0) does not
    wait at all. None (callers outside a round): the whole delay.
    """
    if provider is None:
        urls = _configured_urls(config)
        if not urls:
            return (
                None,
                "no provider_url and no responder port configured: provider evidence unavailable",
                None,
            )
        try:
            token = _read_token(config)
        except ProbeError as exc:
            return None, str(exc), None
        provider = HttpObservationSource(
            urls, timeout_s=max(config.timeout, 1.0), token=token, agent=config.agent_id
        )
    if config.provider_delay:
        if last_sent is None:
            await asyncio.sleep(config.provider_delay)
        elif (wait := config.provider_delay - (time.time() - last_sent)) > 0:
            await asyncio.sleep(wait)
    transport_errors: tuple[type[Exception], ...] = (
        *_client_errors(),
        OSError,
        TimeoutError,
        ValueError,
    )
    try:
        observations = await provider.fetch(since)
    except PlprobeError as exc:
        return None, f"provider observations unavailable: {exc}", None
    except transport_errors as exc:
        return None, f"provider observations unavailable: {type(exc).__name__}: {exc}", None
    failures = getattr(provider, "failures", None)
    partial = None
    if isinstance(failures, dict) and failures:
        partial = "some providers did not answer: " + "; ".join(failures.values())
    return observations, None, partial
