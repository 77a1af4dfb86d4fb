"""Bytes on the wire: probe tokens, responder replies, SYN sequence-number tags, PROXY v2.

Everything here is pure (bytes in, dataclass out, or the reverse) so that sockets, sniffers and
the lab stay thin shells around it and the formats can be tested without a network. The byte
layouts are written out in ``docs/WIRE.md``; this docstring is the map.

Formats
    Token       client -> target, first bytes of a TCP probe or base64url in ``X-Plprobe-Token``.
                ``encode_token`` / ``decode_token`` / ``token_to_header`` / ``token_from_header``.
    Reply       responder -> client: what the target saw (addresses, PROXY v2 data).
                ``encode_reply`` / ``decode_reply``.
    SYN tag     the 32-bit initial sequence number of a raw SYN probe carries a keyed tag, so a
                passive sniffer can tell this deployment's SYNs apart with no per-probe state.
                ``SynTagger``.
    PROXY v2    the header an NLB prepends when ``proxy_protocol_v2.enabled`` is on (HAProxy's
                spec plus the AWS TLV). ``parse_proxy_v2`` / ``parse_proxy_stack`` /
                ``build_proxy_v2`` / ``is_proxy_v2_prefix`` / ``crc32c``.

Errors (all from ``agent.errors``; nothing else escapes a decoder or parser)
    WireError
    ├── TruncatedError   the buffer ends early: a stream reader should read more and retry
    ├── MalformedError   these bytes can never become valid: drop the connection / count it
    ├── ForgedError      the HMAC does not verify under our key
    └── ReplayError      authentic, but stale, from the future, or already seen (``ReplayGuard``)

Programming errors (building a Token with a 200-byte path id, a key that is too short) raise
``ValueError``: they are bugs or bad configuration, not hostile bytes.

Authentication: tokens and replies end with HMAC-SHA256(key, everything before it) truncated to
16 bytes, compared with ``hmac.compare_digest``. The magic (``PLPB`` / ``PLPR``) is inside the MAC
and SYN tags use a third prefix (``PLPS``), so one shared key serves all three without one
format's MAC being valid for another. ``insecure=True`` (lab only) writes an all-zero MAC and
skips the check; it must be asked for explicitly and only with an empty key, so a missing key in
a production config can never silently turn authentication off.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import hmac
import ipaddress
import secrets
import struct
import time
from dataclasses import dataclass, field
from typing import Literal

from agent.errors import ForgedError, MalformedError, ReplayError, TruncatedError

__all__ = [
    "AGENT_ID_MAX",
    "MAC_LEN",
    "MIN_KEY_LEN",
    "PATH_ID_MAX",
    "PP2_SUBTYPE_AWS_VPCE_ID",
    "PP2_TYPE_ALPN",
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_AWS",
    "PP2_TYPE_CRC32C",
    "PP2_TYPE_NOOP",
    "PP2_TYPE_SSL",
    "PP2_TYPE_UNIQUE_ID",
    "PROBE_ID_LEN",
    "PROXY_V2_MAX_LEN",
    "PROXY_V2_SIGNATURE",
    "REPLY_MAGIC",
    "REPLY_MAX",
    "TOKEN_HEADER",
    "TOKEN_MAGIC",
    "TOKEN_MAX",
    "TOKEN_STRINGS_MAX",
    "VPCE_ID_MAX",
    "ProxyHeader",
    "ReplayGuard",
    "Reply",
    "SynTagger",
    "Tlv",
    "Token",
    "build_proxy_v2",
    "crc32c",
    "decode_reply",
    "decode_token",
    "encode_reply",
    "encode_token",
    "is_proxy_v2_prefix",
    "parse_proxy_stack",
    "parse_proxy_v2",
    "token_from_header",
    "token_to_header",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AddressLike = str | ipaddress.IPv4Address | ipaddress.IPv6Address
Buffer = bytes | bytearray | memoryview

# --------------------------------------------------------------------------------------------
# Shared HMAC scheme
# --------------------------------------------------------------------------------------------

MAC_LEN = 16
"""Truncated HMAC-SHA256 length: 128 bits is far beyond what an online forger can brute-force."""

MIN_KEY_LEN = 16
"""Shortest accepted key; shorter keys are almost always a config mistake (a password, a typo)."""

_ZERO_MAC = bytes(MAC_LEN)


def _check_key(key: bytes, insecure: bool) -> None:
    """Refuse the two ways a key can silently weaken authentication."""
    if not isinstance(key, bytes | bytearray):
        raise TypeError("key must be bytes")
    if insecure:
        if key:
            raise ValueError("insecure=True takes an empty key; a key with it would be ignored")
    elif len(key) < MIN_KEY_LEN:
        raise ValueError(
            f"key must be at least {MIN_KEY_LEN} bytes (got {len(key)}); "
            "pass key=b'' with insecure=True to disable authentication (lab only)"
        )


def _mac(key: bytes, body: bytes, insecure: bool) -> bytes:
    return _ZERO_MAC if insecure else hmac.digest(key, body, "sha256")[:MAC_LEN]


def _verify_mac(key: bytes, body: bytes, mac: bytes, insecure: bool, what: str) -> None:
    if insecure:
        return
    if not hmac.compare_digest(hmac.digest(key, body, "sha256")[:MAC_LEN], mac):
        raise ForgedError(f"{what} HMAC does not verify under our key")


def _expect_prefix(data: bytes, magic: bytes, what: str) -> None:
    """Malformed if ``data`` cannot start with ``magic``; Truncated if it is too short to tell."""
    head = data[: len(magic)]
    if head != magic[: len(head)]:
        raise MalformedError(f"not a {what}: bad magic {bytes(head)!r}")
    if len(head) < len(magic):
        raise TruncatedError(f"{what}: {len(data)} bytes, need at least {len(magic)}")


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedError(f"{what} is not UTF-8") from exc


def _utf8_len(value: str, what: str) -> int:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be str")
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} cannot be encoded as UTF-8") from exc


# --------------------------------------------------------------------------------------------
# Probe token
# --------------------------------------------------------------------------------------------

TOKEN_MAGIC = b"PLPB"
TOKEN_VERSION = 1
TOKEN_MAX = 96
PROBE_ID_LEN = 16
PATH_ID_MAX = 64
AGENT_ID_MAX = 32
TOKEN_HEADER = "X-Plprobe-Token"

# magic(4) ver(1) path_len(1) agent_len(1) probe_id(16) sent_ns(8) | path agent | mac(16)
_TOKEN_FIXED = struct.Struct(">4sBBB16sQ")
_TOKEN_OVERHEAD = _TOKEN_FIXED.size + MAC_LEN  # 47
TOKEN_STRINGS_MAX = TOKEN_MAX - _TOKEN_OVERHEAD
"""Budget shared by path id and agent id (49 bytes): each has its own cap (64 / 32) but the
token as a whole must stay within ``TOKEN_MAX``, so both together must fit in this."""

_U64 = 1 << 64


@dataclass(frozen=True, slots=True)
class Token:
    """One probe's identity, as the client sends it and the target recognises it.

    ``probe_id`` is 16 random bytes (UUID-sized): unique across all agents without coordination,
    so correlation and the replay guard can key on it alone. ``sent_ns`` is the client's Unix
    time in ns; it bounds replays and gives one-way latency when clocks are synchronised.
    """

    probe_id: bytes
    path_id: str
    agent_id: str
    sent_ns: int

    def __post_init__(self) -> None:
        if not isinstance(self.probe_id, bytes) or len(self.probe_id) != PROBE_ID_LEN:
            raise ValueError(f"probe_id must be {PROBE_ID_LEN} bytes")
        if not isinstance(self.sent_ns, int) or not 0 <= self.sent_ns < _U64:
            raise ValueError("sent_ns must be an unsigned 64-bit integer")
        path_len = _utf8_len(self.path_id, "path_id")
        agent_len = _utf8_len(self.agent_id, "agent_id")
        if not 1 <= path_len <= PATH_ID_MAX:
            raise ValueError(f"path_id must be 1..{PATH_ID_MAX} UTF-8 bytes (got {path_len})")
        if not 1 <= agent_len <= AGENT_ID_MAX:
            raise ValueError(f"agent_id must be 1..{AGENT_ID_MAX} UTF-8 bytes (got {agent_len})")
        if path_len + agent_len > TOKEN_STRINGS_MAX:
            raise ValueError(
                f"path_id + agent_id must fit in {TOKEN_STRINGS_MAX} UTF-8 bytes together "
                f"(got {path_len} + {agent_len}) to keep the token within {TOKEN_MAX} bytes"
            )

    @classmethod
    def new(cls, path_id: str, agent_id: str, *, now_ns: int | None = None) -> Token:
        """A fresh token with a random probe id, stamped now (or at ``now_ns``)."""
        return cls(
            probe_id=secrets.token_bytes(PROBE_ID_LEN),
            path_id=path_id,
            agent_id=agent_id,
            sent_ns=time.time_ns() if now_ns is None else now_ns,
        )

    @property
    def probe_id_hex(self) -> str:
        """The probe id as it appears in logs, JSON and the observations API."""
        return self.probe_id.hex()


def encode_token(token: Token, key: bytes, *, insecure: bool = False) -> bytes:
    """Serialise and authenticate ``token``; the result is at most ``TOKEN_MAX`` bytes."""
    _check_key(key, insecure)
    path = token.path_id.encode("utf-8")
    agent = token.agent_id.encode("utf-8")
    body = (
        _TOKEN_FIXED.pack(
            TOKEN_MAGIC, TOKEN_VERSION, len(path), len(agent), token.probe_id, token.sent_ns
        )
        + path
        + agent
    )
    out = body + _mac(bytes(key), body, insecure)
    assert len(out) <= TOKEN_MAX, "Token.__post_init__ bounds the size"
    return out


def decode_token(data: Buffer, key: bytes, *, insecure: bool = False) -> tuple[Token, int]:
    """Parse and verify the token at the start of ``data``; return it and the bytes it used.

    Bytes after the token (the rest of a probe's payload) are left alone. The checks run in an
    order that lets a stream reader act on the error: TruncatedError only while every byte seen
    so far is still consistent with a token; MalformedError as soon as one is not; ForgedError
    once the whole token is there and its MAC is wrong. A length byte that was tampered with so
    that it claims more bytes than are buffered reads as TruncatedError, and becomes ForgedError
    once those bytes arrive. Freshness and replays are ``ReplayGuard``'s job, after this.
    """
    _check_key(key, insecure)
    buf = bytes(data[:TOKEN_MAX])
    _expect_prefix(buf, TOKEN_MAGIC, "probe token")
    if len(buf) > 4 and buf[4] != TOKEN_VERSION:
        raise MalformedError(f"probe token version {buf[4]} (this build speaks {TOKEN_VERSION})")
    if len(buf) > 5 and not 1 <= buf[5] <= PATH_ID_MAX:
        raise MalformedError(f"probe token path id length {buf[5]} out of 1..{PATH_ID_MAX}")
    if len(buf) > 6:
        if not 1 <= buf[6] <= AGENT_ID_MAX:
            raise MalformedError(f"probe token agent id length {buf[6]} out of 1..{AGENT_ID_MAX}")
        if buf[5] + buf[6] > TOKEN_STRINGS_MAX:
            raise MalformedError("probe token id lengths exceed the token size limit")
    if len(buf) < _TOKEN_FIXED.size:
        raise TruncatedError(f"probe token: {len(buf)} bytes, header is {_TOKEN_FIXED.size}")
    _, _, path_len, agent_len, probe_id, sent_ns = _TOKEN_FIXED.unpack_from(buf)
    end = _TOKEN_FIXED.size + path_len + agent_len
    total = end + MAC_LEN
    if len(buf) < total:
        raise TruncatedError(f"probe token: {len(buf)} bytes, need {total}")
    _verify_mac(bytes(key), buf[:end], buf[end:total], insecure, "probe token")
    start = _TOKEN_FIXED.size
    path = _text(buf[start : start + path_len], "probe token path id")
    agent = _text(buf[start + path_len : end], "probe token agent id")
    return Token(probe_id=probe_id, path_id=path, agent_id=agent, sent_ns=sent_ns), total


def token_to_header(token: bytes) -> str:
    """base64url without padding: header-safe, 128 characters at most."""
    return base64.urlsafe_b64encode(token).rstrip(b"=").decode("ascii")


_B64URL = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_HEADER_MAX = (TOKEN_MAX * 4 + 2) // 3


def token_from_header(value: str) -> bytes:
    """Decode an ``X-Plprobe-Token`` value back to token bytes (then call ``decode_token``).

    Strict on purpose: the standard library's decoder silently skips characters outside the
    alphabet, which would let two different header values stand for one token.
    """
    text = value.strip().rstrip("=")
    if len(text) > _HEADER_MAX:
        raise MalformedError(f"{TOKEN_HEADER} is longer than any token ({len(text)} chars)")
    raw = text.encode("ascii", "replace")
    if not _B64URL.issuperset(raw) or len(raw) % 4 == 1:
        raise MalformedError(f"{TOKEN_HEADER} is not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(raw + b"=" * (-len(raw) % 4))
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - the checks above prevent it
        raise MalformedError(f"{TOKEN_HEADER} is not base64url") from exc


class ReplayGuard:
    """Rejects a token that is stale, from the future, or whose probe id was already accepted.

    Call it only for tokens whose MAC verified, so that only key holders can fill it.

    Memory is bounded by ``max_entries``. An id must be remembered only as long as its token
    would still pass the freshness check (``sent_ns`` within ``window_s`` of now); after that the
    age check alone rejects a replay, so such entries are dropped first. If the guard is full of
    entries that are all still fresh (more than ``max_entries / window_s`` accepted tokens a
    second), the guard does **not** forget an id and hope: it evicts the entry with the oldest
    ``sent_ns`` and raises a floor, and from then on every token sent at or before the floor is
    rejected. The effective window shrinks under overload, but no replay can ever be accepted:
    a forgotten id always has ``sent_ns <= floor``. The floor also rises on ordinary expiry,
    which keeps the guard safe if the caller's clock steps backwards. ``saturated_evictions``
    counts the overload case for a metric.
    """

    def __init__(self, window_s: float = 30.0, max_entries: int = 65536) -> None:
        if not window_s > 0:
            raise ValueError("window_s must be positive")
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.window_ns = int(window_s * 1_000_000_000)
        self.max_entries = max_entries
        self.saturated_evictions = 0
        self._seen: dict[bytes, int] = {}
        self._heap: list[tuple[int, bytes]] = []  # (sent_ns, probe_id), oldest first
        self._floor_ns = -1

    def __len__(self) -> int:
        return len(self._seen)

    def check(self, token: Token, now_ns: int | None = None) -> None:
        """Accept ``token`` (and remember its id) or raise ReplayError saying why not."""
        now = time.time_ns() if now_ns is None else now_ns
        age = now - token.sent_ns
        if age > self.window_ns:
            raise ReplayError(f"token sent {age / 1e9:.3f}s ago, window is {self.window_s}s")
        if -age > self.window_ns:
            raise ReplayError(
                f"token sent {-age / 1e9:.3f}s in the future, window is {self.window_s}s"
            )
        if token.probe_id in self._seen:
            raise ReplayError(f"probe id {token.probe_id_hex} already seen")
        self._expire(now)
        if token.sent_ns <= self._floor_ns:
            raise ReplayError("token older than anything the replay guard still remembers")
        if len(self._seen) >= self.max_entries:
            oldest_sent, oldest_id = self._heap[0]
            if token.sent_ns <= oldest_sent:
                raise ReplayError("replay guard is full of newer tokens")
            heapq.heappop(self._heap)
            del self._seen[oldest_id]
            self._floor_ns = max(self._floor_ns, oldest_sent)
            self.saturated_evictions += 1
        self._seen[token.probe_id] = token.sent_ns
        heapq.heappush(self._heap, (token.sent_ns, token.probe_id))

    @property
    def window_s(self) -> float:
        return self.window_ns / 1e9

    def _expire(self, now_ns: int) -> None:
        horizon = now_ns - self.window_ns
        heap = self._heap
        while heap and heap[0][0] < horizon:
            sent, probe_id = heapq.heappop(heap)
            del self._seen[probe_id]
            self._floor_ns = max(self._floor_ns, sent)


# --------------------------------------------------------------------------------------------
# Reply
# --------------------------------------------------------------------------------------------

REPLY_MAGIC = b"PLPR"
REPLY_VERSION = 1
REPLY_MAX = 256
VPCE_ID_MAX = 64

_F_VPCE = 0x01
_F_PROXY_SRC = 0x02
_F_PROXY_DST = 0x04
_F_ALL = _F_VPCE | _F_PROXY_SRC | _F_PROXY_DST

# magic(4) ver(1) flags(1) probe_id(16) recv_ns(8) agent_len(1)
_REPLY_FIXED = struct.Struct(">4sBB16sQB")
_ADDR_PORT_MAX = 1 + 16 + 2
_REPLY_LARGEST = _REPLY_FIXED.size + AGENT_ID_MAX + 4 * _ADDR_PORT_MAX + 1 + VPCE_ID_MAX + MAC_LEN
assert _REPLY_LARGEST <= REPLY_MAX, _REPLY_LARGEST


def _ip(value: AddressLike, what: str) -> IPAddress:
    try:
        return ipaddress.ip_address(value)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from exc


def _check_port(port: int, what: str) -> None:
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"{what} must be 0..65535")


@dataclass(frozen=True, slots=True)
class Reply:
    """What the target saw of one probe, sent back to the client on the probe's connection.

    ``src_ip``/``src_port`` are the peer as the target's socket saw it (through an NLB: the NLB's
    private IP and a remapped port); ``local_ip``/``local_port`` the target's own end. The
    ``proxy_*`` fields come from the outermost PROXY v2 header when one was present: the
    original client address and the address it connected to (the endpoint ENI IP). Each
    ``proxy_*`` pair is both set or both ``None``.
    """

    probe_id: bytes
    agent_id: str
    recv_ns: int
    src_ip: IPAddress
    src_port: int
    local_ip: IPAddress
    local_port: int
    vpce_id: str | None = None
    proxy_src_ip: IPAddress | None = None
    proxy_src_port: int | None = None
    proxy_dst_ip: IPAddress | None = None
    proxy_dst_port: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.probe_id, bytes) or len(self.probe_id) != PROBE_ID_LEN:
            raise ValueError(f"probe_id must be {PROBE_ID_LEN} bytes")
        if not isinstance(self.recv_ns, int) or not 0 <= self.recv_ns < _U64:
            raise ValueError("recv_ns must be an unsigned 64-bit integer")
        agent_len = _utf8_len(self.agent_id, "agent_id")
        if not 1 <= agent_len <= AGENT_ID_MAX:
            raise ValueError(f"agent_id must be 1..{AGENT_ID_MAX} UTF-8 bytes")
        for name in ("src_ip", "local_ip"):
            object.__setattr__(self, name, _ip(getattr(self, name), name))
        _check_port(self.src_port, "src_port")
        _check_port(self.local_port, "local_port")
        if self.vpce_id is not None and (
            not isinstance(self.vpce_id, str)
            or not self.vpce_id.isascii()
            or not 1 <= len(self.vpce_id) <= VPCE_ID_MAX
        ):
            raise ValueError(f"vpce_id must be 1..{VPCE_ID_MAX} ASCII characters")
        for side in ("src", "dst"):
            ip_name, port_name = f"proxy_{side}_ip", f"proxy_{side}_port"
            ip, port = getattr(self, ip_name), getattr(self, port_name)
            if (ip is None) != (port is None):
                raise ValueError(f"{ip_name} and {port_name} are set together or not at all")
            if ip is not None:
                object.__setattr__(self, ip_name, _ip(ip, ip_name))
                _check_port(port, port_name)

    @property
    def probe_id_hex(self) -> str:
        return self.probe_id.hex()


def _pack_addr_port(ip: IPAddress, port: int) -> bytes:
    return bytes((ip.version,)) + ip.packed + port.to_bytes(2, "big")


def encode_reply(reply: Reply, key: bytes, *, insecure: bool = False) -> bytes:
    """Serialise and authenticate ``reply``: only the fields present are written.

    The size is bounded (at most ``REPLY_MAX``; 220 bytes in the worst case) and a responder
    replies only to an authenticated, fresh token, so the responder cannot be used to amplify
    traffic toward a spoofed source.
    """
    _check_key(key, insecure)
    agent = reply.agent_id.encode("utf-8")
    flags = 0
    tail = bytearray()
    if reply.vpce_id is not None:
        flags |= _F_VPCE
        vpce = reply.vpce_id.encode("ascii")
        tail += bytes((len(vpce),)) + vpce
    if reply.proxy_src_ip is not None and reply.proxy_src_port is not None:
        flags |= _F_PROXY_SRC
        tail += _pack_addr_port(reply.proxy_src_ip, reply.proxy_src_port)
    if reply.proxy_dst_ip is not None and reply.proxy_dst_port is not None:
        flags |= _F_PROXY_DST
        tail += _pack_addr_port(reply.proxy_dst_ip, reply.proxy_dst_port)
    body = (
        _REPLY_FIXED.pack(
            REPLY_MAGIC, REPLY_VERSION, flags, reply.probe_id, reply.recv_ns, len(agent)
        )
        + agent
        + _pack_addr_port(reply.src_ip, reply.src_port)
        + _pack_addr_port(reply.local_ip, reply.local_port)
        + tail
    )
    out = body + _mac(bytes(key), body, insecure)
    assert len(out) <= REPLY_MAX, len(out)
    return out


class _Reader:
    """A cursor that turns running off the end into TruncatedError, never IndexError."""

    __slots__ = ("buf", "pos", "what")

    def __init__(self, buf: bytes, what: str, pos: int = 0) -> None:
        self.buf = buf
        self.pos = pos
        self.what = what

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise TruncatedError(f"{self.what}: {len(self.buf)} bytes, need at least {end}")
        out = self.buf[self.pos : end]
        self.pos = end
        return out

    def byte(self) -> int:
        return self.take(1)[0]

    def addr_port(self) -> tuple[IPAddress, int]:
        version = self.byte()
        if version == 4:
            ip: IPAddress = ipaddress.IPv4Address(self.take(4))
        elif version == 6:
            ip = ipaddress.IPv6Address(self.take(16))
        else:
            raise MalformedError(f"{self.what}: address family {version}")
        return ip, int.from_bytes(self.take(2), "big")


def decode_reply(data: Buffer, key: bytes, *, insecure: bool = False) -> Reply:
    """Parse and verify one reply; ``data`` must hold exactly one (the responder sends one).

    TruncatedError means read more; trailing bytes after a complete reply are MalformedError.
    """
    _check_key(key, insecure)
    buf = bytes(data[: REPLY_MAX + 1])
    _expect_prefix(buf, REPLY_MAGIC, "reply")
    r = _Reader(buf, "reply", len(REPLY_MAGIC))
    version = r.byte()
    if version != REPLY_VERSION:
        raise MalformedError(f"reply version {version} (this build speaks {REPLY_VERSION})")
    flags = r.byte()
    if flags & ~_F_ALL:
        raise MalformedError(f"reply has unknown flags {flags:#04x}")
    probe_id = r.take(PROBE_ID_LEN)
    recv_ns = int.from_bytes(r.take(8), "big")
    agent_len = r.byte()
    if not 1 <= agent_len <= AGENT_ID_MAX:
        raise MalformedError(f"reply agent id length {agent_len} out of 1..{AGENT_ID_MAX}")
    agent_raw = r.take(agent_len)
    src = r.addr_port()
    local = r.addr_port()
    vpce_raw = None
    proxy_src = proxy_dst = None
    if flags & _F_VPCE:
        vpce_len = r.byte()
        if not 1 <= vpce_len <= VPCE_ID_MAX:
            raise MalformedError(f"reply vpce id length {vpce_len} out of 1..{VPCE_ID_MAX}")
        vpce_raw = r.take(vpce_len)
    if flags & _F_PROXY_SRC:
        proxy_src = r.addr_port()
    if flags & _F_PROXY_DST:
        proxy_dst = r.addr_port()
    body_end = r.pos
    mac = r.take(MAC_LEN)
    if r.pos != len(data):
        raise MalformedError(f"{len(data) - r.pos} bytes after the reply")
    _verify_mac(bytes(key), buf[:body_end], mac, insecure, "reply")
    vpce_id = None
    if vpce_raw is not None:
        if not vpce_raw.isascii():
            raise MalformedError("reply vpce id is not ASCII")
        vpce_id = vpce_raw.decode("ascii")
    return Reply(
        probe_id=probe_id,
        agent_id=_text(agent_raw, "reply agent id"),
        recv_ns=recv_ns,
        src_ip=src[0],
        src_port=src[1],
        local_ip=local[0],
        local_port=local[1],
        vpce_id=vpce_id,
        proxy_src_ip=proxy_src[0] if proxy_src else None,
        proxy_src_port=proxy_src[1] if proxy_src else None,
        proxy_dst_ip=proxy_dst[0] if proxy_dst else None,
        proxy_dst_port=proxy_dst[1] if proxy_dst else None,
    )


# --------------------------------------------------------------------------------------------
# SYN tag (initial sequence number)
# --------------------------------------------------------------------------------------------

_SYN_PREFIX = b"PLPS\x01"


class SynTagger:
    """Marks and recognises this deployment's SYNs by their initial sequence number alone.

    ``ISN = nonce (32 - tag_bits bits) || tag (tag_bits bits)`` with
    ``tag = HMAC-SHA256(key, "PLPS" 0x01 tag_bits epoch nonce)`` truncated, and
    ``epoch = floor(unix_time / rotation_s)``. No address or port is covered: the NLB rewrites
    the source address and port, and the listener port may differ from the target port, so
    only the sequence number is the same at both ends (whether AWS's NLB keeps it is
    UNCONFIRMED; the lab keeps it). Rotation bounds how long a captured ISN stays valid.

    ``verify`` accepts two epochs, the one of ``now + max_skew_s`` and the one before it: a tag
    made up to ``rotation_s - max_skew_s`` seconds ago always verifies, and so does one from a
    sender whose clock is up to ``max_skew_s`` ahead. A random ISN verifies with probability
    ``2 * 2**-tag_bits`` (``false_positive_rate``), so a match is statistical evidence that a
    tagged SYN arrived, never proof of which probe it was: correlation joins by token first.
    """

    def __init__(
        self,
        key: bytes,
        rotation_s: float = 60,
        *,
        tag_bits: int = 16,
        max_skew_s: float = 1.0,
    ) -> None:
        _check_key(key, insecure=False)
        if not 8 <= tag_bits <= 24:
            raise ValueError("tag_bits must be 8..24")
        if not rotation_s > 0:
            raise ValueError("rotation_s must be positive")
        if not 0 <= max_skew_s < rotation_s:
            raise ValueError("max_skew_s must be in [0, rotation_s)")
        self.tag_bits = tag_bits
        self.rotation_s = rotation_s
        self.max_skew_s = max_skew_s
        self._tag_mask = (1 << tag_bits) - 1
        self._nonce_bits = 32 - tag_bits
        self._shift = 32 - tag_bits  # keep the top tag_bits of the digest's first word
        self._base = hmac.new(bytes(key), _SYN_PREFIX + bytes((tag_bits,)), hashlib.sha256)
        self._epoch_cache: dict[int, hmac.HMAC] = {}

    @property
    def false_positive_rate(self) -> float:
        """Probability that a uniformly random ISN verifies (two epochs accepted)."""
        return 2.0 / (1 << self.tag_bits)

    def _epoch(self, now: float) -> int:
        return int(now // self.rotation_s)

    def _tag(self, epoch: int, nonce: int) -> int:
        h = self._epoch_cache.get(epoch)
        if h is None:
            if len(self._epoch_cache) > 8:
                self._epoch_cache.clear()
            h = self._base.copy()
            h.update(epoch.to_bytes(8, "big", signed=True))
            self._epoch_cache[epoch] = h
        h = h.copy()
        h.update(nonce.to_bytes(4, "big"))
        return int.from_bytes(h.digest()[:4], "big") >> self._shift

    def make(self, now: float | None = None, *, nonce: int | None = None) -> int:
        """A tagged ISN for a SYN sent at ``now`` (default: the current time).

        ``nonce`` is random unless given (golden files, the lab); it spreads ISNs so that two
        probes in one epoch rarely share one.
        """
        t = time.time() if now is None else now
        if nonce is None:
            nonce = secrets.randbits(self._nonce_bits)
        elif not 0 <= nonce < (1 << self._nonce_bits):
            raise ValueError(f"nonce must fit in {self._nonce_bits} bits")
        return (nonce << self.tag_bits) | self._tag(self._epoch(t), nonce)

    def verify(self, isn: int, now: float | None = None) -> bool:
        """True if ``isn`` carries a tag for the current or the previous epoch."""
        if not 0 <= isn <= 0xFFFFFFFF:
            return False
        t = time.time() if now is None else now
        epoch = self._epoch(t + self.max_skew_s)
        nonce = isn >> self.tag_bits
        tag = isn & self._tag_mask
        return self._tag(epoch, nonce) == tag or self._tag(epoch - 1, nonce) == tag


# --------------------------------------------------------------------------------------------
# CRC32C (Castagnoli), for the PROXY v2 CRC32C TLV
# --------------------------------------------------------------------------------------------


def _crc32c_table() -> tuple[int, ...]:
    poly = 0x82F63B78  # reflected 0x1EDC6F41
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        table.append(c)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: Buffer, crc: int = 0) -> int:
    """CRC-32C (Castagnoli, as in iSCSI/SCTP and PROXY v2); pass ``crc`` to continue one.

    Pure Python with a 256-entry table: headers are ~100 bytes, so this is a few microseconds
    and saves a compiled dependency.
    """
    table = _CRC32C_TABLE
    c = crc ^ 0xFFFFFFFF
    for b in bytes(data):
        c = table[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


# --------------------------------------------------------------------------------------------
# PROXY protocol v2
# --------------------------------------------------------------------------------------------

PROXY_V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
PROXY_V2_MAX_LEN = 4096
"""Default cap on one header's total size. AWS sends ~100 bytes; a big SSL TLV a few hundred."""

PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_TYPE_AWS = 0xEA
PP2_SUBTYPE_AWS_VPCE_ID = 0x01
_UNIQUE_ID_MAX = 128
_SINGLETONS = frozenset(
    {PP2_TYPE_ALPN, PP2_TYPE_AUTHORITY, PP2_TYPE_CRC32C, PP2_TYPE_UNIQUE_ID, PP2_TYPE_SSL}
)

Command = Literal["PROXY", "LOCAL"]
Family = Literal["inet", "inet6", "unix", "unspec"]
Transport = Literal["stream", "dgram", "unspec"]

# fam byte -> (family, transport, address block length)
_FAMILIES: dict[int, tuple[Family, Transport, int]] = {
    0x00: ("unspec", "unspec", 0),
    0x11: ("inet", "stream", 12),
    0x12: ("inet", "dgram", 12),
    0x21: ("inet6", "stream", 36),
    0x22: ("inet6", "dgram", 36),
    0x31: ("unix", "stream", 216),
    0x32: ("unix", "dgram", 216),
}


@dataclass(frozen=True, slots=True)
class Tlv:
    """One TLV exactly as received (type and raw value)."""

    type: int
    value: bytes


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """One parsed PROXY v2 header.

    For ``LOCAL`` (AWS health checks) the address fields are ``None`` whatever the sender put in
    the address block: the spec says to use the real connection endpoints. For ``unix`` the
    paths are in ``unix_src``/``unix_dst`` (raw bytes up to the first NUL). ``transport ==
    "dgram"`` (UDP) parses but is flagged by ``is_datagram``: PrivateLink endpoint services carry
    TCP, so a UDP header is worth a second look. ``tlvs`` holds every TLV raw, in order,
    including the ones also decoded into fields. ``crc32c`` is set only when the header carried
    a CRC32C TLV, and then it has been verified.
    """

    command: Command
    family: Family
    transport: Transport
    src_ip: IPAddress | None
    dst_ip: IPAddress | None
    src_port: int | None
    dst_port: int | None
    length: int
    tlvs: tuple[Tlv, ...] = ()
    vpce_id: str | None = None
    crc32c: int | None = None
    alpn: bytes | None = None
    authority: str | None = None
    unique_id: bytes | None = None
    ssl: bytes | None = None
    unix_src: bytes | None = field(default=None, repr=False)
    unix_dst: bytes | None = field(default=None, repr=False)

    @property
    def is_local(self) -> bool:
        return self.command == "LOCAL"

    @property
    def is_datagram(self) -> bool:
        return self.transport == "dgram"


