"""PROXY protocol v2: parser, builder, stacked headers, CRC32C (agent/wire/proxy_v2.py)."""

from __future__ import annotations

import contextlib
import ipaddress
import struct

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scapy.layers.sctp import crc32c as scapy_crc32c

from agent.errors import MalformedError, TruncatedError, WireError
from agent.wire.proxy_v2 import (
    PP2_TYPE_CRC32C,
    PROXY_V2_FIXED_LEN,
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

FEW = settings(max_examples=200, deadline=None)
V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address
SIG = bytes([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A])

# An NLB header for a PrivateLink connection, assembled by hand in the layout AWS uses
# (same TLV order and padding as a published capture of a real NLB header; the CRC below was
# computed independently with scapy's SCTP CRC32C).
AWS_HEADER = bytes(
    [
        *SIG,
        0x21,  # version 2, command PROXY
        0x11,  # AF_INET, STREAM
        0x00, 0x54,  # 84 bytes follow
        10, 2, 1, 5,  # source: the client's private IP
        10, 2, 0, 20,  # destination: the endpoint ENI IP
        0xC7, 0x38,  # source port 51000
        0x00, 0x50,  # destination port 80
        0x03, 0x00, 0x04,  # PP2_TYPE_CRC32C, length 4
        0xFD, 0xDF, 0x53, 0x62,  # CRC32C of the whole header with this field zeroed
        0xEA, 0x00, 0x17,  # PP2_TYPE_AWS, length 23
        0x01,  # PP2_SUBTYPE_AWS_VPCE_ID
        *b"vpce-0a1b2c3d4e5f60718",
        0x04, 0x00, 0x24,  # PP2_TYPE_NOOP, length 36
        *bytes(36),
    ]
)  # fmt: skip
PAYLOAD = b"PLPB\x01 and the rest of the probe"


def swapped_scapy_crc32c(data: bytes) -> int:
    # scapy returns the value byte-swapped for SCTP's little-endian field
    return struct.unpack(">I", struct.pack("<I", scapy_crc32c(data)))[0]


def tlv(t: int, value: bytes) -> bytes:
    return bytes([t]) + len(value).to_bytes(2, "big") + value


def raw_header(ver_cmd: int, fam: int, block: bytes, length: int | None = None) -> bytes:
    n = len(block) if length is None else length
    return SIG + bytes([ver_cmd, fam]) + n.to_bytes(2, "big") + block


V4_BLOCK = bytes([10, 2, 1, 5, 10, 2, 0, 20, 0xC7, 0x38, 0x00, 0x50])

# --- CRC32C ---------------------------------------------------------------------------------


def test_crc32c_of_the_standard_check_string() -> None:
    assert crc32c(b"123456789") == 0xE3069283


def test_crc32c_of_nothing_is_zero() -> None:
    assert crc32c(b"") == 0


@FEW
@given(st.binary(max_size=300))
def test_crc32c_agrees_with_scapys_implementation(data: bytes) -> None:
    assert crc32c(data) == swapped_scapy_crc32c(data)


@FEW
@given(st.binary(max_size=100), st.binary(max_size=100))
def test_crc32c_can_be_continued_across_chunks(a: bytes, b: bytes) -> None:
    assert crc32c(b, crc32c(a)) == crc32c(a + b)


# --- the hand-assembled AWS fixture ---------------------------------------------------------


def test_aws_header_fixture_parses_with_client_address_endpoint_ip_and_vpce_id() -> None:
    header, used = parse_proxy_v2(AWS_HEADER + PAYLOAD)
    assert used == len(AWS_HEADER) == 100
    assert header.command == "PROXY"
    assert (header.family, header.transport) == ("inet", "stream")
    assert (header.src_ip, header.src_port) == (V4("10.2.1.5"), 51000)
    assert (header.dst_ip, header.dst_port) == (V4("10.2.0.20"), 80)
    assert header.vpce_id == "vpce-0a1b2c3d4e5f60718"
    assert header.crc32c == 0xFDDF5362
    assert [t.type for t in header.tlvs] == [0x03, 0xEA, 0x04]


def test_build_proxy_v2_reproduces_the_aws_fixture_byte_for_byte() -> None:
    built = build_proxy_v2(
        "10.2.1.5", "10.2.0.20", 51000, 80, vpce_id="vpce-0a1b2c3d4e5f60718", noop_pad=36
    )
    assert built == AWS_HEADER


def test_aws_fixture_crc_agrees_with_an_independent_crc32c() -> None:
    zeroed = AWS_HEADER[:31] + bytes(4) + AWS_HEADER[35:]
    assert swapped_scapy_crc32c(zeroed) == 0xFDDF5362


# --- round trips ----------------------------------------------------------------------------


@st.composite
def built_headers(draw: st.DrawFn) -> tuple[bytes, dict[str, object]]:
    version = draw(st.sampled_from([4, 6]))
    ips = st.ip_addresses(v=version)
    args: dict[str, object] = {
        "src": draw(ips),
        "dst": draw(ips),
        "src_port": draw(st.integers(0, 65535)),
        "dst_port": draw(st.integers(0, 65535)),
        "vpce_id": draw(
            st.none() | st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1)
        ),
        "crc": draw(st.booleans()),
        "noop_pad": draw(st.integers(0, 64)),
    }
    return build_proxy_v2(**args), args  # type: ignore[arg-type]


