"""Probe token: encoding, authentication, header form, replay guard.

agent/wire/token.py and agent/wire/replay.py.
"""

from __future__ import annotations

import contextlib
import hmac

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from agent.errors import ForgedError, MalformedError, ReplayError, TruncatedError, WireError
from agent.wire.replay import ReplayGuard
from agent.wire.token import (
    AGENT_ID_MAX,
    PATH_ID_MAX,
    TOKEN_MAX,
    TOKEN_STRINGS_MAX,
    Token,
    decode_token,
    encode_token,
    token_from_header,
    token_to_header,
)

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
NOW = 1_700_000_000 * 10**9
SECOND = 10**9
FEW = settings(max_examples=200, deadline=None)


def make_token(probe_id: bytes = b"\x01" * 16, sent_ns: int = NOW) -> Token:
    return Token(
        probe_id=probe_id, path_id="client-2/apne1-az4/80", agent_id="client-2", sent_ns=sent_ns
    )


@st.composite
def tokens(draw: st.DrawFn) -> Token:
    path = draw(st.text(min_size=1, max_size=PATH_ID_MAX))
    agent = draw(st.text(min_size=1, max_size=AGENT_ID_MAX))
    p, a = len(path.encode("utf-8", "surrogatepass")), len(agent.encode("utf-8", "surrogatepass"))
    assume(p <= PATH_ID_MAX and a <= AGENT_ID_MAX and p + a <= TOKEN_STRINGS_MAX)
    assume(not any(0xD800 <= ord(c) <= 0xDFFF for c in path + agent))
    return Token(
        probe_id=draw(st.binary(min_size=16, max_size=16)),
        path_id=path,
        agent_id=agent,
        sent_ns=draw(st.integers(min_value=0, max_value=2**64 - 1)),
    )


# --- encoding -------------------------------------------------------------------------------


@FEW
@given(tokens())
def test_token_round_trips(token: Token) -> None:
    data = encode_token(token, KEY)
    assert decode_token(data, KEY) == (token, len(data))


@FEW
@given(tokens())
def test_token_encoding_never_exceeds_token_max(token: Token) -> None:
    assert len(encode_token(token, KEY)) <= TOKEN_MAX


def test_token_with_largest_ids_is_exactly_token_max() -> None:
    token = Token(b"\0" * 16, "p" * (TOKEN_STRINGS_MAX - AGENT_ID_MAX), "a" * AGENT_ID_MAX, 0)
    assert len(encode_token(token, KEY)) == TOKEN_MAX


def test_token_decode_reports_consumed_length_and_leaves_trailing_payload() -> None:
    data = encode_token(make_token(), KEY)
    token, used = decode_token(data + b"GET / HTTP/1.1\r\n", KEY)
    assert used == len(data)
    assert token == make_token()


def test_token_decodes_from_bytearray_and_memoryview() -> None:
    data = encode_token(make_token(), KEY)
    assert decode_token(bytearray(data), KEY)[0] == make_token()
    assert decode_token(memoryview(data), KEY)[0] == make_token()


def test_token_new_draws_a_random_probe_id() -> None:
    a, b = Token.new("p", "a"), Token.new("p", "a")
    assert a.probe_id != b.probe_id
    assert len(a.probe_id_hex) == 32


# --- truncation and garbage -----------------------------------------------------------------


@FEW
@given(tokens())
def test_every_truncation_of_a_token_is_truncated_error(token: Token) -> None:
    data = encode_token(token, KEY)
    for n in range(len(data)):
        with pytest.raises(TruncatedError):
            decode_token(data[:n], KEY)


@FEW
@given(st.one_of(st.binary(max_size=200), st.binary(max_size=120).map(lambda b: b"PLPB\x01" + b)))
def test_random_bytes_only_raise_wire_errors_when_decoding_a_token(data: bytes) -> None:
    with contextlib.suppress(WireError):
        decode_token(data, KEY)


def test_token_with_bad_magic_is_malformed() -> None:
    with pytest.raises(MalformedError):
        decode_token(b"GET / HTTP/1.1\r\n", KEY)


def test_token_with_unknown_version_is_malformed() -> None:
    data = bytearray(encode_token(make_token(), KEY))
    data[4] = 2
    with pytest.raises(MalformedError):
        decode_token(bytes(data), KEY)


def test_token_with_path_length_over_its_cap_is_malformed() -> None:
    data = bytearray(encode_token(make_token(), KEY))
    data[5] = PATH_ID_MAX + 1
    with pytest.raises(MalformedError):
        decode_token(bytes(data), KEY)


