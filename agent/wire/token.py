"""Probe token: client -> target, the first bytes of a TCP probe or base64url in a header.

``encode_token`` / ``decode_token`` / ``token_to_header`` / ``token_from_header``; the byte
layout is in ``docs/WIRE.md``. Freshness and replays are checked after decoding, by
``agent.wire.replay.ReplayGuard``.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import struct
import time
from dataclasses import dataclass

from agent.errors import MalformedError, TruncatedError
from agent.wire.mac import (
    MAC_LEN,
    Buffer,
    check_key,
    check_u64,
    compute_mac,
    decode_text,
    expect_prefix,
    utf8_len,
    verify_mac,
)

__all__ = [
    "AGENT_ID_MAX",
    "PATH_ID_MAX",
    "PROBE_ID_LEN",
    "TOKEN_HEADER",
    "TOKEN_MAGIC",
    "TOKEN_MAX",
    "TOKEN_STRINGS_MAX",
    "TOKEN_VERSION",
    "Token",
    "check_probe_id",
    "decode_token",
    "encode_token",
    "token_from_header",
    "token_to_header",
]

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


def check_probe_id(probe_id: bytes) -> None:
    """A probe id is exactly ``PROBE_ID_LEN`` bytes, in a token and in the reply echoing it."""
    if not isinstance(probe_id, bytes) or len(probe_id) != PROBE_ID_LEN:
        raise ValueError(f"probe_id must be {PROBE_ID_LEN} bytes")


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
        check_probe_id(self.probe_id)
        check_u64(self.sent_ns, "sent_ns")
        path_len = utf8_len(self.path_id, "path_id")
        agent_len = utf8_len(self.agent_id, "agent_id")
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
    check_key(key, insecure)
    path = token.path_id.encode("utf-8")
    agent = token.agent_id.encode("utf-8")
    body = (
        _TOKEN_FIXED.pack(
            TOKEN_MAGIC, TOKEN_VERSION, len(path), len(agent), token.probe_id, token.sent_ns
        )
        + path
        + agent
    )
    out = body + compute_mac(bytes(key), body, insecure)
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
    check_key(key, insecure)
    buf = bytes(data[:TOKEN_MAX])
    expect_prefix(buf, TOKEN_MAGIC, "probe token")
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
    verify_mac(bytes(key), buf[:end], buf[end:total], insecure, "probe token")
    start = _TOKEN_FIXED.size
    path = decode_text(buf[start : start + path_len], "probe token path id")
    agent = decode_text(buf[start + path_len : end], "probe token agent id")
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
