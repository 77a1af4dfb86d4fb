"""Evidence query and answer through the endpoint (agent/wire/evidence.py)."""

from __future__ import annotations

import contextlib
import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import ForgedError, MalformedError, ReplayError, TruncatedError, WireError
from agent.wire import (
    AGENT_ID_MAX,
    ANSWER_MAX,
    QUERY_MAX,
    SHARE_LEVELS,
    Coverage,
    EvidenceAnswer,
    EvidenceQuery,
    ReplayGuard,
    Token,
    decode_answer,
    decode_query,
    decode_token,
    encode_answer,
    encode_query,
    encode_token,
    is_query_prefix,
)
from agent.wire.evidence import QUERY_PORTS_MAX, answer_length

KEY = b"k" * 32
FEW = settings(max_examples=150, deadline=None)
NOW = 1_700_000_000_000_000_000


def query(**over: Any) -> EvidenceQuery:
    fields: dict[str, Any] = {
        "query_id": b"\x05" * 16,
        "agent_id": "client-2",
        "client_ip": "10.2.1.10",
        "sent_ns": NOW,
        "since_ns": NOW - 30_000_000_000,
        "ports": (80,),
    }
    fields.update(over)
    return EvidenceQuery(**fields)


def observation(i: int) -> dict[str, Any]:
    return {
        "kind": "token",
        "target": "server-1",
        "seen_at": 1_700_000_000.0 + i,
        "src_ip": "10.3.0.100",
        "src_port": 40000 + i,
        "dst_ip": "10.3.1.10",
        "dst_port": 80,
        "via": "responder",
        "probe_id": f"{i:032x}",
        "path": "client-2/apne1-az4/80",
        "agent": "client-2",
    }


FINDING = {
    "hop": "nlb-sg-ingress",
    "control": "nlb-sg-ingress",
    "status": "denied",
    "rule": "",
    "fix": "allow tcp 80 from 10.2.1.10/32 in sg-0nlb",
}


def answer(**over: Any) -> EvidenceAnswer:
    fields: dict[str, Any] = {
        "query_id": b"\x05" * 16,
        "agent_id": "server-1",
        "sent_ns": NOW + 1,
        "level": "findings",
        "covers": (Coverage("server-1", True), Coverage("server-2", True, 0.004)),
        "observations": tuple(observation(i) for i in range(3)),
        "findings": (FINDING,),
    }
    fields.update(over)
    return EvidenceAnswer(**fields)


def _fits(text: str) -> bool:
    try:
        return len(text.encode("utf-8")) <= AGENT_ID_MAX
    except UnicodeEncodeError:
        return False


addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6))


@st.composite
def queries(draw: st.DrawFn) -> EvidenceQuery:
    return EvidenceQuery(
        query_id=draw(st.binary(min_size=16, max_size=16)),
        agent_id=draw(st.text(min_size=1, max_size=AGENT_ID_MAX).filter(_fits)),
        client_ip=draw(addresses),
        sent_ns=draw(st.integers(min_value=0, max_value=2**64 - 1)),
        since_ns=draw(st.integers(min_value=0, max_value=2**64 - 1)),
        ports=tuple(draw(st.lists(st.integers(0, 65535), max_size=QUERY_PORTS_MAX))),
        peer=draw(st.booleans()),
    )


# --- query ------------------------------------------------------------------------------


@FEW
@given(queries())
def test_query_round_trips(q: EvidenceQuery) -> None:
    data = encode_query(q, KEY)
    assert decode_query(data, KEY) == (q, len(data))


@FEW
@given(queries())
def test_query_encoding_never_exceeds_query_max(q: EvidenceQuery) -> None:
    assert len(encode_query(q, KEY)) <= QUERY_MAX <= 128


@FEW
@given(queries())
def test_every_truncation_of_a_query_is_truncated_error(q: EvidenceQuery) -> None:
    data = encode_query(q, KEY)
    for n in range(len(data)):
        with pytest.raises(TruncatedError):
            decode_query(data[:n], KEY)


@FEW
@given(st.one_of(st.binary(max_size=200), st.binary(max_size=160).map(lambda b: b"PLPQ\x01" + b)))
def test_random_bytes_only_raise_wire_errors_when_decoding_a_query(data: bytes) -> None:
    with contextlib.suppress(WireError):
        decode_query(data, KEY)


