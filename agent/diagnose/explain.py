"""Static diagnosis: a verdict per AZ path from configuration alone (no packets).

What ``plprobe explain`` prints; the same verdict shape as a probe round's.
"""

from __future__ import annotations

import time

from agent.analyze.flows import flows
from agent.analyze.path import walk
from agent.diagnose.verdict import diagnose_static
from agent.errors import ConfigError
from agent.model import Topology
from agent.results import Verdict

__all__ = ["explain"]


def explain(
    topology: Topology,
    client: str,
    port: int,
    endpoint: str | None = None,
    *,
    now: float | None = None,
) -> list[Verdict]:
    """One static verdict per AZ path (endpoint ENI) from ``client`` on ``port``."""
    if not 1 <= port <= 65535:
        raise ConfigError(f"port {port} is outside 1-65535", key="--port")
    stamp = time.time() if now is None else now
    return [
        diagnose_static(walk(topology, flow), path=flow.path_id, now=stamp)
        for flow in flows(topology, client, port, endpoint)
    ]
