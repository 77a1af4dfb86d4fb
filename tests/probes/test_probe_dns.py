"""DNS probe: resolution through the system resolver, compared with the expected ENI IPs.

Only ``localhost`` is resolved for real (from /etc/hosts: no packet leaves the machine); failures
and slow resolvers are played by a fake ``getaddrinfo`` on the running loop.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from agent.probes import dns
from agent.probes.base import ProbeContext, ProbeTarget
from agent.results import PathRef


def target(name: str, expected: tuple[str, ...] = ()) -> ProbeTarget:
    ref = PathRef(id="c/dns/regional", agent="c", name=name, ip=None, port=0)
    return ProbeTarget(path=ref, expected_ips=expected)


@pytest.fixture
def ctx() -> ProbeContext:
    return ProbeContext(agent_id="c", key=b"", insecure=True, timeout_s=0.5)


async def local_v4_names() -> list[str]:
    return await dns.resolve("localhost", 1.0)


async def test_a_name_that_resolves_to_the_expected_ips_is_ok(ctx) -> None:
    addresses = await local_v4_names()
    result = await dns.probe(target("localhost", tuple(addresses)), ctx)
    assert result.outcome == "ok"
    assert result.addresses == addresses
    assert result.missing == [] and result.extra == []
    assert result.phases["dns"] > 0


async def test_without_expected_ips_any_answer_is_ok(ctx) -> None:
    result = await dns.probe(target("localhost"), ctx)
    assert result.outcome == "ok" and "127.0.0.1" in result.addresses


async def test_missing_and_unexpected_addresses_are_listed(ctx) -> None:
    result = await dns.probe(target("localhost", ("10.2.0.20", "127.0.0.1")), ctx)
    assert result.outcome == "dns_error"
    assert result.detail["reason"] == "mismatch"
    assert result.missing == ["10.2.0.20"]
    assert "127.0.0.1" not in result.extra
    assert "10.2.0.20" in (result.error or "")


async def test_nxdomain_is_a_dns_error(ctx, monkeypatch) -> None:
    loop = asyncio.get_running_loop()

    async def fail(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(loop, "getaddrinfo", fail)
    result = await dns.probe(target("vpce-gone.example"), ctx)
    assert result.outcome == "dns_error"
    assert result.detail["reason"] == "nxdomain"
    assert "vpce-gone.example" in (result.error or "")


async def test_a_resolver_that_does_not_answer_in_time_is_a_dns_error_not_a_timeout(
    ctx, monkeypatch
) -> None:
    loop = asyncio.get_running_loop()

    async def slow(*args, **kwargs):
        await asyncio.sleep(10)

    monkeypatch.setattr(loop, "getaddrinfo", slow)
    ctx.timeout_s = 0.05
    result = await dns.probe(target("slow.example"), ctx)
    assert result.outcome == "dns_error"
    assert result.detail["reason"] == "timeout"
    assert result.duration_s < 1.0


async def test_a_dual_stack_answer_matches_an_ipv4_only_expectation(ctx, monkeypatch) -> None:
    """An endpoint may also answer AAAA; IPv4 expectations say nothing about IPv6."""
    loop = asyncio.get_running_loop()

    async def dual(*args, **kwargs):
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.2.0.20", 0)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fd00::20", 0, 0, 0)),
        ]

    monkeypatch.setattr(loop, "getaddrinfo", dual)
    result = await dns.probe(target("endpoint.example", ("10.2.0.20",)), ctx)
    assert result.outcome == "ok", result.error
    assert result.extra == []


def counting_resolver(monkeypatch, answer: str = "10.2.0.20") -> list[str]:
    """A fake getaddrinfo on the running loop that records every name it is asked for."""
    loop = asyncio.get_running_loop()
    asked: list[str] = []

    async def fake(host, *args, **kwargs):
        asked.append(host)
        await asyncio.sleep(0.01)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (answer, 0))]

    monkeypatch.setattr(loop, "getaddrinfo", fake)
    return asked


async def test_probes_sharing_a_round_memo_resolve_each_name_once(ctx, monkeypatch) -> None:
    asked = counting_resolver(monkeypatch)
    ctx.extras[dns.MEMO_KEY] = {}
    results = await asyncio.gather(
        dns.probe(target("a.example", ("10.2.0.20",)), ctx),
        dns.probe(target("a.example", ("10.9.9.9",)), ctx),
        dns.probe(target("b.example"), ctx),
    )
    assert sorted(asked) == ["a.example", "b.example"]
    # one lookup, but each probe judges the answer against its own expectation
    assert [r.outcome for r in results] == ["ok", "dns_error", "ok"]


async def test_without_a_memo_every_probe_resolves(ctx, monkeypatch) -> None:
    asked = counting_resolver(monkeypatch)
    await dns.probe(target("a.example"), ctx)
    await dns.probe(target("a.example"), ctx)
    assert asked == ["a.example", "a.example"]


async def test_a_probe_cut_off_mid_lookup_leaves_the_shared_lookup_to_the_others(
    ctx, monkeypatch
) -> None:
    counting_resolver(monkeypatch)
    ctx.extras[dns.MEMO_KEY] = {}
    first = asyncio.ensure_future(dns.probe(target("a.example"), ctx))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(dns.probe(target("a.example"), ctx))
    await asyncio.sleep(0)
    first.cancel()
    assert (await second).outcome == "ok"
