"""Process limits: the file-descriptor budget, so floods cannot starve the agent's own probes.

Each connection a listener holds is a descriptor; at ``RLIMIT_NOFILE`` accept() fails (asyncio
logs it and retries every second), and so does the agent's next probe socket: a flood against
the API turned a path's verdict from pass to unknown. Two measures: at start the soft limit is
raised to the hard limit (allowed without privilege), and every listener's connection cap is
derived from what is left after a reserve for probes, the sniffer and files, so the sum of the
caps stays below the limit.
"""

from __future__ import annotations

import logging
import resource

__all__ = ["PROBE_RESERVE", "api_connection_cap", "raise_nofile_limit"]

log = logging.getLogger(__name__)

#: descriptors kept for the agent's own probes, raw sockets, the sniffer, logs and files
PROBE_RESERVE = 256
#: the API's cap when descriptors are plentiful (scrapers and /probe need far fewer)
API_CONNECTIONS_MAX = 1024
#: the API's cap never goes below this: /metrics and /healthz must stay reachable
API_CONNECTIONS_MIN = 32


def raise_nofile_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:  # a container may forbid it: keep the soft limit
            log.warning("cannot raise the open-file limit from %d to %d: %s", soft, target, exc)
    return int(soft) if soft != resource.RLIM_INFINITY else 1 << 20


def api_connection_cap(nofile: int | None = None, other_listeners: int = 0) -> int:
    """The API's connection cap: what ``nofile`` leaves after the reserve and other listeners."""
    if nofile is None:
        nofile = int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    room = nofile - PROBE_RESERVE - other_listeners
    return max(API_CONNECTIONS_MIN, min(API_CONNECTIONS_MAX, room))
