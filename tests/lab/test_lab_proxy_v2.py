"""Proxy Protocol v2 in the lab: the NLB hop prepends AWS's header, health checks send LOCAL.

Lab tests (real packets, ``configs/lab/proxy-v2.yaml``) check what arrives at the target;
the unit tests (no root) check the renderer, the header layout and the proxy's behaviour on
loopback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from labfixtures import endpoint_name, lab_up, service_health

from agent.lab import healthd, nlbnat, ppproxy
from agent.lab.lab import Lab
from agent.lab.plan import render
from agent.model import Topology
from agent.sources.topology import load_topology
from agent.wire import (
    PP2_TYPE_AWS,
    PP2_TYPE_CRC32C,
    PP2_TYPE_NOOP,
    ProxyHeader,
    parse_proxy_stack,
    parse_proxy_v2,
)

PROXY_V2 = Path(__file__).resolve().parents[2] / "configs" / "lab" / "proxy-v2.yaml"
NLB_IP = "10.3.0.100"
ENI_IP = "10.2.0.20"
CLIENT_2 = "10.2.1.15"
PROBE_PORT = 9721
TIMEOUT_S = 1.0


def endpoint_id(topo: Topology) -> str:
    return next(iter(topo.endpoints.values())).id


def requests_seen(lab: Lab) -> list[dict]:
    """Every request any target logged, oldest first (so ``[before:]`` are the new ones)."""
    out = []
    for path in sorted((lab.dir / "logs").glob("*.requests.jsonl")):
        out += [json.loads(line) for line in path.read_text().splitlines()]
    return sorted(out, key=lambda e: e["ts"])


def nlb_header(entry: dict) -> ProxyHeader:
    header, _ = parse_proxy_v2(bytes.fromhex(entry["proxy_v2"]))
    return header


# --- the lab: proxy-v2.yaml ---------------------------------------------------------------


@pytest.fixture(scope="module")
def proxy_lab() -> Iterator[Lab]:
    with lab_up(load_topology(PROXY_V2), "ppv") as lab:
        yield lab


@pytest.mark.lab
def test_the_target_receives_client_2s_address_and_the_endpoint_id(proxy_lab: Lab) -> None:
    before = len(requests_seen(proxy_lab))
    result = proxy_lab.http_get("client-2", endpoint_name(proxy_lab), timeout=TIMEOUT_S)
    assert result["result"] == "ok", result
    [entry] = requests_seen(proxy_lab)[before:]
    header = nlb_header(entry)
    assert header.command == "PROXY"
    assert (header.family, header.transport) == ("inet", "stream")
    assert str(header.src_ip) == CLIENT_2
    assert 1024 <= (header.src_port or 0) <= 65535
    assert (str(header.dst_ip), header.dst_port) == (ENI_IP, 80)
    assert header.vpce_id == endpoint_id(proxy_lab.topology)


@pytest.mark.lab
def test_the_targets_socket_still_sees_the_nlb_ip(proxy_lab: Lab) -> None:
    before = len(requests_seen(proxy_lab))
    assert proxy_lab.http_get("client-1", endpoint_name(proxy_lab))["result"] == "ok"
    [entry] = requests_seen(proxy_lab)[before:]
    assert entry["src"] == NLB_IP
    assert 1024 <= entry["src_port"] <= 65535
    assert str(nlb_header(entry).src_ip) == "10.1.0.10", "the peered client's own IP"


@pytest.mark.lab
def test_the_header_has_aws_layout_crc_endpoint_id_and_noop_padding(proxy_lab: Lab) -> None:
    before = len(requests_seen(proxy_lab))
    assert proxy_lab.http_get("client-2", endpoint_name(proxy_lab))["result"] == "ok"
    raw = bytes.fromhex(requests_seen(proxy_lab)[before]["proxy_v2"])
    header, used = parse_proxy_v2(raw)
    assert used == len(raw) == 100
    assert raw[12:14] == b"\x21\x11"
    assert [t.type for t in header.tlvs] == [PP2_TYPE_CRC32C, PP2_TYPE_AWS, PP2_TYPE_NOOP]
    assert header.crc32c is not None, "the CRC32C TLV is present and verified by the parser"


@pytest.mark.lab
def test_targets_that_parse_the_local_header_pass_health_checks(proxy_lab: Lab) -> None:
    assert proxy_lab.wait_health(
        lambda h: set(service_health(proxy_lab, h).values()) == {"healthy"}, timeout=20
    ), proxy_lab.target_health()


@pytest.mark.lab
def test_a_stopped_target_service_resets_the_client_instead_of_hanging(proxy_lab: Lab) -> None:
    try:
        proxy_lab.break_control("target-service")
        started = time.monotonic()
        result = proxy_lab.http_get("client-2", endpoint_name(proxy_lab), timeout=3.0)
        elapsed = time.monotonic() - started
        # the proxy terminates TCP: connect() succeeded, then the target's refusal arrives as a
        # reset (a real NLB passes the RST to the SYN through: "refused"), see ppproxy
        assert result["result"] == "reset", result
        assert elapsed < 2.5, f"took {elapsed:.1f} s: the client waited instead of a reset"
    finally:
        proxy_lab.restore()
    assert proxy_lab.http_get("client-2", endpoint_name(proxy_lab))["result"] == "ok"


@pytest.mark.lab
def test_turning_proxy_v2_off_in_a_running_lab_restores_the_plain_path(proxy_lab: Lab) -> None:
    topo = proxy_lab.topology
    for tg in topo.target_groups.values():
        tg.proxy_protocol_v2 = False
    try:
        assert proxy_lab.apply(topo) == "in place"
        assert not [p for p in proxy_lab.status()["processes"] if "ppproxy" in p["process"]]
        before = len(requests_seen(proxy_lab))
        assert proxy_lab.http_get("client-2", endpoint_name(proxy_lab))["result"] == "ok"
        [entry] = requests_seen(proxy_lab)[before:]
        assert "proxy_v2" not in entry
        assert entry["src"] == NLB_IP
    finally:
        proxy_lab.restore()
    before = len(requests_seen(proxy_lab))
    assert proxy_lab.http_get("client-2", endpoint_name(proxy_lab))["result"] == "ok"
    assert "proxy_v2" in requests_seen(proxy_lab)[before], "restore brings the header back"


# --- the lab: a responder behind a PROXY v2 listener ---------------------------------------

RESPONDER = """
import asyncio, sys
from agent.observe.responder import Responder
from agent.observe.store import ObservationStore

