"""The ``/probe`` fast path: plain ``GET /probe`` requests answered below aiohttp.

At a scraper's pace (tens of requests per second, a new connection each) aiohttp's
per-connection and per-request machinery costs about as much CPU as the probe itself, and
``/probe`` must cost no more than blackbox_exporter's (docs/BENCHMARKS.md). Every API
connection therefore starts on ``ProbeConnection``, which answers plain ``GET /probe``
requests through the same ``answer_probe`` as the aiohttp route (same checks, same status
codes, same body) and hands the connection to aiohttp — with the exact bytes received so far —
at the first request that is anything else (another path or method, a body, an upgrade, a
malformed or oversized head). ``ApiServer(fast_probe=False)`` turns it off.

This module knows the server only through the ``ServerState`` it is handed (``agent.api.state``:
the handlers' holder, the live connection set, the stopping flag, the hand-over factory), and
the answer only through ``agent.api.answer``; it never imports ``agent.api.server``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import sys
import time
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

from aiohttp import __version__ as aiohttp_version
from yarl import URL

from agent.api.answer import SCRAPE_TIMEOUT_HEADER, ProbeAnswer, answer_probe
from agent.api.state import ServerState

__all__ = ["ProbeConnection"]

log = logging.getLogger(__name__)

#: request lines the fast path may answer; anything else goes to aiohttp from the first byte
_FAST_PREFIXES = (b"GET /probe?", b"GET /probe ")
_FAST_PREFIX_LEN = len(_FAST_PREFIXES[0])
#: a header block larger than this goes to aiohttp (which enforces its own limits)
_FAST_MAX_HEAD = 8190
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_URL_BAD_CHARS = re.compile(r"[\x00-\x20\x7f#]")
#: headers that mean a body, a protocol switch or an interim answer: aiohttp's job
_FAST_REFUSED_HEADERS = ("content-length", "transfer-encoding", "upgrade", "expect")
_REASONS = {s.value: s.phrase for s in HTTPStatus}
_SERVER = f"Python/{sys.version_info[0]}.{sys.version_info[1]} aiohttp/{aiohttp_version}"


@dataclass(frozen=True, slots=True)
class _FastRequest:
    version: str
    keep_alive: bool
    target: str
    module: str
    scrape_timeout: str | None
    accept: str


def _parse_fast_request(head: bytes) -> _FastRequest | None:
    """A plain ``GET /probe`` request head (without its final CRLFCRLF), or None for aiohttp.

    Deliberately narrow: ASCII only, CRLF line ends, no folded lines, token header names, no
    control characters, no body. Whatever is not that simple case (and every malformed
    request) is left to aiohttp's parser, which answers it as it always did.
    """
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return None
    request_line, *lines = text.split("\r\n")
    parts = request_line.split(" ")
    if len(parts) != 3:
        return None
    method, url, version = parts
    path, _, query_string = url.partition("?")
    if method != "GET" or path != "/probe" or version not in ("HTTP/1.1", "HTTP/1.0"):
        return None
    if _URL_BAD_CHARS.search(url):
        return None
    headers: dict[str, list[str]] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not _HEADER_NAME.match(name) or _CONTROL_CHARS.search(value):
            return None
        headers.setdefault(name.lower(), []).append(value.strip(" \t"))
    if any(h in headers for h in _FAST_REFUSED_HEADERS):
        return None
    if version == "HTTP/1.1" and len(headers.get("host", ())) != 1:
        return None  # RFC 9112 3.2: exactly one Host; aiohttp answers the rest 400
    connection = {t.strip().lower() for v in headers.get("connection", ()) for t in v.split(",")}
    if version == "HTTP/1.1":
        keep_alive = "close" not in connection
    else:
        keep_alive = "keep-alive" in connection
    # the same query decoding as aiohttp's parser (yarl), so both paths read the same values
    query = URL.build(path=path, query_string=query_string, encoded=True).query
    scrape = headers.get(SCRAPE_TIMEOUT_HEADER.lower())
    return _FastRequest(
        version=version,
        keep_alive=keep_alive,
        target=query.get("target", ""),
        module=query.get("module", "tcp"),
        scrape_timeout=scrape[0] if scrape else None,
        accept=",".join(headers.get("accept", ())),
    )


def _http_response(version: str, keep_alive: bool, answer: ProbeAnswer) -> bytes:
    status, content_type, body = answer
    head = [
        f"{version} {status} {_REASONS[status]}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        f"Date: {_http_date(int(time.time()))}",
        f"Server: {_SERVER}",
    ]
    # only what differs from the version's default, as aiohttp does
    if version == "HTTP/1.0":
        if keep_alive:
            head.append("Connection: keep-alive")
    elif not keep_alive:
        head.append("Connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


@functools.lru_cache(maxsize=2)
def _http_date(second: int) -> str:
    return formatdate(second, usegmt=True)


class ProbeConnection(asyncio.Protocol):
    """The first protocol of every API connection: answers plain ``GET /probe`` requests
    itself and hands the connection to aiohttp at the first request that is anything else.

    Why: at a scraper's pace (tens of requests per second, a new connection each), aiohttp's
    per-connection and per-request machinery (two tasks, request/response objects, router,
    writer) cost about as much CPU as the probe itself; blackbox_exporter's Go server is
    cheaper, and /probe must not cost more than blackbox_exporter (docs/BENCHMARKS.md). The
    fast path keeps aiohttp's behaviour for /probe — keep-alive, HTTP/1.0, pipelining, a
    disconnecting client cancels its probe — and shares ``answer_probe`` with the aiohttp
    route. Nothing is parsed twice: a request the fast path declines reaches aiohttp as the
    exact bytes received.
    """

    def __init__(self, state: ServerState) -> None:
        self._state = state
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._task: asyncio.Task[None] | None = None
        self._idle: asyncio.TimerHandle | None = None

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._state.connections.add(self)
        if self._state.table is not None:
            self._state.table.add(self)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if self._task is None:
            self._next_request()
        elif len(self._buf) > _FAST_MAX_HEAD:  # pipelined flood behind a running probe
            self.close()

    def eof_received(self) -> bool:
        # like aiohttp: a client that stops sending has gone (a scraper past its timeout);
        # returning False closes the transport, and connection_lost cancels the probe
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._state.connections.discard(self)
        if self._state.table is not None:
            self._state.table.discard(self)
        self._transport = None
        if self._idle is not None:
            self._idle.cancel()
        if self._task is not None:
            self._task.cancel()  # like aiohttp's handler_cancellation: the scraper gave up

    # ours

    @property
    def idle(self) -> bool:
        """No probe in flight: the connection table may shed it to make room."""
        return self._task is None

    def shed(self) -> None:
        self.close()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._transport is not None:
            self._transport.close()

    def _arm_idle(self) -> None:
        loop = asyncio.get_running_loop()
        # not re-armed by incoming bytes: a trickled head is cut like an idle connection
        self._idle = loop.call_later(self._state.head_timeout_s, self._on_idle)

    def _on_idle(self) -> None:
        if self._task is None and self._transport is not None:
            self._transport.close()

    def _next_request(self) -> None:
        buf = self._buf
        if not buf:
            return
        prefix = bytes(buf[:_FAST_PREFIX_LEN])
        if not any(p.startswith(prefix) for p in _FAST_PREFIXES):
            self._hand_to_aiohttp()
            return
        end = buf.find(b"\r\n\r\n", 0, _FAST_MAX_HEAD + 4)
        if end < 0:
            if len(buf) > _FAST_MAX_HEAD or b"\n\n" in buf:
                self._hand_to_aiohttp()
            return
        request = _parse_fast_request(bytes(buf[:end]))
        if request is None:
            self._hand_to_aiohttp()
            return
        del buf[: end + 4]
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._task = asyncio.get_running_loop().create_task(self._serve(request))

    async def _serve(self, request: _FastRequest) -> None:
        try:
            answer = await answer_probe(
                self._state.deps,
                request.target,
                request.module,
                request.scrape_timeout,
                request.accept,
            )
            transport = self._transport
            if transport is None or transport.is_closing():
                return
            keep_alive = request.keep_alive and not self._state.stopping
            transport.write(_http_response(request.version, keep_alive, answer))
        except Exception:  # a bug here must not leave the scraper hanging
            log.exception("/probe fast path failed")
            keep_alive = False
        finally:
            self._task = None
        if not keep_alive:
            if self._transport is not None:
                self._transport.close()
            return
        self._arm_idle()
        self._next_request()

    def _hand_to_aiohttp(self) -> None:
        """From now on this connection is aiohttp's, starting with the bytes not yet used."""
        transport = self._transport
        assert transport is not None and self._task is None
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._state.connections.discard(self)
        if self._state.table is not None:
            self._state.table.discard(self)  # the aiohttp handler takes the slot
        protocol = self._state.aiohttp_protocol()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        data, self._buf = bytes(self._buf), bytearray()
        self._transport = None
        protocol.data_received(data)