def test_token_with_invalid_utf8_under_a_valid_mac_is_malformed() -> None:
    data = bytearray(encode_token(make_token(), KEY))
    data[31] = 0xFF  # first byte of the path id
    body = bytes(data[:-16])
    data[-16:] = hmac.digest(KEY, body, "sha256")[:16]
    with pytest.raises(MalformedError):
        decode_token(bytes(data), KEY)


# --- authentication -------------------------------------------------------------------------


def test_token_with_flipped_bit_in_mac_is_rejected_as_forged() -> None:
    data = bytearray(encode_token(make_token(), KEY))
    data[-1] ^= 0x01
    with pytest.raises(ForgedError):
        decode_token(bytes(data), KEY)


def test_token_under_another_key_is_rejected_as_forged() -> None:
    with pytest.raises(ForgedError):
        decode_token(encode_token(make_token(), OTHER_KEY), KEY)


@FEW
@given(tokens(), st.data())
def test_token_with_any_flipped_bit_is_forged_or_malformed(
    token: Token, data: st.DataObject
) -> None:
    raw = bytearray(encode_token(token, KEY))
    bit = data.draw(st.integers(min_value=0, max_value=len(raw) * 8 - 1))
    raw[bit // 8] ^= 1 << (bit % 8)
    # Trailing stream bytes, as on a real probe connection: a tampered length byte then reads
    # real bytes instead of asking for more, and the MAC catches it.
    with pytest.raises((ForgedError, MalformedError)):
        decode_token(bytes(raw) + bytes(TOKEN_MAX), KEY)


def test_token_with_length_byte_tampered_upward_waits_for_more_bytes_then_is_forged() -> None:
    raw = bytearray(encode_token(make_token(), KEY))
    raw[6] += 1  # agent id length
    with pytest.raises(TruncatedError):
        decode_token(bytes(raw), KEY)
    with pytest.raises(ForgedError):
        decode_token(bytes(raw) + b"x", KEY)


# --- insecure mode --------------------------------------------------------------------------


def test_insecure_token_round_trips_with_an_empty_key_and_zero_mac() -> None:
    data = encode_token(make_token(), b"", insecure=True)
    assert data.endswith(bytes(16))
    assert decode_token(data, b"", insecure=True)[0] == make_token()


def test_insecure_token_is_rejected_as_forged_by_a_keyed_decoder() -> None:
    with pytest.raises(ForgedError):
        decode_token(encode_token(make_token(), b"", insecure=True), KEY)


def test_empty_key_without_insecure_flag_is_refused() -> None:
    with pytest.raises(ValueError, match="insecure=True"):
        encode_token(make_token(), b"")
    with pytest.raises(ValueError, match="insecure=True"):
        decode_token(b"PLPB", b"")


def test_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 16"):
        encode_token(make_token(), b"short")


def test_insecure_flag_with_a_key_is_refused() -> None:
    with pytest.raises(ValueError, match="empty key"):
        encode_token(make_token(), KEY, insecure=True)


# --- Token validation -----------------------------------------------------------------------


def test_token_refuses_a_path_id_over_64_bytes() -> None:
    with pytest.raises(ValueError, match="path_id"):
        Token(b"\0" * 16, "p" * (PATH_ID_MAX + 1), "a", 0)


def test_token_refuses_an_agent_id_over_32_bytes() -> None:
    with pytest.raises(ValueError, match="agent_id"):
        Token(b"\0" * 16, "p", "a" * (AGENT_ID_MAX + 1), 0)


def test_token_refuses_ids_that_together_exceed_the_size_budget() -> None:
    with pytest.raises(ValueError, match="together"):
        Token(b"\0" * 16, "p" * 40, "a" * 10, 0)


def test_token_refuses_an_empty_path_id() -> None:
    with pytest.raises(ValueError, match="path_id"):
        Token(b"\0" * 16, "", "a", 0)


def test_token_refuses_a_probe_id_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="probe_id"):
        Token(b"\0" * 8, "p", "a", 0)


# --- HTTP header form -----------------------------------------------------------------------


@FEW
@given(tokens())
def test_token_header_round_trips(token: Token) -> None:
    data = encode_token(token, KEY)
    value = token_to_header(data)
    assert "=" not in value
    assert token_from_header(value) == data


def test_token_header_accepts_padding_and_surrounding_space() -> None:
    data = encode_token(make_token(), KEY)
    value = token_to_header(data)
    assert token_from_header(f"  {value}{'=' * (-len(value) % 4)} ") == data


