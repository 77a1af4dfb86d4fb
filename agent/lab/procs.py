"""Processes of a lab: starting them inside a namespace, finding them, killing them.

The lowest layer of the lab's process handling, shared by ``agent.lab.lab`` (the lab's
daemons, ``Lab.exec``/``Lab.spawn``) and ``agent.lab.agents`` (provider agents, client
rounds), so that the agents can sit above ``Lab`` without ``Lab`` importing them.

Every process a lab starts carries ``PLPROBE_LAB=<name>`` in its environment (``lab_env``):
that mark is how ``lab down`` finds them again, even after the process that started them
died (``lab_pids``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from agent.errors import LabError

__all__ = [
    "ENV_MARK",
    "ClientAnswer",
    "answer",
    "in_netns",
    "kill_group",
    "kill_pids",
    "lab_env",
    "lab_pids",
    "pid_alive",
    "spawn",
]

ENV_MARK = "PLPROBE_LAB"
#: the checkout (or site-packages) the lab's ``python -m agent...`` processes import from
_REPO = Path(__file__).resolve().parent.parent.parent


def lab_env(name: str) -> dict[str, str]:
    """The environment of every process of lab ``name``: ours, its mark, this package first."""
    env = dict(os.environ)
    env[ENV_MARK] = name
    # the lab's agents run as root inside ``ip netns exec``: said explicitly (agent.privileges)
    env["PLPROBE_ALLOW_ROOT"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_REPO), env.get("PYTHONPATH")]))
    return env


def in_netns(ns: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside network namespace ``ns`` (its ``/etc/netns`` files apply)."""
    return ["ip", "netns", "exec", ns, *argv]


def spawn(ns: str, argv: Sequence[str], env: Mapping[str, str], **popen: Any) -> subprocess.Popen:
    """Start ``argv`` in the background inside ``ns``; ``popen`` goes to ``subprocess.Popen``."""
    return subprocess.Popen(in_netns(ns, argv), env=dict(env), **popen)


def pid_alive(pid: int) -> bool:
    """Is the process running (not gone, not a zombie)? Reaps our own children on the way."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def lab_pids(name: str) -> set[int]:
    """Processes started for this lab (they carry ``PLPROBE_LAB=<name>``)."""
    mark = f"{ENV_MARK}={name}".encode() + b"\0"
    out: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if mark in env or env.endswith(mark[:-1]):
            out.add(int(entry))
    out.discard(os.getpid())
    return out


def kill_pids(pids: set[int], grace_s: float = 1.0) -> None:
    """SIGTERM, then SIGKILL what is still alive after ``grace_s``; returns when all are gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            pids = {p for p in pids if pid_alive(p)}
            if not pids:
                return
            time.sleep(0.02)


def kill_group(pid: int, grace_s: float = 2.0) -> None:
    """Stop the process group led by ``pid`` (a ``start_new_session`` child and its children).

    SIGTERM, then SIGKILL if the leader is still alive after ``grace_s``.
    """
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + grace_s
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        if not pid_alive(pid):
            break


class ClientAnswer(Protocol):
    """What ``answer`` reads of a client helper's run (``agent.lab.agents.ClientRun``)."""

    client: str
    returncode: int
    data: dict[str, Any] | None
    stdout: str
    stderr: str


def answer(run: ClientAnswer) -> dict:
    """The JSON a client helper printed, or LabError with what it said instead."""
    if run.data is None:
        raise LabError(
            f"the round in {run.client} failed (exit {run.returncode}): "
            f"{(run.stderr or run.stdout).strip()[-800:]}"
        )
    return run.data