async def main():
    r = Responder(key=bytes.fromhex(sys.argv[1]), agent_id=sys.argv[2], port=int(sys.argv[3]),
                  store=ObservationStore(), proxy_v2=True, read_timeout=2)
    await r.start()
    print("ready", flush=True)
    while True:
        await asyncio.sleep(0.2)
        if r.counters.health_checks:
            print("health-check", flush=True)
            r.counters.health_checks = 0

asyncio.run(main())
"""

PROBE = """
import json, socket, sys
from agent.wire import Token, decode_reply, encode_token
key = bytes.fromhex(sys.argv[1])
sock = socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=3)
sock.sendall(encode_token(Token.new("client-2/apne1-az4/" + sys.argv[3], "client-2"), key))
data = b""
while chunk := sock.recv(4096):
    data += chunk
r = decode_reply(data, key)
print(json.dumps({"agent": r.agent_id, "src_ip": str(r.src_ip), "src_port": r.src_port,
                  "vpce_id": r.vpce_id, "proxy_src_ip": str(r.proxy_src_ip),
                  "proxy_dst": [str(r.proxy_dst_ip), r.proxy_dst_port]}))
"""


def probe_port_topology(directory: Path) -> Topology:
    """proxy-v2.yaml, whose responder listener on PROBE_PORT (PROXY v2, every SG mirrored)
    keeps only server-1 registered: the one target where this test runs a responder."""
    data = yaml.safe_load(PROXY_V2.read_text())
    attachments = data["resources"]["aws_lb_target_group_attachment"]
    assert attachments["server-1-9721"]["port"] == PROBE_PORT
    del attachments["server-2-9721"]
    path = directory / "proxy-v2-probe.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_topology(path)


@pytest.fixture(scope="module")
def responder_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Lab, str]]:
    key = secrets.token_hex(32)
    topo = probe_port_topology(tmp_path_factory.mktemp("topology"))
    with lab_up(topo, "ppr") as lab:
        argv = [sys.executable, "-c", RESPONDER, key, "server-1", str(PROBE_PORT)]
        proc = lab.spawn("server-1", argv, stdout=subprocess.PIPE, text=True)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            yield lab, key
        finally:
            proc.kill()
            proc.wait(timeout=5)


@pytest.mark.lab
def test_a_proxy_v2_responder_replies_with_the_endpoint_id_and_client_address(
    responder_lab: tuple[Lab, str],
) -> None:
    lab, key = responder_lab
    argv = [sys.executable, "-c", PROBE, key, endpoint_name(lab), str(PROBE_PORT)]
    proc = lab.exec("client-2", argv, timeout=15)
    assert proc.returncode == 0, proc.stderr
    reply = json.loads(proc.stdout.strip().splitlines()[-1])
    assert reply["agent"] == "server-1"
    assert reply["vpce_id"] == endpoint_id(lab.topology)
    assert reply["proxy_src_ip"] == CLIENT_2
    assert reply["proxy_dst"] == [ENI_IP, PROBE_PORT]
    assert reply["src_ip"] == NLB_IP


# --- without root: renderer, header, proxy on loopback, health check -----------------------


def test_a_proxy_v2_listener_is_redirected_to_the_proxy_instead_of_dnated() -> None:
    plan = render(load_topology(PROXY_V2), "unit")
    text = plan.nft["pl-unit-nlb-ap-northeast-1a"]
    assert "tcp dport 80 redirect to :64000" in text
    assert "dnat ip to numgen" not in text
    spec = next(p for p in plan.processes if p.kind == "ppproxy")
    cfg = ppproxy.ProxyConfig.from_plain(spec.config or {})
    assert cfg.listen == {80: 64000, PROBE_PORT: 64001}  # the responder's listener too
    assert [(e.eni_ip, e.endpoint_id) for e in cfg.enis] == [
        (ENI_IP, endpoint_id(load_topology(PROXY_V2)))
    ]


def test_without_proxy_v2_the_nlb_path_has_no_proxy() -> None:
    plan = render(load_topology(), "unit")
    assert "redirect" not in plan.nft["pl-unit-nlb-ap-northeast-1a"]
    assert not [p for p in plan.processes if p.kind == "ppproxy"]


def test_the_endpoint_eni_is_recovered_from_the_client_source() -> None:
    nat = nlbnat.NodeConfig("n", "nlb", "nlb", "10.3.0.100", "a", "az")
    enis = (
        ppproxy.EniRoute("vpce-a", "10.2.0.20", ("10.2.0.0/16", "10.1.0.0/16")),
        ppproxy.EniRoute("vpce-b", "10.9.0.20", ("10.9.0.0/16",)),
    )
    cfg = ppproxy.ProxyConfig(nat=nat, enis=enis)
    assert ppproxy.eni_for(cfg, "10.1.0.10") == enis[0]
    assert ppproxy.eni_for(cfg, "10.9.3.3") == enis[1]
    assert ppproxy.eni_for(cfg, "192.168.0.1") is None


def _loopback_proxy(target_port: int) -> ppproxy.Proxy:
    target = nlbnat.NatTarget(
        "tg", "tg", "i-1", "server-1", "127.0.0.1", target_port, target_port, "TCP", "/", "a", "az"
    )
    nat = nlbnat.NodeConfig(
        "n",
        "nlb",
        "nlb",
        "127.0.0.1",
        "a",
        "az",
        listeners=(nlbnat.NatListener(80, "tg", proxy_v2=True, candidates=(target,)),),
    )
    eni = ppproxy.EniRoute("vpce-0123456789abcdef0", ENI_IP, ("127.0.0.0/8",))
    cfg = ppproxy.ProxyConfig(nat=nat, enis=(eni,), connect_timeout_s=2.0, listen={80: 0})
    return ppproxy.Proxy(cfg, ppproxy.Health(Path("/nonexistent")))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_the_proxy_writes_the_header_first_then_pipes_both_ways() -> None:
    received: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1)

    async def target(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        data = await r.readexactly(100 + 5)
        await received.put(data)
        w.write(b"pong!")
        await w.drain()
        w.close()

    server = await asyncio.start_server(target, "127.0.0.1", 0)
    proxy = _loopback_proxy(server.sockets[0].getsockname()[1])
    await proxy.start()
    try:
        port = proxy.servers[0].sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping!")
        async with asyncio.timeout(5):
            assert await reader.read() == b"pong!"
            data = await received.get()
        client_port = writer.get_extra_info("sockname")[1]
        writer.close()
        headers, used = parse_proxy_stack(data)
        assert used == 100 and data[used:] == b"ping!"
        assert (str(headers[0].src_ip), headers[0].src_port) == ("127.0.0.1", client_port)
        assert (str(headers[0].dst_ip), headers[0].dst_port) == (ENI_IP, 80)
        assert headers[0].vpce_id == "vpce-0123456789abcdef0"
    finally:
        for s in (*proxy.servers, server):
            s.close()


async def test_a_refusing_target_makes_the_proxy_reset_the_client() -> None:
    proxy = _loopback_proxy(_free_port())
    await proxy.start()
    try:
        port = proxy.servers[0].sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\n\r\n")
        with pytest.raises(ConnectionResetError):
            async with asyncio.timeout(3):
                await writer.drain()
                await reader.read()  # a FIN instead of a reset would return b"" here
        writer.close()
    finally:
        for s in proxy.servers:
            s.close()


@pytest.mark.parametrize("proxy_v2", [True, False])
async def test_health_checks_open_with_a_local_header_only_for_proxy_target_groups(
    proxy_v2: bool,
) -> None:
    got: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1)

    async def target(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await got.put(await r.read())
        w.close()

    server = await asyncio.start_server(target, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    t = nlbnat.NatTarget("tg", "tg", "i", "s", "127.0.0.1", port, port, "TCP", "/", "a", "az")
    t = dataclasses.replace(t, proxy_v2=proxy_v2)
    try:
        assert await healthd.check_target(t, "127.0.0.1", 2.0) == (True, "")
        async with asyncio.timeout(3):
            data = await got.get()
    finally:
        server.close()
    if not proxy_v2:
        assert data == b"", "a plain target group's TCP check sends nothing"
        return
    header, used = parse_proxy_v2(data)
    assert used == len(data)
    assert header.command == "LOCAL" and header.vpce_id is None
    assert header.src_ip is None, "no client information on a health check"