@pytest.mark.parametrize("value", ["ab+c", "ab/c", "ab c", "abc!", "é", "a", "A" * 200])
def test_token_header_outside_unpadded_base64url_is_malformed(value: str) -> None:
    with pytest.raises(MalformedError):
        token_from_header(value)


@FEW
@given(st.text(max_size=150))
def test_random_header_values_only_raise_wire_errors(value: str) -> None:
    with contextlib.suppress(WireError):
        decode_token(token_from_header(value), KEY)


# --- replay guard ---------------------------------------------------------------------------


def test_replay_guard_accepts_a_fresh_token() -> None:
    guard = ReplayGuard()
    guard.check(make_token(), NOW)
    assert len(guard) == 1


def test_replay_guard_rejects_a_second_use_of_a_probe_id() -> None:
    guard = ReplayGuard()
    guard.check(make_token(), NOW)
    with pytest.raises(ReplayError, match="already seen"):
        guard.check(make_token(), NOW + SECOND)


def test_replay_guard_rejects_a_token_older_than_the_window() -> None:
    with pytest.raises(ReplayError, match="ago"):
        ReplayGuard(window_s=30).check(make_token(sent_ns=NOW - 31 * SECOND), NOW)


def test_replay_guard_rejects_a_token_from_beyond_the_window_in_the_future() -> None:
    with pytest.raises(ReplayError, match="future"):
        ReplayGuard(window_s=30).check(make_token(sent_ns=NOW + 31 * SECOND), NOW)


def test_replay_guard_forgets_ids_once_their_tokens_are_stale() -> None:
    guard = ReplayGuard(window_s=30)
    for i in range(100):
        guard.check(make_token(probe_id=i.to_bytes(16, "big")), NOW)
    guard.check(make_token(probe_id=b"\xff" * 16, sent_ns=NOW + 31 * SECOND), NOW + 31 * SECOND)
    assert len(guard) == 1


def test_replay_guard_stays_bounded_under_a_flood_of_fresh_tokens() -> None:
    guard = ReplayGuard(window_s=30, max_entries=64)
    for i in range(1000):
        guard.check(make_token(probe_id=i.to_bytes(16, "big"), sent_ns=NOW + i), NOW + i)
        assert len(guard) <= 64
    assert guard.saturated_evictions == 1000 - 64


def test_saturated_replay_guard_still_rejects_a_replay_of_an_evicted_id() -> None:
    guard = ReplayGuard(window_s=30, max_entries=4)
    first = make_token(probe_id=b"\0" * 16, sent_ns=NOW)
    guard.check(first, NOW)
    for i in range(1, 10):
        guard.check(make_token(probe_id=i.to_bytes(16, "big"), sent_ns=NOW + i), NOW + i)
    with pytest.raises(ReplayError):
        guard.check(first, NOW + 10)


def test_saturated_replay_guard_rejects_a_token_older_than_everything_it_holds() -> None:
    guard = ReplayGuard(window_s=30, max_entries=2)
    guard.check(make_token(probe_id=b"\1" * 16, sent_ns=NOW), NOW)
    guard.check(make_token(probe_id=b"\2" * 16, sent_ns=NOW), NOW)
    with pytest.raises(ReplayError, match="full"):
        guard.check(make_token(probe_id=b"\3" * 16, sent_ns=NOW - SECOND), NOW)


def test_replay_guard_rejects_an_expired_replay_after_the_clock_steps_back() -> None:
    guard = ReplayGuard(window_s=30)
    token = make_token(sent_ns=NOW)
    guard.check(token, NOW)
    guard.check(make_token(probe_id=b"\2" * 16, sent_ns=NOW + 40 * SECOND), NOW + 40 * SECOND)
    with pytest.raises(ReplayError):
        guard.check(token, NOW + 5 * SECOND)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 15), st.integers(-50, 100)), max_size=200))
def test_replay_guard_never_accepts_a_probe_id_twice_and_stays_bounded(
    ops: list[tuple[int, int]],
) -> None:
    guard = ReplayGuard(window_s=30, max_entries=5)
    accepted: set[bytes] = set()
    now = NOW
    for ident, step in ops:
        now += step * SECOND // 10  # the clock may also step back
        # one sent time per id, as for real tokens (the MAC covers it)
        token = make_token(probe_id=bytes([ident]) * 16, sent_ns=NOW + ident * 7 * SECOND)
        try:
            guard.check(token, now)
        except ReplayError:
            continue
        assert token.probe_id not in accepted
        accepted.add(token.probe_id)
        assert len(guard) <= 5