@FEW
@given(built_headers())
def test_built_header_round_trips_through_the_parser(case: tuple[bytes, dict[str, object]]) -> None:
    data, args = case
    header, used = parse_proxy_v2(data + PAYLOAD)
    assert used == len(data)
    assert (header.src_ip, header.dst_ip) == (args["src"], args["dst"])
    assert (header.src_port, header.dst_port) == (args["src_port"], args["dst_port"])
    assert header.vpce_id == args["vpce_id"]
    assert (header.crc32c is not None) == args["crc"]


@FEW
@given(built_headers())
def test_the_first_16_bytes_give_the_length_the_parser_consumes(
    case: tuple[bytes, dict[str, object]],
) -> None:
    data, _ = case
    assert proxy_v2_length(data[:PROXY_V2_FIXED_LEN]) == parse_proxy_v2(data + PAYLOAD)[1]


def test_header_length_needs_all_16_fixed_bytes() -> None:
    with pytest.raises(TruncatedError):
        proxy_v2_length(AWS_HEADER[: PROXY_V2_FIXED_LEN - 1])


def test_header_length_refuses_what_the_parser_refuses() -> None:
    with pytest.raises(MalformedError, match="signature"):
        proxy_v2_length(b"GET / HTTP/1.1\r\n\r\n")
    with pytest.raises(MalformedError, match="limit"):
        proxy_v2_length(raw_header(0x21, 0x11, b"", length=5000))


@FEW
@given(built_headers())
def test_every_truncation_of_a_header_is_truncated_error(
    case: tuple[bytes, dict[str, object]],
) -> None:
    data, _ = case
    for n in range(len(data)):
        with pytest.raises(TruncatedError):
            parse_proxy_v2(data[:n])


@FEW
@given(
    st.one_of(
        st.binary(max_size=200),
        st.binary(max_size=200).map(lambda b: SIG + b),
        st.tuples(st.sampled_from([0x20, 0x21]), st.sampled_from([0x00, 0x11, 0x21, 0x31]))
        .flatmap(lambda vf: st.binary(max_size=120).map(lambda b: raw_header(*vf, b)))
        .map(bytes),
    )
)
def test_random_bytes_only_raise_wire_errors_when_parsing_proxy_v2(data: bytes) -> None:
    with contextlib.suppress(WireError):
        parse_proxy_v2(data)
    with contextlib.suppress(WireError):
        parse_proxy_stack(data + data)


