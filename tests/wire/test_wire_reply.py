"""Responder reply: what the target saw, sent back authenticated (agent/wire/reply.py)."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import ForgedError, MalformedError, TruncatedError, WireError
from agent.wire import (
    AGENT_ID_MAX,
    REPLY_MAX,
    VPCE_ID_MAX,
    Reply,
    Token,
    build_proxy_v2,
    decode_reply,
    decode_token,
    encode_reply,
    encode_token,
    parse_proxy_v2,
)

KEY = b"k" * 32
FEW = settings(max_examples=200, deadline=None)
V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address


def nlb_reply(**over: object) -> Reply:
    fields: dict[str, object] = {
        "probe_id": b"\x07" * 16,
        "agent_id": "server-1",
        "recv_ns": 1_700_000_000_123_456_789,
        "src_ip": "10.3.0.100",
        "src_port": 40123,
        "local_ip": "10.3.1.10",
        "local_port": 80,
    }
    fields.update(over)
    return Reply(**fields)  # type: ignore[arg-type]


def addresses() -> st.SearchStrategy[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    return st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))


ports = st.integers(min_value=0, max_value=65535)


@st.composite
def replies(draw: st.DrawFn) -> Reply:
    agent = draw(st.text(min_size=1, max_size=AGENT_ID_MAX).filter(_fits(AGENT_ID_MAX)))
    vpce = draw(
        st.none() | st.text(alphabet=st.characters(max_codepoint=127), min_size=1, max_size=64)
    )
    src = draw(st.none() | st.tuples(addresses(), ports))
    dst = draw(st.none() | st.tuples(addresses(), ports))
    return Reply(
        probe_id=draw(st.binary(min_size=16, max_size=16)),
        agent_id=agent,
        recv_ns=draw(st.integers(min_value=0, max_value=2**64 - 1)),
        src_ip=draw(addresses()),
        src_port=draw(ports),
        local_ip=draw(addresses()),
        local_port=draw(ports),
        vpce_id=vpce,
        proxy_src_ip=src[0] if src else None,
        proxy_src_port=src[1] if src else None,
        proxy_dst_ip=dst[0] if dst else None,
        proxy_dst_port=dst[1] if dst else None,
    )


def _fits(limit: int) -> Callable[[str], bool]:
    def ok(text: str) -> bool:
        try:
            return len(text.encode("utf-8")) <= limit
        except UnicodeEncodeError:
            return False

    return ok


def largest_reply() -> Reply:
    v6 = V6("2001:db8::1")
    return nlb_reply(
        agent_id="a" * AGENT_ID_MAX,
        src_ip=v6,
        local_ip=v6,
        vpce_id="v" * VPCE_ID_MAX,
        proxy_src_ip=v6,
        proxy_src_port=1,
        proxy_dst_ip=v6,
        proxy_dst_port=2,
    )


@FEW
@given(replies())
def test_reply_round_trips(reply: Reply) -> None:
    assert decode_reply(encode_reply(reply, KEY), KEY) == reply


@FEW
@given(replies())
def test_reply_encoding_never_exceeds_reply_max(reply: Reply) -> None:
    assert len(encode_reply(reply, KEY)) <= REPLY_MAX


def test_largest_possible_reply_is_220_bytes() -> None:
    assert len(encode_reply(largest_reply(), KEY)) == 220


def test_reply_without_proxy_data_carries_only_what_the_socket_saw() -> None:
    # fixed 31 + agent 8 + two IPv4 address/port 7 each + MAC 16
    assert len(encode_reply(nlb_reply(), KEY)) == 31 + 8 + 7 + 7 + 16


def test_reply_normalises_string_addresses() -> None:
    assert nlb_reply().src_ip == V4("10.3.0.100")


@FEW
@given(replies())
def test_every_truncation_of_a_reply_is_truncated_error(reply: Reply) -> None:
    data = encode_reply(reply, KEY)
    for n in range(len(data)):
        with pytest.raises(TruncatedError):
            decode_reply(data[:n], KEY)


@FEW
@given(st.one_of(st.binary(max_size=300), st.binary(max_size=240).map(lambda b: b"PLPR\x01" + b)))
def test_random_bytes_only_raise_wire_errors_when_decoding_a_reply(data: bytes) -> None:
    with contextlib.suppress(WireError):
        decode_reply(data, KEY)


@FEW
@given(replies(), st.data())
def test_reply_with_any_flipped_bit_is_never_accepted(reply: Reply, data: st.DataObject) -> None:
    raw = bytearray(encode_reply(reply, KEY))
    bit = data.draw(st.integers(min_value=0, max_value=len(raw) * 8 - 1))
    raw[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises((ForgedError, MalformedError, TruncatedError)):
        decode_reply(bytes(raw), KEY)


def test_reply_with_flipped_bit_in_an_address_is_rejected_as_forged() -> None:
    raw = bytearray(encode_reply(nlb_reply(), KEY))
    raw[40] ^= 0x01  # inside the source address
    with pytest.raises(ForgedError):
        decode_reply(bytes(raw), KEY)


def test_reply_under_another_key_is_rejected_as_forged() -> None:
    with pytest.raises(ForgedError):
        decode_reply(encode_reply(nlb_reply(), b"o" * 32), KEY)


def test_reply_with_trailing_bytes_is_malformed() -> None:
    with pytest.raises(MalformedError, match="after the reply"):
        decode_reply(encode_reply(nlb_reply(), KEY) + b"\0", KEY)


def test_reply_with_unknown_flag_is_malformed() -> None:
    raw = bytearray(encode_reply(nlb_reply(), KEY))
    raw[5] |= 0x80
    with pytest.raises(MalformedError, match="flags"):
        decode_reply(bytes(raw), KEY)


def test_token_is_not_accepted_as_a_reply() -> None:
    token = encode_token(Token(b"\x07" * 16, "p", "a", 0), KEY)
    with pytest.raises(MalformedError):
        decode_reply(token, KEY)


def test_insecure_reply_round_trips_with_an_empty_key() -> None:
    data = encode_reply(nlb_reply(), b"", insecure=True)
    assert decode_reply(data, b"", insecure=True) == nlb_reply()


def test_reply_refuses_half_of_a_proxy_address_pair() -> None:
    with pytest.raises(ValueError, match="together"):
        nlb_reply(proxy_src_ip="10.2.1.5")


def test_reply_refuses_a_non_ascii_vpce_id() -> None:
    with pytest.raises(ValueError, match="vpce_id"):
        nlb_reply(vpce_id="vpce-é")


def test_responder_flow_echoes_probe_id_and_proxy_data_back_to_the_client() -> None:
    """Token in, PROXY header in front of it, reply out: the fields line up end to end."""
    token = Token.new("client-2/apne1-az4/80", "client-2")
    stream = build_proxy_v2(
        "10.2.1.5", "10.2.0.20", 51000, 80, vpce_id="vpce-0123456789abcdef0"
    ) + encode_token(token, KEY)
    header, used = parse_proxy_v2(stream)
    seen, _ = decode_token(stream[used:], KEY)
    reply = nlb_reply(
        probe_id=seen.probe_id,
        vpce_id=header.vpce_id,
        proxy_src_ip=header.src_ip,
        proxy_src_port=header.src_port,
        proxy_dst_ip=header.dst_ip,
        proxy_dst_port=header.dst_port,
    )
    back = decode_reply(encode_reply(reply, KEY), KEY)
    assert back.probe_id == token.probe_id
    assert back.vpce_id == "vpce-0123456789abcdef0"
    assert (back.proxy_src_ip, back.proxy_src_port) == (V4("10.2.1.5"), 51000)
    assert (back.proxy_dst_ip, back.proxy_dst_port) == (V4("10.2.0.20"), 80)
