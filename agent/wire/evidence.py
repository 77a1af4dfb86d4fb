"""Evidence query and answer: client -> provider fleet through the endpoint, and back.

A real client has no route to the provider VPC except the interface endpoint, so it asks for
the provider's evidence the way its probes travel: a TCP connection to the endpoint ENI IP on
the responder port, which the NLB hands to one target. That target's provider agent answers
for the whole fleet (its own store plus what its peers share). The byte layouts are in
``docs/WIRE.md``; the query is small and fixed-shape like a token, the answer carries a bounded
JSON body (observations, the targets it covers, the provider's findings) inside an
authenticated frame.

Why JSON inside the frame and not packed fields: the answer's content (observations, findings)
is the same data the provider's API already serialises and it will grow (provider-side probes
are next); the frame gives what matters on the wire — a versioned magic, a length known from
the first bytes, a hard cap, one HMAC over everything — and the body is only ever parsed after
the MAC verified, so only a key holder can make the parser work.

``encode_query`` / ``decode_query`` / ``encode_answer`` / ``decode_answer``; the freshness and
replay check of a query is ``ReplayGuard.check(query)`` (the query id is its nonce).
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.errors import MalformedError, TruncatedError
from agent.wire.mac import (
    MAC_LEN,
    U64,
    AddressLike,
    Buffer,
    IPAddress,
    check_key,
    check_port,
    compute_mac,
    decode_text,
    expect_prefix,
    parse_ip,
    utf8_len,
    verify_mac,
)
from agent.wire.token import AGENT_ID_MAX

__all__ = [
    "ANSWER_BODY_MAX",
    "ANSWER_MAGIC",
    "ANSWER_MAX",
    "ANSWER_VERSION",
    "QUERY_ID_LEN",
    "QUERY_MAGIC",
    "QUERY_MAX",
    "QUERY_PORTS_MAX",
    "QUERY_VERSION",
    "SHARE_LEVELS",
    "Coverage",
    "EvidenceAnswer",
    "EvidenceQuery",
    "answer_length",
    "decode_answer",
    "decode_query",
    "encode_answer",
    "encode_query",
    "is_query_prefix",
]

QUERY_MAGIC = b"PLPQ"
QUERY_VERSION = 1
ANSWER_MAGIC = b"PLPA"
ANSWER_VERSION = 1
QUERY_ID_LEN = 16
QUERY_PORTS_MAX = 8
ANSWER_MAX = 8192
"""An answer is larger than a reply (a round's observations and findings) but bounded: 8 KiB
is about 40 observations plus a dozen findings; more is truncated (flag + count), never sent."""

#: sharing levels, least first: what a provider agent is willing to tell a client
SHARE_LEVELS: tuple[str, ...] = ("none", "seen-only", "findings")

_Q_PEER = 0x01  # a peer agent asks: answer from your own store, do not ask your peers
_Q_ALL = _Q_PEER
_A_TRUNCATED = 0x01  # observations were dropped to stay within ANSWER_MAX
_A_PARTIAL = 0x02  # some peers did not answer: a "not seen" may be wrong
_A_ALL = _A_TRUNCATED | _A_PARTIAL

# magic(4) ver(1) flags(1) agent_len(1) nports(1) query_id(16) sent_ns(8) since_ns(8)
_QUERY_FIXED = struct.Struct(">4sBBBB16sQQ")
# magic(4) ver(1) flags(1) level(1) agent_len(1) query_id(16) sent_ns(8) body_len(4)
_ANSWER_FIXED = struct.Struct(">4sBBBB16sQI")
_ADDR_MAX = 1 + 16
QUERY_MAX = _QUERY_FIXED.size + _ADDR_MAX + AGENT_ID_MAX + 2 * QUERY_PORTS_MAX + MAC_LEN
ANSWER_BODY_MAX = ANSWER_MAX - _ANSWER_FIXED.size - AGENT_ID_MAX - MAC_LEN
assert QUERY_MAX <= 128, QUERY_MAX


@dataclass(frozen=True, slots=True)
class EvidenceQuery:
    """ "What did the provider see of my probes since ``since_ns``, and what does it find?"

    ``agent_id`` and ``client_ip`` travel inside the MAC: the provider filters observations by
    the agent id (a client gets its own, not every client's) and evaluates the NLB SG ingress
    for ``client_ip`` when PROXY v2 is off and the source address is otherwise unknown.
    ``ports`` are the service ports the client probes (for findings). ``query_id`` is a random
    nonce: the replay guard keys on it (``probe_id`` is its alias for ``ReplayGuard``) and the
    answer echoes it. ``peer``: a provider agent asking a peer for its own store only.
    """

    query_id: bytes
    agent_id: str
    client_ip: IPAddress
    sent_ns: int
    since_ns: int
    ports: tuple[int, ...] = ()
    peer: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.query_id, bytes) or len(self.query_id) != QUERY_ID_LEN:
            raise ValueError(f"query_id must be {QUERY_ID_LEN} bytes")
        for name in ("sent_ns", "since_ns"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < U64:
                raise ValueError(f"{name} must be an unsigned 64-bit integer")
        if not 1 <= utf8_len(self.agent_id, "agent_id") <= AGENT_ID_MAX:
            raise ValueError(f"agent_id must be 1..{AGENT_ID_MAX} UTF-8 bytes")
        object.__setattr__(self, "client_ip", parse_ip(self.client_ip, "client_ip"))
        ports = tuple(self.ports)
        if len(ports) > QUERY_PORTS_MAX:
            raise ValueError(f"at most {QUERY_PORTS_MAX} ports per query")
        for port in ports:
            check_port(port, "port")
        object.__setattr__(self, "ports", ports)

    @classmethod
    def new(
        cls,
        agent_id: str,
        client_ip: AddressLike,
        since_ns: int,
        *,
        ports: tuple[int, ...] = (),
        peer: bool = False,
        now_ns: int | None = None,
    ) -> EvidenceQuery:
        """A fresh query with a random id, stamped now (or at ``now_ns``)."""
        return cls(
            query_id=secrets.token_bytes(QUERY_ID_LEN),
            agent_id=agent_id,
            client_ip=parse_ip(client_ip, "client_ip"),
            sent_ns=time.time_ns() if now_ns is None else now_ns,
            since_ns=max(0, since_ns),
            ports=ports,
            peer=peer,
        )

    @property
    def probe_id(self) -> bytes:
        """The nonce under the name ``ReplayGuard`` keys on."""
        return self.query_id

    @property
    def probe_id_hex(self) -> str:
        return self.query_id.hex()


def is_query_prefix(data: Buffer) -> bool:
    """Could ``data`` be the start of a query? (the responder tells queries from tokens)"""
    head = bytes(data[: len(QUERY_MAGIC)])
    return bool(head) and head == QUERY_MAGIC[: len(head)]


def _pack_ip(ip: IPAddress) -> bytes:
    return bytes((ip.version,)) + ip.packed


def encode_query(query: EvidenceQuery, key: bytes, *, insecure: bool = False) -> bytes:
    """Serialise and authenticate ``query``; at most ``QUERY_MAX`` bytes."""
    check_key(key, insecure)
    agent = query.agent_id.encode("utf-8")
    body = (
        _QUERY_FIXED.pack(
            QUERY_MAGIC,
            QUERY_VERSION,
            _Q_PEER if query.peer else 0,
            len(agent),
            len(query.ports),
            query.query_id,
            query.sent_ns,
            query.since_ns,
        )
        + _pack_ip(query.client_ip)
        + agent
        + b"".join(p.to_bytes(2, "big") for p in query.ports)
    )
    out = body + compute_mac(bytes(key), body, insecure)
    assert len(out) <= QUERY_MAX, len(out)
    return out


def decode_query(data: Buffer, key: bytes, *, insecure: bool = False) -> tuple[EvidenceQuery, int]:
    """Parse and verify the query at the start of ``data``; return it and the bytes it used.

    Same error order as ``decode_token``: Truncated while every byte so far fits, Malformed as
    soon as one cannot, Forged once it is complete and the MAC is wrong. The length is known
    from the first 9 bytes, so a reader never buffers more than ``QUERY_MAX``.
    """
    check_key(key, insecure)
    buf = bytes(data[:QUERY_MAX])
    expect_prefix(buf, QUERY_MAGIC, "evidence query")
    if len(buf) > 4 and buf[4] != QUERY_VERSION:
        raise MalformedError(f"evidence query version {buf[4]} (this build speaks {QUERY_VERSION})")
    if len(buf) > 5 and buf[5] & ~_Q_ALL:
        raise MalformedError(f"evidence query has unknown flags {buf[5]:#04x}")
    if len(buf) > 6 and not 1 <= buf[6] <= AGENT_ID_MAX:
        raise MalformedError(f"evidence query agent id length {buf[6]} out of 1..{AGENT_ID_MAX}")
    if len(buf) > 7 and buf[7] > QUERY_PORTS_MAX:
        raise MalformedError(f"evidence query has {buf[7]} ports (at most {QUERY_PORTS_MAX})")
    fixed = _QUERY_FIXED.size
    if len(buf) <= fixed:
        raise TruncatedError(f"evidence query: {len(buf)} bytes, header is {fixed + 1}")
    _, _, flags, agent_len, nports, query_id, sent_ns, since_ns = _QUERY_FIXED.unpack_from(buf)
    family = buf[fixed]
    if family not in (4, 6):
        raise MalformedError(f"evidence query: address family {family}")
    ip_len = 4 if family == 4 else 16
    end = fixed + 1 + ip_len + agent_len + 2 * nports
    total = end + MAC_LEN
    if len(buf) < total:
        raise TruncatedError(f"evidence query: {len(buf)} bytes, need {total}")
    verify_mac(bytes(key), buf[:end], buf[end:total], insecure, "evidence query")
    pos = fixed + 1
    raw_ip = buf[pos : pos + ip_len]
    ip: IPAddress = ipaddress.IPv4Address(raw_ip) if family == 4 else ipaddress.IPv6Address(raw_ip)
    pos += ip_len
    agent = decode_text(buf[pos : pos + agent_len], "evidence query agent id")
    pos += agent_len
    ports = tuple(int.from_bytes(buf[pos + 2 * i : pos + 2 * i + 2], "big") for i in range(nports))
    query = EvidenceQuery(
        query_id=query_id,
        agent_id=agent,
        client_ip=ip,
        sent_ns=sent_ns,
        since_ns=since_ns,
        ports=ports,
        peer=bool(flags & _Q_PEER),
    )
    return query, total


# --- answer -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Coverage:
    """One target the answer speaks for: did its evidence make it in, and how old is it.

    ``age_s`` is how long before the answer the target's store was read (0 for the answering
    agent itself, the peer round-trip for a peer); ``error`` says why a target is missing.
    """

    target: str
    ok: bool
    age_s: float = 0.0
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"target": self.target, "ok": self.ok, "age_s": round(self.age_s, 4)}
        if self.error:
            out["error"] = self.error
        return out


@dataclass(frozen=True)
class EvidenceAnswer:
    """What the provider fleet tells one client, authenticated, for one query.

    ``level`` is the provider's sharing setting (``SHARE_LEVELS``): at ``none`` the answer
    carries only coverage (the client can tell "nothing shared" from "channel cut"), at
    ``seen-only`` observations too, at ``findings`` also the provider's findings for this
    client's flow (``HopFinding`` dicts: control and rule ids, fix text, never raw config).
    ``observations`` are ``Observation`` dicts. ``truncated`` / ``dropped``: observations left
    out to honour ``ANSWER_MAX``; ``partial``: a peer did not answer.
    """

    query_id: bytes
    agent_id: str
    sent_ns: int
    level: str
    covers: tuple[Coverage, ...] = ()
    observations: tuple[dict[str, Any], ...] = ()
    findings: tuple[dict[str, Any], ...] = ()
    truncated: bool = False
    partial: bool = False
    dropped: int = 0
    #: not on the wire: the size of the encoding it was decoded from (for metrics)
    wire_bytes: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.query_id, bytes) or len(self.query_id) != QUERY_ID_LEN:
            raise ValueError(f"query_id must be {QUERY_ID_LEN} bytes")
        if not isinstance(self.sent_ns, int) or not 0 <= self.sent_ns < U64:
            raise ValueError("sent_ns must be an unsigned 64-bit integer")
        if not 1 <= utf8_len(self.agent_id, "agent_id") <= AGENT_ID_MAX:
            raise ValueError(f"agent_id must be 1..{AGENT_ID_MAX} UTF-8 bytes")
        if self.level not in SHARE_LEVELS:
            raise ValueError(f"level must be one of {SHARE_LEVELS}")


def _body(
    answer: EvidenceAnswer,
    observations: tuple[dict[str, Any], ...],
    findings: tuple[dict[str, Any], ...],
    dropped: int,
    findings_dropped: int,
) -> bytes:
    doc: dict[str, Any] = {"covers": [c.to_json() for c in answer.covers]}
    if observations:
        doc["observations"] = list(observations)
    if findings:
        doc["findings"] = list(findings)
    if dropped:
        doc["dropped"] = dropped
    if findings_dropped:
        doc["findings_dropped"] = findings_dropped
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _most_that_fit(n: int, fits: Callable[[int], bool]) -> int:
    """The largest ``k <= n`` with ``fits(k)``, by bisection: a body only grows with ``k``."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _keep_newest(
    items: tuple[dict[str, Any], ...], fits: Callable[[tuple[dict[str, Any], ...]], bool]
) -> tuple[dict[str, Any], ...]:
    """The longest tail (newest) of ``items`` that ``fits``."""
    k = _most_that_fit(len(items), lambda k: fits(items[len(items) - k :]))
    return items[len(items) - k :] if k else ()


