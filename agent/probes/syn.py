"""Raw SYN probes, classified the nmap way, with the probe's tag in the initial sequence number.

    SYN-ACK                         -> open      outcome "ok" (then torn down with our RST)
    RST (ack == isn + 1)            -> closed    outcome "refused"
    ICMP 3 / {0,1,2,3,9,10,13}      -> filtered  outcome "icmp_unreachable", icmp=(3, code)
    nothing after 1 + retries sends -> filtered  outcome "timeout"

Why not scapy's ``sr()``: it costs milliseconds per packet. Scapy builds the TCP header
templates once; the hot path copies a template, patches ports / ISN / checksum with ``struct``
(the checksum is a precomputed partial sum plus five words) and ``sendto``s it on one raw
socket. Replies come back through ONE receive path per engine: a raw TCP socket and a raw ICMP
socket, each non-blocking, each with a tiny classic BPF filter in the kernel (TCP: destination
port in our source-port range; ICMP: type 3), both registered with ``loop.add_reader`` and
drained in batches. A reply is matched to an outstanding probe by (peer IP, peer port, our
port) AND by the sequence number (``ack == isn + 1`` for TCP, the quoted ``seq == isn`` for
ICMP), so a late reply to an earlier probe that reused the port is never believed.

The kernel and us. The IP header is the kernel's (no IP_HDRINCL): it picks the source address
and the route, exactly as for a connect(). Nothing in the kernel owns our source port, so when
a SYN-ACK arrives the kernel answers it with its own RST — that is the teardown nmap relies on,
and it does not race our classification: raw sockets get their copy of the SYN-ACK before the
TCP layer looks at it, and the kernel's RST goes out, never in. We also send our own RST
(``seq = isn + 1``), so the target's half-open connection is closed even where a local firewall
drops the kernel's RST. Source ports come from ``DEFAULT_SPORTS`` (61000-65535), above Linux's
default ephemeral range (32768-60999), so the kernel's own connections do not use them; a
service that explicitly binds a port in that range could see a stray RST. Keep the range
outside ``net.ipv4.ip_local_port_range`` when changing either.

Scapy defines the templates, nobody rebuilds them. The two headers are the bytes scapy
(``scapy.layers.inet.TCP``) builds with ports, sequence number and checksum zero; they are
constants here (``SYN_TEMPLATE``, ``RST_TEMPLATE``) and a test regenerates them with scapy
(``python -m agent.probes.syn --templates`` prints them). Why constants: importing scapy costs
~33 MiB of RSS in a daemon whose goal is 60 MB, and building them in a short-lived scapy child
(the previous design) cost ~0.3 s of CPU and 0.3-1.3 s of wall time per process — the largest
part of a one-off ``plprobe check``.

A daemon keeps ONE engine for its lifetime (``agent.diagnose.rounds.SharedProbes``): sockets and
templates are made once; ``healthy`` turns false when a socket breaks (closed under us, or an
error that is about the socket rather than the path), and the owner then replaces the engine.
``forget_routes`` drops the cached source address per destination (the pseudo-header
checksum depends on it), so a long-lived engine follows route changes; the daemon calls it
once per round, as a per-round engine did implicitly.

IPv4 only (the lab and PrivateLink endpoint ENIs as configured here are IPv4).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import ipaddress
import logging
import random
import socket
import struct
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from agent.errors import PrivilegeError, ProbeError
from agent.probes.base import ProbeContext, ProbeTarget
from agent.rawsock import (
    BpfInsn,
    SocketFactory,
    attach_bpf,
    default_socket_factory,
    fold16,
    set_rcvbuf,
    sum16,
)
from agent.results import ProbeResult
from agent.wire.mac import MIN_KEY_LEN
from agent.wire.syntag import SynTagger

__all__ = [
    "DEFAULT_SPORTS",
    "FALLBACK_NOTE",
    "FILTERED_ICMP_CODES",
    "SynCounters",
    "SynEngine",
    "load_templates",
    "probe",
    "syn_templates",
]

log = logging.getLogger(__name__)

FILTERED_ICMP_CODES = frozenset({0, 1, 2, 3, 9, 10, 13})
"""ICMP destination-unreachable codes nmap reads as "filtered"."""

DEFAULT_SPORTS = (61000, 65535)
FALLBACK_NOTE = "syn: no CAP_NET_RAW, used tcp"

_TCP_SYN = 0x02
_TCP_RST = 0x04
_TCP_ACK = 0x10
_U32 = 0xFFFFFFFF
_RECV_BATCH = 512
_SEND_BATCH = 128

_PORTS_SEQ = struct.Struct("!HHI")
_CSUM = struct.Struct("!H")
_REPLY = struct.Struct("!HHII")


#: errnos after which a socket is unusable (the socket's fault, not the destination's)
_FATAL_ERRNOS = frozenset({errno.EBADF, errno.ENOTSOCK, errno.EINVAL, errno.EFAULT})

Templates = tuple[bytes, bytes]

#: the SYN header scapy builds for ``TCP(flags="S", window=1024, options=[("MSS", 1460)])``
#: with ports, sequence number and checksum zero (``_build_templates``; a test regenerates it)
SYN_TEMPLATE = bytes.fromhex("0000000000000000000000006002040000000000020405b4")
#: the RST header scapy builds for ``TCP(flags="R", window=0)``, ports/seq/checksum zero
RST_TEMPLATE = bytes.fromhex("0000000000000000000000005004000000000000")


def _build_templates() -> Templates:
    """The SYN and RST TCP headers, built with scapy (ports/seq/checksum zero).

    The source of ``SYN_TEMPLATE`` / ``RST_TEMPLATE``: ``python -m agent.probes.syn
    --templates`` prints them, and a test holds the constants byte-equal to it. Imports
    ``scapy.layers.inet`` only, never ``scapy.all``.
    """
    from scapy.layers.inet import TCP

    syn = bytes(TCP(sport=0, dport=0, seq=0, flags="S", window=1024, options=[("MSS", 1460)]))
    rst = bytes(TCP(sport=0, dport=0, seq=0, flags="R", window=0))
    return _zero_csum(syn), _zero_csum(rst)


def _zero_csum(hdr: bytes) -> bytes:
    buf = bytearray(hdr)
    buf[16:18] = b"\0\0"
    return bytes(buf)


def syn_templates() -> Templates:
    """The (SYN, RST) templates: constants, so no process pays for scapy to rebuild them."""
    return SYN_TEMPLATE, RST_TEMPLATE


async def load_templates() -> Templates:
    """``syn_templates`` for callers on the event loop (kept: it used to start a child)."""
    return syn_templates()


def _tcp_bpf(lo: int, hi: int) -> list[BpfInsn]:
    """Raw IPv4 TCP socket filter: unfragmented TCP whose destination port is in [lo, hi]."""
    return [
        (0x30, 0, 0, 9),  # ldb [9]              ip protocol
        (0x15, 0, 6, 6),  # jeq #6 ? next : drop
        (0x28, 0, 0, 6),  # ldh [6]              flags + fragment offset
        (0x45, 4, 0, 0x1FFF),  # jset #0x1fff ? drop : next
        (0xB1, 0, 0, 0),  # ldxb 4*([0]&0xf)     IP header length
        (0x48, 0, 0, 2),  # ldh [x+2]            TCP destination port
        (0x35, 0, 2, lo),  # jge #lo ? next : drop
        (0x25, 1, 0, hi),  # jgt #hi ? drop : accept
        (0x06, 0, 0, 0x40000),  # ret accept
        (0x06, 0, 0, 0),  # ret drop
    ]


def _icmp_bpf() -> list[BpfInsn]:
    """Raw ICMP socket filter: destination unreachable only."""
    return [
        (0xB1, 0, 0, 0),  # ldxb 4*([0]&0xf)
        (0x50, 0, 0, 0),  # ldb [x+0]   ICMP type
        (0x15, 0, 1, 3),  # jeq #3 ? accept : drop
        (0x06, 0, 0, 0x40000),
        (0x06, 0, 0, 0),
    ]


@dataclass
class SynCounters:
    """Plain counters (the metrics module exports them later)."""

    sent: int = 0
    retransmits: int = 0
    rst_sent: int = 0
    replies: int = 0
    unmatched: int = 0
    icmp_ignored: int = 0
    send_errors: int = 0


class _Pending:
    """One outstanding probe; slots because there are tens of thousands of them."""

    __slots__ = (
        "attempts",
        "batch",
        "csum_base",
        "deadline",
        "done",
        "dport",
        "dst",
        "first_sent",
        "idx",
        "isn",
        "key",
        "last_sent",
        "path",
        "sport",
        "started_at",
    )

    # set by probe_many before the probe enters the table; first_sent / last_sent / deadline
    # by the first send
    attempts: int
    batch: _Batch
    csum_base: tuple[int, int]
    deadline: float
    done: bool
    dport: int
    dst: bytes
    first_sent: float
    idx: int
    isn: int
    key: tuple[bytes, int, int]
    last_sent: float
    path: str
    sport: int
    started_at: float

    def __init__(self) -> None:
        self.done = False


class _Batch:
    """The bookkeeping of one ``probe_many`` call."""

    def __init__(self, n: int, per_attempt_s: float, attempts: int) -> None:
        self.results: list[ProbeResult | None] = [None] * n
        self.left = n
        self.finished = asyncio.Event()
        self.per_attempt_s = per_attempt_s
        self.attempts = attempts
        self.timers: collections.deque[_Pending] = collections.deque()
        self.wake = asyncio.Event()


class SynEngine:
    """Owns the raw sockets, the bounded table of outstanding probes and the receive path.

    Use as ``async with SynEngine(...) as eng: await eng.probe_many(targets)`` or call
    ``open()``/``close()`` (``open`` is synchronous so the sockets can be created inside
    ``agent.rawsock.in_netns``). Many ``probe_many`` calls may run concurrently on one engine.
    ``PrivilegeError`` from ``open`` means no CAP_NET_RAW.
    """

    def __init__(
        self,
        *,
        tagger: SynTagger | None = None,
        sports: tuple[int, int] = DEFAULT_SPORTS,
        max_outstanding: int = 65536,
        socket_factory: SocketFactory = default_socket_factory,
        rcvbuf: int = 8 << 20,
        send_rst: bool = True,
        templates: Templates | None = None,
    ) -> None:
        lo, hi = sports
        if not 1024 <= lo <= hi <= 65535:
            raise ValueError("sports must be a range within 1024..65535")
        if max_outstanding < 1:
            raise ValueError("max_outstanding must be positive")
        self.tagger = tagger
        self.sports = (lo, hi)
        self.max_outstanding = max_outstanding
        self.send_rst = send_rst
        self.counters = SynCounters()
        self._factory = socket_factory
        self._rcvbuf = rcvbuf
        self._tcp: socket.socket | None = None
        self._icmp: socket.socket | None = None
        self._udp: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._table: dict[tuple[bytes, int, int], _Pending] = {}
        self._space = asyncio.Event()
        self._next_sport = random.randint(lo, hi)
        self._syn_tmpl, self._rst_tmpl = templates or syn_templates()
        #: why the sockets became unusable (None while they work); see ``healthy``
        self.failure: str | None = None
        self._syn_sum = sum16(self._syn_tmpl)
        self._rst_sum = sum16(self._rst_tmpl)
        self._src_cache: dict[bytes, bytes] = {}
        self._base_cache: dict[bytes, tuple[int, int]] = {}
        self._addr_cache: dict[str, bytes] = {}
        self._rbuf = bytearray(2048)
        self._ibuf = bytearray(2048)

    # ---------------------------------------------------------------- lifecycle

    def open(self) -> SynEngine:
        """Create the sockets; ``PrivilegeError`` without CAP_NET_RAW."""
        if self._tcp is not None:
            return self
        try:
            tcp = self._factory(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
        except PermissionError as exc:
            raise PrivilegeError(f"raw TCP socket: {exc}") from exc
        except OSError as exc:
            raise ProbeError(f"raw TCP socket: {exc}") from exc
        try:
            icmp = self._factory(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
            udp = self._factory(socket.AF_INET, socket.SOCK_DGRAM, 0)
        except PermissionError as exc:
            tcp.close()
            raise PrivilegeError(f"raw ICMP socket: {exc}") from exc
        except OSError as exc:
            tcp.close()
            raise ProbeError(f"raw ICMP socket: {exc}") from exc
        try:
            attach_bpf(tcp, _tcp_bpf(*self.sports))
            attach_bpf(icmp, _icmp_bpf())
            for s in (tcp, icmp):
                set_rcvbuf(s, self._rcvbuf)
                s.setblocking(False)
        except OSError as exc:
            for s in (tcp, icmp, udp):
                s.close()
            raise ProbeError(f"raw socket setup: {exc}") from exc
        self._tcp, self._icmp, self._udp = tcp, icmp, udp
        self.failure = None
        return self

    def close(self) -> None:
        """Stop reading and close the sockets; outstanding probes become timeouts."""
        if self._loop is not None and not self._loop.is_closed():
            for s in (self._tcp, self._icmp):
                if s is not None:
                    with contextlib.suppress(Exception):
                        self._loop.remove_reader(s.fileno())
        self._loop = None
        for s in (self._tcp, self._icmp, self._udp):
            if s is not None:
                s.close()
        self._tcp = self._icmp = self._udp = None
        for p in list(self._table.values()):
            self._finish(p, "timeout", None, None)
        self._table.clear()

    async def __aenter__(self) -> SynEngine:
        return self.open()

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    @property
    def outstanding(self) -> int:
        return len(self._table)

    @property
    def healthy(self) -> bool:
        """Open, and no socket has failed in a way that is the socket's fault (not the path's)."""
        socks = (self._tcp, self._icmp, self._udp)
        if self.failure is not None or any(s is None for s in socks):
            return False
        return all(s.fileno() >= 0 for s in socks if s is not None)

    def forget_routes(self) -> None:
        """Drop the cached source address (and checksum base) per destination.

        The next probe to each destination asks the kernel again (one route lookup, no
        packet), so a long-lived engine follows a changed route or source address.
        """
        self._src_cache.clear()
        self._base_cache.clear()

    def _broken(self, what: str, exc: OSError) -> None:
        if self.failure is None:
            self.failure = f"{what}: {exc}"
            log.warning("syn engine: %s", self.failure)

    def _attach(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        if self._tcp is None or self._icmp is None:
            raise ProbeError("SynEngine is not open")
        self._loop = loop  # set first: close() removes whatever was registered
        try:
            loop.add_reader(self._tcp.fileno(), self._on_tcp)
            loop.add_reader(self._icmp.fileno(), self._on_icmp)
        except (OSError, ValueError) as exc:  # a socket closed under us
            self._broken("register", OSError(errno.EBADF, str(exc)))
            raise ProbeError(f"SynEngine sockets unusable: {exc}") from exc
        self._space = asyncio.Event()

    # ---------------------------------------------------------------- probing

    async def probe(
        self, target: ProbeTarget, *, timeout_s: float = 2.0, retries: int = 1
    ) -> ProbeResult:
        return (await self.probe_many([target], timeout_s=timeout_s, retries=retries))[0]

    async def probe_many(
        self,
        targets: Sequence[ProbeTarget],
        *,
        timeout_s: float = 2.0,
        retries: int = 1,
        rate_pps: float | None = None,
    ) -> list[ProbeResult]:
        """Probe every target once (plus retries on silence); results in target order.

        ``timeout_s`` bounds each probe as a whole: each of the ``1 + retries`` sends waits
        ``timeout_s / (1 + retries)``. ``rate_pps`` paces first sends (None: as fast as the
        outstanding table allows).
        """
        if retries < 0 or timeout_s <= 0:
            raise ValueError("retries must be >= 0 and timeout_s > 0")
        self._attach()
        attempts = 1 + retries
        batch = _Batch(len(targets), timeout_s / attempts, attempts)
        if not targets:
            return []
        timer = asyncio.create_task(self._timer(batch))
        try:
            await self._send_all(batch, targets, rate_pps)
            await batch.finished.wait()
        finally:
            timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
            for p in batch.timers:  # cancelled mid-way: drop our entries
                if not p.done:
                    self._finish(p, "timeout", None, None)
        return [r for r in batch.results if r is not None]

    def _literal(self, host: str) -> bytes | None:
        packed = self._addr_cache.get(host)
        if packed is None:
            try:
                packed = ipaddress.IPv4Address(host).packed
            except ValueError:
                return None
            if len(self._addr_cache) > 65536:
                self._addr_cache.clear()
            self._addr_cache[host] = packed
        return packed

    async def _resolve(self, target: ProbeTarget) -> bytes | ProbeResult:
        host = target.host
        if target.path.ip is not None:
            return self._static_result(target, "error", f"syn: not an IPv4 address: {host}")
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, None, family=socket.AF_INET, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            return self._static_result(target, "dns_error", f"resolve {host}: {exc}")
        if not infos:
            return self._static_result(target, "dns_error", f"resolve {host}: no IPv4 address")
        return socket.inet_aton(str(infos[0][4][0]))

    def _static_result(self, target: ProbeTarget, outcome: str, error: str) -> ProbeResult:
        return ProbeResult(
            path=target.path.id,
            probe="syn",
            outcome=outcome,
            started_at=time.time(),
            target_ip=target.path.ip,
            port=target.port,
            error=error,
        )

    def _sums(self, dst: bytes) -> tuple[int, int] | None:
        """Partial checksums (SYN, RST) for ``dst``: pseudo header + template, ports/seq 0."""
        base = self._base_cache.get(dst)
        if base is not None:
            return base
        assert self._udp is not None
        src = self._src_cache.get(dst)
        if src is None:
            try:  # a route lookup, no packet: the kernel picks the source as for connect()
                self._udp.connect((socket.inet_ntoa(dst), 9))
                src = socket.inet_aton(self._udp.getsockname()[0])
            except OSError:
                return None
            self._src_cache[dst] = src
        pseudo = src + dst
        syn = sum16(pseudo) + 6 + len(self._syn_tmpl) + self._syn_sum
        rst = sum16(pseudo) + 6 + len(self._rst_tmpl) + self._rst_sum
        if len(self._base_cache) > 65536:
            self._base_cache.clear()
        self._base_cache[dst] = base = (syn, rst)
        return base

    def _alloc_sport(self, dst: bytes, dport: int) -> int | None:
        lo, hi = self.sports
        n = hi - lo + 1
        sport = self._next_sport
        table = self._table
        for _ in range(n):
            sport = sport + 1 if sport < hi else lo
            if (dst, dport, sport) not in table:
                self._next_sport = sport
                return sport
        return None

    async def _send_all(
        self, batch: _Batch, targets: Sequence[ProbeTarget], rate_pps: float | None
    ) -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        tagger = self.tagger
        for idx, target in enumerate(targets):
            if idx % _SEND_BATCH == 0 and idx:
                if rate_pps:
                    ahead = t0 + idx / rate_pps - loop.time()
                    await asyncio.sleep(max(ahead, 0))
                else:
                    await asyncio.sleep(0)  # let the receive path and timers run
            while len(self._table) >= self.max_outstanding:
                self._space.clear()
                await self._space.wait()
            literal = self._literal(target.host)
            dst = literal if literal is not None else await self._resolve(target)
            if isinstance(dst, ProbeResult):
                self._store(batch, idx, dst)
                continue
            sums = self._sums(dst)
            if sums is None:
                self._store(batch, idx, self._static_result(target, "error", "no route"))
                continue
            dport = target.port
            sport = self._alloc_sport(dst, dport)
            while sport is None:  # every port of the range is in flight to this dst:dport
                self._space.clear()
                await self._space.wait()
                sport = self._alloc_sport(dst, dport)
            p = _Pending()
            p.batch = batch
            p.idx = idx
            p.path = target.path.id
            p.dst = dst
            p.dport = dport
            p.sport = sport
            p.isn = tagger.make() if tagger is not None else random.getrandbits(32)
            p.csum_base = sums
            p.attempts = 0
            p.started_at = time.time()
            p.key = (dst, dport, sport)
            self._table[p.key] = p
            self._send_syn(p, loop.time())
            batch.timers.append(p)
            if len(batch.timers) == 1:
                batch.wake.set()

    def _store(self, batch: _Batch, idx: int, result: ProbeResult) -> None:
        batch.results[idx] = result
        batch.left -= 1
        if batch.left == 0:
            batch.finished.set()

    def _send_syn(self, p: _Pending, now: float) -> None:
        isn = p.isn
        buf = bytearray(self._syn_tmpl)
        _PORTS_SEQ.pack_into(buf, 0, p.sport, p.dport, isn)
        _CSUM.pack_into(
            buf, 16, fold16(p.csum_base[0] + p.sport + p.dport + (isn >> 16) + (isn & 0xFFFF))
        )
        if p.attempts == 0:
            p.first_sent = now
        else:
            self.counters.retransmits += 1
        p.attempts += 1
        p.last_sent = now
        p.deadline = now + p.batch.per_attempt_s
        self._sendto(buf, p.dst)
        self.counters.sent += 1

    def _send_rst(self, p: _Pending) -> None:
        seq = (p.isn + 1) & _U32
        buf = bytearray(self._rst_tmpl)
        _PORTS_SEQ.pack_into(buf, 0, p.sport, p.dport, seq)
        _CSUM.pack_into(
            buf, 16, fold16(p.csum_base[1] + p.sport + p.dport + (seq >> 16) + (seq & 0xFFFF))
        )
        self._sendto(buf, p.dst)
        self.counters.rst_sent += 1

    def _sendto(self, buf: bytearray, dst: bytes) -> None:
        assert self._tcp is not None
        addr = (socket.inet_ntoa(dst), 0)
        for _ in range(3):
            try:
                self._tcp.sendto(buf, addr)
                return
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    continue
                if exc.errno in _FATAL_ERRNOS:
                    self._broken("send", exc)
                break
        # lost on our side: the probe will time out, retry or not; counted, never silent
        self.counters.send_errors += 1

    async def _timer(self, batch: _Batch) -> None:
        """Retransmit on silence and finish probes as timeouts; deadlines are FIFO per batch."""
        loop = asyncio.get_running_loop()
        timers = batch.timers
        while True:
            while timers and timers[0].done:
                timers.popleft()
            if not timers:
                batch.wake.clear()
                await batch.wake.wait()
                continue
            now = loop.time()
            head = timers[0]
            if head.deadline > now:
                await asyncio.sleep(head.deadline - now)
                continue
            timers.popleft()
            if head.attempts < batch.attempts:
                self._send_syn(head, now)
                timers.append(head)
            else:
                self._finish(head, "timeout", None, None)

    # ---------------------------------------------------------------- receiving

    def _drain(self, sock: socket.socket | None, buf: bytearray, what: str) -> Iterator[int]:
        """Yield the length of each packet received into ``buf``, at most ``_RECV_BATCH``.

        Stops when the socket is empty or gone (closed meanwhile); a fatal error marks the
        engine broken. Bounded, so one busy socket cannot starve the event loop; shared by the
        TCP and ICMP readers so both stop and fail the same way.
        """
        if sock is None:
            return
        for _ in range(_RECV_BATCH):
            try:
                n = sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in _FATAL_ERRNOS:
                    self._broken(what, exc)
                return
            yield n

    def _on_tcp(self) -> None:
        buf = self._rbuf
        table = self._table
        unpack = _REPLY.unpack_from
        now = 0.0
        for n in self._drain(self._tcp, buf, "receive (tcp)"):
            ihl = (buf[0] & 0x0F) << 2
            if n < ihl + 20:
                continue
            sport, dport, _seq, ack = unpack(buf, ihl)
            p = table.get((bytes(buf[12:16]), sport, dport))
            if p is None or ack != (p.isn + 1) & _U32:
                self.counters.unmatched += 1
                continue
            flags = buf[ihl + 13]
            if not now:
                now = time.monotonic()
            if flags & (_TCP_SYN | _TCP_ACK) == _TCP_SYN | _TCP_ACK:
                if self.send_rst:
                    self._send_rst(p)
                self._finish(p, "ok", "syn-ack", None, now)
            elif flags & _TCP_RST:
                self._finish(p, "refused", "rst", None, now)
            else:
                self.counters.unmatched += 1

    def _on_icmp(self) -> None:
        buf = self._ibuf
        table = self._table
        for n in self._drain(self._icmp, buf, "receive (icmp)"):
            ihl = (buf[0] & 0x0F) << 2
            inner = ihl + 8
            if n < inner + 20 or buf[ihl] != 3:
                continue
            iihl = (buf[inner] & 0x0F) << 2
            if buf[inner + 9] != 6 or n < inner + iihl + 8:
                self.counters.icmp_ignored += 1
                continue
            code = buf[ihl + 1]
            sport, dport, seq = _PORTS_SEQ.unpack_from(buf, inner + iihl)
            p = table.get((bytes(buf[inner + 16 : inner + 20]), dport, sport))
            if p is None or seq != p.isn:
                self.counters.unmatched += 1
                continue
            if code not in FILTERED_ICMP_CODES:
                self.counters.icmp_ignored += 1
                continue
            self._finish(p, "icmp_unreachable", "icmp", (3, code), time.monotonic())

    def _finish(
        self,
        p: _Pending,
        outcome: str,
        reply: str | None,
        icmp: tuple[int, int] | None,
        now_mono: float | None = None,
    ) -> None:
        if p.done:
            return
        p.done = True
        if self._table.get(p.key) is p:
            del self._table[p.key]
            if not self._space.is_set():
                self._space.set()
        if reply is not None:
            self.counters.replies += 1
        tagger = self.tagger
        detail = {
            "isn": p.isn,
            "tag": (p.isn & ((1 << tagger.tag_bits) - 1)) if tagger is not None else None,
            "tag_bits": tagger.tag_bits if tagger is not None else 0,
            "sport": p.sport,
            "attempts": p.attempts,
            "reply": reply,
            "state": {"ok": "open", "refused": "closed"}.get(outcome, "filtered"),
        }
        end = now_mono if now_mono is not None else time.monotonic()
        attempts_s = p.batch.per_attempt_s * p.attempts
        duration = (end - p.first_sent) if reply is not None else attempts_s
        phases = {"rtt": end - p.last_sent} if reply is not None else {}
        result = ProbeResult(
            path=p.path,
            probe="syn",
            outcome=outcome,
            started_at=p.started_at,
            duration_s=duration,
            phases=phases,
            target_ip=socket.inet_ntoa(p.dst),
            port=p.dport,
            icmp=icmp,
            detail=detail,
        )
        self._store(p.batch, p.idx, result)


# ------------------------------------------------------------------------------ the prober


def tagger_for(ctx: ProbeContext) -> SynTagger | None:
    """The context's SYN tagger (cached in ``ctx.extras``); None when running keyless."""
    cached = ctx.extras.get("syn_tagger")
    if isinstance(cached, SynTagger):
        return cached
    if len(ctx.key) < MIN_KEY_LEN:
        return None  # insecure lab mode: random ISNs, nothing for the sniffer to verify
    tagger = SynTagger(ctx.key)
    ctx.extras["syn_tagger"] = tagger
    return tagger


