"""The provider's own findings for one client's flow, from the provider account's view.

An evidence answer at sharing level ``findings`` carries, for each port the client probes, the
provider-side hops of its flow as this account sees them: NLB SG ingress for the client's
address (the query carries it, authenticated: with PROXY v2 off the NLB's source NAT hides it),
the listener, NLB SG egress, the provider NACLs, target SG ingress, the service, target health.
They are ``HopFinding`` dicts — control id, rule name, fix text — computed here and never the
raw configuration, so the provider shares conclusions, not its security groups.

The view is the agent's ``config_sources`` (a snapshot directory or live read-only AWS). It is
re-read when a snapshot's files change (checked at most every ``recheck_s``) or, for live AWS,
every ``refresh_interval``; findings are cached per (view, client IP, port), so a client probing
every interval costs one walk per view change. Loading and walking run in a worker thread: a
large view must not stall the responder's event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from agent.analyze.path import Flow, walk
from agent.config import ProviderConfig
from agent.controls import PROVIDER_CONTROLS
from agent.errors import PlprobeError
from agent.model import Topology

__all__ = ["PROVIDER_CONTROLS", "ProviderFindings", "provider_findings_for", "provider_side"]

log = logging.getLogger(__name__)

_CACHE_MAX = 4096


def _azs(topology: Topology) -> list[str | None]:
    """The AZ ids of the NLB nodes: per-AZ hops (cross-zone, targets per AZ) differ by AZ."""
    azs: set[str] = set()
    for nlb in topology.nlbs.values():
        for node in nlb.nodes:
            subnet = topology.subnets.get(node.subnet_id)
            if subnet is not None and subnet.az_id:
                azs.add(subnet.az_id)
    found: list[str | None] = [*sorted(azs)]
    return found or [None]


def _hops(topology: Topology, client_ip: str, port: int, az: str | None) -> list[dict[str, Any]]:
    flow = Flow(client_ip, client_ip, None, None, None, port, az)
    out = []
    for hop in walk(topology, flow):
        if hop.control not in PROVIDER_CONTROLS or hop.status == "not_visible":
            continue
        # the evaluated rule list stays home: the named rule and the fix are the conclusion;
        # an allowed hop needs no prose (answers are bounded, a multi-AZ fleet sends per AZ)
        item = {k: v for k, v in hop.to_json().items() if v not in ("", [], None)}
        item.pop("checked", None)
        if hop.status == "allowed":
            item.pop("detail", None)
            item.pop("resource", None)
        item["port"] = port
        out.append(item)
    return out


def provider_side(topology: Topology, client_ip: str, port: int) -> list[dict[str, Any]]:
    """The visible provider-side hops of ``client_ip``'s flow on ``port``, as JSON dicts.

    The flow is walked without a consumer (the provider cannot see it); hops of other
    accounts come back ``not_visible`` and are left out, as is every control the provider
    does not own. The walk runs once per AZ of the NLB (which node the flow enters decides
    cross-zone and per-AZ target health); when the AZs agree the hops are sent once, else
    each AZ's hops carry ``az`` and the client takes those of its path's AZ.
    """
    per_az = {az: _hops(topology, client_ip, port, az) for az in _azs(topology)}
    lists = list(per_az.values())
    if all(hops == lists[0] for hops in lists):
        return lists[0]
    out = []
    for az, hops in per_az.items():
        for item in hops:
            out.append({**item, "az": az})
    return out


class ProviderFindings:
    """Findings per (client IP, port) from a view that is reloaded when it changes.

    ``load`` returns the current Topology; ``fingerprint`` (optional) says cheaply whether it
    changed (a snapshot's content digest). Without a fingerprint the view is reloaded every
    ``refresh_s``.
    """

    def __init__(
        self,
        load: Callable[[], Topology],
        *,
        fingerprint: Callable[[], str] | None = None,
        recheck_s: float = 0.5,
        refresh_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = load
        self._fingerprint = fingerprint
        self.recheck_s = recheck_s
        self.refresh_s = refresh_s
        self._clock = clock
        self._lock = threading.Lock()
        self._topology: Topology | None = None
        self._print: str | None = None
        self._checked = float("-inf")
        self._loaded = float("-inf")
        self._cache: dict[tuple[str, int], list[dict[str, Any]]] = {}
        #: why the last load failed ("" when it did not)
        self.error = ""
        self.loads = 0

    def _current(self) -> Topology | None:
        """The view, reloaded when due (call with the lock held; blocking)."""
        now = self._clock()
        due = self._topology is None or now - self._loaded >= self.refresh_s
        if not due and self._fingerprint is not None and now - self._checked >= self.recheck_s:
            self._checked = now
            try:
                due = self._fingerprint() != self._print
            except PlprobeError as exc:
                self.error = str(exc)
                return self._topology
        if due:
            try:
                printed = self._fingerprint() if self._fingerprint is not None else None
                topology = self._load()
            except PlprobeError as exc:
                self.error = f"provider view unavailable: {exc}"
                log.warning("%s", self.error)
                return self._topology
            self._topology, self._print, self._loaded = topology, printed, now
            self._checked = now
            self._cache.clear()
            self.error = ""
            self.loads += 1
        return self._topology

    def findings_sync(self, client_ip: str, ports: tuple[int, ...]) -> list[dict[str, Any]]:
        """Findings for every port, in port order then path order (blocking)."""
        with self._lock:
            topology = self._current()
            if topology is None:
                return []
            out: list[dict[str, Any]] = []
            for port in ports:
                key = (client_ip, port)
                found = self._cache.get(key)
                if found is None:
                    try:
                        found = provider_side(topology, client_ip, port)
                    except PlprobeError as exc:
                        self.error = f"provider analysis failed: {exc}"
                        found = []
                    if len(self._cache) >= _CACHE_MAX:
                        self._cache.clear()
                    self._cache[key] = found
                out.extend(found)
            return out

    async def findings(self, client_ip: str, ports: tuple[int, ...]) -> list[dict[str, Any]]:
        """``findings_sync`` in a worker thread."""
        return await asyncio.to_thread(self.findings_sync, client_ip, ports)

    def peers_sync(self, port: int) -> list[str]:
        """``ip:port`` of every target registered on ``port`` in the view (blocking).

        What DescribeTargetHealth lists with the provider's read-only role: the provider
        agents of the target group(s) behind the responder listener, i.e. this agent's peers.
        """
        with self._lock:
            topology = self._current()
            if topology is None:
                return []
            out: list[str] = []
            for tg in topology.target_groups.values():
                for target in tg.targets:
                    inst = topology.instances.get(target.instance_id)
                    if inst is not None and inst.ip and tg.target_port(target) == port:
                        peer = f"[{inst.ip}]:{port}" if ":" in inst.ip else f"{inst.ip}:{port}"
                        if peer not in out:
                            out.append(peer)
            return out

    async def peers(self, port: int) -> list[str]:
        """``peers_sync`` in a worker thread."""
        return await asyncio.to_thread(self.peers_sync, port)


def provider_findings_for(config: ProviderConfig) -> ProviderFindings | None:
    """Findings from the provider's ``config_sources`` (None when it has none).

    A snapshot directory may not exist yet when the agent starts (the lab writes it before a
    check): it is looked for at each query, and missing means no findings with the reason.
    """
    from agent.sources.views import LiveSource, SnapshotSource, fingerprint

    sources = config.config_sources
    if sources.snapshot_dirs:
        snapshot = SnapshotSource(tuple(config.resolve_file(d) for d in sources.snapshot_dirs))
        return ProviderFindings(
            snapshot.load,
            fingerprint=lambda: fingerprint(snapshot.dirs),
            refresh_s=sources.refresh_interval,
        )
    if sources.aws is not None:
        live = LiveSource("provider", sources.aws)
        return ProviderFindings(live.load, refresh_s=sources.refresh_interval)
    return None