def is_proxy_v2_prefix(data: Buffer) -> bool:
    """Could ``data`` be the beginning of a PROXY v2 header?

    True when it starts with the 12-byte signature, or is a non-empty prefix of it (a sniffer
    that sees such a short segment should wait for more). Cheap enough to run on every payload.
    """
    head = bytes(data[:12])
    return bool(head) and PROXY_V2_SIGNATURE.startswith(head)


def parse_proxy_v2(data: Buffer, *, max_len: int = PROXY_V2_MAX_LEN) -> tuple[ProxyHeader, int]:
    """Parse the PROXY v2 header at the start of ``data``; return it and its total length.

    TruncatedError while every byte so far is consistent with a header shorter than
    ``max_len``; MalformedError as soon as one is not (bad signature, version, command or family,
    a length beyond ``max_len`` or too short for the family's addresses, a TLV overrunning the
    declared length, a bad CRC32C). A header is never longer than its declared length, so once
    the whole declared block is buffered there is nothing more to wait for.
    """
    if max_len < 16:
        raise ValueError("max_len must be at least 16")
    head = bytes(data[:16])
    if not head or not PROXY_V2_SIGNATURE.startswith(head[:12]):
        if not head:
            raise TruncatedError("PROXY v2: no bytes yet")
        raise MalformedError("not a PROXY v2 header: bad signature")
    if len(head) < 13:
        raise TruncatedError(f"PROXY v2: {len(head)} bytes, need at least 16")
    ver_cmd = head[12]
    if ver_cmd >> 4 != 2:
        raise MalformedError(f"PROXY header version {ver_cmd >> 4}, expected 2")
    cmd = ver_cmd & 0x0F
    if cmd not in (0x0, 0x1):
        raise MalformedError(f"PROXY v2 command {cmd:#x}")
    command: Command = "PROXY" if cmd == 0x1 else "LOCAL"
    if len(head) < 14:
        raise TruncatedError(f"PROXY v2: {len(head)} bytes, need at least 16")
    fam = head[13]
    known = _FAMILIES.get(fam)
    if known is None and command == "PROXY":
        raise MalformedError(f"PROXY v2 family/transport {fam:#04x}")
    if len(head) < 16:
        raise TruncatedError(f"PROXY v2: {len(head)} bytes, need at least 16")
    length = int.from_bytes(head[14:16], "big")
    total = 16 + length
    if total > max_len:
        raise MalformedError(f"PROXY v2 header of {total} bytes exceeds the limit of {max_len}")
    addr_len = known[2] if known else 0
    if known and length < addr_len:
        raise MalformedError(f"PROXY v2 length {length} is too short for family {fam:#04x}")
    if len(data) < total:
        raise TruncatedError(f"PROXY v2: {len(data)} bytes, header is {total}")
    header = bytes(data[:total])

    if known is None:
        # LOCAL with a family we do not know: the spec says to ignore the family and skip the
        # block, so it is opaque (no addresses, no TLVs we could locate).
        return ProxyHeader("LOCAL", "unspec", "unspec", None, None, None, None, total), total

    family, transport, _ = known
    src_ip: IPAddress | None = None
    dst_ip: IPAddress | None = None
    src_port = dst_port = None
    unix_src = unix_dst = None
    if command == "PROXY":
        block = header[16 : 16 + addr_len]
        if family == "inet":
            src_ip, dst_ip = ipaddress.IPv4Address(block[0:4]), ipaddress.IPv4Address(block[4:8])
            src_port, dst_port = struct.unpack_from(">HH", block, 8)
        elif family == "inet6":
            src_ip = ipaddress.IPv6Address(block[0:16])
            dst_ip = ipaddress.IPv6Address(block[16:32])
            src_port, dst_port = struct.unpack_from(">HH", block, 32)
        elif family == "unix":
            unix_src = block[:108].split(b"\0", 1)[0]
            unix_dst = block[108:216].split(b"\0", 1)[0]
    return (
        _parse_tlvs(
            header,
            16 + addr_len,
            command=command,
            family=family,
            transport=transport,
            src_ip=src_ip,
            dst_ip=dst_ip,
            src_port=src_port,
            dst_port=dst_port,
            unix_src=unix_src,
            unix_dst=unix_dst,
        ),
        total,
    )


def _parse_tlvs(
    header: bytes,
    pos: int,
    *,
    command: Command,
    family: Family,
    transport: Transport,
    src_ip: IPAddress | None,
    dst_ip: IPAddress | None,
    src_port: int | None,
    dst_port: int | None,
    unix_src: bytes | None,
    unix_dst: bytes | None,
) -> ProxyHeader:
    """Walk the TLVs from ``pos`` to the end of ``header`` and build the ProxyHeader."""
    end = len(header)
    tlvs: list[Tlv] = []
    crc_at: int | None = None
    seen: set[int] = set()
    vpce_id: str | None = None
    fields: dict[int, bytes] = {}
    while pos < end:
        if end - pos < 3:
            raise MalformedError("PROXY v2 TLV header overruns the declared length")
        t = header[pos]
        n = int.from_bytes(header[pos + 1 : pos + 3], "big")
        value_at = pos + 3
        if value_at + n > end:
            raise MalformedError(f"PROXY v2 TLV {t:#04x} of {n} bytes overruns the declared length")
        value = header[value_at : value_at + n]
        if t in _SINGLETONS:
            if t in seen:
                raise MalformedError(f"PROXY v2 TLV {t:#04x} appears twice")
            seen.add(t)
            fields[t] = value
        if t == PP2_TYPE_CRC32C:
            if n != 4:
                raise MalformedError(f"PROXY v2 CRC32C TLV of {n} bytes, expected 4")
            crc_at = value_at
        elif t == PP2_TYPE_UNIQUE_ID and n > _UNIQUE_ID_MAX:
            raise MalformedError(f"PROXY v2 UNIQUE_ID of {n} bytes exceeds {_UNIQUE_ID_MAX}")
        elif t == PP2_TYPE_AWS:
            if n < 1:
                raise MalformedError("PROXY v2 AWS TLV without a subtype")
            if value[0] == PP2_SUBTYPE_AWS_VPCE_ID:
                if vpce_id is not None:
                    raise MalformedError("PROXY v2 AWS VPC endpoint id appears twice")
                raw = value[1:]
                if not raw or not raw.isascii() or not raw.decode("ascii").isprintable():
                    raise MalformedError("PROXY v2 AWS VPC endpoint id is not printable ASCII")
                vpce_id = raw.decode("ascii")
        tlvs.append(Tlv(t, value))
        pos = value_at + n

    crc_value = None
    if crc_at is not None:
        crc_value = int.from_bytes(header[crc_at : crc_at + 4], "big")
        zeroed = header[:crc_at] + b"\0\0\0\0" + header[crc_at + 4 :]
        if crc32c(zeroed) != crc_value:
            raise MalformedError("PROXY v2 CRC32C does not match the header")

    authority = fields.get(PP2_TYPE_AUTHORITY)
    return ProxyHeader(
        command=command,
        family=family,
        transport=transport,
        src_ip=src_ip,
        dst_ip=dst_ip,
        src_port=src_port,
        dst_port=dst_port,
        length=end,
        tlvs=tuple(tlvs),
        vpce_id=vpce_id,
        crc32c=crc_value,
        alpn=fields.get(PP2_TYPE_ALPN),
        authority=None if authority is None else _text(authority, "PROXY v2 AUTHORITY"),
        unique_id=fields.get(PP2_TYPE_UNIQUE_ID),
        ssl=fields.get(PP2_TYPE_SSL),
        unix_src=unix_src,
        unix_dst=unix_dst,
    )