@FEW
@given(queries(), st.data())
def test_query_with_any_flipped_bit_is_never_accepted(
    q: EvidenceQuery, data: st.DataObject
) -> None:
    raw = bytearray(encode_query(q, KEY))
    bit = data.draw(st.integers(min_value=0, max_value=len(raw) * 8 - 1))
    raw[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises((ForgedError, MalformedError, TruncatedError)):
        decode_query(bytes(raw), KEY)


def test_forged_query_under_another_key_is_rejected() -> None:
    with pytest.raises(ForgedError):
        decode_query(encode_query(query(), b"o" * 32), KEY)


def test_query_carries_the_client_address_and_agent_inside_the_mac() -> None:
    raw = bytearray(encode_query(query(), KEY))
    raw[44] ^= 0x01  # inside the client's IPv4 address
    with pytest.raises(ForgedError):
        decode_query(bytes(raw), KEY)


def test_query_with_more_ports_than_allowed_is_malformed_from_its_header() -> None:
    raw = bytearray(encode_query(query(), KEY))
    raw[7] = QUERY_PORTS_MAX + 1
    with pytest.raises(MalformedError, match="ports"):
        decode_query(bytes(raw[:8]), KEY)


def test_query_refuses_too_many_ports() -> None:
    with pytest.raises(ValueError, match="ports"):
        query(ports=tuple(range(QUERY_PORTS_MAX + 1)))


def test_query_decode_leaves_trailing_bytes_alone() -> None:
    data = encode_query(query(), KEY)
    assert decode_query(data + b"rest", KEY)[1] == len(data)


def test_replayed_query_is_rejected_by_the_replay_guard() -> None:
    guard = ReplayGuard(window_s=30)
    q, _ = decode_query(encode_query(query(), KEY), KEY)
    guard.check(q, NOW)
    with pytest.raises(ReplayError, match="already seen"):
        guard.check(q, NOW + 1)


def test_stale_query_is_rejected_by_the_replay_guard() -> None:
    with pytest.raises(ReplayError, match="ago"):
        ReplayGuard(window_s=30).check(query(), NOW + 31_000_000_000)


def test_token_and_query_cannot_stand_for_each_other() -> None:
    token = encode_token(Token(b"\x05" * 16, "p", "a", NOW), KEY)
    with pytest.raises(MalformedError):
        decode_query(token, KEY)
    with pytest.raises(MalformedError):
        decode_token(encode_query(query(), KEY), KEY)


def test_query_prefix_is_told_apart_from_a_token_prefix() -> None:
    assert is_query_prefix(b"PL") and is_query_prefix(b"PLPQ\x01")
    assert not is_query_prefix(b"PLPB") and not is_query_prefix(b"")


def test_new_query_draws_a_random_id_and_normalises_the_address() -> None:
    a = EvidenceQuery.new("client-2", "10.2.1.10", NOW, now_ns=NOW)
    b = EvidenceQuery.new("client-2", "10.2.1.10", NOW, now_ns=NOW)
    assert a.query_id != b.query_id
    assert a.client_ip == ipaddress.IPv4Address("10.2.1.10")


def test_insecure_query_round_trips_with_an_empty_key() -> None:
    data = encode_query(query(), b"", insecure=True)
    assert decode_query(data, b"", insecure=True)[0] == query()


# --- answer -----------------------------------------------------------------------------


@st.composite
def answers(draw: st.DrawFn) -> EvidenceAnswer:
    n = draw(st.integers(min_value=0, max_value=6))
    covers = draw(
        st.lists(
            st.builds(
                Coverage,
                target=st.text(max_size=20),
                ok=st.booleans(),
                age_s=st.floats(min_value=0, max_value=100).map(lambda f: round(f, 4)),
                error=st.text(max_size=30),
            ),
            max_size=4,
        )
    )
    return EvidenceAnswer(
        query_id=draw(st.binary(min_size=16, max_size=16)),
        agent_id=draw(st.text(min_size=1, max_size=AGENT_ID_MAX).filter(_fits)),
        sent_ns=draw(st.integers(min_value=0, max_value=2**64 - 1)),
        level=draw(st.sampled_from(SHARE_LEVELS)),
        covers=tuple(covers),
        observations=tuple(observation(i) for i in range(n)),
        findings=(FINDING,) if draw(st.booleans()) else (),
        partial=draw(st.booleans()),
    )


def _same(a: EvidenceAnswer, b: EvidenceAnswer) -> bool:
    return (a.query_id, a.agent_id, a.sent_ns, a.level, a.covers, a.observations) == (
        b.query_id,
        b.agent_id,
        b.sent_ns,
        b.level,
        b.covers,
        b.observations,
    ) and (a.findings, a.partial) == (b.findings, b.partial)


@FEW
@given(answers())
def test_answer_round_trips(a: EvidenceAnswer) -> None:
    data = encode_answer(a, KEY)
    back = decode_answer(data, KEY)
    assert _same(back, a) and not back.truncated and back.wire_bytes == len(data)


@FEW
@given(answers())
def test_every_truncation_of_an_answer_is_truncated_error(a: EvidenceAnswer) -> None:
    data = encode_answer(a, KEY)
    for n in range(0, len(data), 7):
        with pytest.raises(TruncatedError):
            decode_answer(data[:n], KEY)


@FEW
@given(st.one_of(st.binary(max_size=400), st.binary(max_size=300).map(lambda b: b"PLPA\x01" + b)))
def test_random_bytes_only_raise_wire_errors_when_decoding_an_answer(data: bytes) -> None:
    with contextlib.suppress(WireError):
        decode_answer(data, KEY)


@FEW
@given(answers(), st.data())
def test_answer_with_any_flipped_bit_is_never_accepted(
    a: EvidenceAnswer, data: st.DataObject
) -> None:
    raw = bytearray(encode_answer(a, KEY))
    bit = data.draw(st.integers(min_value=0, max_value=len(raw) * 8 - 1))
    raw[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises((ForgedError, MalformedError, TruncatedError)):
        decode_answer(bytes(raw), KEY)


def test_forged_answer_under_another_key_is_rejected() -> None:
    with pytest.raises(ForgedError):
        decode_answer(encode_answer(answer(), b"o" * 32), KEY)


def test_answer_too_large_for_the_limit_drops_oldest_observations_and_says_so() -> None:
    many = answer(observations=tuple(observation(i) for i in range(200)))
    data = encode_answer(many, KEY)
    back = decode_answer(data, KEY)
    assert len(data) <= ANSWER_MAX
    assert back.truncated and back.dropped == 200 - len(back.observations)
    assert back.observations[-1] == observation(199)  # the newest are kept
    assert back.findings == (FINDING,)  # small findings are kept whole


def test_findings_are_dropped_from_the_end_when_alone_too_large() -> None:
    many = tuple({**FINDING, "port": i} for i in range(100))
    bare = answer(findings=many, observations=())
    back = decode_answer(encode_answer(bare, KEY, max_len=1024), KEY)
    assert back.truncated and back.findings == many[: len(back.findings)]
    assert 0 < len(back.findings) < 100


def test_findings_leave_half_the_room_to_observations() -> None:
    many = tuple({**FINDING, "port": i} for i in range(100))
    full = answer(findings=many, observations=tuple(observation(i) for i in range(100)))
    data = encode_answer(full, KEY, max_len=4096)
    back = decode_answer(data, KEY)
    assert len(data) <= 4096 and back.truncated
    assert len(back.observations) >= 5 and back.observations[-1] == observation(99)
    assert back.findings == many[: len(back.findings)] and back.findings


def test_answer_honours_a_smaller_size_limit() -> None:
    data = encode_answer(answer(), KEY, max_len=400)
    assert len(data) <= 400 and decode_answer(data, KEY).truncated


def test_answer_claiming_more_than_answer_max_is_malformed_from_its_header() -> None:
    raw = bytearray(encode_answer(answer(), KEY))
    raw[32:36] = (ANSWER_MAX * 2).to_bytes(4, "big")
    with pytest.raises(MalformedError, match="exceeds"):
        decode_answer(bytes(raw[:40]), KEY)


def test_answer_length_is_known_from_the_header() -> None:
    data = encode_answer(answer(), KEY)
    assert answer_length(data[:36]) == len(data) and answer_length(data[:35]) is None


def test_answer_with_trailing_bytes_is_malformed() -> None:
    with pytest.raises(MalformedError, match="after"):
        decode_answer(encode_answer(answer(), KEY) + b"x", KEY)


def test_answer_with_an_authentic_but_non_json_body_is_malformed() -> None:
    import hmac

    raw = bytearray(encode_answer(answer(level="none", covers=(), findings=()), KEY))
    body_at = 36 + len("server-1")
    raw[body_at] = ord("[")
    raw[-16:] = hmac.digest(KEY, bytes(raw[:-16]), "sha256")[:16]
    with pytest.raises(MalformedError, match="JSON"):
        decode_answer(bytes(raw), KEY)


def test_answer_at_level_none_carries_only_coverage() -> None:
    bare = answer(level="none", observations=(), findings=())
    back = decode_answer(encode_answer(bare, KEY), KEY)
    assert back.level == "none" and back.covers and not back.observations and not back.findings


def test_answer_refuses_an_unknown_sharing_level() -> None:
    with pytest.raises(ValueError, match="level"):
        answer(level="everything")