def _keep_first(
    items: tuple[dict[str, Any], ...], fits: Callable[[tuple[dict[str, Any], ...]], bool]
) -> tuple[dict[str, Any], ...]:
    """The longest head of ``items`` that ``fits`` (findings come first-port first)."""
    return items[: _most_that_fit(len(items), lambda k: fits(items[:k]))]


def encode_answer(
    answer: EvidenceAnswer, key: bytes, *, insecure: bool = False, max_len: int = ANSWER_MAX
) -> bytes:
    """Serialise and authenticate ``answer`` within ``max_len`` (at most ``ANSWER_MAX``).

    When everything does not fit, findings keep at most half of the room (dropped from the
    end: the client lists its service ports first) and observations the rest (the oldest
    dropped first: a client correlates the newest round). The truncated flag is set and the
    body says how many of each were dropped; coverage is never dropped (ValueError if it
    alone does not fit).
    """
    check_key(key, insecure)
    max_len = min(max_len, ANSWER_MAX)
    agent = answer.agent_id.encode("utf-8")
    budget = max_len - _ANSWER_FIXED.size - len(agent) - MAC_LEN
    observations, findings = answer.observations, answer.findings
    dropped, findings_dropped = answer.dropped, 0
    body = _body(answer, observations, findings, dropped, 0)
    if len(body) > budget:
        # findings may take at most half of the room while observations want it: without
        # observations a client cannot tell whether its probes arrived at all
        total = len(findings)
        cap = budget // 2 if observations else budget

        def findings_fit(kept: tuple[dict[str, Any], ...]) -> bool:
            return len(_body(answer, (), kept, dropped, total - len(kept))) <= cap

        if len(_body(answer, (), findings, dropped, 0)) > cap:
            findings = _keep_first(findings, findings_fit)
            findings_dropped = total - len(findings)
        total_obs = len(observations)

        def obs_fit(kept: tuple[dict[str, Any], ...]) -> bool:
            extra = total_obs - len(kept)
            return len(_body(answer, kept, findings, dropped + extra, findings_dropped)) <= budget

        observations = _keep_newest(observations, obs_fit)
        dropped += total_obs - len(observations)
        body = _body(answer, observations, findings, dropped, findings_dropped)
        if len(body) > budget:
            raise ValueError(f"coverage alone exceeds {max_len} bytes")
    flags = (_A_TRUNCATED if dropped or findings_dropped else 0) | (
        _A_PARTIAL if answer.partial else 0
    )
    head = _ANSWER_FIXED.pack(
        ANSWER_MAGIC,
        ANSWER_VERSION,
        flags,
        SHARE_LEVELS.index(answer.level),
        len(agent),
        answer.query_id,
        answer.sent_ns,
        len(body),
    )
    signed = head + agent + body
    out = signed + compute_mac(bytes(key), signed, insecure)
    assert len(out) <= max_len, len(out)
    return out