def parse_proxy_stack(
    data: Buffer, *, max_headers: int = 8, max_len: int = PROXY_V2_MAX_LEN
) -> tuple[list[ProxyHeader], int]:
    """Parse consecutive PROXY v2 headers at the start of ``data``.

    An NLB prepends its header to the client's bytes and passes a client's own PROXY header
    through, so ``headers[0]`` is the NLB's, the outermost one added last and the only one a
    target behind that NLB can trust; any later header was sent by the client and says whatever
    the client wants. Parsing stops at the first byte that cannot start a header. Returns
    ``([], 0)`` when ``data`` does not start with one. Where the buffer ends inside a header, or
    in a few bytes that could still become a signature, this raises TruncatedError; where it
    ends exactly between headers it returns what it has (a later read may add more; re-parse
    the whole buffer then). More than ``max_headers`` headers are MalformedError.
    """
    headers: list[ProxyHeader] = []
    pos = 0
    view = memoryview(bytes(data))
    while pos < len(view):
        rest = view[pos:]
        if not is_proxy_v2_prefix(rest):
            break
        if len(headers) >= max_headers:
            raise MalformedError(f"more than {max_headers} stacked PROXY v2 headers")
        header, used = parse_proxy_v2(rest, max_len=max_len)
        headers.append(header)
        pos += used
    return headers, pos


