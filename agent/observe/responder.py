"""The in-band responder: a TCP server on the probe port that says what the target saw.

A client's tcp probe connects through the endpoint and NLB and sends a token as its first bytes.
The responder reads (optionally) the NLB's PROXY v2 header(s), then the token, verifies its HMAC
and freshness, and answers with one authenticated ``Reply``: the probe id echoed, the peer
address its socket saw (the NLB's IP and a remapped port), its own address, the receive time,
and, from the outermost PROXY v2 header, the endpoint id and the original client address. Every
verified probe also becomes an ``Observation`` in the shared store, so the evidence reaches the
client a second way (the observations API) when the reply is lost on the return path.

Hostile input gets nothing: malformed, forged, replayed, oversized or slow input is counted and
the connection closed without a byte written, and a reply is never longer than ``REPLY_MAX``, so
the responder cannot amplify traffic toward anyone. Resources are bounded three ways:
``max_connections`` at once, ``read_timeout`` for the whole read (a slow-loris connection is cut
however slowly it trickles), ``max_bytes`` read.

Real probes are served during a flood. A connection is *unauthenticated* until its token's MAC
and freshness verify; after that it only has a reply to write. At ``max_connections`` the
oldest unauthenticated connection is shed to admit the new one (counted in ``shed``): a real
probe sends its token within a round trip of connecting, so it is authenticated long before a
flood of idle connections can push it out, while the flood's own connections are recycled
oldest-first. Only when every slot holds authenticated work is a new connection refused
(``over_limit``). No source may hold more than its share of unauthenticated slots: the NLB
address the socket sees (``max_per_peer``, half the slots by default, so one NLB node cannot
take the others' room) and, once a PROXY v2 header has named it, the original client address
(``max_per_client``, 1/16 by default): past its share a source's own oldest connection is shed
(``shed_per_source``), so one client behind the NLB cannot displace the others.

PROXY v2 handling (``proxy_v2=True``, the target group attribute is on): the NLB's header is
``headers[0]``; later headers were sent by the client and are not trusted. A LOCAL header is
the NLB's health check: it usually closes right after, and is counted as a health check, never
as malformed or as a timeout. A connection without a header is still answered (counted in
``proxy_missing``: the reply then shows no endpoint id, which is itself a diagnosis). With
``proxy_v2=False`` a PROXY header is not accepted (counted in ``proxy_unexpected`` and
``malformed``): a PROXY v2 mistake (docs/AWS-BEHAVIOUR.md): the service cannot parse it.

Evidence queries (``evidence=``, an ``EvidenceService``): a connection whose first bytes after
the PROXY header(s) are the query magic ``PLPQ`` instead of a token is a client (or a peer
agent) asking for this fleet's evidence. It is read, verified and replay-checked exactly like a
token, by the same guard, and then answered by the service; a rejected query is counted there
as well as here and gets nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass

from agent.errors import (
    ForgedError,
    MalformedError,
    PlprobeError,
    ReplayError,
    TruncatedError,
)
from agent.observe.evidence import EvidenceService
from agent.observe.store import ObservationStore
from agent.results import Observation, hostport
from agent.wire import (
    AGENT_ID_MAX,
    PROXY_V2_MAX_LEN,
    PROXY_V2_SIGNATURE,
    REPLY_MAX,
    VPCE_ID_MAX,
    EvidenceQuery,
    ProxyHeader,
    ReplayGuard,
    Reply,
    Token,
    decode_query,
    decode_token,
    encode_reply,
    encode_token,
    is_proxy_v2_prefix,
    is_query_prefix,
    parse_proxy_stack,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_READ_TIMEOUT",
    "Responder",
    "ResponderCounters",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_READ_TIMEOUT = 5.0
DEFAULT_MAX_BYTES = 1024
"""An AWS PROXY v2 header is ~100 bytes and a token at most 96: 1 KiB leaves room for stacked
client headers and TLVs while keeping a hostile connection's cost to one small buffer."""

_CLOSE_TIMEOUT = 1.0  # seconds to wait for a close / a reply to drain; the reply fits one segment


@dataclass
class ResponderCounters:
    """Monotonic counters; plain ints because everything runs on one event loop."""

    accepted: int = 0  # connections taken on (within max_connections)
    replied: int = 0  # authenticated replies written
    malformed: int = 0  # bytes that can never be a (PROXY header +) token, incl. oversized
    forged: int = 0  # token HMAC did not verify
    replayed: int = 0  # authentic token, stale / future / seen before
    over_limit: int = 0  # connections closed on accept: every slot holds authenticated work
    shed: int = 0  # unauthenticated connections closed to make room (oldest first)
    shed_per_source: int = 0  # ... because their source (NLB or PROXY client) had its share
    timeouts: int = 0  # read_timeout expired before a whole token arrived
    empty: int = 0  # closed without sending a byte (TCP health checks, port scanners)
    proxy_headers: int = 0  # connections that started with PROXY v2 header(s)
    health_checks: int = 0  # PROXY v2 LOCAL: the NLB's health checker
    proxy_missing: int = 0  # proxy_v2 expected, a token arrived without a header
    proxy_unexpected: int = 0  # a PROXY header arrived but proxy_v2 is not configured
    unexpected_endpoint: int = 0  # endpoint id not in expected_endpoint_ids (still answered)
    write_errors: int = 0  # the reply could not be written (peer gone)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _sock_addr(
    raw: object,
) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int] | None:
    """A socket address tuple as (ip, port); IPv4-mapped IPv6 becomes IPv4, zone ids dropped."""
    if not isinstance(raw, tuple) or len(raw) < 2:
        return None
    try:
        ip = ipaddress.ip_address(str(raw[0]).split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip, int(raw[1])


class _Quiet(Exception):
    """Close without a reply and without counting anything as wrong."""


class Responder:
    """Answers authenticated probe tokens on one TCP port; see the module docstring."""

    def __init__(
        self,
        *,
        key: bytes,
        agent_id: str,
        store: ObservationStore,
        host: str | Sequence[str] | None = "0.0.0.0",
        port: int = 0,
        proxy_v2: bool = False,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        max_bytes: int = DEFAULT_MAX_BYTES,
        insecure: bool = False,
        replay_guard: ReplayGuard | None = None,
        expected_endpoint_ids: Collection[str] = (),
        clock_ns: Callable[[], int] = time.time_ns,
        counters: ResponderCounters | None = None,
        max_per_peer: int | None = None,
        max_per_client: int | None = None,
        trim: Callable[[], object] | None = None,
        evidence: EvidenceService | None = None,
    ) -> None:
        if not 1 <= len(agent_id.encode("utf-8")) <= AGENT_ID_MAX:
            raise ValueError(f"agent_id must be 1..{AGENT_ID_MAX} UTF-8 bytes")
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if not read_timeout > 0:
            raise ValueError("read_timeout must be positive")
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        # fail at startup, not on the first probe, if the key cannot authenticate anything
        encode_token(Token(b"\0" * 16, "p", "a", 0), key, insecure=insecure)
        self.key = bytes(key)
        self.insecure = insecure
        self.agent_id = agent_id
        self.store = store
        self.host = host
        self.port = port
        self.proxy_v2 = proxy_v2
        self.max_connections = max_connections
        self.max_per_peer = max_per_peer or max(1, max_connections // 2)
        self.max_per_client = max_per_client or max(4, max_connections // 16)
        self.read_timeout = read_timeout
        self.max_bytes = max_bytes
        self.expected_endpoint_ids = frozenset(expected_endpoint_ids)
        self.guard = replay_guard if replay_guard is not None else ReplayGuard()
        #: passed in by an owner whose counters must outlive this instance (a daemon reload)
        self.counters = counters if counters is not None else ResponderCounters()
        self.evidence = evidence
        self._clock_ns = clock_ns
        self._proxy_max_len = max(16, min(PROXY_V2_MAX_LEN, max_bytes))
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._active = 0
        #: unauthenticated connections, oldest first, all and by source
        self._pending: dict[_Conn, None] = {}
        #: called (e.g. malloc_trim) once the responder is idle again after shedding a flood
        self._trim = trim
        self._shed_since_trim = False
        self._by_source: dict[str, dict[_Conn, None]] = {}

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start accepting. Translates bind failures into PlprobeError."""
        if self._server is not None:
            return
        try:
            self._server = await asyncio.start_server(
                self._on_connect,
                host=self.host,
                port=self.port,
                backlog=max(128, self.max_connections),
                reuse_address=True,
                limit=max(self.max_bytes, 1024),
            )
        except OSError as exc:
            raise PlprobeError(
                f"responder cannot listen on {self.host}:{self.port}: {exc}"
            ) from exc

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) of every bound socket; the port is the real one when started with 0."""
        if self._server is None:
            return []
        out = []
        for sock in self._server.sockets:
            name = sock.getsockname()
            out.append((str(name[0]), int(name[1])))
        return out

    @property
    def bound_port(self) -> int:
        addrs = self.addresses
        if not addrs:
            raise RuntimeError("responder is not started")
        return addrs[0][1]

    @property
    def active_connections(self) -> int:
        return self._active

    async def stop(self, grace_s: float = 1.0) -> None:
        """Stop accepting, cut connections still being read, and wait for them (bounded)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace_s)
        with contextlib.suppress(TimeoutError):
            # 3.12+ waits for connection handlers here; they were cancelled above
            await asyncio.wait_for(server.wait_closed(), grace_s)

    async def __aenter__(self) -> Responder:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- one connection ---------------------------------------------------------------------

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._active >= self.max_connections and not self._shed_oldest(self._pending):
            self.counters.over_limit += 1
            writer.transport.abort()
            return
        task = asyncio.current_task()
        assert task is not None
        peer = _sock_addr(writer.get_extra_info("peername"))
        conn = _Conn(task, writer, f"peer {peer[0]}" if peer else "peer ?")
        self._active += 1
        self._tasks.add(task)
        self._track(conn, self.max_per_peer)
        self.counters.accepted += 1
        try:
            await self._serve(reader, writer, conn)
        except asyncio.CancelledError:
            # Only stop() (or loop shutdown) cancels a connection task, and nobody awaits it:
            # re-raising would make asyncio's stream callback log a spurious error (3.11).
            writer.transport.abort()
        except OSError:  # reset by the peer while we read or wrote: nothing to answer
            writer.transport.abort()
        except Exception:  # a bug must not kill the server; it costs one connection
            log.exception("responder: unexpected error on a connection")
            writer.transport.abort()
        finally:
            self._untrack(conn)
            if not conn.shed:  # a shed connection gave its slot back when it was shed
                self._active -= 1
            self._tasks.discard(task)
            if not self._tasks and self._shed_since_trim and self._trim is not None:
                self._shed_since_trim = False
                asyncio.get_running_loop().call_later(1.0, self._trim)

    # -- who is shed under load -------------------------------------------------------------

    def _track(self, conn: _Conn, share: int) -> None:
        """Count ``conn`` as unauthenticated work of its source; over ``share``, shed its oldest."""
        bucket = self._by_source.setdefault(conn.source, {})
        while len(bucket) >= share and self._shed_oldest(bucket, per_source=True):
            pass
        bucket[conn] = None
        self._pending[conn] = None

    def _untrack(self, conn: _Conn) -> None:
        self._pending.pop(conn, None)
        bucket = self._by_source.get(conn.source)
        if bucket is not None:
            bucket.pop(conn, None)
            if not bucket:
                del self._by_source[conn.source]

    def _rekey(self, conn: _Conn, client: str) -> None:
        """The NLB's PROXY header named the client: count the connection against it instead."""
        if conn.shed or conn not in self._pending:
            return
        self._untrack(conn)
        conn.source = f"client {client}"
        self._track(conn, self.max_per_client)

    def _authenticated(self, conn: _Conn) -> None:
        """Its token verified: from now on the connection is never shed."""
        self._untrack(conn)

    def _shed_oldest(self, among: dict[_Conn, None], *, per_source: bool = False) -> bool:
        """Close the oldest unauthenticated connection in ``among``; False if there is none."""
        for victim in among:
            self._untrack(victim)
            victim.shed = True
            self._shed_since_trim = True
            self._active -= 1
            if per_source:
                self.counters.shed_per_source += 1
            else:
                self.counters.shed += 1
            victim.writer.transport.abort()
            victim.task.cancel()
            return True
        return False

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Conn
    ) -> None:
        peer = _sock_addr(writer.get_extra_info("peername"))
        local = _sock_addr(writer.get_extra_info("sockname"))
        state = _ConnState(conn=conn)
        try:
            async with asyncio.timeout(self.read_timeout):
                headers, token = await self._read_token(reader, state)
        except TimeoutError:
            if not state.health_check:
                self.counters.timeouts += 1
            await self._close(writer)
            return
        except _Quiet:
            await self._close(writer)
            return
        except ForgedError:
            self.counters.forged += 1
            self._query_rejected(state, "forged")
            await self._close(writer)
            return
        except MalformedError:
            self.counters.malformed += 1
            self._query_rejected(state, "malformed")
            await self._close(writer)
            return
        recv_ns = self._clock_ns()
        try:
            self.guard.check(token, recv_ns)
        except ReplayError:
            self.counters.replayed += 1
            self._query_rejected(state, "replayed")
            await self._close(writer)
            return
        self._authenticated(conn)
        if isinstance(token, EvidenceQuery):
            await self._answer_query(writer, token)
            return
        if peer is None or local is None:  # not an IP socket: nothing meaningful to report
            await self._close(writer)
            return

        nlb = headers[0] if headers else None
        if self.proxy_v2 and nlb is None:
            self.counters.proxy_missing += 1
        vpce_id = nlb.vpce_id if nlb is not None else None
        if vpce_id is not None and len(vpce_id) > VPCE_ID_MAX:
            vpce_id = None  # not an AWS endpoint id; never let it break the reply
        if self.expected_endpoint_ids and vpce_id not in self.expected_endpoint_ids:
            self.counters.unexpected_endpoint += 1
        proxy_src = proxy_dst = None
        if (
            nlb is not None
            and nlb.command == "PROXY"
            and nlb.src_ip is not None
            and nlb.src_port is not None
            and nlb.dst_ip is not None
            and nlb.dst_port is not None
        ):
            proxy_src = (nlb.src_ip, nlb.src_port)
            proxy_dst = (nlb.dst_ip, nlb.dst_port)

        reply = Reply.from_pairs(
            token.probe_id,
            self.agent_id,
            recv_ns,
            peer,
            local,
            vpce_id=vpce_id,
            proxy_src=proxy_src,
            proxy_dst=proxy_dst,
        )
        data = encode_reply(reply, self.key, insecure=self.insecure)
        assert len(data) <= REPLY_MAX
        answered = await self._write(writer, data)
        if answered:
            self.counters.replied += 1
        else:
            self.counters.write_errors += 1
        self.store.append(
            Observation(
                kind="token",
                target=self.agent_id,
                seen_at=recv_ns / 1e9,
                src_ip=str(peer[0]),
                src_port=peer[1],
                dst_ip=str(local[0]),
                dst_port=local[1],
                via="responder",
                probe_id=token.probe_id_hex,
                path=token.path_id,
                agent=token.agent_id,
                proxy_endpoint_id=vpce_id,
                proxy_src=hostport(*proxy_src) if proxy_src else None,
                proxy_dst=hostport(*proxy_dst) if proxy_dst else None,
                answered=answered,
            )
        )
        await self._close(writer)

    def _query_rejected(self, state: _ConnState, reason: str) -> None:
        if state.query and self.evidence is not None:
            self.evidence.count_rejected(reason)

    async def _answer_query(self, writer: asyncio.StreamWriter, query: EvidenceQuery) -> None:
        """Answer a verified, fresh evidence query on its own connection, then close."""
        assert self.evidence is not None
        data = await self.evidence.answer(query)
        if await self._write(writer, data):
            self.evidence.count_written(len(data))
        else:
            self.counters.write_errors += 1
        await self._close(writer)

    async def _write(self, writer: asyncio.StreamWriter, data: bytes) -> bool:
        """Write the reply; False if the peer is gone or does not take it in time."""
        try:
            writer.write(data)
            await asyncio.wait_for(writer.drain(), _CLOSE_TIMEOUT)
        except (OSError, TimeoutError):
            return False
        return True

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        """Close (FIN after anything written); abort if the peer does not let go in time."""
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), _CLOSE_TIMEOUT)
        except (OSError, TimeoutError):
            writer.transport.abort()

    async def _read_token(
        self, reader: asyncio.StreamReader, state: _ConnState
    ) -> tuple[list[ProxyHeader], Token | EvidenceQuery]:
        """Read until ``[PROXY v2 header...] token`` (or a query) parses; raise otherwise."""
        buf = bytearray()
        eof = False
        counted_proxy = False
        while True:
            if buf:
                headers: list[ProxyHeader] = []
                used = 0
                try:
                    if not self.proxy_v2 and is_proxy_v2_prefix(buf):
                        if len(buf) < len(PROXY_V2_SIGNATURE):
                            raise TruncatedError("could still become a PROXY v2 signature")
                        self.counters.proxy_unexpected += 1
                        raise MalformedError("PROXY v2 header, but proxy_v2 is not configured")
                    if self.proxy_v2:
                        headers, used = parse_proxy_stack(buf, max_len=self._proxy_max_len)
                        if headers and not counted_proxy:
                            counted_proxy = True
                            self.counters.proxy_headers += 1
                            if headers[0].src_ip is not None and state.conn is not None:
                                self._rekey(state.conn, str(headers[0].src_ip))
                            if headers[0].is_local:
                                state.health_check = True
                                self.counters.health_checks += 1
                    rest = bytes(buf[used:])
                    if not rest:
                        raise TruncatedError("no token yet")
                    if self.evidence is not None and is_query_prefix(rest):
                        state.query = True
                        query, _ = decode_query(rest, self.key, insecure=self.insecure)
                        return headers, query
                    token, _ = decode_token(rest, self.key, insecure=self.insecure)
                    return headers, token
                except TruncatedError:
                    if eof:
                        if used == len(buf):
                            # only PROXY header(s), then FIN: a health check, quietly
                            if not state.health_check:
                                self.counters.empty += 1
                            raise _Quiet() from None
                        raise MalformedError("connection closed inside a token") from None
                    if len(buf) >= self.max_bytes:
                        raise MalformedError(
                            f"no complete token within {self.max_bytes} bytes"
                        ) from None
            elif eof:
                self.counters.empty += 1
                raise _Quiet()
            chunk = await reader.read(self.max_bytes - len(buf))
            if not chunk:
                eof = True
            buf += chunk


@dataclass(eq=False)
class _Conn:
    """One accepted connection, as the shedding policy sees it."""

    task: asyncio.Task[None]
    writer: asyncio.StreamWriter
    #: "peer <ip>" (the NLB) until a PROXY v2 header names the client: "client <ip>"
    source: str
    #: closed to make room: its slot was already given back
    shed: bool = False


@dataclass
class _ConnState:
    health_check: bool = False
    conn: _Conn | None = None
    query: bool = False  # the bytes so far are an evidence query, not a token
