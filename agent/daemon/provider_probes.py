"""Provider-side probes: the provider agent tests the path from inside the provider VPC.

A consumer's probe that fails says *that* the path is broken, not on which side. The provider
agent can test the provider's half on its own, every interval, without the consumer:

    hop ``nlb``     each NLB listener through each NLB node IP (one per AZ): provider -> NLB
                    node -> listener -> a healthy target, through ④ egress, ⑤ and the provider
                    NACLs, as a consumer's flow after ④ ingress. On the responder port the
                    probe sends a token and reads the authenticated reply (as the client's tcp
                    probe does); on service ports it connects and sends the token, nothing more.
    hop ``target``  each target directly on its traffic port: the service, without the NLB.
    hop ``health``  each target directly on its health-check port, when it is another port.

The probers are the client's (``agent.probes``: one signature ``async def probe(target,
ctx)``), so outcomes mean the same on both sides (``ok``, ``refused`` = RST, ``timeout`` =
silent drop). Path ids have the client's shape, ``<agent_id>/<where>/<port>`` with ``where``
the NLB node's AZ id (hop ``nlb``) or the target's name (``target``/``health``), so the
provider's NLB path ``server-1/apne1-az4/80`` joins a consumer path ``client-1/apne1-az4/80``
on AZ and port (``agent.diagnose.provider_probes`` does the join for diagnosis).

What is probed comes from ``probes:`` in the provider config, or from the provider's
configuration view (``discover: true``: the NLBs of the provider's endpoint services, their
node IPs and listeners, the registered targets and their health-check ports). A listener whose
port is this agent's responder port is probed as a responder port.

AWS caveat (docs/DIAGNOSIS.md): with client IP preservation on (the default for instance
targets), an NLB that picks the probing target itself for the probe's flow drops the reply
(hairpin); a retry uses a new source port and so usually another target. ``retries`` >= 1 is
the default for that reason, and a listener that only ever fails from one target while the
others pass is that, not a broken path.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from agent.config import ProviderConfig, ProviderProbesConfig, ProviderProbeTarget
from agent.model import Topology
from agent.probes import ProbeContext, ProbeTarget, get_prober
from agent.results import PathRef, ProbeResult, path_id
from agent.wire.token import PATH_ID_MAX, TOKEN_STRINGS_MAX

__all__ = [
    "HOPS",
    "Hop",
    "ProviderProbe",
    "ProviderProbeResult",
    "ProviderProber",
    "ProviderRound",
    "discover",
    "plan",
    "run_round",
]

log = logging.getLogger(__name__)

Hop = Literal["nlb", "target", "health"]
#: the hops a provider probe tests, in path order (a metric label: bounded)
HOPS: tuple[str, ...] = ("nlb", "target", "health")
#: probes of one round in flight at once: a provider has a handful of nodes and targets
CONCURRENCY = 32


@dataclass(frozen=True)
class ProviderProbe:
    """One provider-side probe: which hop it tests, and the target the prober gets."""

    hop: Hop
    target: ProbeTarget
    #: hop ``nlb``: the NLB node's AZ id; ``target``/``health``: the target's name
    where: str

    @property
    def path(self) -> str:
        return self.target.path.id


@dataclass
class ProviderProbeResult:
    """A provider probe's result, with the hop it tested (JSON for the API and the channel)."""

    hop: Hop
    where: str
    result: ProbeResult

    @property
    def path(self) -> str:
        return self.result.path

    @property
    def ok(self) -> bool:
        return self.result.outcome == "ok"

    def to_json(self) -> dict[str, Any]:
        return {"hop": self.hop, "where": self.where, **self.result.to_json()}


@dataclass
class ProviderRound:
    """One round of provider probes and what it cost (``plprobe_provider_...`` metrics)."""

    results: list[ProviderProbeResult]
    started_at: float
    duration_s: float
    #: CPU time of this process during the round (user + system): the round's cost
    cpu_s: float


# ------------------------------------------------------------------------------- planning


