"""TCP probe against real listeners on 127.0.0.1 (port 0): ok, refused, timeout, replies.

The timeout case needs a local, deterministic silent drop without root: a listening socket with
``listen(0)`` whose single accept-queue slot is taken by a connection nobody accepts. Linux then
drops further SYNs to it (``tcp_conn_request``: accept queue full -> drop, no RST), exactly what
a client sees behind a security group.
"""

from __future__ import annotations

import asyncio
import errno
import socket
import time
from collections.abc import AsyncIterator, Callable

import pytest

from agent import wire
from agent.probes import tcp
from agent.probes.base import ProbeContext, ProbeTarget
from agent.results import PathRef

KEY = b"k" * 32


def target(port: int, *, responder: bool = False) -> ProbeTarget:
    ref = PathRef(id=f"c/az1/{port}", agent="c", name="svc", ip="127.0.0.1", port=port)
    return ProbeTarget(path=ref, responder=responder)


@pytest.fixture
def ctx() -> ProbeContext:
    return ProbeContext(agent_id="c", key=KEY, timeout_s=1.0)


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], object]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], asyncio.Future[int]]]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> int:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        return server.sockets[0].getsockname()[1]

    yield start  # type: ignore[misc]
    for s in servers:
        s.close()
        await s.wait_closed()


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def read_token(reader: asyncio.StreamReader) -> wire.Token:
    data = await reader.read(wire.TOKEN_MAX)
    token, _ = wire.decode_token(data, KEY)
    return token


async def test_an_open_port_is_ok_and_the_token_is_the_first_bytes(ctx, serve) -> None:
    got: asyncio.Queue[tuple[wire.Token, bytes]] = asyncio.Queue()

    async def handler(reader, writer):
        token = await read_token(reader)
        rest = await reader.read()  # the probe half-closes: EOF, not a reset
        await got.put((token, rest))
        writer.close()

    port = await serve(handler)
    result = await tcp.probe(target(port), ctx)
    token, rest = await asyncio.wait_for(got.get(), 2)
    assert result.outcome == "ok"
    assert token.probe_id_hex == result.probe_id
    assert token.path_id == f"c/az1/{port}" and token.agent_id == "c"
    assert rest == b""
    assert result.phases["connect"] >= 0 and "send" in result.phases


async def test_a_closed_port_is_refused(ctx) -> None:
    result = await tcp.probe(target(closed_port()), ctx)
    assert result.outcome == "refused"
    assert result.detail["errno"] == "ECONNREFUSED"
    assert result.detail["phase"] == "connect"


async def test_a_silent_drop_is_a_timeout_within_the_deadline(ctx) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=1)
    try:
        ctx.timeout_s = 0.3
        t0 = time.perf_counter()
        result = await tcp.probe(target(port), ctx)
        elapsed = time.perf_counter() - t0
    finally:
        filler.close()
        listener.close()
    assert result.outcome == "timeout"
    assert result.detail["phase"] == "connect"
    assert 0.25 < elapsed < 1.0


async def test_a_responder_reply_is_verified_and_kept(ctx, serve) -> None:
    async def handler(reader, writer):
        token = await read_token(reader)
        peer = writer.get_extra_info("peername")
        reply = wire.Reply(
            probe_id=token.probe_id,
            agent_id="server-1",
            recv_ns=time.time_ns(),
            src_ip=peer[0],
            src_port=peer[1],
            local_ip="127.0.0.1",
            local_port=writer.get_extra_info("sockname")[1],
            vpce_id="vpce-0b6bf7bc8d96f3ea9",
            proxy_src_ip="10.2.1.15",
            proxy_src_port=40000,
            proxy_dst_ip="10.2.0.20",
            proxy_dst_port=80,
        )
        writer.write(wire.encode_reply(reply, KEY))
        await writer.drain()
        writer.close()

    port = await serve(handler)
    result = await tcp.probe(target(port, responder=True), ctx)
    assert result.outcome == "ok"
    assert result.reply is not None
    assert result.reply["probe_id"] == result.probe_id
    assert result.reply["target"] == "server-1"
    assert result.reply["src"].startswith("127.0.0.1:")
    assert result.reply["proxy_endpoint_id"] == "vpce-0b6bf7bc8d96f3ea9"
    assert result.reply["proxy_src"] == "10.2.1.15:40000"
    assert "reply" in result.phases