async def probe(target: ProbeTarget, ctx: ProbeContext) -> ProbeResult:
    """One SYN probe. Uses ``ctx.extras["syn_engine"]`` when the runner shares one engine,
    else opens a per-call engine (``ctx.extras["syn_socket_factory"]`` may replace socket
    creation). Without CAP_NET_RAW, runs the tcp prober and says so in ``fallback``.
    """
    engine = ctx.extras.get("syn_engine")
    if isinstance(engine, SynEngine):
        return await engine.probe(target, timeout_s=ctx.timeout_s, retries=ctx.retries)
    factory = ctx.extras.get("syn_socket_factory") or default_socket_factory
    # extras values are untyped (object); this one is a SocketFactory when set (tests, benches)
    engine = SynEngine(tagger=tagger_for(ctx), socket_factory=factory, max_outstanding=16)  # type: ignore[arg-type]
    try:
        engine.open()
    except PrivilegeError as exc:
        return await _fallback(target, ctx, str(exc))
    try:
        return await engine.probe(target, timeout_s=ctx.timeout_s, retries=ctx.retries)
    finally:
        engine.close()


async def _fallback(target: ProbeTarget, ctx: ProbeContext, why: str) -> ProbeResult:
    from agent.probes import tcp  # lazy: tcp is only needed where raw sockets are not

    result = await tcp.probe(target, ctx)
    result.probe = "syn"
    result.fallback = FALLBACK_NOTE
    result.detail["fallback_reason"] = why
    return result


def _main(argv: Sequence[str]) -> int:
    """``python -m agent.probes.syn --templates``: print the SYN and RST templates as hex."""
    if list(argv) != ["--templates"]:
        print("usage: python -m agent.probes.syn --templates", file=sys.stderr)
        return 2
    for hdr in _build_templates():
        print(hdr.hex())
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
