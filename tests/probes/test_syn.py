"""SYN probes: nmap-style classification over real packets between two namespaces of our own,
packet construction checked against scapy, and the tcp fallback without CAP_NET_RAW."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from agent.probes import syn
from agent.probes.base import ProbeContext, ProbeTarget
from agent.probes.syn import FALLBACK_NOTE, SynEngine
from agent.rawsock import VethPair, in_netns, netns_exists, veth_pair
from agent.results import PathRef
from agent.wire.syntag import SynTagger

KEY = b"k" * 32
OPEN, CLOSED, DROPPED, HOST_UNREACH, ADMIN_PROHIB = 8080, 8081, 9001, 9002, 9003

NFT_RULES = f"""table inet synlab {{
  chain input {{
    type filter hook input priority 0; policy accept;
    tcp dport {DROPPED} drop
    tcp dport {HOST_UNREACH} reject with icmp type host-unreachable
    tcp dport {ADMIN_PROHIB} reject with icmp type admin-prohibited
  }}
}}
"""

LISTENER = (
    "import socket,sys,time\n"
    "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
    f"s.bind(('0.0.0.0',{OPEN}));s.listen(128);print('up',flush=True);time.sleep(600)\n"
)


def target(ip: str, port: int) -> ProbeTarget:
    return ProbeTarget(path=PathRef(id=f"t/{ip}/{port}", agent="t", name=ip, ip=ip, port=port))


@pytest.fixture(scope="module")
def lab() -> Iterator[VethPair]:
    """ns_a (prober) <-> ns_b (listener on OPEN, nft drop/reject rules in its input hook)."""
    if os.geteuid() != 0:
        pytest.skip("needs root for network namespaces")
    names: list[str] = []
    try:
        with veth_pair("sy") as pair:
            names = [pair.ns_a, pair.ns_b]
            # the kernel rate-limits ICMP errors (1/s per peer): lift it for many rejects
            pair.run(pair.ns_b, "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0")
            pair.run(pair.ns_b, "sysctl", "-qw", "net.ipv4.icmp_msgs_per_sec=1000000")
            pair.run(pair.ns_b, "sysctl", "-qw", "net.ipv4.icmp_msgs_burst=1000000")
            subprocess.run(
                ["ip", "netns", "exec", pair.ns_b, "nft", "-f", "-"],
                input=NFT_RULES,
                text=True,
                check=True,
                capture_output=True,
            )
            srv = subprocess.Popen(
                ["ip", "netns", "exec", pair.ns_b, sys.executable, "-c", LISTENER],
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


@pytest.fixture
def engine(lab: VethPair) -> Iterator[SynEngine]:
    with in_netns(lab.ns_a):
        eng = SynEngine(tagger=SynTagger(KEY)).open()
    try:
        yield eng
    finally:
        eng.close()


# ------------------------------------------------------------------------------ in the lab


@pytest.mark.lab
async def test_syn_to_a_listening_port_is_open(lab: VethPair, engine: SynEngine) -> None:
    result = await engine.probe(target(lab.ip_b, OPEN), timeout_s=1.0)
    assert (result.outcome, result.detail["state"], result.detail["reply"]) == (
        "ok",
        "open",
        "syn-ack",
    )


@pytest.mark.lab
async def test_syn_to_a_port_without_listener_is_refused(lab: VethPair, engine: SynEngine) -> None:
    result = await engine.probe(target(lab.ip_b, CLOSED), timeout_s=1.0)
    assert (result.outcome, result.detail["state"]) == ("refused", "closed")


@pytest.mark.lab
async def test_syn_to_a_dropped_port_times_out_after_every_retry(
    lab: VethPair, engine: SynEngine
) -> None:
    result = await engine.probe(target(lab.ip_b, DROPPED), timeout_s=0.4, retries=2)
    assert (result.outcome, result.detail["attempts"], result.icmp) == ("timeout", 3, None)


@pytest.mark.lab
@pytest.mark.parametrize(("port", "code"), [(HOST_UNREACH, 1), (ADMIN_PROHIB, 13)])
async def test_icmp_reject_is_icmp_unreachable_with_its_code(
    lab: VethPair, engine: SynEngine, port: int, code: int
) -> None:
    result = await engine.probe(target(lab.ip_b, port), timeout_s=1.0)
    assert (result.outcome, result.icmp) == ("icmp_unreachable", (3, code))


@pytest.mark.lab
async def test_open_port_is_torn_down_so_no_half_open_connection_remains(
    lab: VethPair, engine: SynEngine
) -> None:
    await engine.probe(target(lab.ip_b, OPEN), timeout_s=1.0)
    await asyncio.sleep(0.2)
    ss = lab.run(lab.ns_b, "ss", "-tnH", "state", "syn-recv").stdout.strip()
    assert (engine.counters.rst_sent, ss) == (1, "")


@pytest.mark.lab
async def test_the_isn_carries_a_tag_the_provider_can_verify(
    lab: VethPair, engine: SynEngine
) -> None:
    result = await engine.probe(target(lab.ip_b, OPEN), timeout_s=1.0)
    isn = result.detail["isn"]
    assert SynTagger(KEY).verify(isn) and result.detail["tag"] == isn & 0xFFFF


@pytest.mark.lab
async def test_probe_many_returns_results_in_target_order(lab: VethPair, engine: SynEngine) -> None:
    ports = [OPEN, CLOSED, ADMIN_PROHIB, DROPPED] * 25
    results = await engine.probe_many(
        [target(lab.ip_b, p) for p in ports], timeout_s=0.4, retries=0
    )
    expected = {OPEN: "ok", CLOSED: "refused", ADMIN_PROHIB: "icmp_unreachable"}
    got = [(r.port, r.outcome) for r in results]
    assert got == [(p, expected.get(p, "timeout")) for p in ports]
    assert engine.outstanding == 0


@pytest.mark.lab
async def test_prober_uses_the_runners_engine_from_the_context(
    lab: VethPair, engine: SynEngine
) -> None:
    ctx = ProbeContext(agent_id="t", key=KEY, timeout_s=1.0, extras={"syn_engine": engine})
    result = await syn.probe(target(lab.ip_b, CLOSED), ctx)
    assert (result.path, result.outcome, engine.counters.sent) == (
        f"t/{lab.ip_b}/{CLOSED}",
        "refused",
        1,
    )


# ------------------------------------------------------------------------------ no lab needed


def _denied(family: int, type_: int, proto: int) -> socket.socket:
    raise PermissionError(1, "Operation not permitted")


async def test_without_cap_net_raw_the_probe_falls_back_to_tcp_and_says_so() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ctx = ProbeContext(agent_id="t", key=KEY, timeout_s=1.0, extras={"syn_socket_factory": _denied})
    try:
        result = await syn.probe(target("127.0.0.1", port), ctx)
    finally:
        server.close()
        await server.wait_closed()
    assert (result.fallback, result.outcome, result.probe) == (FALLBACK_NOTE, "ok", "syn")


class _RecordingSocket:
    """Stands in for the raw sockets: records what would be sent, accepts every option."""

    def __init__(self, sent: list[tuple[bytes, str]]) -> None:
        self.sent = sent
        self._pair = socket.socketpair()

    def setsockopt(self, *args: object) -> None: ...

    def getsockopt(self, *args: object) -> int:
        return 1 << 20

    def setblocking(self, flag: bool) -> None: ...

    def connect(self, addr: tuple[str, int]) -> None: ...

    def getsockname(self) -> tuple[str, int]:
        return ("10.9.9.1", 4242)

    def sendto(self, data: bytes, addr: tuple[str, int]) -> int:
        self.sent.append((bytes(data), addr[0]))
        return len(data)

    def fileno(self) -> int:
        return self._pair[0].fileno()

    def close(self) -> None:
        for s in self._pair:
            s.close()


async def test_the_syn_on_the_wire_has_a_valid_checksum_and_the_tagged_isn() -> None:
    from scapy.layers.inet import IP, TCP

    sent: list[tuple[bytes, str]] = []
    eng = SynEngine(tagger=SynTagger(KEY), socket_factory=lambda *a: _RecordingSocket(sent))  # type: ignore[arg-type,return-value]
    eng.open()
    try:
        result = await eng.probe(target("10.9.9.2", 443), timeout_s=0.05, retries=0)
    finally:
        eng.close()
    raw, dst = sent[0]
    seg = TCP(raw)
    rebuilt = IP(src="10.9.9.1", dst=dst) / TCP(raw)
    del rebuilt[TCP].chksum
    expected = IP(bytes(rebuilt))[TCP].chksum
    assert (seg.flags, seg.dport, seg.seq) == ("S", 443, result.detail["isn"])
    assert seg.chksum == expected


def test_the_engine_refuses_a_source_port_range_below_1024() -> None:
    with pytest.raises(ValueError):
        SynEngine(sports=(80, 90))


def test_keyless_contexts_probe_with_random_isns() -> None:
    assert syn.tagger_for(ProbeContext(agent_id="t", key=b"", insecure=True)) is None


async def test_a_closed_engine_finishes_nothing_and_leaks_no_table_entries() -> None:
    sent: list[tuple[bytes, str]] = []
    eng = SynEngine(socket_factory=lambda *a: _RecordingSocket(sent)).open()  # type: ignore[arg-type,return-value]
    started = time.monotonic()
    result = await eng.probe(target("10.9.9.2", 22), timeout_s=0.1, retries=1)
    eng.close()
    assert (result.outcome, len(sent), eng.outstanding) == ("timeout", 2, 0)
    assert time.monotonic() - started < 1.0


# ------------------------------------------------------------------------------ templates


def test_the_templates_are_scapys_bytes_and_using_them_keeps_scapy_out_of_this_process() -> None:
    code = (
        "import sys\n"
        "from agent.probes import syn\n"
        "print(syn.syn_templates()[0].hex(), syn.syn_templates()[1].hex())\n"
        "print(any(m.split('.')[0] == 'scapy' for m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    ).stdout.split()
    assert out[:2] == [hdr.hex() for hdr in syn._build_templates()]
    assert out[2] == "False"


def test_the_template_constants_are_what_scapy_builds() -> None:
    assert syn._build_templates() == (syn.SYN_TEMPLATE, syn.RST_TEMPLATE)


def test_the_templates_command_prints_scapys_headers_as_hex(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert syn._main(["--templates"]) == 0
    assert capsys.readouterr().out.split() == [h.hex() for h in syn._build_templates()]


async def test_the_event_loop_gets_the_same_templates_without_blocking() -> None:
    assert await syn.load_templates() == syn.syn_templates()


# ------------------------------------------------------------------------------ engine health


def test_an_open_engine_is_healthy_and_one_whose_socket_was_closed_is_not() -> None:
    eng = SynEngine(socket_factory=lambda *a: _RecordingSocket([])).open()  # type: ignore[arg-type,return-value]
    try:
        assert eng.healthy
        assert eng._tcp is not None
        eng._tcp._pair[0].close()  # type: ignore[attr-defined]  # closed under the engine
        assert not eng.healthy
    finally:
        eng.close()


def test_a_send_on_a_dead_socket_marks_the_engine_broken() -> None:
    class Dead(_RecordingSocket):
        def sendto(self, data: bytes, addr: tuple[str, int]) -> int:
            raise OSError(9, "Bad file descriptor")

    eng = SynEngine(socket_factory=lambda *a: Dead([])).open()  # type: ignore[arg-type,return-value]
    try:
        eng._sendto(bytearray(20), socket.inet_aton("10.9.9.2"))
        assert (eng.healthy, eng.counters.send_errors) == (False, 1)
        assert eng.failure is not None and "send" in eng.failure
    finally:
        eng.close()
