"""The lab's side channel: provider observations handed over by ``ip netns exec``.

No deployment has this. A client round in the lab gets the provider's evidence through the
endpoint (``agent.diagnose.evidence``), as a real one does; this module exists only for the
``side-channel`` reference level of the fault matrix (``bench/diagnosis_accuracy.py``,
docs/DIAGNOSIS.md): what diagnosis would say with every target's observations and both
accounts' snapshots handed to it, to measure how close the deployed path comes.

``NamespaceObservationSource`` reads each provider agent's ``/v1/observations`` with a tiny
``ip netns exec <target ns> python -S -c <urllib GET>`` per target: the agent's API is reached on
127.0.0.1 inside its own namespace, so nothing is opened between the VPCs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent.errors import PlprobeError, ProbeError
from agent.results import Observation

__all__ = ["NamespaceObservationSource", "side_channel_diagnosis"]

#: the provider agent's API port inside each target namespace (configs/lab/provider.yaml)
API_PORT = 9720
FETCH_TIMEOUT_S = 3.0
_FETCH_SCRIPT = (
    "import sys, urllib.request\n"
    "with urllib.request.urlopen(sys.argv[1], timeout=float(sys.argv[2])) as r:\n"
    "    sys.stdout.write(r.read().decode())\n"
)


class NamespaceObservationSource:
    """``/v1/observations`` of provider agents in other namespaces, via ``ip netns exec``.

    The lab's side channel: no deployment has it. Used only for the ``side-channel``
    reference level of the fault matrix (module docstring). ``failures`` names the namespaces
    that did not answer in the last fetch.
    """

    def __init__(
        self, namespaces: Sequence[str], *, port: int = API_PORT, timeout_s: float = FETCH_TIMEOUT_S
    ) -> None:
        self.namespaces = list(namespaces)
        self.port = port
        self.timeout_s = timeout_s
        self.failures: dict[str, str] = {}

    async def _one(self, ns: str, since: float) -> list[Observation]:
        url = f"http://127.0.0.1:{self.port}/v1/observations?since={since:.6f}&limit=10000"
        argv = ["ip", "netns", "exec", ns, sys.executable, "-S", "-c", _FETCH_SCRIPT]
        argv += [url, str(self.timeout_s)]
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            async with asyncio.timeout(self.timeout_s + 2.0):
                out, err = await proc.communicate()
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise ProbeError(f"{ns}: no answer within {self.timeout_s:g}s") from None
        if proc.returncode != 0:
            last = (err.decode(errors="replace").strip().splitlines() or ["?"])[-1]
            raise ProbeError(f"{ns}: provider agent API unreachable: {last}")
        try:
            body = json.loads(out)
            return [Observation.from_json(o) for o in body["observations"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise ProbeError(f"{ns}: bad /v1/observations answer: {exc}") from exc

    async def fetch(self, since: float) -> list[Observation]:
        self.failures = {}
        if not self.namespaces:
            raise ProbeError("no provider agent runs in this lab (plprobe lab up --with-agents)")
        answers = await asyncio.gather(
            *(self._one(ns, since) for ns in self.namespaces), return_exceptions=True
        )
        out: list[Observation] = []
        for ns, answer in zip(self.namespaces, answers, strict=True):
            if isinstance(answer, asyncio.CancelledError):
                raise answer
            if isinstance(answer, BaseException):
                self.failures[ns] = str(answer)
            else:
                out.extend(answer)
        if len(self.failures) == len(self.namespaces):
            raise ProbeError("; ".join(self.failures.values()))
        return out


def side_channel_diagnosis(
    namespaces: Sequence[str], snapshots: Sequence[Path], config: Any, round_: Any
) -> dict[str, Any]:
    """The reference level: observations handed over through ``ip netns exec`` and both
    accounts' snapshots (module docstring: no deployment has this)."""
    from agent.diagnose.correlate import correlate
    from agent.diagnose.evidence import ProviderEvidence
    from agent.diagnose.pipeline import diagnose_round, self_identity
    from agent.sources.aws_snapshot import load_snapshot

    source = NamespaceObservationSource(namespaces)
    error = None
    observations = None
    try:
        observations = asyncio.run(source.fetch(round_.started_at - config.correlation_window))
    except PlprobeError as exc:
        error = f"provider observations unavailable: {exc}"
    evidence = correlate(
        round_.results, observations, window_s=config.correlation_window, provider_error=error
    )
    handed = dataclasses.replace(
        round_,
        evidence=evidence,
        observations=observations,
        provider_error=error,
        provider_evidence=ProviderEvidence(source="injected", error=error or ""),
    )
    view = load_snapshot(list(snapshots)) if snapshots else None
    return diagnose_round(handed, view, self_identity(config.agent_id)).to_json()
