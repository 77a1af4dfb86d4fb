"""What every prober gets: a target and a context. One signature for every probe kind:

    async def probe(target: ProbeTarget, ctx: ProbeContext) -> ProbeResult

The caller owns the deadline (``asyncio.timeout(ctx.timeout_s)`` around the call, plus the
prober's own per-phase timeouts inside it); probers never raise for a failed probe — a
timeout, a refusal or an unreachable is a *result*. They raise only ``ProbeError`` when the
probe could not be run at all (and the runner turns that into an ``error`` result).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Protocol

from agent.results import PathRef, ProbeResult


@dataclass(frozen=True)
class ProbeTarget:
    """One path to probe: the endpoint name, the ENI IP of one AZ, the port."""

    path: PathRef
    #: the port speaks plprobe's responder protocol (read an authenticated reply)
    responder: bool = False
    #: expected ENI IPs for DNS probes (all AZs); empty = do not compare
    expected_ips: tuple[str, ...] = ()
    #: HTTP probes: the request path and Host header
    http_path: str = "/"
    http_host: str | None = None

    @property
    def host(self) -> str:
        """Where to connect: the ENI IP when known, else the DNS name."""
        return self.path.ip or self.path.name

    @property
    def port(self) -> int:
        return self.path.port


@dataclass
class ProbeContext:
    """Per-agent state shared by all probes of a round; cheap to pass, nothing per probe."""

    agent_id: str
    key: bytes
    insecure: bool = False
    timeout_s: float = 2.0
    retries: int = 1
    #: set by the runner after checking CAP_NET_RAW once
    raw_allowed: bool = False
    #: bound on bytes read from any peer (responder reply, HTTP body)
    max_read: int = 4096
    #: extra fields probers may use (SYN engine, aiohttp session), owned by the runner
    extras: dict[str, object] = field(default_factory=dict)

    @staticmethod
    def new_probe_id() -> bytes:
        return os.urandom(16)

    @staticmethod
    def now() -> float:
        return time.time()


class Prober(Protocol):
    async def __call__(self, target: ProbeTarget, ctx: ProbeContext) -> ProbeResult: ...
