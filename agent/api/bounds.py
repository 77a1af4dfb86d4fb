"""Bounds on every API connection: what a client may cost the agent, at the aiohttp boundary.

aiohttp bounds a request's parts (``max_line_size``, ``max_field_size``, ``max_headers``,
``client_max_size`` for a body, ``keepalive_timeout`` for an idle keep-alive connection,
``lingering_time`` for an unread body) but not the whole: it has **no header-read timeout** of
its own (a connection that trickles a request head, or sends nothing at all, was held for ever;
recent releases — 3.14 here, ``aiohttp>=3.9`` allowed — arm ``keepalive_timeout`` at connect,
which also bounds a first head), **no connection limit** (each connection is a protocol, a
transport and a 64 KiB buffer until "Too many open files") and no bound on a head's total
size (128 fields of 8 KiB are accepted). ``BoundedRequestHandler`` adds those on aiohttp's
own ``RequestHandler``:

* a request head must be complete within ``head_timeout_s`` of the connection's first byte
  slot (a slowloris connection is cut within seconds, however slowly it trickles); between
  keep-alive requests aiohttp's ``keepalive_timeout`` (set to the same few seconds) applies;
* at most ``max_head_bytes`` are read before a head is complete (431, then closed);
* ``ConnectionTable`` caps live connections at ``max_connections``: at the cap the oldest
  connection with no request in flight is closed to make room (an accept-time policy: a
  flood of idle connections cannot lock out a scraper, whose request follows its connect at
  once), and only when every connection is busy is the new one refused;
* a malformed request is answered 400 with the parser's message ``clip``-ped (an 8 MiB
  request line is not echoed back) and logged as one warning line without a traceback (the
  client's mistake is not the agent's error); the logging handler's ``RepeatFilter`` then
  summarises a flood of them.

The listener's other bounds are the accept backlog and ``RLIMIT_NOFILE`` (``agent.limits``):
the cap stays below the file limit so the agent's own probes always have descriptors.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from agent.logs import clip

__all__ = ["BoundedRequestHandler", "ConnectionTable", "HttpLimits"]

log = logging.getLogger("agent.api.http")

#: seconds after a costly connection ends before the heap is trimmed (bursts share one trim)
TRIM_DELAY_S = 1.0
#: bytes a connection may read before its end is worth a trim
COSTLY_BYTES = 64 * 1024

#: how much of a client's bad request line or header is echoed in a 400 body and the log
ECHO_MAX = 128


@dataclass(frozen=True)
class HttpLimits:
    """Every bound of an API listener; aiohttp's own settings where it has them."""

    #: a request head must be complete this long after the connection is accepted (ours)
    head_timeout_s: float = 5.0
    #: idle keep-alive (aiohttp ``keepalive_timeout``; also cuts a trickled 2nd request head)
    keepalive_timeout_s: float = 5.0
    #: bytes read before a head is complete (ours: aiohttp bounds lines and fields only)
    max_head_bytes: int = 16384
    #: aiohttp's request line / header field / header count bounds
    max_line_size: int = 8190
    max_field_size: int = 8190
    max_headers: int = 64
    #: a request body (aiohttp ``client_max_size``: no route reads more than a few bytes)
    client_max_size: int = 64 * 1024
    #: aiohttp's time to read and discard an unread body before closing
    lingering_time_s: float = 1.0
    #: live connections at once (ours); lowered to fit RLIMIT_NOFILE by ``agent.limits``
    max_connections: int = 1024
    #: listen(2) backlog
    backlog: int = 512

    def handler_args(self) -> dict[str, Any]:
        """The keyword arguments aiohttp's ``RequestHandler`` takes (``AppRunner(**args)``)."""
        return {
            "keepalive_timeout": self.keepalive_timeout_s,
            "max_line_size": self.max_line_size,
            "max_field_size": self.max_field_size,
            "max_headers": self.max_headers,
            "lingering_time": self.lingering_time_s,
        }


@dataclass
class TableCounters:
    shed: int = 0  # idle connections closed to make room for a new one
    refused: int = 0  # new connections closed at accept: every slot busy
    head_timeouts: int = 0  # heads not complete within head_timeout_s
    head_too_large: int = 0  # heads larger than max_head_bytes
    bad_requests: int = 0  # malformed requests answered 400


