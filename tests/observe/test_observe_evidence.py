"""Evidence queries on the responder port: one target answers for the fleet, strangers get nothing.

Real responders on 127.0.0.1 port 0, talked to over TCP (agent/observe/evidence.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.errors import TruncatedError
from agent.observe.evidence import EvidenceService, ask
from agent.observe.findings import PROVIDER_CONTROLS, ProviderFindings, provider_side
from agent.observe.responder import Responder
from agent.observe.store import ObservationStore
from agent.results import Observation
from agent.sources.topology import load_topology
from agent.wire import EvidenceQuery, Token, decode_reply, encode_query, encode_token

KEY = b"k" * 32
REPO = Path(__file__).resolve().parents[2]
Make = Callable[..., Awaitable[Responder]]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    started: list[Responder] = []

    async def start(agent_id: str = "server-1", **evidence: Any) -> Responder:
        store = ObservationStore()
        opts: dict[str, Any] = {"share": "seen-only", "skip_local_peers": False}
        opts.update(evidence)
        service = EvidenceService(key=KEY, agent_id=agent_id, store=store, **opts)
        responder = Responder(
            key=KEY, agent_id=agent_id, store=store, host="127.0.0.1", port=0, evidence=service
        )
        await responder.start()
        started.append(responder)
        return responder

    try:
        yield start
    finally:
        for r in started:
            await r.stop()


async def probe(responder: Responder, agent: str = "client-2") -> str:
    """One token probe to ``responder``; returns its probe id (hex)."""
    tok = Token.new(f"{agent}/apne1-az4/9721", agent)
    reader, writer = await asyncio.open_connection("127.0.0.1", responder.bound_port)
    writer.write(encode_token(tok, KEY))
    await writer.drain()
    await reader.read(512)
    writer.close()
    return tok.probe_id_hex


def query(agent: str = "client-2", **over: Any) -> EvidenceQuery:
    return EvidenceQuery.new(agent, "10.2.1.10", time.time_ns() - 30_000_000_000, **over)


async def raw(responder: Responder, data: bytes) -> bytes:
    """Send ``data``, read to EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", responder.bound_port)
    writer.write(data)
    await writer.drain()
    out = b""
    async with asyncio.timeout(5):
        with contextlib.suppress(ConnectionResetError):
            while more := await reader.read(4096):
                out += more
    writer.close()
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_query_gets_an_authenticated_answer_with_the_clients_own_observations(
    make: Make,
) -> None:
    r = await make()
    mine = await probe(r)
    await probe(r, agent="client-1")
    answer = await ask("127.0.0.1", r.bound_port, query(), KEY)
    assert [o["probe_id"] for o in answer.observations] == [mine]
    assert answer.level == "seen-only" and answer.covers[0].target == "server-1"
    assert r.evidence is not None and r.evidence.counters.answered == 1


async def test_syn_tag_matches_without_an_agent_id_are_shared_too(make: Make) -> None:
    r = await make()
    r.store.append(
        Observation("syn_tag", "server-1", time.time(), "10.3.0.100", 4000, "10.3.1.10", 80,
                    "sniffer", isn=12345)
    )  # fmt: skip
    answer = await ask("127.0.0.1", r.bound_port, query(), KEY)
    assert [(o["kind"], o["isn"]) for o in answer.observations] == [("syn_tag", 12345)]


async def test_a_query_sent_to_one_target_returns_what_another_target_saw(make: Make) -> None:
    other = await make("server-2")
    first = await make("server-1", peers=[f"127.0.0.1:{other.bound_port}"])
    seen_by_other = await probe(other)
    answer = await ask("127.0.0.1", first.bound_port, query(), KEY)
    assert [(o["target"], o["probe_id"]) for o in answer.observations] == [
        ("server-2", seen_by_other)
    ]
    assert {c.target for c in answer.covers} == {"server-1", "server-2"}
    assert not answer.partial


async def test_peers_are_discovered_from_the_providers_view_when_none_are_configured(
    make: Make,
) -> None:
    other = await make("server-2")

    async def discover() -> list[str]:
        return [f"127.0.0.1:{other.bound_port}"]

    first = await make("server-1", discover=discover)
    seen = await probe(other)
    answer = await ask("127.0.0.1", first.bound_port, query(), KEY)
    assert [o["probe_id"] for o in answer.observations] == [seen]
    assert {c.target for c in answer.covers} == {"server-1", "server-2"}


def test_the_view_lists_the_targets_on_the_responder_port_as_peers() -> None:
    topology = load_topology(REPO / "configs" / "lab" / "reference.yaml")
    pf = ProviderFindings(lambda: topology)
    assert pf.peers_sync(9721) == ["10.3.1.10:9721", "10.3.1.11:9721"]


async def test_a_silent_peer_makes_the_answer_partial_and_says_which(make: Make) -> None:
    dead = f"127.0.0.1:{free_port()}"
    r = await make(peers=[dead], peer_timeout=0.5)
    answer = await ask("127.0.0.1", r.bound_port, query(), KEY)
    assert answer.partial
    missing = [c for c in answer.covers if not c.ok]
    assert [c.target for c in missing] == [dead] and missing[0].error
    assert r.evidence is not None and r.evidence.counters.peer_failures == 1


