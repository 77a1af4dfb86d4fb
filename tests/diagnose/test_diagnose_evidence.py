"""Provider evidence through the endpoint, as the client gets and uses it.

The fused verdict from the consumer's own snapshot plus what the provider shared: the same
exact control as a view of both accounts, without either reading the other's configuration.
"""

from __future__ import annotations

import copy
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from scenarios import SCENARIOS, Scenario, broken, consumer_only, findings_for

from agent.analyze.path import analyze_flow
from agent.diagnose.evidence import (
    EndpointEvidenceSource,
    EvidenceTarget,
    ProviderEvidence,
    channel_notes,
    merge_findings,
)
from agent.diagnose.pipeline import diagnose_round, self_identity
from agent.diagnose.rounds import RoundResult
from agent.diagnose.verdict import diagnose
from agent.errors import ProbeError
from agent.model import Topology
from agent.observe.evidence import EvidenceService
from agent.observe.findings import provider_side
from agent.observe.responder import Responder
from agent.observe.store import ObservationStore
from agent.results import HopFinding, Observation, PathEvidence, PathRef, ProbeResult
from agent.wire import Token, encode_token

KEY = b"k" * 32
PATH = "client-2/apne1-az4/80"
RPATH = "client-2/apne1-az4/9721"
NOW = 1_700_000_000.0


def provider_only(t: Topology) -> Topology:
    """What the provider's read-only role sees: its own account."""
    t = copy.deepcopy(t)
    t.visible_accounts = {a.name for a in t.accounts.values() if a.role == "provider"}
    return t


def shared(t: Topology, client: str, port: int = 80) -> list[HopFinding]:
    """The provider's findings for ``client`` as they arrive in an answer."""
    inst = t.instance_by_name(client)
    assert inst is not None
    fields = {"hop", "control", "status", "resource", "rule", "detail", "ra_code", "fix",
              "direction", "target", "degraded"}  # fmt: skip
    return [
        HopFinding(**{k: v for k, v in f.items() if k in fields})
        for f in provider_side(provider_only(t), inst.ip, port)
    ]


def evidence(outcome: str, seen: str, path: str = PATH) -> PathEvidence:
    results = [ProbeResult(path, "tcp", outcome, target_ip="10.2.0.20", port=80, duration_s=1.0)]
    obs = []
    if seen == "yes":
        obs.append(
            Observation("token", "server-1", NOW, "10.3.0.100", 40001, "10.3.1.10", 80, "sniffer")
        )
    return PathEvidence(path, outcome, seen, results, obs)  # type: ignore[arg-type]


# --- the fused verdict ------------------------------------------------------------------


SHARED = [s for s in SCENARIOS if s.control != "service-principal"]


@pytest.mark.parametrize("s", SHARED, ids=lambda s: f"s{s.n}")
def test_consumer_snapshot_plus_shared_findings_names_the_same_control_as_both_views(
    s: Scenario,
) -> None:
    t = broken(s)
    both = diagnose(evidence(*s.wire), findings_for(t, s.client), path=PATH, now=NOW)
    mine = analyze_flow(consumer_only(t), s.client, None, 80)
    fused = diagnose(
        evidence(*s.wire), merge_findings(mine, shared(t, s.client)), path=PATH, now=NOW
    )
    assert (fused.status, fused.stage, fused.blocked_at) == (
        both.status,
        both.stage,
        both.blocked_at,
    )


def test_allowed_principals_are_not_shared_yet_and_nothing_else_is_blamed_instead() -> None:
    """The query does not carry the endpoint id, so the provider cannot say which endpoint
    connection's principal to evaluate: the verdict stays undecided rather than wrong."""
    s = next(s for s in SCENARIOS if s.control == "service-principal")
    t = broken(s)
    mine = analyze_flow(consumer_only(t), s.client, None, 80)
    fused = diagnose(
        evidence(*s.wire), merge_findings(mine, shared(t, s.client)), path=PATH, now=NOW
    )
    assert fused.blocked_at in (None, "unknown") and fused.status != "pass"


