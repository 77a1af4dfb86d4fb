"""The prober table: probe kind name -> ``async def probe(target, ctx) -> ProbeResult``.

One table, as blackbox_exporter's ``prober.Probers``: the config validates ``probes: [...]``
against its keys, the runner looks kinds up here and nothing else knows which module implements
which kind. ``syn`` is looked up lazily: it needs scapy and raw sockets, may not be installed
in every build, and must not make ``import agent.probes`` (and therefore config loading) fail.
When it cannot be imported the runner falls back to ``tcp`` and says so in the result.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping

from agent.probes.base import ProbeContext, Prober, ProbeTarget

__all__ = ["PROBERS", "ProbeContext", "ProbeTarget", "Prober", "get_prober"]

log = logging.getLogger(__name__)

#: kind -> module implementing ``probe``; the order is the order of a round
_MODULES: dict[str, str] = {
    "dns": "agent.probes.dns",
    "tcp": "agent.probes.tcp",
    "syn": "agent.probes.syn",
    "http": "agent.probes.http",
}

#: the kinds a config may name (the table's keys)
PROBERS: Mapping[str, str] = dict(_MODULES)

_cache: dict[str, Prober | None] = {}


def get_prober(kind: str) -> Prober | None:
    """The prober for ``kind``; ``None`` when its module cannot be imported (e.g. ``syn``).

    Raises ``KeyError`` for a kind that is not in the table (config validation prevents it).
    """
    if kind in _cache:
        return _cache[kind]
    module_name = _MODULES[kind]
    try:
        prober: Prober | None = importlib.import_module(module_name).probe
    except (ImportError, AttributeError) as exc:
        if kind in ("dns", "tcp", "http"):
            raise  # our own core probers must import; a failure here is a bug
        log.warning("probe kind %s unavailable (%s): falling back", kind, exc)
        prober = None
    _cache[kind] = prober
    return prober