def _json_list(doc: dict[str, Any], name: str) -> tuple[dict[str, Any], ...]:
    items = doc.get(name, [])
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise MalformedError(f"evidence answer: {name} is not a list of objects")
    return tuple(items)


def _coverage(raw: dict[str, Any]) -> Coverage:
    target, ok = raw.get("target"), raw.get("ok")
    age, error = raw.get("age_s", 0.0), raw.get("error", "")
    if (
        not isinstance(target, str)
        or not isinstance(ok, bool)
        or isinstance(age, bool)
        or not isinstance(age, int | float)
        or not isinstance(error, str)
    ):
        raise MalformedError("evidence answer: bad coverage entry")
    return Coverage(target=target, ok=ok, age_s=float(age), error=error)


def answer_length(data: Buffer) -> int | None:
    """Total length of the answer starting ``data`` once its header is in (else None)."""
    if len(data) < _ANSWER_FIXED.size:
        return None
    agent_len = data[7]
    body_len = int.from_bytes(bytes(data[_ANSWER_FIXED.size - 4 : _ANSWER_FIXED.size]), "big")
    return _ANSWER_FIXED.size + agent_len + body_len + MAC_LEN


def decode_answer(data: Buffer, key: bytes, *, insecure: bool = False) -> EvidenceAnswer:
    """Parse and verify one answer; ``data`` must hold exactly one (one per connection).

    TruncatedError means read more; an impossible length (over ``ANSWER_MAX``) is Malformed as
    soon as the header is in, so a reader never buffers more than ``ANSWER_MAX``. The JSON body
    is parsed only after the MAC verified.
    """
    check_key(key, insecure)
    buf = bytes(data[: ANSWER_MAX + 1])
    expect_prefix(buf, ANSWER_MAGIC, "evidence answer")
    if len(buf) > 4 and buf[4] != ANSWER_VERSION:
        raise MalformedError(f"evidence answer version {buf[4]} (this build speaks 1)")
    if len(buf) > 5 and buf[5] & ~_A_ALL:
        raise MalformedError(f"evidence answer has unknown flags {buf[5]:#04x}")
    if len(buf) > 6 and buf[6] >= len(SHARE_LEVELS):
        raise MalformedError(f"evidence answer sharing level {buf[6]}")
    if len(buf) > 7 and not 1 <= buf[7] <= AGENT_ID_MAX:
        raise MalformedError(f"evidence answer agent id length {buf[7]} out of 1..{AGENT_ID_MAX}")
    total = answer_length(buf)
    if total is None:
        raise TruncatedError(f"evidence answer: {len(buf)} bytes, header is {_ANSWER_FIXED.size}")
    if total > ANSWER_MAX:
        raise MalformedError(f"evidence answer of {total} bytes exceeds {ANSWER_MAX}")
    if len(buf) < total:
        raise TruncatedError(f"evidence answer: {len(buf)} bytes, need {total}")
    if len(data) > total:
        raise MalformedError(f"{len(data) - total} bytes after the evidence answer")
    _, _, flags, level, agent_len, query_id, sent_ns, _ = _ANSWER_FIXED.unpack_from(buf)
    end = total - MAC_LEN
    verify_mac(bytes(key), buf[:end], buf[end:total], insecure, "evidence answer")
    start = _ANSWER_FIXED.size
    agent = decode_text(buf[start : start + agent_len], "evidence answer agent id")
    try:
        doc = json.loads(decode_text(buf[start + agent_len : end], "evidence answer body"))
    except (ValueError, RecursionError) as exc:
        raise MalformedError(f"evidence answer body is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise MalformedError("evidence answer body is not a JSON object")
    dropped = doc.get("dropped", 0)
    if isinstance(dropped, bool) or not isinstance(dropped, int) or dropped < 0:
        raise MalformedError("evidence answer: bad dropped count")
    covers = tuple(_coverage(c) for c in _json_list(doc, "covers"))
    return EvidenceAnswer(
        query_id=query_id,
        agent_id=agent,
        sent_ns=sent_ns,
        level=SHARE_LEVELS[level],
        covers=covers,
        observations=_json_list(doc, "observations"),
        findings=_json_list(doc, "findings"),
        truncated=bool(flags & _A_TRUNCATED),
        partial=bool(flags & _A_PARTIAL),
        dropped=dropped,
        wire_bytes=total,
    )