def test_shared_findings_take_the_place_of_the_hops_the_consumer_cannot_see() -> None:
    t = broken(next(s for s in SCENARIOS if s.n == 8))
    merged = merge_findings(
        analyze_flow(consumer_only(t), "client-2", None, 80), shared(t, "client-2")
    )
    assert not [f for f in merged if f.status == "not_visible"]
    denied = next(f for f in merged if f.status == "denied")
    assert denied.control == "nlb-sg-ingress" and denied.fix


def test_nothing_shared_leaves_the_consumer_findings_as_they_are() -> None:
    mine = analyze_flow(consumer_only(broken(SCENARIOS[0])), "client-2", None, 80)
    assert merge_findings(mine, []) is mine


def test_hops_the_consumer_can_see_itself_are_kept() -> None:
    t = broken(SCENARIOS[0])
    both = findings_for(t, "client-2")
    assert merge_findings(both, shared(t, "client-2")) == both


# --- the channel ------------------------------------------------------------------------

Make = Callable[..., Awaitable[Responder]]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    started: list[Responder] = []

    async def start(agent_id: str = "server-1", **opts: Any) -> Responder:
        store = ObservationStore()
        service = EvidenceService(
            key=KEY, agent_id=agent_id, store=store, skip_local_peers=False, **opts
        )
        r = Responder(
            key=KEY, agent_id=agent_id, store=store, host="127.0.0.1", port=0, evidence=service
        )
        await r.start()
        started.append(r)
        return r

    try:
        yield start
    finally:
        for r in started:
            await r.stop()


async def probe(r: Responder) -> str:
    import asyncio

    tok = Token.new(RPATH, "client-2")
    reader, writer = await asyncio.open_connection("127.0.0.1", r.bound_port)
    writer.write(encode_token(tok, KEY))
    await writer.drain()
    await reader.read(512)
    writer.close()
    return tok.probe_id_hex


def source(port: int, *ips: str) -> EndpointEvidenceSource:
    target = EvidenceTarget("ep", ips or ("127.0.0.1",), port, {80: (PATH,), 9721: (RPATH,)})
    return EndpointEvidenceSource([target], agent_id="client-2", key=KEY, timeout_s=1.0)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_the_endpoint_source_returns_observations_level_coverage_and_cost(
    make: Make,
) -> None:
    r = await make(share="seen-only")
    seen = await probe(r)
    src = source(r.bound_port)
    observations = await src.fetch(time.time() - 30)
    assert [o.probe_id for o in observations] == [seen]
    ev = src.evidence
    assert (ev.source, ev.level, ev.channel_cut) == ("endpoint", "seen-only", False)
    assert ev.covers["server-1"]["ok"] and ev.age_s is not None and ev.age_s < 5
    assert ev.bytes_sent == 73 and 0 < ev.bytes_received < 8192 and ev.rtt_s > 0


async def test_findings_in_the_answer_land_on_the_paths_of_their_port(make: Make) -> None:
    async def findings(ip: str, ports: tuple[int, ...]) -> list[dict[str, Any]]:
        return [
            {"hop": "nlb-sg-ingress", "control": "nlb-sg-ingress", "status": "denied", "port": 80}
        ]

    r = await make(share="findings", findings=findings)
    src = source(r.bound_port)
    await src.fetch(time.time() - 30)
    assert list(src.evidence.findings) == [PATH]
    assert src.evidence.findings[PATH][0].control == "nlb-sg-ingress"


async def test_findings_of_one_az_land_only_on_that_azs_paths(make: Make) -> None:
    async def findings(ip: str, ports: tuple[int, ...]) -> list[dict[str, Any]]:
        hop = {"hop": "target-health", "control": "target-health", "port": 80}
        return [
            {**hop, "status": "denied", "az": "az-a"},
            {**hop, "status": "allowed", "az": "az-b"},
        ]

    r = await make(share="findings", findings=findings)
    a, b = "c/az-a/80", "c/az-b/80"
    target = EvidenceTarget(
        "ep", ("127.0.0.1",), r.bound_port, {80: (a, b)}, {a: "az-a", b: "az-b"}
    )
    src = EndpointEvidenceSource([target], agent_id="client-2", key=KEY, timeout_s=1.0)
    await src.fetch(time.time() - 30)
    assert [f.status for f in src.evidence.findings[a]] == ["denied"]
    assert [f.status for f in src.evidence.findings[b]] == ["allowed"]