async def test_a_peer_query_is_answered_from_the_own_store_without_asking_further(
    make: Make,
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    r = await make(peers=[dead])
    answer = await ask("127.0.0.1", r.bound_port, query(peer=True), KEY)
    assert [c.target for c in answer.covers] == ["server-1"] and not answer.partial


async def test_a_forged_query_gets_nothing_and_is_counted(make: Make) -> None:
    r = await make()
    assert await raw(r, encode_query(query(), b"o" * 32)) == b""
    assert r.evidence is not None and r.evidence.counters.rejected_forged == 1
    assert r.counters.forged == 1


async def test_a_replayed_query_gets_nothing_and_is_counted(make: Make) -> None:
    r = await make()
    data = encode_query(query(), KEY)
    assert await raw(r, data) != b""
    assert await raw(r, data) == b""
    assert r.evidence is not None and r.evidence.counters.rejected_replayed == 1


async def test_an_oversized_query_gets_nothing_and_is_counted(make: Make) -> None:
    r = await make()
    data = bytearray(encode_query(query(), KEY))
    data[7] = 200  # claims 200 ports: more than any query may carry
    assert await raw(r, bytes(data) + b"\0" * 400) == b""
    assert r.evidence is not None and r.evidence.counters.rejected_malformed == 1


async def test_a_client_with_another_key_gets_no_answer_at_all(make: Make) -> None:
    r = await make()
    with pytest.raises(TruncatedError):  # the connection closed without a byte
        await ask("127.0.0.1", r.bound_port, query(), b"o" * 32, timeout_s=2)


async def test_a_provider_sharing_nothing_answers_coverage_only(make: Make) -> None:
    r = await make(share="none")
    await probe(r)
    answer = await ask("127.0.0.1", r.bound_port, query(), KEY)
    assert answer.level == "none" and not answer.observations and not answer.findings
    assert [c.target for c in answer.covers] == ["server-1"]


async def test_findings_are_shared_only_at_level_findings(make: Make) -> None:
    asked: list[tuple[str, tuple[int, ...]]] = []

    async def findings(ip: str, ports: tuple[int, ...]) -> list[dict[str, Any]]:
        asked.append((ip, ports))
        return [{"hop": "nlb-sg-ingress", "control": "nlb-sg-ingress", "status": "denied"}]

    shares = await make("server-1", share="findings", findings=findings)
    seen_only = await make("server-2", share="seen-only", findings=findings)
    answer = await ask("127.0.0.1", shares.bound_port, query(ports=(80,)), KEY)
    assert answer.findings[0]["status"] == "denied" and asked == [("10.2.1.10", (80,))]
    other = await ask("127.0.0.1", seen_only.bound_port, query(ports=(80,)), KEY)
    assert other.findings == () and len(asked) == 1


async def test_tokens_are_still_answered_with_a_reply_next_to_queries(make: Make) -> None:
    r = await make()
    tok = Token.new("client-2/apne1-az4/9721", "client-2")
    reply = decode_reply(await raw(r, encode_token(tok, KEY)), KEY)
    assert reply.probe_id == tok.probe_id and reply.agent_id == "server-1"


def test_provider_findings_name_provider_controls_only_and_no_rule_lists() -> None:
    topology = load_topology(REPO / "configs" / "lab" / "reference.yaml")
    client = topology.instance_by_name("client-2")
    assert client is not None
    found = provider_side(topology, client.ip, 80)
    assert found and {f["control"] for f in found} <= PROVIDER_CONTROLS
    assert all("checked" not in f and f["port"] == 80 for f in found)
    assert next(f for f in found if f["control"] == "nlb-sg-ingress")["status"] == "allowed"


def test_provider_findings_differ_per_az_when_one_az_has_no_target() -> None:
    """Cross-zone off and targets in one AZ: which NLB node the flow enters decides, so each
    AZ's hops travel with their AZ and the client takes those of its path's AZ."""
    topology = load_topology(REPO / "configs" / "lab" / "multi-az.yaml")
    found = provider_side(topology, "10.2.1.15", 80)
    assert {f["az"] for f in found} == {"apne1-az1", "apne1-az4"}
    denied = {f["az"] for f in found if f["status"] == "denied"}
    assert denied == {"apne1-az1"}


def test_provider_findings_reload_the_view_when_its_fingerprint_changes() -> None:
    topology = load_topology(REPO / "configs" / "lab" / "reference.yaml")
    client = topology.instance_by_name("client-2")
    assert client is not None
    prints = iter(["a", "a", "b", "b"])
    now = [0.0]
    pf = ProviderFindings(
        lambda: topology, fingerprint=lambda: next(prints), recheck_s=1, clock=lambda: now[0]
    )
    pf.findings_sync(client.ip, (80,))
    now[0] = 2.0
    pf.findings_sync(client.ip, (80,))  # same print: no reload
    now[0] = 4.0
    pf.findings_sync(client.ip, (80,))  # changed: reload
    assert pf.loads == 2