def discover(topology: Topology, *, responder_port: int | None = None) -> ProviderProbesConfig:
    """What to probe, read from the provider's view: NLB nodes, listeners, targets.

    Only NLBs behind an endpoint service of the provider account count (the PrivateLink
    path); a target registered on several ports is probed on each. ``responder_port``: the
    listener on that port is a responder port (the deployment forwards it port for port); its
    target group (the agents themselves) is probed through the NLB only.
    """
    provider = {a.name for a in topology.accounts.values() if a.role == "provider"}
    nodes: dict[str, str] = {}
    listeners: list[int] = []
    targets: dict[str, ProviderProbeTarget] = {}
    for service in topology.endpoint_services.values():
        if provider and service.account not in provider:
            continue
        nlb = topology.nlb_of_service(service)
        if nlb is None:
            continue
        for node in nlb.nodes:
            subnet = topology.subnets.get(node.subnet_id)
            nodes.setdefault(subnet.az_id if subnet else node.ip, node.ip)
        for listener in topology.listeners_of(nlb.id):
            if listener.port not in listeners:
                listeners.append(listener.port)
            tg = topology.target_groups.get(listener.target_group_id or "")
            if tg is None or listener.port == responder_port:
                continue  # the agents' own responder is probed through the NLB, not directly
            for t in tg.targets:
                inst = topology.instances.get(t.instance_id)
                if inst is None:
                    continue
                port = t.port or tg.port
                health = tg.health_check.port or port
                name = _segment(inst.name) or _segment(inst.id) or inst.ip
                key = f"{name}:{port}"
                targets.setdefault(
                    key,
                    ProviderProbeTarget(
                        name=name if name != inst.ip else None,
                        ip=inst.ip,
                        port=port,
                        health_port=health if health != port else None,
                    ),
                )
    responder = [responder_port] if responder_port in listeners else []
    return ProviderProbesConfig(
        enabled=True,
        nlb_nodes=nodes,
        listeners=sorted(listeners),
        responder_ports=responder,
        targets=list(targets.values()),
    )


def _segment(value: str) -> str | None:
    """``value`` when it can be a path id segment (no '/', short), else None."""
    return value if value and "/" not in value and len(value) <= 32 else None


def _merged(
    config: ProviderProbesConfig, topology: Topology | None, responder_port: int
) -> ProviderProbesConfig:
    """Configured values win over discovered ones, key by key."""
    if not config.discover or topology is None:
        return config
    found = discover(topology, responder_port=responder_port)
    return config.model_copy(
        update={
            "nlb_nodes": config.nlb_nodes or found.nlb_nodes,
            "listeners": config.listeners or found.listeners,
            "responder_ports": config.responder_ports
            if config.listeners
            else found.responder_ports,
            "targets": config.targets or found.targets,
        }
    )


def _fits(agent_id: str, pid: str) -> bool:
    return len(pid.encode()) <= PATH_ID_MAX and len(pid.encode()) + len(agent_id.encode()) <= (
        TOKEN_STRINGS_MAX
    )


def plan(
    config: ProviderConfig, topology: Topology | None = None
) -> tuple[list[ProviderProbe], list[str]]:
    """The probes of one round, and notes on what could not be planned (said, not hidden).

    NLB hops first (node by node, listener by listener), then each target's traffic port and
    its health-check port when that is another port.
    """
    pc = _merged(config.probes, topology, config.responder.port)
    agent = config.agent_id
    probes: list[ProviderProbe] = []
    notes: list[str] = []

    def add(hop: Hop, where: str, ip: str, port: int, responder: bool) -> None:
        pid = path_id(agent, where, port)
        if not _fits(agent, pid):
            notes.append(f"{pid}: path id too long for a probe token; shorten agent_id or names")
            return
        ref = PathRef(id=pid, agent=agent, name=ip, ip=ip, port=port, az_id=where)
        probes.append(ProviderProbe(hop, ProbeTarget(path=ref, responder=responder), where))

    for az, ip in sorted(pc.nlb_nodes.items()):
        for port in pc.listeners:
            add("nlb", az, ip, port, port in pc.responder_ports)
    for t in pc.targets:
        name = t.name or t.ip
        responder = t.port == config.responder.port
        add("target", name, t.ip, t.port, responder)
        if t.health_port is not None and t.health_port != t.port:
            add("health", name, t.ip, t.health_port, t.health_port == config.responder.port)
    if config.probes.discover and topology is None:
        notes.append("discover: true but no provider view yet (config_sources)")
    return probes, notes


