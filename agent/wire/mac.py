"""What the wire formats share: key checks, the truncated HMAC, strict prefix/text/address checks.

Tokens and replies end with HMAC-SHA256(key, everything before it) truncated to ``MAC_LEN``
bytes, compared with ``hmac.compare_digest``; SYN tags use the same key under their own prefix.
The helpers live here once so that every format refuses a weak key, a key given with
``insecure``, bad text and bad addresses in exactly the same way. They serve the ``agent.wire``
modules; code outside the package calls the format functions instead.
"""

from __future__ import annotations

import hmac
import ipaddress

from agent.errors import ForgedError, MalformedError, TruncatedError

__all__ = [
    "MAC_LEN",
    "MIN_KEY_LEN",
    "U64",
    "AddressLike",
    "Buffer",
    "IPAddress",
    "check_key",
    "check_port",
    "check_u64",
    "compute_mac",
    "decode_text",
    "expect_prefix",
    "parse_ip",
    "utf8_len",
    "verify_mac",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
AddressLike = str | ipaddress.IPv4Address | ipaddress.IPv6Address
Buffer = bytes | bytearray | memoryview

U64 = 1 << 64
"""Bound of the unsigned 64-bit timestamps (``sent_ns``, ``recv_ns``)."""

MAC_LEN = 16
"""Truncated HMAC-SHA256 length: 128 bits is far beyond what an online forger can brute-force."""

MIN_KEY_LEN = 16
"""Shortest accepted key; shorter keys are almost always a config mistake (a password, a typo)."""

_ZERO_MAC = bytes(MAC_LEN)


def check_key(key: bytes, insecure: bool) -> None:
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


def compute_mac(key: bytes, body: bytes, insecure: bool) -> bytes:
    """The MAC that ends a token or reply; all zeros in insecure mode (never checked then)."""
    return _ZERO_MAC if insecure else hmac.digest(key, body, "sha256")[:MAC_LEN]


def verify_mac(key: bytes, body: bytes, mac: bytes, insecure: bool, what: str) -> None:
    """ForgedError unless ``mac`` is ours; constant-time, so timing leaks nothing to a forger."""
    if insecure:
        return
    if not hmac.compare_digest(hmac.digest(key, body, "sha256")[:MAC_LEN], mac):
        raise ForgedError(f"{what} HMAC does not verify under our key")


def expect_prefix(data: bytes, magic: bytes, what: str) -> None:
    """Malformed if ``data`` cannot start with ``magic``; Truncated if it is too short to tell."""
    head = data[: len(magic)]
    if head != magic[: len(head)]:
        raise MalformedError(f"not a {what}: bad magic {bytes(head)!r}")
    if len(head) < len(magic):
        raise TruncatedError(f"{what}: {len(data)} bytes, need at least {len(magic)}")


def decode_text(raw: bytes, what: str) -> str:
    """Strict UTF-8: bad text is MalformedError, never UnicodeDecodeError leaking out."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedError(f"{what} is not UTF-8") from exc


def utf8_len(value: str, what: str) -> int:
    """Encoded length of an id: limits are on bytes on the wire, not on characters."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be str")
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError as exc:
        raise ValueError(f"{what} cannot be encoded as UTF-8") from exc


def parse_ip(value: AddressLike, what: str) -> IPAddress:
    """An address from text or an address object; the ValueError names the field."""
    try:
        return ipaddress.ip_address(value)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from exc


def check_u64(value: int, what: str) -> None:
    """Timestamps travel as unsigned 64 bits: anything else is a bug in the caller."""
    if not isinstance(value, int) or not 0 <= value < U64:
        raise ValueError(f"{what} must be an unsigned 64-bit integer")


def check_port(port: int, what: str) -> None:
    """Ports travel as 16 bits: anything else is a bug in the caller (ValueError)."""
    if not isinstance(port, int) or not 0 <= port <= 0xFFFF:
        raise ValueError(f"{what} must be 0..65535")
