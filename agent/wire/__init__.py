"""Bytes on the wire: probe tokens, responder replies, SYN sequence-number tags, PROXY v2.

Everything here is pure (bytes in, dataclass out, or the reverse) so that sockets, sniffers and
the lab stay thin shells around it and the formats can be tested without a network. The byte
layouts are written out in ``docs/WIRE.md``; this docstring is the map. One module per format;
this package re-exports their public names, so ``from agent.wire import X`` keeps working.

Modules
    token       client -> target, first bytes of a TCP probe or base64url in ``X-Plprobe-Token``.
                ``Token``, ``encode_token`` / ``decode_token`` / ``token_to_header`` /
                ``token_from_header``.
    replay      ``ReplayGuard``: stale, future and already-seen tokens (the one stateful part).
    reply       responder -> client: what the target saw (addresses, PROXY v2 data).
                ``Reply``, ``encode_reply`` / ``decode_reply``.
    syntag      the 32-bit initial sequence number of a raw SYN probe carries a keyed tag, so a
                passive sniffer can tell this deployment's SYNs apart with no per-probe state.
                ``SynTagger``.
    proxy_v2    the header an NLB prepends when ``proxy_protocol_v2.enabled`` is on (HAProxy's
                spec plus the AWS TLV). ``parse_proxy_v2`` / ``parse_proxy_stack`` /
                ``build_proxy_v2`` / ``is_proxy_v2_prefix`` / ``proxy_v2_length`` / ``crc32c``.
    evidence    client -> provider fleet through the endpoint and back: "what did you see of my
                probes, what do you find?". ``EvidenceQuery`` / ``EvidenceAnswer``,
                ``encode_query`` / ``decode_query`` / ``encode_answer`` / ``decode_answer``.
    mac         what they share: key checks, the truncated HMAC, ``MIN_KEY_LEN``, ``MAC_LEN``,
                strict text and address checks.

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

from agent.wire.evidence import (
    ANSWER_MAGIC,
    ANSWER_MAX,
    QUERY_MAGIC,
    QUERY_MAX,
    SHARE_LEVELS,
    Coverage,
    EvidenceAnswer,
    EvidenceQuery,
    decode_answer,
    decode_query,
    encode_answer,
    encode_query,
    is_query_prefix,
)
from agent.wire.mac import MAC_LEN, MIN_KEY_LEN
from agent.wire.proxy_v2 import (
    PP2_SUBTYPE_AWS_VPCE_ID,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_AWS,
    PP2_TYPE_CRC32C,
    PP2_TYPE_NOOP,
    PP2_TYPE_SSL,
    PP2_TYPE_UNIQUE_ID,
    PROXY_V2_FIXED_LEN,
    PROXY_V2_MAX_LEN,
    PROXY_V2_SIGNATURE,
    ProxyHeader,
    Tlv,
    build_proxy_v2,
    crc32c,
    is_proxy_v2_prefix,
    parse_proxy_stack,
    parse_proxy_v2,
    proxy_v2_length,
)
from agent.wire.replay import ReplayGuard
from agent.wire.reply import REPLY_MAGIC, REPLY_MAX, VPCE_ID_MAX, Reply, decode_reply, encode_reply
from agent.wire.syntag import SynTagger
from agent.wire.token import (
    AGENT_ID_MAX,
    PATH_ID_MAX,
    PROBE_ID_LEN,
    TOKEN_HEADER,
    TOKEN_MAGIC,
    TOKEN_MAX,
    TOKEN_STRINGS_MAX,
    Token,
    decode_token,
    encode_token,
    token_from_header,
    token_to_header,
)

__all__ = [
    "AGENT_ID_MAX",
    "ANSWER_MAGIC",
    "ANSWER_MAX",
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
    "PROXY_V2_FIXED_LEN",
    "PROXY_V2_MAX_LEN",
    "PROXY_V2_SIGNATURE",
    "QUERY_MAGIC",
    "QUERY_MAX",
    "REPLY_MAGIC",
    "REPLY_MAX",
    "SHARE_LEVELS",
    "TOKEN_HEADER",
    "TOKEN_MAGIC",
    "TOKEN_MAX",
    "TOKEN_STRINGS_MAX",
    "VPCE_ID_MAX",
    "Coverage",
    "EvidenceAnswer",
    "EvidenceQuery",
    "ProxyHeader",
    "ReplayGuard",
    "Reply",
    "SynTagger",
    "Tlv",
    "Token",
    "build_proxy_v2",
    "crc32c",
    "decode_answer",
    "decode_query",
    "decode_reply",
    "decode_token",
    "encode_answer",
    "encode_query",
    "encode_reply",
    "encode_token",
    "is_proxy_v2_prefix",
    "is_query_prefix",
    "parse_proxy_stack",
    "parse_proxy_v2",
    "proxy_v2_length",
    "token_from_header",
    "token_to_header",
]