# -------------------------------------------------------------------------------- running


async def _one(probe: ProviderProbe, ctx: ProbeContext, retries: int) -> ProviderProbeResult:
    """Probe once, and again on failure up to ``retries`` times (a new flow: NLB hairpin)."""
    prober = get_prober("tcp")
    assert prober is not None  # a core prober; get_prober raises if it cannot import
    result: ProbeResult | None = None
    attempts = 0
    for attempts in range(1, retries + 2):  # noqa: B007 - the count is reported
        try:
            async with asyncio.timeout(ctx.timeout_s + 1.0):
                result = await prober(probe.target, ctx)
        except TimeoutError:
            result = ProbeResult(
                path=probe.path,
                probe="tcp",
                outcome="timeout",
                started_at=time.time(),
                duration_s=ctx.timeout_s,
                target_ip=probe.target.path.ip,
                port=probe.target.port,
                error=f"no answer within {ctx.timeout_s:g}s",
            )
        except Exception as exc:  # ProbeError and bugs: a result, never a dead round
            result = ProbeResult(
                path=probe.path,
                probe="tcp",
                outcome="error",
                started_at=time.time(),
                target_ip=probe.target.path.ip,
                port=probe.target.port,
                error=str(exc) or type(exc).__name__,
            )
        if result.outcome == "ok":
            break
    assert result is not None
    result.detail["attempts"] = attempts
    return ProviderProbeResult(hop=probe.hop, where=probe.where, result=result)


async def run_round(
    probes: Sequence[ProviderProbe],
    ctx: ProbeContext,
    *,
    retries: int = 1,
    concurrency: int = CONCURRENCY,
) -> ProviderRound:
    """Run every probe once (bounded concurrency); results in the order of ``probes``."""
    sem = asyncio.Semaphore(max(concurrency, 1))
    started, t0, cpu0 = time.time(), time.perf_counter(), time.process_time()

    async def bounded(p: ProviderProbe) -> ProviderProbeResult:
        async with sem:
            return await _one(p, ctx, retries)

    results = list(await asyncio.gather(*(bounded(p) for p in probes)))
    return ProviderRound(
        results=results,
        started_at=started,
        duration_s=time.perf_counter() - t0,
        cpu_s=time.process_time() - cpu0,
    )


@dataclass
class ProviderProber:
    """Runs a round every ``probes.interval`` until cancelled; keeps the last round.

    ``topology`` returns the provider's current view (``discover: true``), read on each round
    so a refreshed view changes what is probed without a restart. ``on_round`` gets every
    round (the agent exports metrics from it). A failing round is logged, never fatal.
    """

    config: ProviderConfig
    key: bytes
    topology: Callable[[], Topology | None] = lambda: None
    on_round: Callable[[ProviderRound], None] | None = None
    last: ProviderRound | None = None
    notes: list[str] = field(default_factory=list)
    rounds: int = 0

    def context(self) -> ProbeContext:
        pc = self.config.probes
        return ProbeContext(
            agent_id=self.config.agent_id,
            key=self.key,
            insecure=self.config.insecure,
            timeout_s=pc.timeout,
            retries=pc.retries,
        )

    async def round(self) -> ProviderRound:
        """One round now: plan from the current config and view, probe, report."""
        probes, notes = plan(self.config, self.topology())
        if notes != self.notes:
            for note in notes:
                log.warning("provider probes: %s", note)
            self.notes = notes
        result = await run_round(probes, self.context(), retries=self.config.probes.retries)
        self.last, self.rounds = result, self.rounds + 1
        if self.on_round is not None:
            self.on_round(result)
        return result

    async def run(self) -> None:
        """Every ``interval`` (start to start; an overrunning round delays the next)."""
        loop = asyncio.get_running_loop()
        interval = self.config.probes.interval
        while True:
            begun = loop.time()
            try:
                await self.round()
            except Exception:  # a bug here must not stop the provider's probing for good
                log.exception("provider probe round failed; next round as scheduled")
            await asyncio.sleep(max(interval - (loop.time() - begun), 0.05))
