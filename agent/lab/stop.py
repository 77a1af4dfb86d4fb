"""How every lab helper process is told to stop: one event, set by SIGTERM or SIGINT.

``lab down`` sends SIGTERM and a terminal sends SIGINT; the health checker, the PROXY v2
proxy, the stand-in service and the API forwarder all finish their current work and close
their listeners when the event is set, instead of dying mid-write.
"""

from __future__ import annotations

import asyncio
import signal

__all__ = ["stop_on_signals"]


def stop_on_signals() -> asyncio.Event:
    """An event the running loop sets on SIGTERM or SIGINT (call it inside that loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop
