"""PROXY protocol v2: the header an NLB prepends when ``proxy_protocol_v2.enabled`` is on.

HAProxy's spec plus the AWS TLV (the VPC endpoint id), and the CRC-32C its checksum TLV uses.
``parse_proxy_v2`` / ``parse_proxy_stack`` / ``build_proxy_v2`` / ``is_proxy_v2_prefix`` /
``crc32c``; the layout AWS sends is in ``docs/WIRE.md``.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field
from typing import Literal, TypedDict

from agent.errors import MalformedError, TruncatedError
from agent.wire.mac import AddressLike, Buffer, IPAddress, check_port, decode_text, parse_ip

__all__ = [
    "PP2_SUBTYPE_AWS_VPCE_ID",
    "PP2_TYPE_ALPN",
    "PP2_TYPE_AUTHORITY",
    "PP2_TYPE_AWS",
    "PP2_TYPE_CRC32C",
    "PP2_TYPE_NOOP",
    "PP2_TYPE_SSL",
    "PP2_TYPE_UNIQUE_ID",
    "PROXY_V2_FIXED_LEN",
    "PROXY_V2_MAX_LEN",
    "PROXY_V2_SIGNATURE",
    "Command",
    "Family",
    "ProxyHeader",
    "Tlv",
    "Transport",
    "build_proxy_v2",
    "crc32c",
    "is_proxy_v2_prefix",
    "parse_proxy_stack",
    "parse_proxy_v2",
    "proxy_v2_length",
]

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


PROXY_V2_FIXED_LEN = 16
"""Signature (12), version/command, family/transport, length (2): all a header's framing needs."""


def _fixed_part(
    data: Buffer, max_len: int
) -> tuple[Command, tuple[Family, Transport, int] | None, int]:
    """Check the fixed 16 bytes; return the command, the known family (or None) and the total.

    One place for these checks, shared by ``parse_proxy_v2`` and ``proxy_v2_length``, so that a
    stream reader framing headers and the parser can never disagree on where a header ends.
    """
    if max_len < 16:
        raise ValueError("max_len must be at least 16")
    head = bytes(data[:PROXY_V2_FIXED_LEN])
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
    return command, known, total


def proxy_v2_length(data: Buffer, *, max_len: int = PROXY_V2_MAX_LEN) -> int:
    """Total length of the PROXY v2 header at the start of ``data``, from its first 16 bytes.

    For a stream reader that must consume exactly the header and not a byte of what follows (the
    lab's HTTP server reads the request after it): read 16 bytes, ask this, read the rest, then
    ``parse_proxy_v2``. The errors are ``parse_proxy_v2``'s for the fixed part: TruncatedError
    before 16 bytes, MalformedError once they cannot start a header of at most ``max_len``.
    """
    return _fixed_part(data, max_len)[2]


def parse_proxy_v2(data: Buffer, *, max_len: int = PROXY_V2_MAX_LEN) -> tuple[ProxyHeader, int]:
    """Parse the PROXY v2 header at the start of ``data``; return it and its total length.

    TruncatedError while every byte so far is consistent with a header shorter than
    ``max_len``; MalformedError as soon as one is not (bad signature, version, command or family,
    a length beyond ``max_len`` or too short for the family's addresses, a TLV overrunning the
    declared length, a bad CRC32C). A header is never longer than its declared length, so once
    the whole declared block is buffered there is nothing more to wait for.
    """
    command, known, total = _fixed_part(data, max_len)
    addr_len = known[2] if known else 0
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
        ProxyHeader(
            command=command,
            family=family,
            transport=transport,
            src_ip=src_ip,
            dst_ip=dst_ip,
            src_port=src_port,
            dst_port=dst_port,
            length=total,
            unix_src=unix_src,
            unix_dst=unix_dst,
            **_parse_tlvs(header, 16 + addr_len),
        ),
        total,
    )


class _TlvFields(TypedDict):
    """What the TLV block contributes to a ProxyHeader: its fields of the same names."""

    tlvs: tuple[Tlv, ...]
    vpce_id: str | None
    crc32c: int | None
    alpn: bytes | None
    authority: str | None
    unique_id: bytes | None
    ssl: bytes | None


def _parse_tlvs(header: bytes, pos: int) -> _TlvFields:
    """Walk the TLVs from ``pos`` to the end of ``header``; check them and decode the known ones.

    Returns only what the TLVs say, so the header's fields are listed once, in
    ``parse_proxy_v2``.
    """
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
    return _TlvFields(
        tlvs=tuple(tlvs),
        vpce_id=vpce_id,
        crc32c=crc_value,
        alpn=fields.get(PP2_TYPE_ALPN),
        authority=None if authority is None else decode_text(authority, "PROXY v2 AUTHORITY"),
        unique_id=fields.get(PP2_TYPE_UNIQUE_ID),
        ssl=fields.get(PP2_TYPE_SSL),
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
    check_port(src_port, "src_port")
    check_port(dst_port, "dst_port")
    if src is None or dst is None:
        if command == "PROXY" or src is not dst:
            raise ValueError("src and dst are both required (both None only for LOCAL)")
        fam, addrs = 0x00, b""
    else:
        s, d = parse_ip(src, "src"), parse_ip(dst, "dst")
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
