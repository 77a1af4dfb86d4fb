"""``GET /v1/observations``: the provider's evidence, for clients whose reply path is broken.

When a probe's reply is dropped on the return path (a provider NACL without ephemeral ports
outbound), the client cannot tell "never arrived" from "arrived, answer lost". The provider
agent's store answers that out of band. The handler only formats a snapshot of the store: no
I/O, no awaiting, so a slow scraper costs nothing.

Response (field names are stable: clients of other versions read them)::

    {
      "agent": "target-1",            # the provider agent id
      "now": 1700000000.5,            # server time, unix seconds
      "since": 1699999990.0,          # the since that was applied
      "count": 2,
      "truncated": false,             # true when limit cut the answer short
      "next_since": 1700000000.25,    # pass as since to continue (null when empty)
      "observations": [Observation.to_json(), ...],   # oldest first
      "counters": {"store": {...}, "responder": {...}, ...}
    }

Query: ``since`` (unix seconds), ``limit``, and ``agent`` (a client agent id: only that
client's observations; each client passes its own). Bad query parameters are a 400 with
``{"error": "..."}``. Mount with
``app.add_routes(observations_routes(store, agent_id=...))`` or as a sub-app with
``build_observations_app``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping

from aiohttp import web

from agent.observe.store import ObservationStore

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "OBSERVATIONS_PATH",
    "CounterSources",
    "build_observations_app",
    "observations_routes",
]

OBSERVATIONS_PATH = "/v1/observations"
DEFAULT_LIMIT = 1000
MAX_LIMIT = 10_000

#: name -> callable returning that component's counters,
#: e.g. ``{"responder": lambda: responder.counters.as_dict()}``
CounterSources = Mapping[str, Callable[[], Mapping[str, int]]]


def _bad_request(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


def _parse_since(raw: str | None) -> float:
    if raw is None or raw == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"since must be unix seconds, got {raw!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"since must be finite, non-negative unix seconds, got {raw!r}")
    return value


def _parse_limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_LIMIT
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"limit must be an integer, got {raw!r}") from None
    if not 1 <= value <= MAX_LIMIT:
        raise ValueError(f"limit must be 1..{MAX_LIMIT}, got {value}")
    return value


def observations_routes(
    store: ObservationStore,
    *,
    agent_id: str,
    counters: CounterSources | None = None,
    clock: Callable[[], float] = time.time,
) -> list[web.RouteDef]:
    """The routes to add to an existing application (the daemon's API, ``plprobe observe``)."""
    sources: dict[str, Callable[[], Mapping[str, int]]] = dict(counters or {})

    async def get_observations(request: web.Request) -> web.Response:
        try:
            since = _parse_since(request.query.get("since"))
            limit = _parse_limit(request.query.get("limit"))
        except ValueError as exc:
            return _bad_request(str(exc))
        page = store.since(since, limit, agent=request.query.get("agent") or None)
        all_counters: dict[str, dict[str, int]] = {"store": store.counters.as_dict()}
        for name, source in sources.items():
            all_counters[name] = dict(source())
        return web.json_response(
            {
                "agent": agent_id,
                "now": clock(),
                "since": since,
                "count": len(page.observations),
                "truncated": page.truncated,
                "next_since": page.next_since,
                "observations": [o.to_json() for o in page.observations],
                "counters": all_counters,
            }
        )

    return [web.get(OBSERVATIONS_PATH, get_observations, allow_head=False)]


def build_observations_app(
    store: ObservationStore,
    *,
    agent_id: str,
    counters: CounterSources | None = None,
    clock: Callable[[], float] = time.time,
) -> web.Application:
    """A stand-alone application serving only ``/v1/observations`` (tests, sub-app mounting)."""
    app = web.Application()
    app.add_routes(observations_routes(store, agent_id=agent_id, counters=counters, clock=clock))
    return app
