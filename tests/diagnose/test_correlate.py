"""Correlation joins a probe and an observation by the probe's identity, never by addresses."""

from __future__ import annotations

from agent.diagnose.correlate import correlate, deciding_outcome
from agent.results import Observation, ProbeResult

T0 = 1_700_000_000.0
PATH = "client-2/apne1-az4/80"


def tcp(probe_id: str = "aa" * 16, outcome: str = "ok", path: str = PATH, **kw) -> ProbeResult:
    kw.setdefault("phases", {"connect": 0.002} if outcome == "ok" else {})
    return ProbeResult(
        path=path,
        probe="tcp",
        outcome=outcome,
        probe_id=probe_id,
        started_at=T0,
        duration_s=0.01,
        target_ip="10.2.0.20",
        port=80,
        **kw,
    )


def seen(probe_id: str = "aa" * 16, *, at: float = T0 + 0.005, **kw) -> Observation:
    fields = {
        "kind": "token",
        "target": "server-1",
        "seen_at": at,
        "src_ip": "10.3.0.100",
        "src_port": 40123,
        "dst_ip": "10.3.1.10",
        "dst_port": 80,
        "via": "sniffer",
        "probe_id": probe_id,
        "path": PATH,
        "agent": "client-2",
    }
    fields.update(kw)
    return Observation(**fields)  # type: ignore[arg-type]


def test_a_token_seen_at_the_target_joins_and_gives_the_source_it_saw() -> None:
    (ev,) = correlate([tcp()], [seen()], window_s=5)
    assert ev.seen_at_target == "yes"
    assert ev.source_at_target == "10.3.0.100:40123"
    assert ev.outcome == "ok"
    assert ev.rtt_s == 0.002
    assert len(ev.observations) == 1


def test_a_matching_five_tuple_with_another_token_never_joins() -> None:
    """The NLB rewrites source IP and port: addresses are no identity. Same addresses, same
    time, same port, but the token belongs to another probe: no join."""
    result = tcp(probe_id="aa" * 16)
    other = seen(
        probe_id="bb" * 16,
        src_ip="10.2.1.15",
        src_port=40000,
        dst_ip=result.target_ip or "",
        dst_port=80,
        path="",
    )
    (ev,) = correlate([result], [other], window_s=5)
    assert ev.seen_at_target == "no"
    assert ev.observations == []
    assert ev.source_at_target is None


def test_an_observation_outside_the_window_does_not_join() -> None:
    (ev,) = correlate([tcp()], [seen(at=T0 + 120)], window_s=5)
    assert ev.seen_at_target == "no"


def test_an_observation_whose_token_names_another_path_does_not_join() -> None:
    (ev,) = correlate([tcp()], [seen(path="client-2/apne1-az1/80")], window_s=5)
    assert ev.seen_at_target == "no"


def test_without_provider_evidence_seen_is_unknown_and_says_why() -> None:
    (ev,) = correlate([tcp()], None, window_s=5, provider_error="provider unreachable: timeout")
    assert ev.seen_at_target == "unknown"
    assert ev.provider_error == "provider unreachable: timeout"


def test_an_authenticated_reply_is_evidence_even_without_the_provider_api() -> None:
    reply = {
        "probe_id": "aa" * 16,
        "target": "server-1",
        "src": "10.3.0.100:1030",
        "proxy_endpoint_id": "vpce-0b6bf7bc8d96f3ea9",
        "proxy_src": "10.2.1.15:40000",
    }
    (ev,) = correlate([tcp(reply=reply)], None, window_s=5, provider_error="down")
    assert ev.seen_at_target == "yes"
    assert ev.source_at_target == "10.3.0.100:1030"
    assert ev.proxy_endpoint_id == "vpce-0b6bf7bc8d96f3ea9"
    assert ev.proxy_client == "10.2.1.15:40000"


def test_proxy_v2_data_comes_from_the_observation() -> None:
    obs = seen(proxy_endpoint_id="vpce-0b6bf7bc8d96f3ea9", proxy_src="10.2.1.15:41000")
    (ev,) = correlate([tcp()], [obs], window_s=5)
    assert ev.proxy_endpoint_id == "vpce-0b6bf7bc8d96f3ea9"
    assert ev.proxy_client == "10.2.1.15:41000"


def test_any_attempt_of_a_retried_probe_joins() -> None:
    result = tcp(
        probe_id="cc" * 16, outcome="timeout", detail={"probe_ids": ["aa" * 16, "cc" * 16]}
    )
    (ev,) = correlate([result], [seen(probe_id="aa" * 16)], window_s=5)
    assert ev.seen_at_target == "yes"
    assert ev.outcome == "timeout"


def syn(isn: int, outcome: str = "timeout", path: str = PATH) -> ProbeResult:
    return ProbeResult(
        path=path, probe="syn", outcome=outcome, started_at=T0, duration_s=2.0, detail={"isn": isn}
    )


def syn_seen(isn: int) -> Observation:
    return seen(probe_id="", kind="syn_tag", isn=isn, path="", agent="")


def test_a_tagged_syn_joins_by_its_sequence_number() -> None:
    """A return-path drop: the client timed out, yet the target saw the SYN."""
    (ev,) = correlate([syn(0x12345678)], [syn_seen(0x12345678)], window_s=5)
    assert ev.seen_at_target == "yes"
    assert ev.outcome == "timeout"
    assert ev.source_at_target == "10.3.0.100:40123"


def test_an_isn_shared_by_probes_of_two_paths_is_ambiguous_and_joins_neither() -> None:
    other = "client-2/apne1-az1/80"
    evs = correlate([syn(7, path=PATH), syn(7, path=other)], [syn_seen(7)], window_s=5)
    assert [ev.seen_at_target for ev in evs] == ["no", "no"]


def test_a_syn_that_fell_back_to_tcp_has_no_tag_to_join() -> None:
    result = syn(7)
    result.fallback = "syn: no CAP_NET_RAW, used tcp"
    (ev,) = correlate([result], [syn_seen(7)], window_s=5)
    assert ev.seen_at_target == "unknown"  # a connect that timed out sent nothing identifiable


def test_a_refused_connect_sent_no_token_so_only_a_syn_tag_can_tell() -> None:
    (ev,) = correlate([tcp(outcome="refused", detail={"phase": "connect"})], [], window_s=5)
    assert ev.seen_at_target == "unknown"
    (ev,) = correlate(
        [tcp(outcome="refused", detail={"phase": "connect"}), syn(9, "refused")],
        [syn_seen(9)],
        window_s=5,
    )
    assert (ev.outcome, ev.seen_at_target) == ("refused", "yes")


def dns(outcome: str) -> ProbeResult:
    return ProbeResult(path=PATH, probe="dns", outcome=outcome, started_at=T0)


def test_a_dns_error_decides_the_path_even_when_the_eni_answers() -> None:
    assert deciding_outcome([dns("dns_error"), tcp()]) == "dns_error"


def test_a_drop_on_one_kind_outweighs_a_refusal_on_another() -> None:
    assert deciding_outcome([dns("ok"), tcp(outcome="refused"), syn(1, "timeout")]) == "timeout"


def test_all_connecting_probes_ok_is_ok() -> None:
    assert deciding_outcome([dns("ok"), tcp(), syn(1, "ok")]) == "ok"


def test_one_evidence_per_path_in_first_seen_order() -> None:
    a, b = "c/az-a/80", "c/az-b/80"
    evs = correlate([tcp(path=b), tcp(path=a), dns("ok")], [], window_s=5)
    assert [ev.path for ev in evs] == [b, a, PATH]
    assert evs[2].seen_at_target == "unknown"  # only DNS: nothing was sent to the target


def test_a_missing_syn_tag_proves_nothing_when_the_nlb_may_rewrite_the_isn() -> None:
    """AWS does not document whether the NLB keeps the ISN: a missing tag is then no proof."""
    (ev,) = correlate([syn(0x1111)], [syn_seen(0x2222)], window_s=5, isn_preserved=False)
    assert ev.seen_at_target == "unknown"


def test_a_missing_syn_tag_is_not_seen_when_the_isn_is_kept() -> None:
    (ev,) = correlate([syn(0x1111)], [syn_seen(0x2222)], window_s=5, isn_preserved=True)
    assert ev.seen_at_target == "no"


def test_a_round_where_a_token_arrived_but_the_handshaken_syns_tag_did_not_shows_rewriting() -> (
    None
):
    """Auto mode: the round itself contradicts ISN preservation, so missing tags prove nothing."""
    ok_path = "client-2/apne1-az4/81"
    results = [
        tcp(path=ok_path, probe_id="cc" * 16),
        syn(0x3333, outcome="ok", path=ok_path),
        syn(0x4444, outcome="timeout"),
    ]
    observations = [seen(probe_id="cc" * 16, path=ok_path)]
    by_path = {e.path: e for e in correlate(results, observations, window_s=5)}
    assert by_path[ok_path].seen_at_target == "yes"
    assert by_path[PATH].seen_at_target == "unknown"


def test_a_token_only_the_responder_read_is_no_evidence_of_isn_rewriting() -> None:
    """The responder port is not sniffed: its SYNs' tags are never seen, whatever the NLB does."""
    responder_path = "client-2/apne1-az4/9721"
    results = [
        tcp(path=responder_path, probe_id="cc" * 16),
        syn(0x3333, outcome="ok", path=responder_path),
        syn(0x4444, outcome="timeout"),
    ]
    observations = [seen(probe_id="cc" * 16, path=responder_path, via="responder")]
    by_path = {e.path: e for e in correlate(results, observations, window_s=5)}
    assert by_path[PATH].seen_at_target == "no"


def test_a_round_where_the_handshaken_syns_tag_arrived_keeps_missing_tags_meaningful() -> None:
    ok_path = "client-2/apne1-az4/81"
    results = [
        tcp(path=ok_path, probe_id="cc" * 16),
        syn(0x3333, outcome="ok", path=ok_path),
        syn(0x4444, outcome="timeout"),
    ]
    observations = [seen(probe_id="cc" * 16, path=ok_path), syn_seen(0x3333)]
    by_path = {e.path: e for e in correlate(results, observations, window_s=5)}
    assert by_path[PATH].seen_at_target == "no"
