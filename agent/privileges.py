"""Privileges: refuse root unless asked, and keep no capability the agent no longer needs.

The agent is reachable by anything that can reach the NLB, so what it can do if subverted
matters. Two rules:

* **Not root by default.** ``plprobe run`` / ``plprobe observe`` as uid 0 exit 2 with a message
  unless ``--allow-root`` or ``PLPROBE_ALLOW_ROOT=1`` says it is meant (the lab does: its
  agents run inside ``ip netns exec`` as root). The deployments run as an unprivileged user
  with only ``CAP_NET_RAW`` (systemd ``AmbientCapabilities``, the image's ``setcap``, ECS
  ``linuxParameters``).
* **Drop after start.** Once the listeners, raw sockets and the sniffer are open,
  ``drop_capabilities`` clears every capability from the effective, permitted and inheritable
  sets (and the ambient set) except those the process may still need: ``CAP_NET_RAW`` while
  SYN probes are configured (the SYN engine reopens a raw socket that breaks, and a reload
  makes a new one) or the sniffer is enabled (a reload that changes it reopens it), and
  ``CAP_NET_BIND_SERVICE`` when a listener uses a port below 1024 (a reload may rebind).

What a reload needs: a reload that *adds* SYN probes or enables the sniffer after
``CAP_NET_RAW`` was dropped cannot get it back; SYN probes then fall back to TCP connects
(``plprobe_raw_socket_fallback 1``) and the sniffer logs that it is not running, as without
the capability at start. Restart the agent to regain it. Nothing else a reload does (new
paths, keys, token files, intervals, views) needs a capability.

Implemented with ``capget``/``capset`` through ctypes (no extra package): the capability sets
are read from ``/proc/self/status`` and written as one ``_LINUX_CAPABILITY_VERSION_3`` pair.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from agent.errors import PlprobeError

__all__ = [
    "ALLOW_ROOT_ENV",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "RootRefused",
    "capabilities",
    "check_root",
    "drop_capabilities",
]

log = logging.getLogger(__name__)

ALLOW_ROOT_ENV = "PLPROBE_ALLOW_ROOT"
CAP_NET_BIND_SERVICE = 10
CAP_NET_RAW = 13
_CAP_NAMES = {CAP_NET_BIND_SERVICE: "CAP_NET_BIND_SERVICE", CAP_NET_RAW: "CAP_NET_RAW"}
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4


class RootRefused(PlprobeError):
    """Started as root without saying so: exit 2."""

    exit_code = 2


def root_allowed(flag: bool = False, env: Mapping[str, str] | None = None) -> bool:
    value = (os.environ if env is None else env).get(ALLOW_ROOT_ENV, "")
    return flag or value.strip().lower() in ("1", "true", "yes")


def check_root(
    command: str,
    *,
    allow: bool = False,
    euid: int | None = None,
    env: Mapping[str, str] | None = None,
) -> None:
    """Raise ``RootRefused`` as root unless ``--allow-root`` or ``PLPROBE_ALLOW_ROOT`` says so."""
    if (os.geteuid() if euid is None else euid) != 0 or root_allowed(allow, env):
        return
    raise RootRefused(
        f"plprobe {command} refuses to run as root: run it as an unprivileged user with only "
        "CAP_NET_RAW (systemd AmbientCapabilities=CAP_NET_RAW, or setcap cap_net_raw+ep on the "
        f"interpreter), or pass --allow-root (or set {ALLOW_ROOT_ENV}=1) if root is intended"
    )


def capabilities(status: str | None = None) -> dict[str, int]:
    """``{"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"}`` of this process, as bit masks."""
    text = Path("/proc/self/status").read_text() if status is None else status
    out: dict[str, int] = {}
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.startswith("Cap"):
            out[name] = int(value.strip(), 16)
    return out


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _capset(effective: int, permitted: int, inheritable: int) -> None:
    libc = _libc()
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_Data * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    if libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")
    # ambient capabilities would be re-granted to a child we exec (the lab's fetch helper)
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)


def drop_capabilities(keep: Iterable[int]) -> dict[str, int]:
    """Keep only ``keep`` (where the process has them) in every set; returns the sets after.

    Never raises for a process that has nothing to drop; a failed ``capset`` is logged and the
    process keeps running (it is no worse off than before).
    """
    before = capabilities()
    keep_mask = 0
    for cap in keep:
        keep_mask |= 1 << cap
    eff, prm, inh = (before.get(k, 0) & keep_mask for k in ("CapEff", "CapPrm", "CapInh"))
    if (eff, prm, inh) == tuple(before.get(k, 0) for k in ("CapEff", "CapPrm", "CapInh")) and (
        not before.get("CapAmb", 0) & ~keep_mask
    ):
        return before
    try:
        _capset(eff, prm, inh)
    except OSError as exc:
        log.warning("could not drop capabilities: %s", exc)
        return before
    after = capabilities()
    kept = [name for cap, name in _CAP_NAMES.items() if after.get("CapEff", 0) >> cap & 1]
    log.info("capabilities dropped; kept: %s", ", ".join(kept) or "none")
    return after


def needed_capabilities(*, raw: bool, ports: Iterable[int]) -> set[int]:
    """What the process may still need after start: see the module docstring."""
    need = {CAP_NET_RAW} if raw else set()
    if any(0 < p < 1024 for p in ports):
        need.add(CAP_NET_BIND_SERVICE)
    return need