@FEW
@given(built_headers(), st.data())
def test_header_with_crc_and_a_flipped_bit_is_rejected_unless_the_flip_removed_the_crc(
    case: tuple[bytes, dict[str, object]], data: st.DataObject
) -> None:
    # CRC32C is optional in PROXY v2: a flip in the CRC TLV's type byte turns it into some
    # other TLV and the header no longer claims a CRC. Every other flip must be caught.
    raw, args = case
    assume(args["crc"])
    buf = bytearray(raw)
    bit = data.draw(st.integers(min_value=0, max_value=len(buf) * 8 - 1))
    buf[bit // 8] ^= 1 << (bit % 8)
    try:
        header, _ = parse_proxy_v2(bytes(buf))
    except WireError:
        return
    assert header.crc32c is None
    assert PP2_TYPE_CRC32C not in [t.type for t in header.tlvs]


# --- CRC ------------------------------------------------------------------------------------


def test_header_with_a_bad_crc32c_is_malformed() -> None:
    bad = bytearray(AWS_HEADER)
    bad[34] ^= 0x01
    with pytest.raises(MalformedError, match="CRC32C"):
        parse_proxy_v2(bytes(bad))


def test_header_with_a_changed_address_under_its_crc_is_malformed() -> None:
    bad = bytearray(AWS_HEADER)
    bad[19] = 6  # 10.2.1.5 -> 10.2.1.6
    with pytest.raises(MalformedError, match="CRC32C"):
        parse_proxy_v2(bytes(bad))


def test_crc32c_tlv_of_the_wrong_length_is_malformed() -> None:
    with pytest.raises(MalformedError, match="CRC32C"):
        parse_proxy_v2(raw_header(0x21, 0x11, V4_BLOCK + tlv(0x03, b"\0\0\0")))


def test_two_crc32c_tlvs_are_malformed() -> None:
    block = V4_BLOCK + tlv(0x03, bytes(4)) + tlv(0x03, bytes(4))
    with pytest.raises(MalformedError, match="twice"):
        parse_proxy_v2(raw_header(0x21, 0x11, block))


def test_header_without_crc_tlv_parses_with_crc32c_none() -> None:
    header, _ = parse_proxy_v2(build_proxy_v2("10.2.1.5", "10.2.0.20", 1, 2, crc=False))
    assert header.crc32c is None


# --- strict bounds --------------------------------------------------------------------------


def test_tlv_overrunning_the_declared_length_is_malformed() -> None:
    block = V4_BLOCK + bytes([0x04, 0x00, 0x10]) + bytes(4)  # says 16, has 4
    with pytest.raises(MalformedError, match="overruns"):
        parse_proxy_v2(raw_header(0x21, 0x11, block) + bytes(40))


def test_partial_tlv_header_at_the_end_of_the_block_is_malformed() -> None:
    with pytest.raises(MalformedError, match="overruns"):
        parse_proxy_v2(raw_header(0x21, 0x11, V4_BLOCK + b"\x04\x00"))


def test_length_too_short_for_the_family_addresses_is_malformed() -> None:
    with pytest.raises(MalformedError, match="too short"):
        parse_proxy_v2(raw_header(0x21, 0x21, V4_BLOCK))  # TCP6 needs 36 bytes


def test_header_beyond_the_size_limit_is_malformed_before_it_is_buffered() -> None:
    with pytest.raises(MalformedError, match="limit"):
        parse_proxy_v2(raw_header(0x21, 0x11, b"", length=5000))


def test_size_limit_is_configurable() -> None:
    with pytest.raises(MalformedError, match="limit"):
        parse_proxy_v2(AWS_HEADER, max_len=99)
    assert parse_proxy_v2(AWS_HEADER, max_len=100)[1] == 100


def test_bad_signature_is_malformed() -> None:
    with pytest.raises(MalformedError, match="signature"):
        parse_proxy_v2(b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n")


@pytest.mark.parametrize("ver_cmd", [0x11, 0x31, 0x22, 0x2F])
def test_other_versions_and_commands_are_malformed(ver_cmd: int) -> None:
    with pytest.raises(MalformedError):
        parse_proxy_v2(raw_header(ver_cmd, 0x11, V4_BLOCK))


@pytest.mark.parametrize("fam", [0x01, 0x13, 0x41, 0xFF])
def test_unknown_family_with_proxy_command_is_malformed(fam: int) -> None:
    with pytest.raises(MalformedError, match="family"):
        parse_proxy_v2(raw_header(0x21, fam, V4_BLOCK))


def test_unique_id_over_128_bytes_is_malformed() -> None:
    with pytest.raises(MalformedError, match="UNIQUE_ID"):
        parse_proxy_v2(raw_header(0x21, 0x11, V4_BLOCK + tlv(0x05, bytes(129))))


def test_authority_that_is_not_utf8_is_malformed() -> None:
    with pytest.raises(MalformedError, match="AUTHORITY"):
        parse_proxy_v2(raw_header(0x21, 0x11, V4_BLOCK + tlv(0x02, b"\xff")))


def test_aws_tlv_without_a_subtype_is_malformed() -> None:
    with pytest.raises(MalformedError, match="subtype"):
        parse_proxy_v2(raw_header(0x21, 0x11, V4_BLOCK + tlv(0xEA, b"")))


def test_vpce_id_that_is_not_printable_ascii_is_malformed() -> None:
    with pytest.raises(MalformedError, match="endpoint id"):
        parse_proxy_v2(raw_header(0x21, 0x11, V4_BLOCK + tlv(0xEA, b"\x01vpce-\xff")))


def test_two_vpce_ids_are_malformed() -> None:
    block = V4_BLOCK + tlv(0xEA, b"\x01vpce-a") + tlv(0xEA, b"\x01vpce-b")
    with pytest.raises(MalformedError, match="twice"):
        parse_proxy_v2(raw_header(0x21, 0x11, block))


# --- families, commands and TLV kinds -------------------------------------------------------


def test_ipv6_header_parses() -> None:
    data = build_proxy_v2("2001:db8::5", "2001:db8::20", 40000, 443, vpce_id="vpce-1")
    header, _ = parse_proxy_v2(data)
    assert header.family == "inet6"
    assert (header.src_ip, header.dst_ip) == (V6("2001:db8::5"), V6("2001:db8::20"))
    assert (header.src_port, header.dst_port, header.vpce_id) == (40000, 443, "vpce-1")


def test_local_health_check_header_ignores_its_dummy_addresses() -> None:
    data = build_proxy_v2("10.3.0.100", "10.3.1.10", 1, 80, command="LOCAL")
    header, used = parse_proxy_v2(data + b"GET /health")
    assert used == len(data)
    assert header.is_local
    assert (header.src_ip, header.dst_ip, header.src_port, header.dst_port) == (None,) * 4
    assert header.crc32c is not None


def test_local_header_without_addresses_uses_unspec() -> None:
    data = build_proxy_v2(None, None, command="LOCAL", crc=False)
    assert data == SIG + bytes([0x20, 0x00, 0x00, 0x00])
    header, used = parse_proxy_v2(data)
    assert (header.command, header.family, used) == ("LOCAL", "unspec", 16)


def test_local_header_with_an_unknown_family_skips_its_block() -> None:
    header, used = parse_proxy_v2(raw_header(0x20, 0x99, b"\xaa" * 7) + b"x")
    assert (header.is_local, used, header.tlvs) == (True, 23, ())


def test_udp_header_parses_but_is_flagged_as_datagram() -> None:
    header, _ = parse_proxy_v2(raw_header(0x21, 0x12, V4_BLOCK))
    assert header.transport == "dgram"
    assert header.is_datagram
    assert header.src_ip == V4("10.2.1.5")


def test_unix_header_parses_paths_up_to_the_first_nul() -> None:
    block = b"/run/a.sock".ljust(108, b"\0") + b"/run/b.sock".ljust(108, b"\0")
    header, _ = parse_proxy_v2(raw_header(0x21, 0x31, block))
    assert (header.family, header.unix_src, header.unix_dst) == (
        "unix",
        b"/run/a.sock",
        b"/run/b.sock",
    )
    assert header.src_ip is None


def test_unspec_proxy_header_has_no_addresses() -> None:
    header, _ = parse_proxy_v2(raw_header(0x21, 0x00, b""))
    assert (header.family, header.src_ip, header.src_port) == ("unspec", None, None)


def test_known_tlvs_are_decoded_and_all_tlvs_kept_raw_in_order() -> None:
    block = (
        V4_BLOCK
        + tlv(0x01, b"h2")
        + tlv(0x02, b"svc.example.com")
        + tlv(0x05, b"\x00\x01id")
        + tlv(0x20, b"\x01\x00\x00\x00\x00")
        + tlv(0xEA, b"\x02other-subtype")
        + tlv(0xE0, b"custom")
        + tlv(0x04, b"")
    )
    header, _ = parse_proxy_v2(raw_header(0x21, 0x11, block))
    assert header.alpn == b"h2"
    assert header.authority == "svc.example.com"
    assert header.unique_id == b"\x00\x01id"
    assert header.ssl == b"\x01\x00\x00\x00\x00"
    assert header.vpce_id is None
    assert header.tlvs[-2:] == (Tlv(0xE0, b"custom"), Tlv(0x04, b""))
    assert [t.type for t in header.tlvs] == [0x01, 0x02, 0x05, 0x20, 0xEA, 0xE0, 0x04]


# --- stacked headers ------------------------------------------------------------------------


def test_stacked_headers_parse_in_order_with_the_nlbs_first() -> None:
    client_own = build_proxy_v2("192.0.2.1", "198.51.100.2", 1111, 2222, vpce_id="vpce-fake")
    nlb = build_proxy_v2("10.2.1.5", "10.2.0.20", 51000, 80, vpce_id="vpce-real")
    headers, used = parse_proxy_stack(nlb + client_own + PAYLOAD)
    assert used == len(nlb) + len(client_own)
    assert [h.vpce_id for h in headers] == ["vpce-real", "vpce-fake"]
    assert headers[0].src_ip == V4("10.2.1.5")


def test_stack_without_a_header_is_empty() -> None:
    assert parse_proxy_stack(PAYLOAD) == ([], 0)


def test_stack_truncated_inside_the_second_header_is_truncated_error() -> None:
    data = AWS_HEADER + AWS_HEADER
    with pytest.raises(TruncatedError):
        parse_proxy_stack(data[:-1])


def test_stack_ending_in_a_partial_signature_is_truncated_error() -> None:
    with pytest.raises(TruncatedError):
        parse_proxy_stack(AWS_HEADER + SIG[:5])


def test_stack_ending_exactly_between_headers_returns_what_it_has() -> None:
    headers, used = parse_proxy_stack(AWS_HEADER)
    assert (len(headers), used) == (1, 100)


def test_stack_deeper_than_the_limit_is_malformed() -> None:
    with pytest.raises(MalformedError, match="stacked"):
        parse_proxy_stack(AWS_HEADER * 3, max_headers=2)


# --- helpers --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [(AWS_HEADER, True), (SIG, True), (SIG[:3], True), (b"", False), (b"GET /", False)],
)
def test_is_proxy_v2_prefix(data: bytes, expected: bool) -> None:
    assert is_proxy_v2_prefix(data) is expected


def test_signature_constant_matches_the_spec() -> None:
    assert PROXY_V2_SIGNATURE == SIG


def test_build_refuses_mixed_address_families() -> None:
    with pytest.raises(ValueError, match="IP version"):
        build_proxy_v2("10.0.0.1", "2001:db8::1", 1, 2)


def test_build_refuses_a_proxy_command_without_addresses() -> None:
    with pytest.raises(ValueError, match="required"):
        build_proxy_v2(None, None)


def test_parsed_header_is_a_frozen_dataclass() -> None:
    header, _ = parse_proxy_v2(AWS_HEADER)
    assert isinstance(header, ProxyHeader)
    with pytest.raises(AttributeError):
        header.vpce_id = "other"  # type: ignore[misc]
