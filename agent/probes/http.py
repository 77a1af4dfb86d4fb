"""HTTP probe (aiohttp): a GET to the endpoint ENI IP with the token in ``X-Plprobe-Token``.

It tests what users actually run over the endpoint: the service answers, with which status,
how fast. The token header lets the provider's sniffer (or the service's own log) recognise the
request although the NLB rewrites the source. Phase timings come from aiohttp's TraceConfig:
``dns`` (only when the target is a name), ``connect`` (TCP connect, including dns),
``first_byte`` (request sent -> response headers) and ``duration_s`` over everything.

The caller owns the ``ClientSession`` (``make_session``, stored in ``ctx.extras[SESSION_KEY]``):
one per round for ``check``, one per daemon for ``plprobe run``
(``agent.diagnose.rounds.SharedProbes``;
a session per round cost the daemon more CPU than the probes). Either way its connector closes
every connection after use (``force_close``), so every probe opens a new TCP connection: a
reused connection would not probe the network path again. Without a session in the context
the probe makes a private one (tests, one-off calls).

Outcome: ``ok`` for any HTTP response below 500 (the path and the service work; a 404 for the
probe's URL is still an answer), ``error`` for 5xx, otherwise the connect classification of
``agent.probes.tcp.classify_oserror``. The body is read up to ``ctx.max_read`` bytes, never more.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import aiohttp

from agent import wire
from agent.probes.base import ProbeContext, ProbeTarget
from agent.probes.tcp import (
    classify_oserror,
    describe_oserror,
    make_token,
    new_result,
    note_failure,
)
from agent.results import ProbeResult, hostport

__all__ = ["SESSION_KEY", "make_session", "probe"]

#: where the runner puts the round's ClientSession in ``ProbeContext.extras``
SESSION_KEY = "http_session"


def _mark(name: str) -> Any:
    async def handler(
        session: aiohttp.ClientSession, trace_ctx: SimpleNamespace, params: object
    ) -> None:
        marks = trace_ctx.trace_request_ctx
        if isinstance(marks, dict):
            marks.setdefault(name, time.perf_counter())

    return handler


def _trace_config() -> aiohttp.TraceConfig:
    trace = aiohttp.TraceConfig()
    trace.on_dns_resolvehost_start.append(_mark("dns_start"))
    trace.on_dns_resolvehost_end.append(_mark("dns_end"))
    trace.on_connection_create_start.append(_mark("connect_start"))
    trace.on_connection_create_end.append(_mark("connect_end"))
    trace.on_request_headers_sent.append(_mark("sent"))
    trace.on_request_end.append(_mark("headers"))
    return trace


def make_session(*, limit: int = 64) -> aiohttp.ClientSession:
    """A session for probes: a fresh connection per request, no cookies, no env, no DNS cache."""
    connector = aiohttp.TCPConnector(limit=limit, force_close=True, use_dns_cache=False)
    return aiohttp.ClientSession(
        connector=connector,
        trace_configs=[_trace_config()],
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=None),  # the probe's own deadline rules
    )


def _phases(marks: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    if "dns_start" in marks and "dns_end" in marks:
        out["dns"] = marks["dns_end"] - marks["dns_start"]
    if "connect_start" in marks and "connect_end" in marks:
        out["connect"] = marks["connect_end"] - marks["connect_start"]
    if "sent" in marks and "headers" in marks:
        out["first_byte"] = marks["headers"] - marks["sent"]
    return out


def _url(target: ProbeTarget) -> str:
    return f"http://{hostport(target.host, target.port)}{target.http_path}"


async def probe(target: ProbeTarget, ctx: ProbeContext) -> ProbeResult:
    loop = asyncio.get_running_loop()
    started = ctx.now()
    t0 = time.perf_counter()
    token, payload = make_token(target, ctx)
    result = new_result("http", target, token, started)
    headers = {wire.TOKEN_HEADER: wire.token_to_header(payload), "User-Agent": "plprobe"}
    host = target.http_host or (target.path.name if target.path.ip else None)
    if host:
        headers["Host"] = host if target.port == 80 else f"{host}:{target.port}"
    session = ctx.extras.get(SESSION_KEY)
    own = not isinstance(session, aiohttp.ClientSession)
    if own:
        session = make_session(limit=1)
    assert isinstance(session, aiohttp.ClientSession)
    marks: dict[str, float] = {}
    deadline = loop.time() + ctx.timeout_s
    try:
        async with (
            asyncio.timeout_at(deadline),
            session.get(
                _url(target), headers=headers, allow_redirects=False, trace_request_ctx=marks
            ) as resp,
        ):
            result.detail["status"] = resp.status
            body = await resp.content.read(ctx.max_read)
            result.detail["body_bytes"] = len(body)
            if resp.status >= 500:
                result.outcome = "error"
                result.error = f"HTTP {resp.status} {resp.reason or ''}".rstrip()
    except TimeoutError:
        phase = "connect" if "connect_end" not in marks else "first_byte"
        if "headers" in marks:
            phase = "body"
        result.outcome = "timeout"
        result.detail["phase"] = phase
        result.error = f"no answer to {phase} within {ctx.timeout_s:g}s"
    except aiohttp.ClientConnectorError as exc:
        note_failure(result, exc.os_error, "connect")
        result.error = f"connect: {describe_oserror(exc.os_error)}"
    except (aiohttp.ClientError, OSError) as exc:
        outcome, icmp = classify_oserror(exc) if isinstance(exc, OSError) else ("error", None)
        result.outcome = outcome
        result.icmp = icmp
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        if own:
            await session.close()
        result.phases.update(_phases(marks))
        if "connect" not in result.phases and "connect_start" in marks:
            result.phases["connect"] = time.perf_counter() - marks["connect_start"]
        result.duration_s = time.perf_counter() - t0
    return result