def build_proxy_v2(
    src: AddressLike | None,
    dst: AddressLike | None,
    src_port: int = 0,
    dst_port: int = 0,
    *,
    vpce_id: str | None = None,
    crc: bool = True,
    noop_pad: int = 0,
    command: Command = "PROXY",
) -> bytes:
    """Build a PROXY v2 header laid out the way an AWS NLB sends it.

    Order: signature, ver/cmd, family, length, addresses and ports, then the CRC32C TLV, the
    AWS TLV (subtype 0x01, the endpoint id) and a NOOP TLV of ``noop_pad`` zero bytes
    (``noop_pad=0`` writes no NOOP TLV; a published AWS capture of an IPv4 header carries 36,
    for a 100-byte header). ``src``/``dst`` may be None only for ``command="LOCAL"``, which then
    uses the UNSPEC family; a LOCAL with addresses mirrors AWS health checks (TCP4 family,
    addresses the receiver ignores).
    """
    if command not in ("PROXY", "LOCAL"):
        raise ValueError("command must be 'PROXY' or 'LOCAL'")
    if not isinstance(noop_pad, int) or noop_pad < 0:
        raise ValueError("noop_pad must be a non-negative int")
    _check_port(src_port, "src_port")
    _check_port(dst_port, "dst_port")
    if src is None or dst is None:
        if command == "PROXY" or src is not dst:
            raise ValueError("src and dst are both required (both None only for LOCAL)")
        fam, addrs = 0x00, b""
    else:
        s, d = _ip(src, "src"), _ip(dst, "dst")
        if s.version != d.version:
            raise ValueError("src and dst must be the same IP version")
        fam = 0x11 if s.version == 4 else 0x21
        addrs = s.packed + d.packed + struct.pack(">HH", src_port, dst_port)
    tlvs = bytearray()
    crc_at = None
    if crc:
        crc_at = 16 + len(addrs) + 3
        tlvs += bytes((PP2_TYPE_CRC32C,)) + (4).to_bytes(2, "big") + b"\0\0\0\0"
    if vpce_id is not None:
        raw = vpce_id.encode("ascii")
        if not raw or not vpce_id.isprintable():
            raise ValueError("vpce_id must be non-empty printable ASCII")
        value = bytes((PP2_SUBTYPE_AWS_VPCE_ID,)) + raw
        tlvs += bytes((PP2_TYPE_AWS,)) + len(value).to_bytes(2, "big") + value
    if noop_pad:
        tlvs += bytes((PP2_TYPE_NOOP,)) + noop_pad.to_bytes(2, "big") + bytes(noop_pad)
    length = len(addrs) + len(tlvs)
    if length > 0xFFFF:
        raise ValueError(f"PROXY v2 block of {length} bytes does not fit the 16-bit length")
    ver_cmd = 0x21 if command == "PROXY" else 0x20
    out = bytearray(PROXY_V2_SIGNATURE + bytes((ver_cmd, fam)) + length.to_bytes(2, "big"))
    out += addrs + tlvs
    if crc_at is not None:
        out[crc_at : crc_at + 4] = crc32c(out).to_bytes(4, "big")
    return bytes(out)
