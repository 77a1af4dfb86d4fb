"""The lab's HTTP target (agent/lab/httpd.py): PROXY v2 framing and the request log.

Plain asyncio on 127.0.0.1: no namespace, no root.
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator

import pytest

from agent.lab.httpd import _Server
from agent.wire import build_proxy_v2, parse_proxy_stack

NLB = build_proxy_v2("10.2.1.5", "10.2.0.20", 51000, 80, vpce_id="vpce-0a1b2c3d4e5f60718")
CLIENTS_OWN = build_proxy_v2("192.0.2.1", "192.0.2.2", 1234, 80, crc=False)
REQUEST = b"GET /ping HTTP/1.0\r\nHost: svc\r\n\r\n"


@pytest.fixture
async def httpd() -> AsyncIterator[tuple[int, io.StringIO]]:
    log = io.StringIO()
    server = await asyncio.start_server(_Server("t1", log).handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], log
    finally:
        server.close()
        await server.wait_closed()


async def exchange(port: int, data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    await writer.wait_closed()
    return answer


def entries(log: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.getvalue().splitlines()]


async def test_stacked_headers_are_logged_raw_and_the_request_behind_them_is_served(
    httpd: tuple[int, io.StringIO],
) -> None:
    port, log = httpd
    answer = await exchange(port, NLB + CLIENTS_OWN + REQUEST)
    assert answer.startswith(b"HTTP/1.1 200 OK")
    [entry] = entries(log)
    assert (entry["method"], entry["path"], entry["host"]) == ("GET", "/ping", "svc")
    raw = bytes.fromhex(str(entry["proxy_v2"]))
    assert raw == NLB + CLIENTS_OWN
    headers, used = parse_proxy_stack(raw)
    assert used == len(raw) and headers[0].vpce_id == "vpce-0a1b2c3d4e5f60718"


async def test_a_header_the_wire_parser_rejects_ends_the_connection_unlogged(
    httpd: tuple[int, io.StringIO],
) -> None:
    port, log = httpd
    bad_crc = bytearray(NLB)
    bad_crc[16] ^= 0xFF  # first address byte, covered by the CRC32C TLV
    assert await exchange(port, bytes(bad_crc) + REQUEST) == b""
    assert entries(log) == []


async def test_a_request_without_a_header_is_logged_without_proxy_v2(
    httpd: tuple[int, io.StringIO],
) -> None:
    port, log = httpd
    assert (await exchange(port, REQUEST)).startswith(b"HTTP/1.1 200 OK")
    [entry] = entries(log)
    assert "proxy_v2" not in entry and entry["path"] == "/ping"
