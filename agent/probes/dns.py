"""DNS probe: does the endpoint name resolve, and to the ENI IPs we expect?

Resolution goes through the system resolver (``loop.getaddrinfo``), because that is what the
client's applications use: ``/etc/hosts``, the VPC resolver, a private hosted zone, the lab's
per-namespace hosts file all count. The result compares the answer with
``target.expected_ips`` (when given) and lists ``missing`` and ``extra`` addresses.

Outcome: ``ok`` when the name resolves and matches; ``dns_error`` when it does not resolve,
resolves to the wrong set, or the resolver does not answer in time (``detail["reason"]`` says
which: ``nxdomain``, ``no_address``, ``temporary``, ``timeout``, ``mismatch``, ``resolver``).
A resolver timeout is a DNS failure, not a network ``timeout``: diagnosis puts it in the dns
stage. Limitation: getaddrinfo runs in the default thread pool and cannot be interrupted; a
timeout abandons the thread (it finishes on its own, bounded by resolv.conf's timeouts).

One resolution per name per round: a round puts a dict in ``ctx.extras[MEMO_KEY]`` (shared by
all its contexts) and every probe of the same name (and timeout) in that round awaits the same
lookup; each probe still compares the answer with its own ``expected_ips``. Why: a client
whose endpoints share names (one per port, as in the footprint benchmark) paid a resolver
thread hand-off per path, the largest per-round cost after the probes themselves.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time

from agent.probes.base import ProbeContext, ProbeTarget
from agent.results import ProbeResult

#: keyed by ``gaierror.errno``, which is typed ``int | None`` (an unknown errno: "resolver")
_EAI_REASONS: dict[int | None, str] = {
    socket.EAI_NONAME: "nxdomain",
    socket.EAI_AGAIN: "temporary",
    socket.EAI_FAIL: "resolver",
}
for _name, _reason in (("EAI_NODATA", "no_address"), ("EAI_ADDRFAMILY", "no_address")):
    if hasattr(socket, _name):
        _EAI_REASONS[getattr(socket, _name)] = _reason


def _sort_ips(ips: set[str]) -> list[str]:
    return sorted(ips, key=lambda ip: (ipaddress.ip_address(ip).version, ipaddress.ip_address(ip)))


#: where a round keeps its lookups: ``ctx.extras[MEMO_KEY][(name, timeout_s)]`` -> a Task
MEMO_KEY = "dns_memo"


async def resolve(name: str, timeout_s: float) -> list[str]:
    """All addresses ``name`` resolves to (sorted, unique); raises gaierror / TimeoutError."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout_s):
        infos = await loop.getaddrinfo(name, None, type=socket.SOCK_STREAM)
    return _sort_ips({str(info[4][0]).split("%", 1)[0] for info in infos})


def _retrieve(task: asyncio.Future[list[str]]) -> None:
    if not task.cancelled():
        task.exception()


async def resolve_once(name: str, ctx: ProbeContext) -> list[str]:
    """``resolve``, shared by every probe of ``name`` in the round that owns the memo.

    The lookup runs in a task of its own (shielded: a probe cut off by its runner does not
    cancel the lookup others wait for); without a memo in the context it simply resolves.
    """
    memo = ctx.extras.get(MEMO_KEY)
    if not isinstance(memo, dict):
        return await resolve(name, ctx.timeout_s)
    key = (name, ctx.timeout_s)
    task = memo.get(key)
    if task is None:
        task = memo[key] = asyncio.ensure_future(resolve(name, ctx.timeout_s))
        task.add_done_callback(_retrieve)  # waiters may all be gone: no "never retrieved"
    return list(await asyncio.shield(task))


async def probe(target: ProbeTarget, ctx: ProbeContext) -> ProbeResult:
    name = target.path.name
    started = ctx.now()
    t0 = time.perf_counter()
    result = ProbeResult(
        path=target.path.id,
        probe="dns",
        outcome="ok",
        started_at=started,
        port=target.port or None,
        detail={"name": name},
    )
    try:
        addresses = await resolve_once(name, ctx)
    except TimeoutError:
        result.outcome = "dns_error"
        result.detail["reason"] = "timeout"
        result.error = f"{name}: no answer from the resolver within {ctx.timeout_s:g}s"
    except socket.gaierror as exc:
        result.outcome = "dns_error"
        result.detail["reason"] = _EAI_REASONS.get(exc.errno, "resolver")
        result.error = f"{name}: {exc.strerror or exc}"
    except (OSError, UnicodeError) as exc:  # an invalid name (label too long, ...)
        result.outcome = "dns_error"
        result.detail["reason"] = "resolver"
        result.error = f"{name}: {exc}"
    else:
        result.addresses = addresses
        if target.expected_ips:
            expected = {str(ipaddress.ip_address(ip)) for ip in target.expected_ips}
            # compare within the address families that were configured: a dual-stack endpoint
            # also answers AAAA, which an IPv4-only expectation says nothing about
            families = {ipaddress.ip_address(ip).version for ip in expected}
            got = {a for a in addresses if ipaddress.ip_address(a).version in families}
            result.missing = _sort_ips(expected - got)
            result.extra = _sort_ips(got - expected)
            if result.missing or result.extra:
                result.outcome = "dns_error"
                result.detail["reason"] = "mismatch"
                parts = []
                if result.missing:
                    parts.append(f"missing {', '.join(result.missing)}")
                if result.extra:
                    parts.append(f"unexpected {', '.join(result.extra)}")
                result.error = f"{name} resolves to {', '.join(addresses)}: {'; '.join(parts)}"
    finally:
        elapsed = time.perf_counter() - t0
        result.duration_s = elapsed
        result.phases["dns"] = elapsed
    return result
