"""The passive sniffer: tagged SYNs and token first-segments are recorded with the source the
target saw; untagged traffic is not; forged tokens are counted, never believed; and the real
service on the port keeps answering while the sniffer watches."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
from scapy.layers.inet import IP, TCP
from scapy.packet import Raw

from agent.observe.sniffer import Sniffer
from agent.probes.base import ProbeTarget
from agent.probes.syn import SynEngine
from agent.rawsock import VethPair, in_netns, netns_exists, veth_pair
from agent.results import PathRef
from agent.wire import (
    SynTagger,
    Token,
    build_proxy_v2,
    encode_token,
    token_to_header,
)

KEY = b"s" * 32
OTHER_KEY = b"x" * 32
NLB, TARGET = "10.3.0.100", "10.3.1.10"


def sniffer(**kw: object) -> Sniffer:
    return Sniffer("lo", [80], key=KEY, target="target-1", **kw)  # type: ignore[arg-type]


def segment(payload: bytes = b"", flags: str = "PA", seq: int = 1000) -> bytes:
    pkt = IP(src=NLB, dst=TARGET) / TCP(sport=40000, dport=80, flags=flags, seq=seq)
    return bytes(pkt / Raw(payload) if payload else pkt)


def http_request(token_header: str | None) -> bytes:
    lines = ["GET / HTTP/1.1", "Host: svc"]
    if token_header is not None:
        lines.append(f"X-Plprobe-Token: {token_header}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# ------------------------------------------------------------------------------ parsing (pure)


def test_a_tagged_syn_is_recorded_with_the_source_the_target_saw() -> None:
    sn = sniffer()
    isn = SynTagger(KEY).make()
    sn.process_ip(segment(flags="S", seq=isn), now=time.time())
    [obs] = sn.drain()
    assert (obs.kind, obs.isn, obs.src_ip, obs.src_port, obs.via) == (
        "syn_tag", isn, NLB, 40000, "sniffer"
    )  # fmt: skip


def test_a_syn_whose_isn_carries_no_tag_is_not_recorded() -> None:
    sn = sniffer()
    isn = SynTagger(OTHER_KEY).make()
    while SynTagger(KEY).verify(isn):  # the 2**-15 chance that another key's tag verifies
        isn = SynTagger(OTHER_KEY).make()
    sn.process_ip(segment(flags="S", seq=isn), now=time.time())
    assert (sn.drain(), sn.untagged, sn.tagged) == ([], 1, 0)


def test_a_token_as_first_bytes_after_a_proxy_v2_header_is_recorded_with_the_endpoint() -> None:
    sn = sniffer()
    token = Token.new("client-2/apne1-az4/80", "client-2")
    proxy = build_proxy_v2("10.1.0.5", "10.2.0.9", 51000, 80, vpce_id="vpce-0abc")
    sn.process_ip(segment(proxy + encode_token(token, KEY) + b"rest"), now=token.sent_ns / 1e9)
    [obs] = sn.drain()
    assert (obs.kind, obs.probe_id, obs.path, obs.proxy_endpoint_id, obs.proxy_src) == (
        "token",
        token.probe_id_hex,
        "client-2/apne1-az4/80",
        "vpce-0abc",
        "10.1.0.5:51000",
    )


def test_a_token_in_the_http_header_is_recorded() -> None:
    sn = sniffer()
    token = Token.new("p/80", "c")
    sn.process_ip(
        segment(http_request(token_to_header(encode_token(token, KEY)))),
        now=token.sent_ns / 1e9,
    )
    assert [o.probe_id for o in sn.drain()] == [token.probe_id_hex]


def test_a_forged_token_is_counted_and_not_believed() -> None:
    sn = sniffer()
    token = Token.new("p/80", "c")
    sn.process_ip(
        segment(http_request(token_to_header(encode_token(token, OTHER_KEY)))),
        now=token.sent_ns / 1e9,
    )
    assert (sn.drain(), sn.forged, sn.tokens) == ([], 1, 0)


def test_a_replayed_first_segment_is_counted_once_as_a_replay() -> None:
    sn = sniffer()
    token = Token.new("p/80", "c")
    data = segment(encode_token(token, KEY))
    sn.process_ip(data, now=token.sent_ns / 1e9)
    sn.process_ip(data, now=token.sent_ns / 1e9 + 0.5)
    assert (len(sn.drain()), sn.replayed) == (1, 1)


def test_an_ordinary_http_request_is_not_recorded() -> None:
    sn = sniffer()
    sn.process_ip(segment(http_request(None)), now=0.0)
    assert (sn.drain(), sn.untagged, sn.malformed) == ([], 1, 0)


def test_observations_are_bounded_and_evictions_counted() -> None:
    sn = sniffer(max_observations=2)
    tagger = SynTagger(KEY)
    for _ in range(5):
        sn.process_ip(segment(flags="S", seq=tagger.make()), now=time.time())
    assert (len(sn.observations), sn.tagged, sn.dropped) == (2, 5, 3)


# ------------------------------------------------------------------------------ in the lab

HTTP_SERVICE = (
    "import http.server,sys\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    " def do_GET(self):\n"
    "  self.send_response(200);self.send_header('Content-Length','2');self.end_headers()\n"
    "  self.wfile.write(b'ok')\n"
    " def log_message(self,*a): pass\n"
    "s=http.server.ThreadingHTTPServer(('0.0.0.0',80),H);print('up',flush=True)\n"
    "s.serve_forever()\n"
)


@pytest.fixture
def lab() -> Iterator[VethPair]:
    """client ns_a <-> target ns_b running a real HTTP service on port 80."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    names: list[str] = []
    try:
        with veth_pair("sn") as pair:
            names = [pair.ns_a, pair.ns_b]
            srv = subprocess.Popen(
                ["ip", "netns", "exec", pair.ns_b, sys.executable, "-c", HTTP_SERVICE],
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                assert srv.stdout is not None and srv.stdout.readline().strip() == "up"
                yield pair
            finally:
                srv.kill()
                srv.wait(timeout=10)
    finally:
        assert not any(netns_exists(n) for n in names), "namespaces left behind"


async def http_get(pair: VethPair, headers: dict[str, str]) -> bytes:
    """An HTTP GET from the client namespace; returns the status line."""
    with in_netns(pair.ns_a):
        reader, writer = await asyncio.wait_for(asyncio.open_connection(pair.ip_b, 80), timeout=2.0)
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    writer.write(f"GET / HTTP/1.1\r\nHost: svc\r\n{extra}Connection: close\r\n\r\n".encode())
    await writer.drain()
    status = await asyncio.wait_for(reader.readline(), timeout=2.0)
    writer.close()
    return status


async def settle(predicate: Callable[[], bool]) -> None:
    """Wait (bounded) until the sniffer's counters say the frames were read."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(2.0):
            while not predicate():  # noqa: ASYNC110 - counters are plain attributes, no event
                await asyncio.sleep(0.02)


@pytest.mark.lab
async def test_the_sniffer_sees_tagged_syns_and_tokens_while_the_service_answers(
    lab: VethPair,
) -> None:
    with in_netns(lab.ns_b):
        sn = Sniffer(lab.if_b, [80], key=KEY, target="target-b").open()
    with in_netns(lab.ns_a):
        engine = SynEngine(tagger=SynTagger(KEY)).open()
    sn.start()
    try:
        syn = await engine.probe(
            ProbeTarget(path=PathRef(id="p", agent="a", name="b", ip=lab.ip_b, port=80)),
            timeout_s=1.0,
        )
        token = Token.new("a/b/80", "client-a")
        statuses = [
            await http_get(lab, {"X-Plprobe-Token": token_to_header(encode_token(token, KEY))}),
            await http_get(lab, {}),
        ]
        await settle(lambda: sn.tokens >= 1 and sn.tagged >= 1)
        obs = sn.drain()
    finally:
        sn.close()
        engine.close()
    assert syn.outcome == "ok"
    assert [s.split()[1] for s in statuses] == [b"200", b"200"]
    assert sorted((o.kind, o.isn or o.probe_id) for o in obs) == sorted(
        [("syn_tag", syn.detail["isn"]), ("token", token.probe_id_hex)]
    )
    assert {o.src_ip for o in obs} == {lab.ip_a}


@pytest.mark.lab
async def test_the_sniffer_counts_a_forged_token_on_the_wire_and_records_nothing(
    lab: VethPair,
) -> None:
    with in_netns(lab.ns_b):
        sn = Sniffer(lab.if_b, [80], key=KEY, target="target-b").open()
    sn.start()
    try:
        forged = token_to_header(encode_token(Token.new("a/b/80", "client-a"), OTHER_KEY))
        status = await http_get(lab, {"X-Plprobe-Token": forged})
        await settle(lambda: sn.forged >= 1)
    finally:
        sn.close()
    assert (status.split()[1], sn.forged, sn.tokens, sn.drain()) == (b"200", 1, 0, [])