async def test_a_dead_eni_is_skipped_for_the_next_one(make: Make) -> None:
    r = await make()
    await probe(r)
    src = source(r.bound_port, "127.0.0.2", "127.0.0.1")
    assert await src.fetch(time.time() - 30)


async def test_a_cut_channel_is_named_as_such() -> None:
    src = source(closed_port())
    with pytest.raises(ProbeError, match="evidence channel cut"):
        await src.fetch(time.time() - 30)
    assert src.evidence.channel_cut


async def test_a_provider_sharing_nothing_is_not_mistaken_for_nothing_seen(make: Make) -> None:
    r = await make(share="none")
    await probe(r)
    src = source(r.bound_port)
    with pytest.raises(ProbeError, match="shares nothing"):
        await src.fetch(time.time() - 30)
    assert src.evidence.level == "none" and not src.evidence.channel_cut


# --- what a verdict says when the channel is cut -----------------------------------------

REFS = {
    PATH: PathRef(PATH, "client-2", "ep", "10.2.0.20", 80, "apne1-az4"),
    RPATH: PathRef(RPATH, "client-2", "ep", "10.2.0.20", 9721, "apne1-az4"),
}


def test_both_ports_failing_alike_says_the_block_is_not_port_specific() -> None:
    note = channel_notes(PATH, REFS, {PATH: "timeout", RPATH: "timeout"}, (9721,))
    assert "evidence channel cut" in note and "not specific" in note


def test_only_the_service_port_failing_says_the_block_is_port_specific() -> None:
    note = channel_notes(PATH, REFS, {PATH: "timeout", RPATH: "ok"}, (9721,))
    assert "specific to port 80" in note


def test_ports_failing_differently_are_not_taken_for_one_cause() -> None:
    note = channel_notes(PATH, REFS, {PATH: "timeout", RPATH: "refused"}, (9721,))
    assert "fails differently" in note and "not specific" not in note


def test_a_passing_path_gets_no_channel_note() -> None:
    assert channel_notes(PATH, REFS, {PATH: "ok", RPATH: "timeout"}, (9721,)) == ""


def test_a_round_with_a_cut_channel_says_so_in_the_verdict() -> None:
    round_ = RoundResult(
        evidence=[evidence("timeout", "unknown"), evidence("timeout", "unknown", RPATH)],
        results=[],
        observations=None,
        provider_error="evidence channel cut",
        started_at=NOW,
        finished_at=NOW,
        paths=list(REFS.values()),
        provider_evidence=ProviderEvidence(source="endpoint", channel_cut=True),
        responder_ports={PATH: (9721,), RPATH: (9721,)},
    )
    d = diagnose_round(round_, None, self_identity("client-2"), now=NOW)
    v = next(v for v in d.verdicts if v.path == PATH)
    assert v.explanation.startswith("evidence channel cut")
    assert any("not specific to the service port" in e for e in v.evidence)


def test_a_passing_evidence_channel_does_not_make_a_failing_service_degraded() -> None:
    round_ = RoundResult(
        evidence=[evidence("timeout", "no"), evidence("ok", "yes", RPATH)],
        results=[],
        observations=[],
        provider_error=None,
        started_at=NOW,
        finished_at=NOW,
        paths=list(REFS.values()),
        provider_evidence=ProviderEvidence(source="endpoint", level="seen-only"),
        responder_ports={PATH: (9721,), RPATH: (9721,)},
    )
    d = diagnose_round(round_, None, self_identity("client-2"), now=NOW)
    assert d.channel_paths == {RPATH}
    assert d.status == "fail" and not d.all_pass
