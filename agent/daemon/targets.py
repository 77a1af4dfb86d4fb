"""Which configured path a ``/probe`` target names: the daemon's target index.

``/probe`` only probes configured targets: an ENI IP or DNS name of a configured endpoint (or
one its DNS answers produced) with one of its ports — anything else is a 400, so the agent is
not an open prober of arbitrary addresses (169.254.169.254, other hosts). Targets are found by
dict lookup — (host, port) among the configured hosts, (host, port) among the run-time path
refs, and the endpoint by its name (the ``module``) — never by a scan, since a scraper asks
once per target per interval. The daemon rebuilds the index on start and reload
(``rebuild``), adds each round's path refs (``add``) and drops forgotten paths (``forget``).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from agent.config import ClientConfig, PathConfig, path_id
from agent.model import is_ip
from agent.results import PathRef

__all__ = [
    "UNLABELLED_AZ",
    "Resolved",
    "TargetIndex",
    "declared_paths",
    "host_key",
    "parse_target",
]

#: the AZ slot of the path id of a target no round has labelled yet
UNLABELLED_AZ = "probe"


def declared_paths(config: ClientConfig) -> dict[str, PathConfig]:
    """Path ids known from the config alone (AZ ids x ports) -> their endpoint entry.

    As the runner plans them: the ``expected_ips`` AZs when given, else the ``zonal`` ones.
    Endpoints configured only by a regional name get their ids from DNS at run time.
    """
    out: dict[str, PathConfig] = {}
    for p in config.paths:
        for az in sorted(p.expected_ips or p.zonal):
            for port in p.ports:
                out[path_id(config.agent_id, az, port)] = p
    return out


def parse_target(target: str) -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` -> (host, port); ``ValueError`` otherwise (HTTP 400)."""
    host, sep, port = target.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("target must be HOST:PORT")
    return host, int(port)


def host_key(host: str) -> str:
    """One spelling per host for the index: canonical IP text, or a lower-case name."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower().rstrip(".")


class Resolved(NamedTuple):
    """A ``/probe`` target matched to a configured path."""

    #: the host as the target spells it (a dns probe asks for this name)
    host: str
    ref: PathRef
    #: the endpoint whose settings apply (None: a run-time ref whose owner is gone)
    endpoint: PathConfig | None


class TargetIndex:
    """The ``/probe`` lookups: configured (host, port) -> endpoint, endpoint name -> endpoint,
    and the run-time path refs by (host, port)."""

    def __init__(self) -> None:
        self._configured: dict[tuple[str, int], PathConfig] = {}
        self._by_name: dict[str, PathConfig] = {}
        self._by_target: dict[tuple[str, int], PathRef] = {}

    def rebuild(self, config: ClientConfig, refs: Iterable[PathRef]) -> None:
        """Index a configuration and the path refs still known (start, reload)."""
        self._by_name = {p.name: p for p in config.paths}
        self._configured = {}
        for p in config.paths:
            hosts = [*p.expected_ips.values(), *p.zonal.values(), p.regional, p.private]
            for host in hosts:
                if host:
                    for port in p.ports:
                        self._configured.setdefault((host_key(host), port), p)
        self._by_target = {}
        for ref in refs:
            self.add(ref)

    def add(self, ref: PathRef) -> None:
        """Index a path ref a round produced, by its IP and by its name."""
        for host in (ref.ip, ref.name):
            if host:
                self._by_target[(host_key(host), ref.port)] = ref

    def forget(self, pid: str) -> None:
        """Drop the run-time refs of a path the daemon forgot."""
        self._by_target = {k: r for k, r in self._by_target.items() if r.id != pid}

    def resolve(
        self, target: str, module_name: str, owners: Mapping[str, PathConfig], agent_id: str
    ) -> Resolved:
        """The path ref a ``/probe`` target names, and the endpoint whose settings apply.

        The endpoint is the module's when the module names one, else the owner of the path a
        round produced for that target, else the configured endpoint the target belongs to.
        A configured target no round has labelled yet gets a ``<agent>/probe/<port>`` ref.
        ``ValueError`` (HTTP 400) for a target that is not HOST:PORT or not configured.
        """
        host, port = parse_target(target)
        where = (host_key(host), port)
        ref = self._by_target.get(where)
        configured = self._configured.get(where)
        if ref is None and configured is None:
            raise ValueError("target is not a configured path")
        owner = owners.get(ref.id) if ref else None
        pc = self._by_name.get(module_name) or owner or configured
        if ref is None:
            ref = PathRef(
                id=path_id(agent_id, UNLABELLED_AZ, port),
                agent=agent_id,
                name=host,
                ip=host if is_ip(host) else None,
                port=port,
            )
        return Resolved(host, ref, pc)
