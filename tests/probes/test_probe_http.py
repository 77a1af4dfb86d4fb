"""HTTP probe against an aiohttp server on 127.0.0.1 (port 0)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from agent import wire
from agent.probes import http
from agent.probes.base import ProbeContext, ProbeTarget
from agent.results import PathRef

KEY = b"k" * 32
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def target(port: int, path: str = "/") -> ProbeTarget:
    ref = PathRef(id=f"c/az1/{port}", agent="c", name="svc.example", ip="127.0.0.1", port=port)
    return ProbeTarget(path=ref, http_path=path)


@pytest.fixture
def ctx() -> ProbeContext:
    return ProbeContext(agent_id="c", key=KEY, timeout_s=1.0)


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[int]]]:
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> int:
        app = web.Application()
        app.router.add_get("/{tail:.*}", handler)
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        return runner.addresses[0][1]

    yield start
    for r in runners:
        await r.cleanup()


async def test_a_200_is_ok_with_the_token_in_the_header_and_phase_timings(ctx, serve) -> None:
    seen: dict[str, str] = {}

    async def handler(request: web.Request) -> web.Response:
        seen["token"] = request.headers[wire.TOKEN_HEADER]
        seen["host"] = request.headers["Host"]
        return web.Response(text="hello")

    port = await serve(handler)
    result = await http.probe(target(port), ctx)
    assert result.outcome == "ok"
    assert result.detail["status"] == 200
    token, _ = wire.decode_token(wire.token_from_header(seen["token"]), KEY)
    assert token.probe_id_hex == result.probe_id
    assert seen["host"].startswith("svc.example")
    assert {"connect", "first_byte"} <= set(result.phases)


async def test_a_5xx_is_an_error_with_the_status(ctx, serve) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=503)

    port = await serve(handler)
    result = await http.probe(target(port), ctx)
    assert result.outcome == "error"
    assert result.detail["status"] == 503


async def test_a_404_still_proves_the_path_and_the_service(ctx, serve) -> None:
    async def handler(request: web.Request) -> web.Response:
        raise web.HTTPNotFound()

    port = await serve(handler)
    result = await http.probe(target(port, "/nope"), ctx)
    assert result.outcome == "ok" and result.detail["status"] == 404


async def test_a_closed_port_is_refused(ctx) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    result = await http.probe(target(port), ctx)
    assert result.outcome == "refused"
    assert result.detail["phase"] == "connect"


async def test_a_service_that_never_answers_times_out_at_first_byte(ctx, serve) -> None:
    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.Response()

    port = await serve(handler)
    ctx.timeout_s = 0.3
    t0 = time.perf_counter()
    result = await http.probe(target(port), ctx)
    assert time.perf_counter() - t0 < 1.0
    assert result.outcome == "timeout"
    assert result.detail["phase"] == "first_byte"


async def test_the_body_read_is_bounded(ctx, serve) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(body=b"x" * 1_000_000)

    port = await serve(handler)
    ctx.max_read = 1000
    result = await http.probe(target(port), ctx)
    assert result.outcome == "ok"
    assert 0 < result.detail["body_bytes"] <= 1000


async def test_the_round_session_is_used_and_left_open(ctx, serve) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    port = await serve(handler)
    session = http.make_session(limit=4)
    try:
        ctx.extras[http.SESSION_KEY] = session
        results = await asyncio.gather(*(http.probe(target(port), ctx) for _ in range(3)))
        assert not session.closed
    finally:
        await session.close()
    assert [r.outcome for r in results] == ["ok"] * 3
    assert len({r.probe_id for r in results}) == 3
