"""Passive observation of the real service port: tagged SYNs and probe tokens, read-only.

Why passive: the responder proves a path to a *probe* port; operators also need to know that
probes reach the port the real service listens on, without putting anything in front of it.
The sniffer reads copies of frames from an ``AF_PACKET`` socket on one interface; it never
sends, never binds a TCP port and never changes what the service receives.

Pipeline
    kernel   classic BPF (compiled by libpcap through scapy, attached with SO_ATTACH_FILTER)
             keeps IPv4 TCP to the service ports that is a SYN (without ACK) or carries data,
             truncated to ``snaplen`` bytes — the rest of the service's traffic never reaches
             Python. The socket is created with protocol 0 and bound only after the filter is
             attached, so no unfiltered frame is ever queued. Bound to ETH_P_IP, it sees only
             received frames (outgoing copies go to ETH_P_ALL taps only), plus
             PACKET_IGNORE_OUTGOING where the kernel has it.
    loop     the socket is non-blocking and registered with ``loop.add_reader``; each wakeup
             drains up to ``batch`` frames into one preallocated buffer. A dedicated thread
             would not help: parsing is Python and holds the GIL either way, and the kernel
             receive buffer (``rcvbuf``, forced when privileged) absorbs bursts while the loop
             is busy elsewhere. Kernel drops are read from PACKET_STATISTICS.
    parse    ``process_frame`` (pure, testable without sockets):
             SYN       -> ``SynTagger.verify(isn)`` -> Observation(kind="syn_tag")
             data      -> optional PROXY v2 stack (the outermost header is the NLB's), then a
                          token at the start of the payload, or an ``X-Plprobe-Token`` header
                          in the first ``header_scan`` bytes of an HTTP request
                          -> ``decode_token`` + ``ReplayGuard`` -> Observation(kind="token")
             anything else is counted and forgotten.
    store    a ``deque(maxlen=max_observations)`` (oldest evicted, counted in ``dropped``) and
             an optional ``sink`` callable (e.g. ``ObservationStore.append``).

Forged tokens are counted in ``forged`` and never recorded; replays (including TCP
retransmissions of a first segment) in ``replayed``. A SYN tag match is statistical evidence
(``SynTagger.false_positive_rate``), a token is proof. ``Observation.answered`` is left at
its default: a sniffer cannot see whether the service answered. IPv4 only.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import struct
import time
from collections.abc import Callable, Iterable

from agent.errors import (
    ForgedError,
    MalformedError,
    PrivilegeError,
    ProbeError,
    ReplayError,
    TruncatedError,
    WireError,
)
from agent.rawsock import (
    DLT_EN10MB,
    ETH_P_IP,
    PACKET_IGNORE_OUTGOING,
    SOL_PACKET,
    SocketFactory,
    attach_bpf,
    compile_bpf,
    default_socket_factory,
    linktype_of,
    packet_stats,
    set_rcvbuf,
)
from agent.results import Observation, hostport
from agent.wire import (
    TOKEN_HEADER,
    TOKEN_MAGIC,
    ProxyHeader,
    ReplayGuard,
    SynTagger,
    Token,
    decode_token,
    is_proxy_v2_prefix,
    parse_proxy_stack,
    token_from_header,
)

__all__ = ["Sniffer", "bpf_expression"]

_HEADER_NEEDLE = TOKEN_HEADER.lower().encode("ascii") + b":"
_TCP_SYN = 0x02
_TCP_ACK = 0x10
_PORTS_SEQ = struct.Struct("!HHI")


def bpf_expression(ports: Iterable[int]) -> str:
    """The pcap filter: IPv4 TCP to the service ports, SYN-without-ACK or carrying data."""
    plist = sorted(set(ports))
    if not plist or not all(0 < p < 65536 for p in plist):
        raise ValueError("ports must be a non-empty set of 1..65535")
    dst = " or ".join(f"tcp dst port {p}" for p in plist)
    return (
        f"ip and ({dst}) and ("
        "(tcp[tcpflags] & (tcp-syn|tcp-ack)) == tcp-syn"
        " or (ip[2:2] - ((ip[0]&0xf)<<2) - ((tcp[12]&0xf0)>>2)) > 0)"
    )


class Sniffer:
    """AF_PACKET observer of one interface's service ports (see the module docstring).

    ``open()`` is synchronous so the socket can be created inside ``agent.rawsock.in_netns``;
    ``start()`` registers it with the running loop; ``close()`` undoes both. Counters are plain
    attributes: ``packets_seen``, ``syns``, ``data_segments``, ``tagged``, ``tokens``,
    ``forged``, ``replayed``, ``malformed``, ``untagged``, ``dropped`` (ring evictions) and
    ``kernel_drops`` (refreshed by ``poll_kernel_stats``).
    """

    def __init__(
        self,
        interface: str,
        ports: Iterable[int],
        *,
        key: bytes,
        target: str,
        insecure: bool = False,
        tagger: SynTagger | None = None,
        max_observations: int = 10_000,
        sink: Callable[[Observation], None] | None = None,
        rcvbuf: int = 32 << 20,
        snaplen: int = 4096,
        header_scan: int = 2048,
        batch: int = 1024,
        replay_window_s: float = 30.0,
        socket_factory: SocketFactory = default_socket_factory,
    ) -> None:
        self.interface = interface
        self.ports = frozenset(ports)
        self.filter = bpf_expression(self.ports)
        self.target = target
        self.key = key
        self.insecure = insecure
        self.tagger = tagger if tagger is not None else (None if insecure else SynTagger(key))
        self.observations: collections.deque[Observation] = collections.deque(
            maxlen=max_observations
        )
        self.sink = sink
        self.rcvbuf = rcvbuf
        self.snaplen = snaplen
        self.header_scan = header_scan
        self.batch = batch
        self.replay = ReplayGuard(window_s=replay_window_s)
        self._factory = socket_factory
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buf = bytearray(max(snaplen, 256))
        self._linktype = DLT_EN10MB
        self.packets_seen = 0
        self.syns = 0
        self.data_segments = 0
        self.tagged = 0
        self.tokens = 0
        self.forged = 0
        self.replayed = 0
        self.malformed = 0
        self.untagged = 0
        self.dropped = 0
        self.kernel_drops = 0
        self.kernel_packets = 0

    # ---------------------------------------------------------------- lifecycle

    def open(self) -> Sniffer:
        """Create the socket, attach the filter, then bind (so nothing unfiltered is queued)."""
        if self._sock is not None:
            return self
        self._linktype = linktype_of(self.interface)
        insns = compile_bpf(self.filter, self._linktype)
        insns = [(c, jt, jf, min(k, self.snaplen) if c == 0x06 else k) for c, jt, jf, k in insns]
        try:
            sock = self._factory(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except PermissionError as exc:
            raise PrivilegeError(f"AF_PACKET socket: {exc}") from exc
        except OSError as exc:
            raise ProbeError(f"AF_PACKET socket: {exc}") from exc
        try:
            attach_bpf(sock, insns)
            set_rcvbuf(sock, self.rcvbuf)
            with contextlib.suppress(OSError):
                sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            sock.bind((self.interface, ETH_P_IP))
            sock.setblocking(False)
            packet_stats(sock)  # reset the kernel's counters to "since open"
        except OSError as exc:
            sock.close()
            raise ProbeError(f"sniffer on {self.interface}: {exc}") from exc
        self._sock = sock
        return self

    def start(self) -> None:
        """Start reading on the running loop (opens the socket first if needed)."""
        self.open()
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        if self._loop is loop:
            return
        self._loop = loop
        loop.add_reader(self._sock.fileno(), self._on_readable)

    def close(self) -> None:
        if self._sock is not None:
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(self._sock.fileno())
            with contextlib.suppress(OSError):
                self.poll_kernel_stats()
            self._sock.close()
        self._sock = None
        self._loop = None

    async def __aenter__(self) -> Sniffer:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def poll_kernel_stats(self) -> None:
        """Fold the kernel's PACKET_STATISTICS (packets passed the filter, drops) into ours."""
        if self._sock is not None:
            packets, drops = packet_stats(self._sock)
            self.kernel_packets += packets
            self.kernel_drops += drops

    def drain(self) -> list[Observation]:
        """Take every observation recorded so far (oldest first)."""
        out = list(self.observations)
        self.observations.clear()
        return out

    # ---------------------------------------------------------------- reading

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        buf = self._buf
        view = memoryview(buf)
        now = time.time()
        for _ in range(self.batch):
            try:
                n = sock.recv_into(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            self.process_frame(view[:n], now)

    # ---------------------------------------------------------------- parsing (pure)

    def process_frame(self, frame: memoryview | bytes, now: float | None = None) -> None:
        """Classify one captured frame (link header per the interface's link type)."""
        self.packets_seen += 1
        off = 0
        if self._linktype == DLT_EN10MB:
            if len(frame) < 14:
                return
            ethertype = (frame[12] << 8) | frame[13]
            off = 14
            if ethertype == 0x8100 and len(frame) >= 18:
                ethertype = (frame[16] << 8) | frame[17]
                off = 18
            if ethertype != 0x0800:
                return
        self.process_ip(frame[off:], time.time() if now is None else now)

    def process_ip(self, pkt: memoryview | bytes, now: float) -> None:
        if len(pkt) < 40 or pkt[0] >> 4 != 4 or pkt[9] != 6:
            return
        ihl = (pkt[0] & 0x0F) << 2
        total = min((pkt[2] << 8) | pkt[3], len(pkt))
        if total < ihl + 20:
            return
        sport, dport, seq = _PORTS_SEQ.unpack_from(pkt, ihl)
        thl = (pkt[ihl + 12] >> 4) << 2
        flags = pkt[ihl + 13]
        start = ihl + thl
        if flags & (_TCP_SYN | _TCP_ACK) == _TCP_SYN:
            self.syns += 1
            if self.tagger is not None and self.tagger.verify(seq, now):
                self.tagged += 1
                self._record(self._observation(pkt, sport, dport, now, isn=seq))
            else:
                self.untagged += 1
            return
        if start >= total:
            return
        self.data_segments += 1
        self._process_payload(bytes(pkt[start:total]), pkt, sport, dport, now)

    def _process_payload(
        self, payload: bytes, pkt: memoryview | bytes, sport: int, dport: int, now: float
    ) -> None:
        proxy = None
        rest = payload
        try:
            if is_proxy_v2_prefix(payload):
                headers, used = parse_proxy_stack(payload)
                proxy = headers[0] if headers else None
                rest = payload[used:]
            raw = self._find_token(rest)
            if raw is None:
                self.untagged += 1
                return
            token, _ = decode_token(raw, self.key, insecure=self.insecure)
            self.replay.check(token, int(now * 1e9))
        except ForgedError:
            self.forged += 1
            return
        except ReplayError:
            self.replayed += 1
            return
        except (MalformedError, TruncatedError, WireError):
            self.malformed += 1
            return
        self.tokens += 1
        self._record(self._observation(pkt, sport, dport, now, token=token, proxy=proxy))

    def _observation(
        self,
        pkt: memoryview | bytes,
        sport: int,
        dport: int,
        now: float,
        *,
        isn: int | None = None,
        token: Token | None = None,
        proxy: ProxyHeader | None = None,
    ) -> Observation:
        """The Observation of one IPv4 segment: a tagged SYN (``isn``) or a token (``token``,
        with the NLB's PROXY v2 header if one came first).

        One constructor for both kinds, so they always name the connection the same way.
        """
        return Observation(
            kind="syn_tag" if token is None else "token",
            target=self.target,
            seen_at=now,
            src_ip=socket.inet_ntoa(bytes(pkt[12:16])),
            src_port=sport,
            dst_ip=socket.inet_ntoa(bytes(pkt[16:20])),
            dst_port=dport,
            via="sniffer",
            probe_id="" if token is None else token.probe_id_hex,
            path="" if token is None else token.path_id,
            agent="" if token is None else token.agent_id,
            isn=isn,
            proxy_endpoint_id=proxy.vpce_id if proxy is not None else None,
            proxy_src=hostport(proxy.src_ip, proxy.src_port) if proxy is not None else None,
            proxy_dst=hostport(proxy.dst_ip, proxy.dst_port) if proxy is not None else None,
        )

    def _find_token(self, data: bytes) -> bytes | None:
        """Token bytes at the start of ``data``, or from an HTTP ``X-Plprobe-Token`` header."""
        if data[:4] == TOKEN_MAGIC:
            return data
        if not data[:1].isalpha():  # not an HTTP request line: nothing to scan
            return None
        head = data[: self.header_scan]
        at = head.lower().find(b"\n" + _HEADER_NEEDLE)
        if at < 0:
            return None
        value_start = at + 1 + len(_HEADER_NEEDLE)
        end = head.find(b"\r\n", value_start)
        if end < 0:
            end = head.find(b"\n", value_start)
        if end < 0:
            raise TruncatedError(f"{TOKEN_HEADER} header runs past the scanned bytes")
        value = head[value_start:end].decode("latin-1")
        return token_from_header(value)

    def _record(self, obs: Observation) -> None:
        if len(self.observations) == self.observations.maxlen:
            self.dropped += 1
        self.observations.append(obs)
        if self.sink is not None:
            self.sink(obs)
