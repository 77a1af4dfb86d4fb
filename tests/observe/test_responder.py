"""The in-band responder: answers authentic, fresh tokens with what the target saw; nothing else.

Every test runs a real responder on 127.0.0.1 (or ::1) port 0 and talks to it over TCP.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from agent.observe.responder import Responder
from agent.observe.store import ObservationStore
from agent.wire import (
    AGENT_ID_MAX,
    PROXY_V2_SIGNATURE,
    REPLY_MAX,
    TOKEN_STRINGS_MAX,
    VPCE_ID_MAX,
    Reply,
    Token,
    build_proxy_v2,
    decode_reply,
    encode_reply,
    encode_token,
)

KEY = b"k" * 32
OTHER_KEY = b"x" * 32
VPCE = "vpce-0123456789abcdef0"
MakeResponder = Callable[..., Awaitable[Responder]]


@pytest.fixture
async def make_responder(caplog: pytest.LogCaptureFixture) -> AsyncIterator[MakeResponder]:
    started: list[Responder] = []

    async def make(**kwargs: object) -> Responder:
        opts: dict[str, object] = {
            "key": KEY,
            "agent_id": "target-1",
            "store": ObservationStore(),
            "host": "127.0.0.1",
            "port": 0,
            "read_timeout": 2.0,
        }
        opts.update(kwargs)
        responder = Responder(**opts)  # type: ignore[arg-type]
        await responder.start()
        started.append(responder)
        return responder

    try:
        yield make
    finally:
        for responder in started:
            await responder.stop()
        assert all(r.active_connections == 0 for r in started)
        # nothing hostile or interrupted may surface as an error in the logs
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def token(path: str = "client-2/apne1-az4/9721", **over: object) -> Token:
    tok = Token.new(path, "client-2")
    return Token(**{**{f: getattr(tok, f) for f in tok.__slots__}, **over})  # type: ignore[arg-type]


async def exchange(
    responder: Responder, *chunks: bytes, host: str = "127.0.0.1", gap_s: float = 0.0
) -> tuple[bytes, int]:
    """Send ``chunks`` (with ``gap_s`` between them), read to EOF; return (reply, our port)."""
    reader, writer = await asyncio.open_connection(host, responder.bound_port)
    our_port = writer.get_extra_info("sockname")[1]
    try:
        for i, chunk in enumerate(chunks):
            if i and gap_s:
                await asyncio.sleep(gap_s)
            writer.write(chunk)
            await writer.drain()
        data = b""
        async with asyncio.timeout(5):
            with contextlib.suppress(ConnectionResetError):  # a reset is "no reply" too
                while more := await reader.read(REPLY_MAX + 100):
                    data += more
        return data, our_port
    finally:
        writer.close()


async def settle(responder: Responder) -> None:
    """Let the server finish its side of connections the test already saw closed."""
    for _ in range(100):
        if responder.active_connections == 0:
            return
        await asyncio.sleep(0.01)


# -- the happy path -------------------------------------------------------------------------


async def test_a_valid_token_gets_an_authenticated_reply_with_the_source_port_the_client_used(
    make_responder: MakeResponder,
) -> None:
    responder = await make_responder()
    tok = token()
    data, our_port = await exchange(responder, encode_token(tok, KEY))
    reply = decode_reply(data, KEY)
    assert reply.probe_id == tok.probe_id
    assert reply.agent_id == "target-1"
    assert (str(reply.src_ip), reply.src_port) == ("127.0.0.1", our_port)
    assert (str(reply.local_ip), reply.local_port) == ("127.0.0.1", responder.bound_port)
    assert reply.vpce_id is None and reply.proxy_src_ip is None
    assert abs(reply.recv_ns - time.time_ns()) < 5e9
    assert responder.counters.replied == 1


async def test_a_verified_probe_is_recorded_as_an_observation(
    make_responder: MakeResponder,
) -> None:
    store = ObservationStore()
    responder = await make_responder(store=store)
    tok = token()
    _, our_port = await exchange(responder, encode_token(tok, KEY))
    await settle(responder)
    [obs] = store.since(0).observations
    assert (obs.kind, obs.via, obs.target) == ("token", "responder", "target-1")
    assert (obs.probe_id, obs.path, obs.agent) == (tok.probe_id_hex, tok.path_id, "client-2")
    assert (obs.src_ip, obs.src_port) == ("127.0.0.1", our_port)
    assert (obs.dst_ip, obs.dst_port) == ("127.0.0.1", responder.bound_port)
    assert obs.answered is True


async def test_a_token_trickling_in_over_several_segments_is_answered(
    make_responder: MakeResponder,
) -> None:
    responder = await make_responder()
    raw = encode_token(token(), KEY)
    data, _ = await exchange(responder, raw[:3], raw[3:30], raw[30:], gap_s=0.02)
    assert decode_reply(data, KEY).agent_id == "target-1"


async def test_payload_after_the_token_does_not_stop_the_reply(
    make_responder: MakeResponder,
) -> None:
    responder = await make_responder()
    tok = token()
    data, _ = await exchange(responder, encode_token(tok, KEY) + b"GET / HTTP/1.0\r\n\r\n")
    assert decode_reply(data, KEY).probe_id == tok.probe_id


async def test_insecure_mode_answers_unauthenticated_tokens(make_responder: MakeResponder) -> None:
    responder = await make_responder(key=b"", insecure=True)
    tok = token()
    data, _ = await exchange(responder, encode_token(tok, b"", insecure=True))
    assert decode_reply(data, b"", insecure=True).probe_id == tok.probe_id


# -- hostile input gets nothing -------------------------------------------------------------


async def test_a_forged_token_gets_no_reply_and_is_counted(make_responder: MakeResponder) -> None:
    store = ObservationStore()
    responder = await make_responder(store=store)
    data, _ = await exchange(responder, encode_token(token(), OTHER_KEY))
    await settle(responder)
    assert data == b""
    assert responder.counters.forged == 1
    assert len(store) == 0


async def test_a_replayed_token_is_rejected_and_counted(make_responder: MakeResponder) -> None:
    responder = await make_responder()
    raw = encode_token(token(), KEY)
    first, _ = await exchange(responder, raw)
    again, _ = await exchange(responder, raw)
    await settle(responder)
    assert decode_reply(first, KEY)
    assert again == b""
    assert responder.counters.replayed == 1
    assert len(responder.store) == 1


async def test_a_stale_token_is_rejected_as_a_replay(make_responder: MakeResponder) -> None:
    responder = await make_responder()
    old = token(sent_ns=time.time_ns() - 3600 * 10**9)
    data, _ = await exchange(responder, encode_token(old, KEY))
    await settle(responder)
    assert data == b""
    assert responder.counters.replayed == 1


async def test_random_bytes_are_counted_as_malformed_and_get_no_reply(
    make_responder: MakeResponder,
) -> None:
    responder = await make_responder()
    data, _ = await exchange(responder, b"Z" + os.urandom(200))
    await settle(responder)
    assert data == b""
    assert responder.counters.malformed == 1


async def test_a_connection_closed_inside_a_token_is_malformed(
    make_responder: MakeResponder,
) -> None:
    responder = await make_responder()
    reader, writer = await asyncio.open_connection("127.0.0.1", responder.bound_port)
    writer.write(encode_token(token(), KEY)[:20])
    writer.write_eof()
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    writer.close()
    await settle(responder)
    assert responder.counters.malformed == 1


async def test_an_empty_connection_is_counted_as_empty_not_malformed(
    make_responder: MakeResponder,
) -> None:
    responder = await make_responder()
    reader, writer = await asyncio.open_connection("127.0.0.1", responder.bound_port)
    writer.write_eof()
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    writer.close()
    await settle(responder)
    assert (responder.counters.empty, responder.counters.malformed) == (1, 0)


async def test_more_than_max_bytes_without_a_token_is_cut_and_counted(
    make_responder: MakeResponder,
) -> None:
    responder = await make_responder(proxy_v2=True, max_bytes=200)
    header = build_proxy_v2("10.1.1.20", "10.2.1.5", 51000, 9721, noop_pad=400)
    data, _ = await exchange(responder, header + encode_token(token(), KEY))
    await settle(responder)
    assert data == b""
    assert responder.counters.malformed == 1


# -- resource limits ------------------------------------------------------------------------


async def test_a_slow_loris_connection_is_cut_at_read_timeout(
    make_responder: MakeResponder,
) -> None:
    responder = await make_responder(read_timeout=0.3)
    raw = encode_token(token(), KEY)
    reader, writer = await asyncio.open_connection("127.0.0.1", responder.bound_port)
    start = time.monotonic()
    try:
        for i in range(40):  # one byte every 50 ms: would take 2 s to finish the token
            writer.write(raw[i : i + 1])
            await writer.drain()
            await asyncio.sleep(0.05)
            if reader.at_eof():
                break
        async with asyncio.timeout(5):
            assert await reader.read() == b""
    except ConnectionResetError:
        pass
    finally:
        writer.close()
    elapsed = time.monotonic() - start
    await settle(responder)
    assert 0.25 <= elapsed < 1.0
    assert responder.counters.timeouts == 1


async def wait_active(responder: Responder, n: int) -> None:
    for _ in range(200):
        if responder.active_connections == n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{responder.active_connections} active connections, expected {n}")


async def test_at_max_connections_the_oldest_unauthenticated_connection_makes_room(
    make_responder: MakeResponder,
) -> None:
    responder = await make_responder(max_connections=2, max_per_peer=2, read_timeout=3.0)
    held = [await asyncio.open_connection("127.0.0.1", responder.bound_port) for _ in range(2)]
    for _, w in held:
        w.write(b"PLPB")  # a token's start: the responder keeps reading
        await w.drain()
    await wait_active(responder, 2)
    start = time.monotonic()
    newer_reader, newer_writer = await asyncio.open_connection("127.0.0.1", responder.bound_port)
    try:
        async with asyncio.timeout(2):
            with contextlib.suppress(ConnectionResetError):
                assert await held[0][0].read() == b""  # the oldest was closed
        assert not newer_reader.at_eof()
    finally:
        newer_writer.close()
        for _, w in held:
            w.close()
    assert time.monotonic() - start < 1.0
    assert responder.counters.shed == 1 and responder.counters.over_limit == 0
    assert responder.counters.accepted == 3


async def test_when_every_slot_holds_authenticated_work_a_new_connection_is_refused(
    make_responder: MakeResponder, monkeypatch: pytest.MonkeyPatch
) -> None:
    responder = await make_responder(max_connections=2, max_per_peer=2, read_timeout=3.0)
    release = asyncio.Event()

    async def slow_write(writer: asyncio.StreamWriter, data: bytes) -> bool:
        await release.wait()  # authenticated, still writing its reply
        return False

    monkeypatch.setattr(responder, "_write", slow_write)
    busy = [await asyncio.open_connection("127.0.0.1", responder.bound_port) for _ in range(2)]
    for _, w in busy:
        w.write(encode_token(token(), KEY))
        await w.drain()
    await wait_active(responder, 2)
    await asyncio.sleep(0.05)
    excess_reader, excess_writer = await asyncio.open_connection("127.0.0.1", responder.bound_port)
    try:
        async with asyncio.timeout(2):
            with contextlib.suppress(ConnectionResetError):
                assert await excess_reader.read() == b""
    finally:
        release.set()
        excess_writer.close()
        for _, w in busy:
            w.close()
    assert responder.counters.over_limit == 1 and responder.counters.shed == 0


async def test_a_probe_arriving_while_an_idle_connection_holds_the_only_slot_is_answered(
    make_responder: MakeResponder,
) -> None:
    responder = await make_responder(max_connections=1, read_timeout=3.0)
    _, hog = await asyncio.open_connection("127.0.0.1", responder.bound_port)
    await wait_active(responder, 1)
    answered, _ = await exchange(responder, encode_token(token(), KEY))
    hog.close()
    assert decode_reply(answered, KEY).agent_id == "target-1"
    assert responder.counters.shed == 1


async def test_one_proxy_client_cannot_hold_more_than_its_share_of_slots(
    make_responder: MakeResponder,
) -> None:
    responder = await make_responder(
        proxy_v2=True, max_connections=100, max_per_client=10, read_timeout=5.0
    )
    header = build_proxy_v2("10.1.1.20", "10.2.1.5", 51000, 9721, vpce_id=VPCE)
    flood = [await asyncio.open_connection("127.0.0.1", responder.bound_port) for _ in range(50)]
    for _, w in flood:
        w.write(header)  # then nothing: an idle client behind the NLB
        await w.drain()
    await asyncio.sleep(0.3)
    try:
        assert responder.active_connections <= 10
        assert responder.counters.shed_per_source == 40
        other = build_proxy_v2("10.1.1.99", "10.2.1.5", 52000, 9721, vpce_id=VPCE)
        answered, _ = await exchange(responder, other + encode_token(token(), KEY))
        assert decode_reply(answered, KEY).proxy_src_ip is not None
    finally:
        for _, w in flood:
            w.close()


async def test_authenticated_probes_keep_succeeding_while_a_flood_of_idle_connections_runs(
    make_responder: MakeResponder,
) -> None:
    responder = await make_responder(max_connections=64, read_timeout=30.0)
    stop = asyncio.Event()
    held: list[asyncio.StreamWriter] = []

    async def flood() -> None:  # keeps opening idle connections, 4x the slots and more
        while not stop.is_set():
            try:
                _, w = await asyncio.open_connection("127.0.0.1", responder.bound_port)
            except OSError:
                await asyncio.sleep(0.01)
                continue
            held.append(w)
            if len(held) > 256:
                held.pop(0).close()

    flooders = [asyncio.create_task(flood()) for _ in range(4)]
    try:
        await asyncio.sleep(0.3)
        answers = []
        for _ in range(20):
            reply, _ = await exchange(responder, encode_token(token(), KEY))
            answers.append(decode_reply(reply, KEY).agent_id)
        assert answers == ["target-1"] * 20
        shed = responder.counters.shed + responder.counters.shed_per_source
        assert shed > 64  # the flood was recycled, not the probes
    finally:
        stop.set()
        await asyncio.gather(*flooders)
        for w in held:
            w.close()


async def test_stop_cuts_open_connections_quickly(make_responder: MakeResponder) -> None:
    responder = await make_responder(read_timeout=30.0)
    conns = [await asyncio.open_connection("127.0.0.1", responder.bound_port) for _ in range(5)]
    for _ in range(100):
        if responder.active_connections == 5:
            break
        await asyncio.sleep(0.01)
    start = time.monotonic()
    await responder.stop()
    assert time.monotonic() - start < 1.0
    assert responder.active_connections == 0
    for _, w in conns:
        w.close()


# -- PROXY protocol v2 ----------------------------------------------------------------------


async def test_proxy_v2_header_yields_endpoint_id_and_client_address_in_reply_and_observation(
    make_responder: MakeResponder,
) -> None:
    store = ObservationStore()
    responder = await make_responder(proxy_v2=True, store=store)
    tok = token()
    header = build_proxy_v2("10.1.1.20", "10.2.1.5", 51000, 9721, vpce_id=VPCE, noop_pad=36)
    data, our_port = await exchange(responder, header + encode_token(tok, KEY))
    await settle(responder)
    reply = decode_reply(data, KEY)
    assert reply.vpce_id == VPCE
    assert (str(reply.proxy_src_ip), reply.proxy_src_port) == ("10.1.1.20", 51000)
    assert (str(reply.proxy_dst_ip), reply.proxy_dst_port) == ("10.2.1.5", 9721)
    assert reply.src_port == our_port  # the socket's peer, not the PROXY address
    [obs] = store.since(0).observations
    assert (obs.proxy_endpoint_id, obs.proxy_src, obs.proxy_dst) == (
        VPCE,
        "10.1.1.20:51000",
        "10.2.1.5:9721",
    )
    assert responder.counters.proxy_headers == 1


def hand_built_aws_header() -> bytes:
    """An IPv4 PROXY header as AWS lays it out, assembled byte by byte (no CRC)."""
    addrs = (
        bytes([10, 1, 1, 20, 10, 2, 1, 5]) + (51000).to_bytes(2, "big") + (9721).to_bytes(2, "big")
    )
    aws = b"\xea" + (1 + len(VPCE)).to_bytes(2, "big") + b"\x01" + VPCE.encode()
    noop = b"\x04" + (5).to_bytes(2, "big") + bytes(5)
    block = addrs + aws + noop
    return PROXY_V2_SIGNATURE + b"\x21\x11" + len(block).to_bytes(2, "big") + block


async def test_a_hand_assembled_aws_header_is_understood(make_responder: MakeResponder) -> None:
    responder = await make_responder(proxy_v2=True)
    data, _ = await exchange(responder, hand_built_aws_header(), encode_token(token(), KEY))
    reply = decode_reply(data, KEY)
    assert (reply.vpce_id, str(reply.proxy_src_ip)) == (VPCE, "10.1.1.20")


async def test_only_the_outermost_proxy_header_is_trusted(make_responder: MakeResponder) -> None:
    responder = await make_responder(proxy_v2=True)
    nlb = build_proxy_v2("10.1.1.20", "10.2.1.5", 51000, 9721, vpce_id=VPCE)
    client_made = build_proxy_v2("6.6.6.6", "7.7.7.7", 1, 2, vpce_id="vpce-forged")
    data, _ = await exchange(responder, nlb + client_made + encode_token(token(), KEY))
    reply = decode_reply(data, KEY)
    assert (reply.vpce_id, str(reply.proxy_src_ip)) == (VPCE, "10.1.1.20")


async def test_a_local_health_check_header_then_close_is_not_malformed(
    make_responder: MakeResponder,
) -> None:
    responder = await make_responder(proxy_v2=True)
    # AWS health checks: LOCAL command, TCP4 family, addresses the receiver ignores
    local = PROXY_V2_SIGNATURE + b"\x20\x11" + (12).to_bytes(2, "big") + bytes(12)
    reader, writer = await asyncio.open_connection("127.0.0.1", responder.bound_port)
    writer.write(local)
    writer.write_eof()
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    writer.close()
    await settle(responder)
    c = responder.counters
    assert (c.health_checks, c.malformed, c.timeouts, c.empty) == (1, 0, 0, 0)


async def test_a_health_check_that_lingers_is_not_counted_as_a_timeout(
    make_responder: MakeResponder,
) -> None:
    responder = await make_responder(proxy_v2=True, read_timeout=0.2)
    local = build_proxy_v2("10.3.0.100", "10.3.1.10", 1, 80, command="LOCAL")
    data, _ = await exchange(responder, local)
    await settle(responder)
    assert data == b""
    assert (responder.counters.health_checks, responder.counters.timeouts) == (1, 0)


async def test_a_token_without_the_expected_proxy_header_is_answered_and_counted(
    make_responder: MakeResponder,
) -> None:
    responder = await make_responder(proxy_v2=True)
    data, _ = await exchange(responder, encode_token(token(), KEY))
    assert decode_reply(data, KEY).vpce_id is None
    assert responder.counters.proxy_missing == 1


async def test_a_proxy_header_when_proxy_v2_is_off_is_malformed_and_flagged(
    make_responder: MakeResponder,
) -> None:
    responder = await make_responder(proxy_v2=False)
    header = build_proxy_v2("10.1.1.20", "10.2.1.5", 51000, 9721, vpce_id=VPCE)
    data, _ = await exchange(responder, header + encode_token(token(), KEY))
    await settle(responder)
    assert data == b""
    assert (responder.counters.malformed, responder.counters.proxy_unexpected) == (1, 1)


async def test_an_endpoint_id_outside_the_expected_ones_is_answered_and_counted(
    make_responder: MakeResponder,
) -> None:
    responder = await make_responder(
        proxy_v2=True, expected_endpoint_ids=["vpce-0aaaaaaaaaaaaaaa0"]
    )
    header = build_proxy_v2("10.1.1.20", "10.2.1.5", 51000, 9721, vpce_id=VPCE)
    data, _ = await exchange(responder, header + encode_token(token(), KEY))
    assert decode_reply(data, KEY).vpce_id == VPCE
    assert responder.counters.unexpected_endpoint == 1


# -- no amplification -----------------------------------------------------------------------


def test_a_reply_with_every_field_at_its_largest_fits_reply_max() -> None:
    v6 = ipaddress.IPv6Address("ffff:" * 7 + "ffff")
    reply = Reply(
        probe_id=b"\xff" * 16,
        agent_id="é" * (AGENT_ID_MAX // 2),
        recv_ns=2**64 - 1,
        src_ip=v6,
        src_port=65535,
        local_ip=v6,
        local_port=65535,
        vpce_id="v" * VPCE_ID_MAX,
        proxy_src_ip=v6,
        proxy_src_port=65535,
        proxy_dst_ip=v6,
        proxy_dst_port=65535,
    )
    assert len(reply.agent_id.encode()) == AGENT_ID_MAX
    assert len(encode_reply(reply, KEY)) <= REPLY_MAX


async def test_the_largest_reply_the_responder_can_send_stays_within_reply_max(
    make_responder: MakeResponder,
) -> None:
    responder = await make_responder(host="::1", proxy_v2=True, agent_id="t" * AGENT_ID_MAX)
    header = build_proxy_v2(
        "ffff::ffff", "ffff::fffe", 65535, 65535, vpce_id="v" * VPCE_ID_MAX, noop_pad=100
    )
    path = "p" * (TOKEN_STRINGS_MAX - len("client-2"))
    data, _ = await exchange(responder, header + encode_token(token(path=path), KEY), host="::1")
    reply = decode_reply(data, KEY)
    assert reply.vpce_id == "v" * VPCE_ID_MAX and reply.proxy_src_ip is not None
    assert len(data) <= REPLY_MAX


async def test_an_endpoint_id_too_long_for_a_reply_is_left_out_not_fatal(
    make_responder: MakeResponder,
) -> None:
    responder = await make_responder(proxy_v2=True)
    header = build_proxy_v2("10.1.1.20", "10.2.1.5", 51000, 9721, vpce_id="v" * 200)
    data, _ = await exchange(responder, header + encode_token(token(), KEY))
    reply = decode_reply(data, KEY)
    assert reply.vpce_id is None and str(reply.proxy_src_ip) == "10.1.1.20"
    assert len(data) <= REPLY_MAX


def test_a_responder_refuses_a_key_that_cannot_authenticate() -> None:
    with pytest.raises(ValueError):
        Responder(key=b"short", agent_id="target-1", store=ObservationStore())


async def test_a_lone_carriage_return_is_malformed_but_not_taken_for_a_proxy_header(
    make_responder: MakeResponder,
) -> None:
    responder = await make_responder(proxy_v2=False)
    reader, writer = await asyncio.open_connection("127.0.0.1", responder.bound_port)
    writer.write(b"\r\n")
    writer.write_eof()
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    writer.close()
    await settle(responder)
    assert (responder.counters.malformed, responder.counters.proxy_unexpected) == (1, 0)


async def test_no_single_byte_corruption_of_a_probe_gets_a_reply(
    make_responder: MakeResponder,
) -> None:
    responder = await make_responder(proxy_v2=True, read_timeout=0.2)
    tok = token()
    header = build_proxy_v2("10.1.1.20", "10.2.1.5", 51000, 9721, vpce_id=VPCE, crc=False)
    raw = bytearray(encode_token(tok, KEY))
    answered = []
    for i in range(len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x5A
        data, _ = await exchange(responder, header + bytes(bad))
        answered += [i] if data else []
    await settle(responder)
    c = responder.counters
    assert answered == []
    # each corruption was refused for a reason: nothing was believed, nothing went uncounted
    assert c.forged + c.malformed + c.timeouts == len(raw)
    assert c.replied == 0