async def test_a_forged_reply_is_an_error_and_not_believed(ctx, serve) -> None:
    async def handler(reader, writer):
        token = await read_token(reader)
        reply = wire.Reply(
            probe_id=token.probe_id,
            agent_id="evil",
            recv_ns=time.time_ns(),
            src_ip="1.2.3.4",
            src_port=1,
            local_ip="127.0.0.1",
            local_port=1,
        )
        writer.write(wire.encode_reply(reply, b"x" * 32))
        await writer.drain()
        writer.close()

    port = await serve(handler)
    result = await tcp.probe(target(port, responder=True), ctx)
    assert result.outcome == "error"
    assert result.reply is None
    assert result.detail["reply_error"] == "ForgedError"


async def test_a_responder_that_closes_without_reply_leaves_the_connect_ok(ctx, serve) -> None:
    async def handler(reader, writer):
        await reader.read(wire.TOKEN_MAX)
        writer.close()

    port = await serve(handler)
    result = await tcp.probe(target(port, responder=True), ctx)
    assert result.outcome == "ok"
    assert result.reply is None
    assert "without a reply" in result.detail["reply_error"]


async def test_a_responder_that_never_answers_costs_at_most_the_deadline(ctx, serve) -> None:
    async def handler(reader, writer):
        await asyncio.sleep(5)

    port = await serve(handler)
    ctx.timeout_s = 0.3
    t0 = time.perf_counter()
    result = await tcp.probe(target(port, responder=True), ctx)
    assert time.perf_counter() - t0 < 1.0
    assert result.outcome == "ok"
    assert result.detail["reply_error"].startswith("no reply")


@pytest.mark.parametrize(
    ("err", "icmp"),
    [
        (errno.ENETUNREACH, (3, 0)),
        (errno.EHOSTUNREACH, (3, 1)),
        (errno.ENOPROTOOPT, (3, 2)),
    ],
)
def test_unreachable_errnos_map_to_the_inferred_icmp_code(err: int, icmp: tuple[int, int]) -> None:
    assert tcp.classify_oserror(OSError(err, "x")) == ("icmp_unreachable", icmp)


def test_other_socket_errors_are_errors_and_refusal_is_refused() -> None:
    assert tcp.classify_oserror(ConnectionRefusedError(errno.ECONNREFUSED, "x"))[0] == "refused"
    assert tcp.classify_oserror(OSError(errno.EMFILE, "x")) == ("error", None)
    assert tcp.classify_oserror(TimeoutError()) == ("timeout", None)


async def test_an_unreachable_connect_is_reported_with_icmp(ctx, monkeypatch) -> None:
    loop = asyncio.get_running_loop()

    async def unreachable(sock, address):
        raise OSError(errno.EHOSTUNREACH, "No route to host")

    monkeypatch.setattr(loop, "sock_connect", unreachable)
    result = await tcp.probe(target(80), ctx)
    assert result.outcome == "icmp_unreachable"
    assert result.icmp == (3, 1)
    assert result.detail["icmp_inferred"] is True
    assert "No route to host" in (result.error or "")


async def test_the_duration_does_not_include_waiting_for_a_silent_service(ctx, serve) -> None:
    """A service that answers nothing keeps the connection open: the probe closes it politely
    after a short drain, but its duration is the connect and the send, not that wait."""
    hold = asyncio.Event()

    async def handler(reader, writer):
        await hold.wait()
        writer.close()

    port = await serve(handler)
    try:
        result = await tcp.probe(target(port), ctx)
    finally:
        hold.set()
    assert result.outcome == "ok"
    assert result.duration_s < tcp._DRAIN_S, result.duration_s  # the drain waits _DRAIN_S
