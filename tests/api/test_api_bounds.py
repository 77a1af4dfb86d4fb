"""Every API connection is bounded (agent/api/bounds.py): slow, idle, huge and malformed
requests are cut quickly and quietly, and a flood of connections cannot lock out a scraper.

Real ``ApiServer`` on 127.0.0.1 port 0, spoken to over raw sockets (the abuse is in the bytes).
Every connection is aiohttp's from the first byte (there is no hand-written fast path).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from prometheus_client import CollectorRegistry

from agent.api.bounds import HttpLimits
from agent.api.server import ApiDeps, ApiServer, build_app
from agent.metrics import make_metrics

FAST = HttpLimits(head_timeout_s=1.0, keepalive_timeout_s=1.0, max_connections=20)
#: recent aiohttp also arms keepalive_timeout at connect; 30 s shows our head timer alone
HEAD_ONLY = HttpLimits(head_timeout_s=1.0, keepalive_timeout_s=30.0, max_connections=20)
Start = Callable[..., Awaitable[ApiServer]]


@pytest.fixture
async def start() -> AsyncIterator[Start]:
    servers: list[ApiServer] = []

    async def make(limits: HttpLimits = FAST) -> ApiServer:
        reg = CollectorRegistry()
        deps = ApiDeps(registry=reg, metrics=make_metrics(reg), config_loaded=True)
        server = ApiServer(build_app(deps), host="127.0.0.1", port=0, limits=limits)
        await server.start()
        servers.append(server)
        return server

    try:
        yield make
    finally:
        for server in servers:
            await server.stop()


async def connect(server: ApiServer) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*server.addresses[0])


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """What the server sent until it closed (b"" if it reset: unread input was discarded);
    fails if the connection is still open after ``seconds``."""
    try:
        return await asyncio.wait_for(reader.read(), seconds)
    except ConnectionResetError:
        return b""


async def get(server: ApiServer, path: str = "/healthz") -> bytes:
    reader, writer = await connect(server)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    try:
        return await asyncio.wait_for(reader.read(), 3)
    finally:
        writer.close()


async def test_a_slowloris_request_head_is_cut_within_the_head_timeout(start: Start) -> None:
    server = await start(
        HEAD_ONLY,
    )
    reader, writer = await connect(server)
    began = time.monotonic()
    writer.write(b"GET /metrics HTTP/1.1\r\n")

    async def trickle() -> None:
        for i in range(100):
            await asyncio.sleep(0.2)
            writer.write(f"X-{i}: y\r\n".encode())

    dripping = asyncio.create_task(trickle())
    try:
        answer = await closed_within(reader, 3)
    finally:
        dripping.cancel()
        writer.close()
    assert answer in (b"",) or answer.startswith(b"HTTP/1.1 408")  # reset: we were still sending
    assert time.monotonic() - began < FAST.head_timeout_s + 1
    assert server.table.counters.head_timeouts == 1


async def test_a_connection_that_sends_nothing_is_closed_after_the_head_timeout(
    start: Start,
) -> None:
    server = await start(
        HEAD_ONLY,
    )
    reader, writer = await connect(server)
    began = time.monotonic()
    await closed_within(reader, 3)
    writer.close()
    assert time.monotonic() - began < FAST.head_timeout_s + 1


async def test_an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout(
    start: Start,
) -> None:
    server = await start()
    reader, writer = await connect(server)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    began = time.monotonic()
    await closed_within(reader, 3)
    writer.close()
    assert time.monotonic() - began < FAST.keepalive_timeout_s + 1


async def test_a_head_larger_than_the_bound_is_answered_431_and_closed(start: Start) -> None:
    server = await start()
    reader, writer = await connect(server)
    writer.write(b"GET /healthz HTTP/1.1\r\n")
    for i in range(40):  # 40 fields of 1 KiB: each within aiohttp's limits, 40 KiB in all
        writer.write(f"X-{i}: {'a' * 1000}\r\n".encode())
    answer = await closed_within(reader, 3)
    writer.close()
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431")
    assert server.table.counters.head_too_large == 1


async def test_a_malformed_request_gets_a_short_400_and_one_warning_line_without_traceback(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start()
    reader, writer = await connect(server)
    junk = b"\x16\x03" + b"G" * 4000 + b" / HTTP/1.1\r\n\r\n"
    with caplog.at_level(logging.DEBUG):
        writer.write(junk)
        answer = await closed_within(reader, 3)
        writer.close()
        await asyncio.sleep(0.05)
    assert answer.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400")) and len(answer) < 600
    records = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(records) == 1
    assert records[0].exc_info is None and len(records[0].getMessage()) < 300


async def test_an_8_mib_garbage_request_is_not_echoed_back_or_logged_whole(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    server = await start()
    reader, writer = await connect(server)
    with caplog.at_level(logging.DEBUG):
        writer.write(b"GET /" + b"A" * (8 << 20))
        with pytest.raises(ConnectionError):
            await writer.drain()  # the server closes long before taking it all
        answer = await closed_within(reader, 3)
        writer.close()
    assert len(answer) < 600
    assert all(len(r.getMessage()) < 300 and r.exc_info is None for r in caplog.records)


async def test_a_flood_of_idle_connections_cannot_lock_out_a_scraper(start: Start) -> None:
    server = await start()
    flood = [await connect(server) for _ in range(200)]  # 10x the cap of 20
    try:
        for _ in range(5):
            assert (await get(server)).startswith(b"HTTP/1.1 200")
        assert len(server.table) <= FAST.max_connections
        assert server.table.counters.shed >= 180
    finally:
        for _, writer in flood:
            writer.close()


def test_the_open_file_soft_limit_is_raised_to_the_hard_limit() -> None:
    import resource

    from agent.limits import raise_nofile_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 512), hard))
        assert raise_nofile_limit() == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_api_connection_cap_leaves_room_for_probes_and_the_responder() -> None:
    from agent.limits import PROBE_RESERVE, api_connection_cap

    assert api_connection_cap(1024, other_listeners=256) == 1024 - PROBE_RESERVE - 256
    assert api_connection_cap(1 << 20) == 1024
    assert api_connection_cap(100) == 32  # never so low that /metrics is unreachable


async def test_an_http_1_1_request_without_host_gets_a_400(start: Start) -> None:
    server = await start()
    reader, writer = await connect(server)
    writer.write(b"GET /probe?target=x&module=tcp HTTP/1.1\r\nConnection: close\r\n\r\n")
    answer = await closed_within(reader, 3)
    writer.close()
    assert answer.split(b" ", 2)[1] == b"400" and b"Host" in answer


async def test_a_request_without_a_version_is_never_answered_as_http_0_9(start: Start) -> None:
    server = await start()
    reader, writer = await connect(server)
    writer.write(b"GET /probe?target=x\r\n\r\n")
    answer = await closed_within(reader, 3)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400")


async def test_the_heap_is_trimmed_once_after_a_burst_of_garbage_requests() -> None:
    trims: list[float] = []
    reg = CollectorRegistry()
    server = ApiServer(
        build_app(ApiDeps(registry=reg, metrics=make_metrics(reg))),
        host="127.0.0.1",
        port=0,
        limits=FAST,
        trim=lambda: trims.append(time.monotonic()),
    )
    await server.start()
    try:
        for _ in range(5):
            reader, writer = await connect(server)
            writer.write(b"\x16\x03\x01junk\r\n\r\n")
            await closed_within(reader, 3)
            writer.close()
        await asyncio.sleep(1.5)
        assert len(trims) == 1
    finally:
        await server.stop()
