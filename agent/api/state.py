"""What the API server shares with the connection protocols it creates.

Like uvicorn's ``ServerState``, handed to every ``HttpToolsProtocol``: the server owns the
listening socket and aiohttp's runner, the fast path (``agent.api.fastpath``) owns each
connection, and this small object is the whole interface between them — so the fast path
needs neither the server class nor its private attributes, and the two modules do not import
each other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.api.answer import ProbeDeps

__all__ = ["Connection", "ServerState"]


class Connection(Protocol):
    """A live connection the server closes when it stops."""

    def close(self) -> None: ...


@dataclass(eq=False)
class ServerState:
    """The server's side of every API connection, shared and mutable."""

    #: the handlers' holder (``ApiDeps``), read per request
    deps: ProbeDeps
    #: a fresh aiohttp connection handler, for a connection the fast path hands over
    aiohttp_protocol: Callable[[], asyncio.Protocol]
    #: fast-path connections still open; the server closes them when it stops
    connections: set[Connection] = field(default_factory=set)
    #: set while the server stops: answers no longer offer keep-alive
    stopping: bool = False
    #: the listener's connection table (``agent.api.bounds.ConnectionTable``), if bounded
    table: Any = None
    #: a request head must be complete this long after connect or the previous answer
    head_timeout_s: float = 5.0
