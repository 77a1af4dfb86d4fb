"""Rounds and verdicts as terminal tables: one row per path, then the rule, why and the fix.

``plprobe check``, ``plprobe explain``, ``plprobe probe`` and the lab's ``probe``/``check`` print
the same tables, so they live here once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from agent.config import INSECURE_NOTE
from agent.diagnose.rounds import RoundResult
from agent.diagnose.verdict import describe
from agent.results import Verdict

COLOURS = {"pass": "32", "fail": "31", "degraded": "33", "unknown": "35"}


def blocking_rule(verdict: Verdict) -> str:
    """The denied hop that names ``blocked_at``, in words ("" when none is named)."""
    if not verdict.blocked_at or verdict.blocked_at == "unknown":
        return ""
    hop = next(
        (f for f in verdict.findings if f.control == verdict.blocked_at and f.status == "denied"),
        None,
    )
    return describe(hop) if hop is not None else ""


def verdict_table(verdicts: Sequence[Verdict], *, colour: bool, stage: bool = True) -> str:
    """The table; colour only when asked (the callers ask when stdout is a TTY)."""
    header = (
        ("PATH", "STATUS", "STAGE", "BLOCKED AT") if stage else ("PATH", "STATUS", "BLOCKED AT")
    )

    def cells(v: Verdict) -> tuple[str, ...]:
        row = (v.path, v.status, v.stage, v.blocked_at or "-")
        return row if stage else (row[0], row[1], row[3])

    rows = [header, *(cells(v) for v in verdicts)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines: list[str] = []
    for n, row in enumerate(rows):
        out = [row[i].ljust(widths[i]) for i in range(len(header))]
        if n and colour:
            out[1] = f"\033[{COLOURS.get(row[1], '0')}m{out[1]}\033[0m"
        lines.append("  ".join(out).rstrip())
        if n == 0:
            continue
        v = verdicts[n - 1]
        if v.status == "pass" and not v.fix:
            continue
        rule = blocking_rule(v)
        if rule:
            lines.append(f"    rule: {rule}")
        elif v.candidates and v.status != "pass":
            lines.append(f"    candidates: {', '.join(v.candidates)}")
        # the explanation usually quotes the rule; print it only when it says more
        if v.status != "pass" and v.explanation and not (rule and rule in v.explanation):
            lines.append(f"    why:  {v.explanation}")
        elif rule and v.explanation and rule in v.explanation:
            lead = re.sub(r"[\s:;,]*(blocked at|at)?[\s:;,]*$", "", v.explanation.split(rule)[0])
            if lead and lead.lower() != "configuration blocks the path":
                lines.append(f"    why:  {lead}")
        if v.fix:
            lines.append(f"    fix:  {v.fix}")
    return "\n".join(lines)


def _rtt(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}ms"


def format_table(result: RoundResult) -> str:
    """A fixed-column table; notes (errors, fallbacks, provider problems) below it."""
    header = ("PATH", "OUTCOME", "SEEN AT TARGET", "SOURCE AT TARGET", "RTT")
    rows = [
        (
            ev.path,
            ev.outcome,
            ev.seen_at_target,
            ev.source_at_target or "-",
            _rtt(ev.rtt_s),
        )
        for ev in result.evidence
    ]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    notes: list[str] = []
    if result.insecure:
        notes.append(INSECURE_NOTE)
    if result.provider_error:
        notes.append(f"provider: {result.provider_error}")
    for ev in result.evidence:
        if ev.proxy_endpoint_id or ev.proxy_client:
            notes.append(
                f"{ev.path}: PROXY v2 endpoint {ev.proxy_endpoint_id or '-'} "
                f"client {ev.proxy_client or '-'}"
            )
        for r in ev.results:
            if r.fallback:
                notes.append(f"{ev.path}: {r.fallback}")
            if r.outcome != "ok" and r.error:
                notes.append(f"{ev.path}: {r.probe} {r.outcome}: {r.error}")
    text = "\n".join(lines) + "\n"
    if notes:
        text += "\n" + "\n".join(dict.fromkeys(notes)) + "\n"
    return text
