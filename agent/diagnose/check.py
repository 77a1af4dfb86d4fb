"""One probe round plus diagnosis, as a library call: what ``plprobe check`` and the lab run.

The round and the configuration view's read run concurrently; the view decides which rule, the
packets decide the stage (``agent.diagnose.verdict``). Rendering for people and for machines
lives here too, so that the command and ``plprobe lab check`` print the same thing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from agent.config import ClientConfig
from agent.diagnose.evidence import ProviderEvidence
from agent.diagnose.pipeline import (
    Diagnosis,
    SelfIdentity,
    diagnose_round,
    imds_instance_id,
    self_identity,
)
from agent.diagnose.report import verdict_table
from agent.diagnose.rounds import ObservationSource, RoundResult, run_round
from agent.sources.views import ViewSource, load_once

__all__ = ["check", "evidence_note", "exit_code", "render_json", "render_table"]


async def check(
    config: ClientConfig,
    key: bytes,
    *,
    source: ViewSource | None,
    me: SelfIdentity | None = None,
    provider: ObservationSource | None = None,
) -> tuple[Diagnosis, RoundResult]:
    """Probe once and read the view at the same time, then diagnose every path."""
    instance_id: asyncio.Future[str | None] | None = None
    if me is None and source is not None and source.kind == "aws":
        instance_id = asyncio.ensure_future(asyncio.to_thread(imds_instance_id))
    round_, view = await asyncio.gather(
        run_round(config, key=key, provider=provider), load_once(source)
    )
    if me is None:
        me = self_identity(config.agent_id, instance_id=await instance_id if instance_id else None)
    return diagnose_round(round_, view, me), round_


def exit_code(diagnosis: Diagnosis) -> int:
    return 0 if diagnosis.all_pass else 1


def evidence_note(ev: ProviderEvidence) -> str:
    """One line: where the provider evidence came from, what was shared, what it cost."""
    if ev.source != "endpoint":
        return f"provider evidence: {ev.source}" + (f" ({ev.error})" if ev.error else "")
    if ev.channel_cut:
        return f"provider evidence: channel cut ({ev.error})"
    covered = ", ".join(t for t, c in sorted(ev.covers.items()) if c.get("ok")) or "no target"
    return (
        f"provider evidence: through the endpoint, sharing level {ev.level or '?'}, covers "
        f"{covered}{' (partial)' if ev.partial else ''}; {ev.bytes_sent} B out, "
        f"{ev.bytes_received} B in, {ev.rtt_s * 1000:.1f} ms"
    )


def render_table(
    diagnosis: Diagnosis,
    *,
    colour: bool,
    notes: Sequence[str] = (),
    round_: RoundResult | None = None,
) -> str:
    """The verdict table, then the overall status, the view and any notes."""
    lines = [verdict_table(diagnosis.verdicts, colour=colour)]
    tail = [f"status: {diagnosis.status}", diagnosis.view.note(), *notes]
    if round_ is not None and round_.provider_evidence is not None:
        tail.append(evidence_note(round_.provider_evidence))
    tail += [f"{p}: configuration not used: {why}" for p, why in diagnosis.notes.items()]
    return "\n".join(lines) + "\n\n" + "\n".join(dict.fromkeys(tail)) + "\n"


def render_json(diagnosis: Diagnosis, round_: RoundResult) -> str:
    body: dict[str, Any] = diagnosis.to_json()
    body["provider_error"] = round_.provider_error
    body["provider_evidence"] = (
        round_.provider_evidence.to_json() if round_.provider_evidence is not None else None
    )
    body["insecure"] = round_.insecure
    return json.dumps(body, indent=2)
