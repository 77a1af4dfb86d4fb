"""The lab's stand-in for the article's nginx: answers HTTP on the target's service ports.

Runs inside a target's namespace (``lab up`` starts one per instance with ``services``) and
logs every request's source address as one JSON line, so a test can check what the target saw
(the NLB's IP, not the client's). Connections that send nothing (TCP health checks) are not
logged. Keep-alive is supported, so a test can hold one flow open across a rule edit.

PROXY protocol v2: a connection that starts with v2 header(s) (the NLB's, from
``agent.lab.ppproxy``, or a LOCAL one from the health checker) has them read by their declared
length and checked by ``agent.wire.proxy_v2``'s parser (one parser for the whole project: a
header the agents would reject ends the connection here too), then logged with its first
request as raw bytes (``proxy_v2``, hex of every header in order), so whoever reads the log
decodes exactly what arrived. The signature itself begins with ``\r\n\r\n``, so headers are
read before looking for the end of an HTTP head.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import TextIO

from agent.errors import WireError
from agent.lab.stop import stop_on_signals
from agent.wire.proxy_v2 import (
    PROXY_V2_FIXED_LEN,
    PROXY_V2_SIGNATURE,
    parse_proxy_v2,
    proxy_v2_length,
)

IDLE_TIMEOUT_S = 120.0
MAX_HEAD = 16384


async def _read_proxy_rest(reader: asyncio.StreamReader, start: bytes) -> bytes:
    """The whole PROXY v2 header whose first bytes are ``start``; WireError if it is not one.

    Reads exactly the header's declared length, never into the HTTP request behind it.
    """
    fixed = start + await reader.readexactly(PROXY_V2_FIXED_LEN - len(start))
    header = fixed + await reader.readexactly(proxy_v2_length(fixed) - len(fixed))
    parse_proxy_v2(header)
    return header


class _Server:
    def __init__(self, node: str, log: TextIO) -> None:
        self.node = node
        self.log = log

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername") or ("?", 0)
        sock = writer.get_extra_info("sockname") or ("?", 0)
        first = True
        try:
            while True:
                proxy = b""
                async with asyncio.timeout(IDLE_TIMEOUT_S):
                    head = await reader.readuntil(b"\r\n\r\n")
                    while first and head == PROXY_V2_SIGNATURE[:4]:
                        proxy += await _read_proxy_rest(reader, head)
                        head = await reader.readuntil(b"\r\n\r\n")
                first = False
                lines = head.decode("latin-1").split("\r\n")
                parts = lines[0].split()
                method, path, version = [*parts, "", "", ""][:3]
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)
                }
                entry = {
                    "ts": time.time(),
                    "node": self.node,
                    "port": sock[1],
                    "src": peer[0],
                    "src_port": peer[1],
                    "method": method,
                    "path": path,
                    "host": headers.get("host", ""),
                }
                if proxy:
                    entry["proxy_v2"] = proxy.hex()
                self.log.write(json.dumps(entry) + "\n")
                self.log.flush()
                body = f"{self.node}:{sock[1]} saw {peer[0]}:{peer[1]}\n".encode()
                keep = version == "HTTP/1.1" and headers.get("connection", "") != "close"
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                    + f"Content-Length: {len(body)}\r\n".encode()
                    + (b"Connection: keep-alive\r\n" if keep else b"Connection: close\r\n")
                    + b"\r\n"
                    + body
                )
                await writer.drain()
                if not keep:
                    break
        except (
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            TimeoutError,
            ValueError,
            WireError,
        ):
            pass
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def serve(node: str, ports: list[int], log_path: Path, ready: Path | None) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    stop = stop_on_signals()
    with open(log_path, "a", buffering=1) as log:  # noqa: ASYNC230 - once, at startup
        server = _Server(node, log)
        servers = [
            await asyncio.start_server(server.handle, "0.0.0.0", port, limit=MAX_HEAD)
            for port in ports
        ]
        if ready is not None:
            ready.write_text("ready\n")  # noqa: ASYNC240 - once, at startup
        await stop.wait()
        for s in servers:
            s.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node", required=True)
    parser.add_argument("--port", type=int, action="append", required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--ready", type=Path)
    args = parser.parse_args()
    asyncio.run(serve(args.node, args.port, args.log, args.ready))


if __name__ == "__main__":
    main()