class ConnectionTable:
    """Live connections, oldest first; ``admit()`` makes room at accept time or says no.

    A connection is anything with an ``idle`` property (no request in flight: safe to close)
    and a ``shed()`` method: aiohttp's request handlers (``BoundedRequestHandler``).

    ``trim`` (the daemon passes ``malloc_trim``) is called once, a second after connections
    that cost memory (malformed, oversized, timed out) are gone, so RSS returns near its
    baseline after a burst of garbage instead of keeping the freed heap resident.
    """

    def __init__(self, max_connections: int, trim: Callable[[], object] | None = None) -> None:
        self.max_connections = max(1, max_connections)
        self.counters = TableCounters()
        self.trim = trim
        self._trim_handle: asyncio.TimerHandle | None = None
        self._live: dict[Any, None] = {}  # insertion order = age

    def __len__(self) -> int:
        return len(self._live)

    def add(self, conn: Any) -> None:
        self._live[conn] = None

    def discard(self, conn: Any) -> None:
        self._live.pop(conn, None)

    def after_abuse(self) -> None:
        """A costly connection ended: trim the heap soon (once per burst)."""
        if self.trim is None or self._trim_handle is not None:
            return
        self._trim_handle = asyncio.get_running_loop().call_later(TRIM_DELAY_S, self._trim)

    def _trim(self) -> None:
        self._trim_handle = None
        if self.trim is not None:
            self.trim()

    def admit(self) -> bool:
        """Room for one more? At the cap, shed the oldest idle connection; False if none."""
        while len(self._live) >= self.max_connections:
            victim = next((c for c in self._live if c.idle), None)
            if victim is None:
                self.counters.refused += 1
                return False
            self._live.pop(victim, None)
            self.counters.shed += 1
            victim.shed()
        return True


class Refused(asyncio.Protocol):
    """The protocol of a connection refused at accept: closed at once, nothing read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if isinstance(transport, asyncio.Transport):
            transport.abort()
        else:  # pragma: no cover - stream transports only
            transport.close()


def _http_0_9(message: object) -> bool:
    version = getattr(message, "version", None)
    return version is not None and tuple(version) < (1, 0)


class BoundedRequestHandler(RequestHandler):
    """aiohttp's connection handler with a head timeout and size, a table, and quiet 400s."""

    def __init__(
        self,
        manager: web.Server,
        *,
        limits: HttpLimits,
        table: ConnectionTable,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._limits = limits
        self._table = table
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._received = 0
        self._costly = False

    @classmethod
    def for_server(
        cls, server: web.Server, limits: HttpLimits, table: ConnectionTable
    ) -> BoundedRequestHandler:
        """A handler as ``server()`` would make one (its loop and handler arguments)."""
        kwargs: Mapping[str, Any] = getattr(server, "_kwargs", {})
        return cls(server, limits=limits, table=table, loop=server._loop, **kwargs)

    # -- connection -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._table.add(self)
        self._head_timer = asyncio.get_running_loop().call_later(
            self._limits.head_timeout_s, self._head_timed_out
        )

    def connection_lost(self, exc: BaseException | None) -> None:
        self._table.discard(self)
        self._cancel_head_timer()
        super().connection_lost(exc)
        if self._costly or self._received > COSTLY_BYTES:
            self._table.after_abuse()

    def data_received(self, data: bytes) -> None:
        self._received += len(data)
        waiting_for_head = self._head_timer is not None or self.idle
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:  # a head completed (or failed to parse: 400)
            self._head_bytes = 0
            self._cancel_head_timer()
            if any(_http_0_9(msg) for msg, _ in self._messages):
                # aiohttp answers a request line without a version as "HTTP/0.9 200 OK" with
                # headers, which HTTP/0.9 never had: nothing here speaks 0.9
                self._table.counters.bad_requests += 1
                self._reject(HTTPStatus.BAD_REQUEST)
        elif waiting_for_head:
            self._head_bytes += len(data)
            if self._head_bytes > self._limits.max_head_bytes:
                self._table.counters.head_too_large += 1
                self._reject(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE)

    @property
    def idle(self) -> bool:
        """No request in flight and none queued: safe to close to make room."""
        return self._current_request is None and not self._messages

    def shed(self) -> None:
        self._costly = True  # a flood's connection: trim after the flood
        self.force_close()

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._request_count == 0 and self.transport is not None:
            self._table.counters.head_timeouts += 1
            self._reject(HTTPStatus.REQUEST_TIMEOUT)

    def _reject(self, status: HTTPStatus) -> None:
        """Answer a short error (best effort) and close, without aiohttp's parser or handler."""
        self._costly = True
        transport = self.transport
        if transport is not None and not transport.is_closing():
            body = f"{status.value} {status.phrase}\n".encode()
            head = (
                f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: text/plain\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            transport.write(head.encode() + body)
        self.force_close()

    # -- errors -----------------------------------------------------------------------------

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A client's malformed request: one clipped warning line and a clipped 400 body.

        Server errors (500) keep aiohttp's handling (and traceback): they are the agent's bugs.
        """
        if status >= 500 or not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        self._table.counters.bad_requests += 1
        self._costly = True
        why = clip(message or exc.message or HTTPStatus(status).phrase, ECHO_MAX)
        log.warning("bad request from %s: %s", request.remote, why)
        response = web.Response(
            status=status, text=f"{status} {HTTPStatus(status).phrase}: {why}\n"
        )
        response.force_close()
        return response
