"""Responder reply: responder -> client, what the target saw (addresses, PROXY v2 data).

``encode_reply`` / ``decode_reply``; the byte layout is in ``docs/WIRE.md``.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from agent.errors import MalformedError, TruncatedError
from agent.wire.mac import (
    MAC_LEN,
    Buffer,
    IPAddress,
    check_key,
    check_port,
    check_u64,
    compute_mac,
    decode_text,
    expect_prefix,
    parse_ip,
    utf8_len,
    verify_mac,
)
from agent.wire.token import AGENT_ID_MAX, PROBE_ID_LEN, check_probe_id

__all__ = [
    "REPLY_MAGIC",
    "REPLY_MAX",
    "REPLY_VERSION",
    "VPCE_ID_MAX",
    "Reply",
    "decode_reply",
    "encode_reply",
]

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
        check_probe_id(self.probe_id)
        check_u64(self.recv_ns, "recv_ns")
        agent_len = utf8_len(self.agent_id, "agent_id")
        if not 1 <= agent_len <= AGENT_ID_MAX:
            raise ValueError(f"agent_id must be 1..{AGENT_ID_MAX} UTF-8 bytes")
        for name in ("src_ip", "local_ip"):
            object.__setattr__(self, name, parse_ip(getattr(self, name), name))
        check_port(self.src_port, "src_port")
        check_port(self.local_port, "local_port")
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
                object.__setattr__(self, ip_name, parse_ip(ip, ip_name))
                check_port(port, port_name)

    @classmethod
    def from_pairs(
        cls,
        probe_id: bytes,
        agent_id: str,
        recv_ns: int,
        src: tuple[IPAddress, int],
        local: tuple[IPAddress, int],
        *,
        vpce_id: str | None = None,
        proxy_src: tuple[IPAddress, int] | None = None,
        proxy_dst: tuple[IPAddress, int] | None = None,
    ) -> Reply:
        """A Reply from ``(ip, port)`` pairs, the way both ends hold the addresses.

        The decoder reads them as pairs and the responder has them so from its socket and the
        PROXY v2 header; one constructor keeps the pair-to-field mapping in one place.
        """
        return cls(
            probe_id=probe_id,
            agent_id=agent_id,
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
    check_key(key, insecure)
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
    out = body + compute_mac(bytes(key), body, insecure)
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
    check_key(key, insecure)
    buf = bytes(data[: REPLY_MAX + 1])
    expect_prefix(buf, REPLY_MAGIC, "reply")
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
    verify_mac(bytes(key), buf[:body_end], mac, insecure, "reply")
    vpce_id = None
    if vpce_raw is not None:
        if not vpce_raw.isascii():
            raise MalformedError("reply vpce id is not ASCII")
        vpce_id = vpce_raw.decode("ascii")
    return Reply.from_pairs(
        probe_id,
        decode_text(agent_raw, "reply agent id"),
        recv_ns,
        src,
        local,
        vpce_id=vpce_id,
        proxy_src=proxy_src,
        proxy_dst=proxy_dst,
    )
